//! `cargo xtask dist`: the Debian package. Builds both binaries (release), generates their man
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
    "./lib/systemd/system/streamhook.service",
    "./lib/systemd/system/streamhook.socket",
    "./lib/systemd/system/streamhook-admin.socket",
    "./etc/streamhook/streamhook.toml",
    "./etc/streamhook/streamhook.example.toml",
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
# /etc/streamhook/streamhook.example.toml. Check a change with
#   streamhook-server --config /etc/streamhook/streamhook.toml --check-config
# then `systemctl reload streamhook` (a bad file is refused and the old one kept).
#
# The listening sockets come from streamhook.socket (webhooks, port 8080) and
# streamhook-admin.socket (127.0.0.1:8081: /readyz, /metrics, the admin API); change their
# addresses there (systemctl edit streamhook.socket), not here.

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

/// Builds `target/dist/streamhook_VERSION_ARCH.deb` and returns its path.
pub fn dist() -> Result<PathBuf> {
    let root = project_root();
    cargo(
        &[
            "build",
            "--release",
            "--locked",
            "-p",
            "streamhook-server",
            "-p",
            "streamhook-cli",
        ],
        &[],
    )?;
    let version = env!("CARGO_PKG_VERSION");
    let arch = String::from_utf8(run(Command::new("dpkg").arg("--print-architecture"))?)?
        .trim()
        .to_owned();
    let out = root.join("target/dist");
    let stage = out.join(format!("streamhook_{version}_{arch}"));
    let _ = std::fs::remove_dir_all(&stage);
    let release = root.join("target/release");

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
        write(&stage.join("lib/systemd/system").join(unit), &text, 0o644)?;
    }
    write(
        &stage.join("etc/streamhook/streamhook.toml"),
        CONFIG.as_bytes(),
        0o644,
    )?;
    write(
        &stage.join("etc/streamhook/streamhook.example.toml"),
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
    let control = format!(
        "Package: streamhook
Version: {version}
Architecture: {arch}
Maintainer: streamhook developers <streamhook@localhost>
Installed-Size: {size_kb}
Depends: libc6, libgcc-s1
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
        b"/etc/streamhook/streamhook.toml\n/etc/streamhook/streamhook.example.toml\n",
        0o644,
    )?;
    // Maintainer scripts, as debhelper's systemd snippets would do: enable the sockets on
    // install; on upgrade restart only the service (the sockets stay open, so no connection
    // is refused); stop everything on removal.
    write(
        &stage.join("DEBIAN/postinst"),
        br#"#!/bin/sh
set -e
if [ "$1" = "configure" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    if [ -z "$2" ]; then
        systemctl enable --now streamhook.socket streamhook-admin.socket || true
    else
        systemctl try-restart streamhook.service || true
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
    systemctl disable --now streamhook.service streamhook.socket streamhook-admin.socket || true
fi
"#,
        0o755,
    )?;
    write(
        &stage.join("DEBIAN/postrm"),
        br#"#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
"#,
        0o755,
    )?;
    let deb = out.join(format!("streamhook_{version}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    check(&deb)?;
    eprintln!("dist: {}", deb.display());
    Ok(deb)
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
