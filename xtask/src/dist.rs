//! `cargo xtask dist`: the Debian package. Builds both binaries (release; `--check`: the dev
//! profile, for CI), generates their man
//! pages and shell completions (from clap, through the binaries' hidden `--generate`), lays out
//! the files with the systemd units and the configuration, strips the binaries' debug info, and
//! packs them with `dpkg-deb` (Debian's own tools: `dpkg-deb`, `strip`, `gzip`; nothing else to
//! install). Then checks the package's file list.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cargo, project_root};

/// Every file the package must hold (besides folders).
pub const EXPECTED: &[&str] = &[
    "./usr/bin/streamhook-server",
    "./usr/bin/streamhook",
    "./usr/lib/systemd/system/streamhook.service",
    "./usr/lib/systemd/system/streamhook.socket",
    "./usr/lib/systemd/system/streamhook-admin.socket",
    "./etc/streamhook/streamhook.toml",
    "./usr/share/doc/streamhook/streamhook.example.toml",
    "./usr/share/man/man1/streamhook-server.1.gz",
    "./usr/share/man/man1/streamhook.1.gz",
    "./usr/share/bash-completion/completions/streamhook",
    "./usr/share/bash-completion/completions/streamhook-server",
    "./usr/share/zsh/vendor-completions/_streamhook",
    "./usr/share/zsh/vendor-completions/_streamhook-server",
    "./usr/share/fish/vendor_completions.d/streamhook.fish",
    "./usr/share/fish/vendor_completions.d/streamhook-server.fish",
    "./usr/share/doc/streamhook/README.md",
    "./usr/share/doc/streamhook/copyright",
];

/// The configuration installed as `/etc/streamhook/streamhook.toml`: what runs as it is, and
/// where each thing is changed. The full reference is installed beside it.
const CONFIG: &str = r#"# streamhook-server configuration. Every key, with its default and what it does:
# /usr/share/doc/streamhook/streamhook.example.toml. Check a change with
#   streamhook-server --config /etc/streamhook/streamhook.toml --check-config
# then `systemctl reload streamhook` (a bad file is refused and the old one kept).
#
# The listening sockets come from streamhook.socket (webhooks, port 8080) and
# streamhook-admin.socket (127.0.0.1:8081: /readyz, /metrics, the admin API); `listen` and
# `admin.listen` here are not used then. Change an address in a drop-in
# (systemctl edit streamhook.socket) with an empty `ListenStream=` line first, then the new one.

# Gcore's ranges send every Gcore customer's webhooks: set a secret path and give Gcore
# https://YOUR-HOST/webhook/<token> (16-128 of A-Z a-z 0-9 - _).
# path_token = "..."

# Behind a reverse proxy on this host, believe its forwarding headers:
# trusted_proxies = ["127.0.0.1"]

# Events are archived as NDJSON, one file a day (the service may only write under
# /var/lib/streamhook). Add an http sink to forward them to your app:
#   [[sinks]]
#   type = "http"
#   url = "http://127.0.0.1:3000/gcore-webhook"
#   secrets = ["whsec_..."]
[[sinks]]
type = "file"
name = "archive"
path = "/var/lib/streamhook/events/{date}.jsonl"
"#;

const COPYRIGHT: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: streamhook

Files: *
License: MIT or Apache-2.0
";

fn run(cmd: &mut Command) -> Result<Vec<u8>> {
    let line = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {line}"))?;
    if !out.status.success() {
        bail!(
            "{line} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot run gzip")?;
    child.stdin.take().context("no stdin")?.write_all(bytes)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("gzip failed");
    }
    Ok(out.stdout)
}

/// Which build of the binaries the package holds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// Optimised (`--release`): the package to install.
    Release,
    /// Unoptimised binaries (the dev profile, mostly built already by the tests), for checking
    /// the package's layout, units, man pages and maintainer scripts without an optimised
    /// build: what `cargo xtask ci` does. Written to `target/dist-check/` and removed once
    /// checked, so that it cannot be mistaken for the package to install.
    Check,
}

/// Builds `target/dist/streamhook_VERSION_ARCH.deb` and returns its path (with
/// [`Build::Check`], in `target/dist-check/`, removed once checked: the path names no file).
pub fn dist(build: Build) -> Result<PathBuf> {
    let root = project_root();
    let mut args = vec!["build"];
    if build == Build::Release {
        args.push("--release");
    }
    args.extend([
        "--locked",
        "-p",
        "streamhook-server",
        "-p",
        "streamhook-cli",
    ]);
    cargo(&args, &[])?;
    let version = workspace_version(&root)?;
    let version = version.as_str();
    let arch = String::from_utf8(run(Command::new("dpkg").arg("--print-architecture"))?)?
        .trim()
        .to_owned();
    let out = root.join(match build {
        Build::Release => "target/dist",
        Build::Check => "target/dist-check",
    });
    let stage = out.join(format!("streamhook_{version}_{arch}"));
    let _ = std::fs::remove_dir_all(&stage);
    let release = root.join(match build {
        Build::Release => "target/release",
        Build::Check => "target/debug",
    });

    for bin in ["streamhook-server", "streamhook"] {
        let bytes =
            std::fs::read(release.join(bin)).with_context(|| format!("{bin} was not built"))?;
        let installed = stage.join("usr/bin").join(bin);
        write(&installed, &bytes, 0o755)?;
        // The release profile keeps line tables for backtraces; the package drops them
        // (function names stay), as Debian's packages do.
        run(Command::new("strip").arg("--strip-debug").arg(&installed))?;
        let man = run(Command::new(release.join(bin)).args(["--generate", "man"]))?;
        write(
            &stage.join(format!("usr/share/man/man1/{bin}.1.gz")),
            &gzip(&man)?,
            0o644,
        )?;
        for (shell, dest) in [
            (
                "bash",
                format!("usr/share/bash-completion/completions/{bin}"),
            ),
            ("zsh", format!("usr/share/zsh/vendor-completions/_{bin}")),
            (
                "fish",
                format!("usr/share/fish/vendor_completions.d/{bin}.fish"),
            ),
        ] {
            let script =
                run(Command::new(release.join(bin))
                    .args(["--generate", &format!("complete-{shell}")]))?;
            write(&stage.join(dest), &script, 0o644)?;
        }
    }
    for unit in [
        "streamhook.service",
        "streamhook.socket",
        "streamhook-admin.socket",
    ] {
        let text = std::fs::read(root.join("packaging/systemd").join(unit))?;
        write(
            &stage.join("usr/lib/systemd/system").join(unit),
            &text,
            0o644,
        )?;
    }
    write(
        &stage.join("etc/streamhook/streamhook.toml"),
        CONFIG.as_bytes(),
        0o644,
    )?;
    write(
        &stage.join("usr/share/doc/streamhook/streamhook.example.toml"),
        &std::fs::read(root.join("docs/streamhook.example.toml"))?,
        0o644,
    )?;
    write(
        &stage.join("usr/share/doc/streamhook/README.md"),
        &std::fs::read(root.join("README.md"))?,
        0o644,
    )?;
    write(
        &stage.join("usr/share/doc/streamhook/copyright"),
        COPYRIGHT.as_bytes(),
        0o644,
    )?;

    let size_kb = dir_size(&stage)? / 1024;
    let depends = shlib_depends(&stage).unwrap_or_else(|e| {
        eprintln!("dist: dpkg-shlibdeps unavailable ({e}); unversioned Depends");
        "libc6, libgcc-s1".to_owned()
    });
    let md5sums = md5sums(&stage)?;
    let control = format!(
        "Package: streamhook
Version: {version}
Architecture: {arch}
Maintainer: streamhook developers <streamhook@localhost>
Installed-Size: {size_kb}
Depends: {depends}
Recommends: ca-certificates
Section: net
Priority: optional
Description: durable, source-checked inbox for Gcore Video Streaming webhooks
 streamhook-server accepts Gcore's webhooks from Gcore's address ranges, works out
 what each means (stream started, recording stopped, video ready...), stores it
 durably before answering, and delivers it to files, stdout or your app over HTTP
 with retries, signatures, replay and dead letters. The streamhook CLI validates,
 inspects and sends payloads and drives the server's admin API.
 .
 The service is socket-activated: restarts and upgrades refuse no connection.
"
    );
    write(&stage.join("DEBIAN/control"), control.as_bytes(), 0o644)?;
    write(
        &stage.join("DEBIAN/conffiles"),
        b"/etc/streamhook/streamhook.toml\n",
        0o644,
    )?;
    write(&stage.join("DEBIAN/md5sums"), md5sums.as_bytes(), 0o644)?;
    // Maintainer scripts, as debhelper's systemd snippets do: enable the sockets and the
    // service (offline too: deb-systemd-helper only makes the links), start the sockets, and
    // on upgrade restart only the service (the sockets stay open: no connection refused).
    write(
        &stage.join("DEBIAN/postinst"),
        br#"#!/bin/sh
set -e
if [ "$1" = "configure" ]; then
    if command -v deb-systemd-helper >/dev/null 2>&1; then
        for unit in streamhook.socket streamhook-admin.socket streamhook.service; do
            deb-systemd-helper unmask "$unit" >/dev/null || true
            deb-systemd-helper enable "$unit" >/dev/null || true
        done
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
        if ! systemctl start streamhook.socket streamhook-admin.socket; then
            echo "streamhook: the sockets did not start (is port 8080 or 127.0.0.1:8081 taken?): systemctl status streamhook.socket" >&2
        fi
        if [ -n "$2" ]; then
            systemctl try-restart streamhook.service || echo "streamhook: the service did not restart: journalctl -u streamhook" >&2
        fi
    fi
fi
"#,
        0o755,
    )?;
    write(
        &stage.join("DEBIAN/prerm"),
        br#"#!/bin/sh
set -e
if [ "$1" = "remove" ] && [ -d /run/systemd/system ]; then
    systemctl stop streamhook.service streamhook.socket streamhook-admin.socket || true
fi
"#,
        0o755,
    )?;
    write(
        &stage.join("DEBIAN/postrm"),
        br#"#!/bin/sh
set -e
if [ "$1" = "remove" ] && command -v deb-systemd-helper >/dev/null 2>&1; then
    for unit in streamhook.socket streamhook-admin.socket streamhook.service; do
        deb-systemd-helper mask "$unit" >/dev/null || true
    done
fi
if [ "$1" = "purge" ] && command -v deb-systemd-helper >/dev/null 2>&1; then
    for unit in streamhook.socket streamhook-admin.socket streamhook.service; do
        deb-systemd-helper purge "$unit" >/dev/null || true
        deb-systemd-helper unmask "$unit" >/dev/null || true
    done
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
"#,
        0o755,
    )?;
    // Folders 0755 whatever the builder's umask (dpkg-deb refuses a group-writable DEBIAN).
    set_dir_modes(&stage)?;
    let deb = out.join(format!("streamhook_{version}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    check(&deb)?;
    match build {
        Build::Release => eprintln!("dist: {}", deb.display()),
        Build::Check => {
            std::fs::remove_dir_all(&out)?;
            eprintln!(
                "dist: the package of the unoptimised build checked and removed (`cargo xtask dist` builds the one to install)"
            );
        }
    }
    Ok(deb)
}

/// The version of the workspace (`[workspace.package] version` in the root Cargo.toml).
fn workspace_version(root: &Path) -> Result<String> {
    let text = std::fs::read_to_string(root.join("Cargo.toml"))?;
    let section = text
        .split("[workspace.package]")
        .nth(1)
        .context("no [workspace.package] in Cargo.toml")?;
    section
        .lines()
        .take_while(|l| !l.starts_with('['))
        .find_map(|l| {
            let (key, value) = l.split_once('=')?;
            (key.trim() == "version").then(|| value.trim().trim_matches('"').to_owned())
        })
        .context("no version in [workspace.package]")
}

/// `Depends` from the binaries' shared libraries, as Debian's packaging computes it.
fn shlib_depends(stage: &Path) -> Result<String> {
    // dpkg-shlibdeps wants a debian/control beside it; a throwaway one will do.
    let work = stage.parent().context("no parent")?.join("shlibdeps");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("debian"))?;
    std::fs::write(
        work.join("debian/control"),
        "Source: streamhook\n\nPackage: streamhook\nArchitecture: any\n",
    )?;
    let out = run(Command::new("dpkg-shlibdeps")
        .current_dir(&work)
        .arg("-O")
        .arg(stage.join("usr/bin/streamhook-server"))
        .arg(stage.join("usr/bin/streamhook")));
    let _ = std::fs::remove_dir_all(&work);
    let text = String::from_utf8(out?)?;
    text.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_owned)
        .context("dpkg-shlibdeps printed no shlibs:Depends")
}

/// `DEBIAN/md5sums`: every file's md5, relative to the root.
fn md5sums(stage: &Path) -> Result<String> {
    let mut files = Vec::new();
    collect_files(stage, stage, &mut files)?;
    files.sort();
    let out = run(Command::new("md5sum").current_dir(stage).args(&files))?;
    Ok(String::from_utf8(out)?)
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            if path != root.join("DEBIAN") {
                collect_files(root, &path, out)?;
            }
        } else {
            out.push(path.strip_prefix(root)?.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

fn set_dir_modes(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            set_dir_modes(&path)?;
        }
    }
    Ok(())
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Checks that the package holds every expected file (and prints its list).
pub fn check(deb: &Path) -> Result<()> {
    let list = String::from_utf8(run(Command::new("dpkg-deb").arg("--contents").arg(deb))?)?;
    let files: Vec<&str> = list
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    let missing: Vec<&&str> = EXPECTED.iter().filter(|f| !files.contains(f)).collect();
    if !missing.is_empty() {
        bail!("{} lacks {missing:?}; it holds {files:?}", deb.display());
    }
    let info = String::from_utf8(run(Command::new("dpkg-deb").arg("--info").arg(deb))?)?;
    for field in [
        "Package: streamhook",
        "Depends: libc6",
        "conffiles",
        "md5sums",
        "postinst",
    ] {
        if !info.contains(field) {
            bail!(
                "{}: the control data lacks {field:?}:\n{info}",
                deb.display()
            );
        }
    }
    eprintln!(
        "dist: {} holds the {} expected files (binaries, units, config, man pages, completions)",
        deb.display(),
        EXPECTED.len()
    );
    Ok(())
}
