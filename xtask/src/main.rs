//! `cargo xtask`: the project's own automation (CI steps, code generation), in Rust so it runs
//! wherever cargo does.
//!
//! Run `cargo xtask help` for the list of tasks.

#![allow(clippy::print_stdout, clippy::print_stderr)] // printing is what a task runner does

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

mod arch;
mod demo;
mod dist;
mod tools;

const HELP: &str = "\
cargo xtask TASK

Tasks:
  ci        what CI runs: fmt check, clippy -D warnings, the tests (pending or
            unreferenced snapshots fail), the server's suites again on the
            JetStream journal, the architecture checks (streamhook-types free
            of I/O, streamhook-core free of NATS, no two files of core, server
            or jetstream importing each other, one audited `unsafe`, docs
            without warnings), the short fault runs, and the Debian
            package's layout (unoptimised binaries, checked, then removed)
  test      what README.md gives: install the pinned nats-server into .tools/
            when absent, then `cargo test --workspace --locked` (extra ARGS go to
            cargo test)
  arch      the architecture checks alone: streamhook-core free of NATS, and no
            two files of core, server or jetstream importing each other
  tools     install the pinned nats-server into .tools/ when absent, print its path
  codegen   regenerate docs/schema/*.json from the types
  demo      build, start the server on loopback with a file sink in a temporary
            folder, send every fixture with `streamhook send`, print the
            console's URL (with the token) and wait for Enter while you look
            (in a terminal), then show what each sink received and stop
  dist      build the Debian package target/dist/streamhook_VERSION_ARCH.deb
            (release binaries, systemd units, /etc/streamhook config, man pages,
            shell completions) with dpkg-deb, and check its file list;
            `dist --check` packages an unoptimised build instead, checks it and
            removes it (what `ci` does: the layout, units and scripts, without
            an optimised build)

Fault runs against the real server binary (add --release to build optimised):
  crash-test [--cycles N]           SIGKILL under load, N times (default 20);
                                    nothing acknowledged may be lost
  power-loss-test [--cycles N]      emulated power cuts (default 10): SIGKILL under
                                    strace, the file sink's archive and position
                                    file rolled back to their last sync, restart;
                                    every acknowledged event in the archive once
  outage-test [--seconds N]         the http sink's receiver refuses, is down,
                                    returns, under load (default 20 s)
  disk-full-test                    the journal's disk fills up, then frees
                                    (root: mounts a small tmpfs; else skipped)
  slow-clients-test [--connections N]  N connections trickle headers or bodies
                                    while a good client is measured (default 400),
                                    then a flood from an address not allowed
  restart-test [--restarts N]       the harness holds the listening socket (as
                                    systemd does) and restarts the server N times
                                    (default 20) under load, one connection per
                                    request: 0 failed requests, 0 lost events
  ha-test [--cycles N] [--clients N]  a 3-node NATS JetStream cluster (the pinned
                                    nats-server, installed if missing), two receivers
                                    sharing its journal; the stream deleted and created
                                    again, then under load N faults in turn (default
                                    10): a receiver SIGKILLed, a NATS node SIGKILLed, the
                                    deliverer frozen 8 s, the destination refusing (dead
                                    letters), quorum lost 20 s: nothing refused or lost,
                                    every event delivered, no overlapping deliverers, no
                                    regression per resource, classification as one journal
  faults                            all seven, short (what CI runs)
  bench [ARGS]                      build release binaries, run the criterion
                                    benches, then measure intake (vs a bare axum
                                    server), memory, drain, restart and validate
                                    (vs jq); writes docs/performance.md. ARGS go
                                    to `streamhook-harness bench` (--seconds N,
                                    --connections N, --rate N, --restart-events N)
  fuzz [--seconds N] [TARGET...]    run the cargo-fuzz targets (decode, forwarded)
                                    N seconds each (default 60), installing
                                    cargo-fuzz if missing; the corpus found is kept
                                    in fuzz/corpus and replayed by `cargo test`
  help      this text
";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_else(|| "help".to_owned());
    let rest: Vec<String> = args.collect();
    std::env::set_current_dir(project_root())?;
    match task.as_str() {
        "ci" => ci(&rest),
        "test" => test(&rest),
        "tools" => {
            println!("{}", tools::ensure_nats_server()?.display());
            Ok(())
        }
        "codegen" => codegen(),
        "arch" => {
            arch::check_core_has_no_nats(&project_root())?;
            arch::check_no_mutual_imports(&project_root())
        }
        "demo" => demo::run(),
        "crash-test" => harness(&["crash"], &rest).map(drop),
        "power-loss-test" => harness(&["power-loss"], &rest).map(drop),
        "outage-test" => harness(&["outage"], &rest).map(drop),
        "disk-full-test" => harness(&["disk-full"], &rest).map(drop),
        "slow-clients-test" => harness(&["slow-clients"], &rest).map(drop),
        "restart-test" => harness(&["restart"], &rest).map(drop),
        "ha-test" => {
            tools::ensure_nats_server()?;
            harness(&["ha"], &rest).map(drop)
        }
        "dist" => dist::dist(if rest.iter().any(|a| a == "--check") {
            dist::Build::Check
        } else {
            dist::Build::Release
        })
        .map(drop),
        "faults" => faults_short(&rest).map(drop),
        "fuzz" => fuzz(&rest),
        "bench" => bench(&rest),
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            Ok(())
        }
        other => bail!("unknown task `{other}`\n\n{HELP}"),
    }
}

pub(crate) fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the root")
        .to_path_buf()
}

/// Runs a cargo command, failing with the command line if it fails.
pub(crate) fn cargo(args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let line = format!("cargo {}", args.join(" "));
    eprintln!("$ {line}");
    let status = Command::new(cargo)
        .args(args)
        .envs(envs.iter().copied())
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

fn ci(args: &[String]) -> Result<()> {
    let skip_lint = args.iter().any(|a| a == "--no-lint");
    if !skip_lint {
        cargo(&["fmt", "--all", "--check"], &[])?;
        cargo(
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--locked",
                "--",
                "-D",
                "warnings",
            ],
            &[],
        )?;
    }
    // The documentation builds without a warning (broken links, undocumented items).
    cargo(
        &[
            "doc",
            "--no-deps",
            "--workspace",
            "--all-features",
            "--locked",
        ],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    check_types_crate_is_pure()?;
    arch::check_core_has_no_nats(&project_root())?;
    arch::check_no_mutual_imports(&project_root())?;
    check_unsafe_is_audited()?;
    tools::ensure_nats_server()?;
    test_with_snapshot_checks()?;
    server_suites_on_jetstream()?;
    let skipped = faults_short(&[])?;
    // The package's layout, units, man pages and scripts are checked with unoptimised binaries
    // (the dev profile the tests built): an optimised build of both would cost CI minutes and
    // check nothing more.
    dist::dist(dist::Build::Check)?;
    if skipped.is_empty() {
        eprintln!("xtask ci: all checks passed");
    } else {
        eprintln!(
            "xtask ci: all checks that ran passed; SKIPPED here: {}",
            skipped.join(", ")
        );
    }
    Ok(())
}

/// The server's test suites again, journaling in a real JetStream stream (one nats-server per
/// suite): every HTTP, admin, console and browser test on the replicated journal.
fn server_suites_on_jetstream() -> Result<()> {
    let nats = tools::nats_server_path().to_string_lossy().into_owned();
    cargo(
        &["test", "--locked", "-p", "streamhook-server", "--tests"],
        &[
            ("STREAMHOOK_NATS_SERVER", &nats),
            ("STREAMHOOK_TEST_JOURNAL", "jetstream"),
            ("INSTA_UPDATE", "no"),
            ("INSTA_FORCE_PASS", "0"),
        ],
    )
}

/// `cargo xtask test`: the pinned nats-server, then `cargo test --workspace --locked`.
fn test(args: &[String]) -> Result<()> {
    let nats = tools::ensure_nats_server()?;
    let nats = nats.to_string_lossy().into_owned();
    let mut cmd = vec!["test", "--workspace", "--locked"];
    cmd.extend(args.iter().map(String::as_str));
    cargo(&cmd, &[("STREAMHOOK_NATS_SERVER", &nats)])
}

/// Runs `cargo test --workspace --locked` so that a snapshot that differs, is pending, or is
/// referenced by no test fails the run.
fn test_with_snapshot_checks() -> Result<()> {
    let refs = project_root().join("target/insta-references.txt");
    std::fs::create_dir_all(refs.parent().expect("has a parent"))?;
    let _ = std::fs::remove_file(&refs);
    let refs_str = refs.to_string_lossy().into_owned();
    let nats = tools::nats_server_path().to_string_lossy().into_owned();
    cargo(
        &["test", "--workspace", "--locked"],
        &[
            ("STREAMHOOK_NATS_SERVER", &nats),
            ("INSTA_UPDATE", "no"),
            ("INSTA_FORCE_PASS", "0"),
            ("INSTA_SNAPSHOT_REFERENCES_FILE", &refs_str),
        ],
    )?;
    let referenced: Vec<PathBuf> = std::fs::read_to_string(&refs)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| std::fs::canonicalize(l).ok())
        .collect();
    let mut unreferenced = Vec::new();
    let mut pending = Vec::new();
    for file in files_under(&project_root().join("crates"))? {
        let name = file.to_string_lossy();
        if name.ends_with(".snap.new") || name.ends_with(".pending-snap") {
            pending.push(file);
        } else if name.ends_with(".snap") && !referenced.contains(&std::fs::canonicalize(&file)?) {
            unreferenced.push(file);
        }
    }
    if !pending.is_empty() {
        bail!("pending snapshots (review with `cargo insta review` or delete): {pending:#?}");
    }
    if !unreferenced.is_empty() {
        bail!(
            "snapshots no test referenced (delete them, or restore their test): {unreferenced:#?}"
        );
    }
    eprintln!(
        "snapshots: {} referenced, none pending or stale",
        referenced.len()
    );
    Ok(())
}

pub(crate) fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    Ok(out)
}

/// Architecture invariant: `streamhook-types` does no I/O and knows nothing of async runtimes
/// or HTTP: its normal dependencies are serde, serde_json and schemars (and theirs).
fn check_types_crate_is_pure() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--locked",
            "-p",
            "streamhook-types",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .output()
        .context("could not run `cargo tree`")?;
    if !out.status.success() {
        bail!(
            "`cargo tree` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tree = String::from_utf8_lossy(&out.stdout);
    let forbidden = ["tokio", "axum", "hyper", "reqwest", "redb", "mio"];
    for line in tree.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if forbidden.contains(&name) {
            bail!("streamhook-types must not depend on {name} (architecture invariant)");
        }
    }
    eprintln!("streamhook-types: no I/O or async dependencies");
    Ok(())
}

/// The workspace denies unsafe code (`deny`, not `forbid`) for one audited call, the server binary's
/// `mallopt`. `deny` gives way only to a lint attribute, a manifest's lint table or a compiler
/// flag, so CI checks all three: the lint's name appears in exactly one tracked `.rs` file, once
/// (that call's `allow`); every member's manifest takes the workspace's lints and names no lint
/// of its own; no cargo config passes lint flags. The fuzz crate, outside the workspace and
/// its lints, must not contain the word at all.
fn check_unsafe_is_audited() -> Result<()> {
    const ALLOWED: &str = "crates/streamhook-server/src/main.rs";
    // Spelled in parts so that this file does not match itself.
    let lint = concat!("unsafe", "_code");
    let keyword = concat!("uns", "afe");
    let root = project_root();
    let files = run_git(
        &root,
        &["ls-files", "-z", "*.rs", "*Cargo.toml", ".cargo/*"],
    )?;
    let mut problems = Vec::new();
    let mut allows = 0;
    // rustc takes lint names with `-` too (`-A unsafe-code`).
    let normalised = |t: &str| t.replace('-', "_");
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS"] {
        if std::env::var(var).is_ok_and(|v| normalised(&v).contains(lint)) {
            problems.push(format!("{var} passes a flag for `{lint}`"));
        }
    }
    for rel in files.split('\0').filter(|f| !f.is_empty()) {
        let text = std::fs::read_to_string(root.join(rel)).unwrap_or_default();
        if rel.ends_with(".rs") {
            if rel.starts_with("fuzz/") {
                if text.contains(keyword) {
                    problems.push(format!("{rel}: `{keyword}` in the fuzz crate"));
                }
                continue;
            }
            let n = text.matches(lint).count();
            if rel == ALLOWED {
                // One statement's `#[allow]`, never a module-wide `#![allow]`.
                allows += n;
                if text.matches(&format!("#[allow({lint})]")).count() != n {
                    problems.push(format!("{rel}: `{lint}` other than one `#[allow({lint})]`"));
                }
            } else if n > 0 {
                problems.push(format!("{rel}: names `{lint}`"));
            }
        } else if rel == "Cargo.toml" {
            if !text.contains(&format!("{lint} = \"deny\""))
                && !text.contains(&format!("{lint} = \"forbid\""))
            {
                problems.push(format!(
                    "Cargo.toml: the workspace no longer denies `{lint}`"
                ));
            }
        } else if rel.starts_with(".cargo/") {
            // Any rustflags at all: lint levels could hide in them.
            if normalised(&text).contains(lint)
                || text.contains("rustflags")
                || text.contains("cap-lints")
            {
                problems.push(format!("{rel}: passes lint flags"));
            }
        } else if !rel.starts_with("fuzz/") {
            let takes_workspace = text
                .split("[lints]")
                .nth(1)
                .is_some_and(|t| t.trim_start().starts_with("workspace = true"));
            if !takes_workspace || text.contains(lint) {
                problems.push(format!(
                    "{rel}: must have `[lints] workspace = true` and no lint of its own"
                ));
            }
        }
    }
    if allows != 1 {
        problems.push(format!(
            "{ALLOWED}: {allows} `allow({lint})`, expected exactly 1 (the mallopt call)"
        ));
    }
    if !problems.is_empty() {
        bail!(
            "`{keyword}` outside the one audited call:\n  {}",
            problems.join("\n  ")
        );
    }
    eprintln!("{keyword}: only the audited mallopt call");
    Ok(())
}

fn run_git(root: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .current_dir(root)
        .args(args)
        .output()
        .context("could not run git")?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Builds the server and the harness, then runs one fault run; `--release` builds optimised.
fn harness(run: &[&str], rest: &[String]) -> Result<Outcome> {
    let release = rest.iter().any(|a| a == "--release");
    let mut build = vec![
        "build",
        "--quiet",
        "-p",
        "streamhook-server",
        "-p",
        "streamhook-harness",
    ];
    if release {
        build.push("--release");
    }
    cargo(&build, &[])?;
    let dir = project_root().join(if release {
        "target/release"
    } else {
        "target/debug"
    });
    let server = dir.join("streamhook-server");
    let args: Vec<&str> = rest
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--release")
        .collect();
    let line = format!("streamhook-harness {} {}", run.join(" "), args.join(" "));
    eprintln!("$ {line}");
    let status = Command::new(dir.join("streamhook-harness"))
        .env("STREAMHOOK_NATS_SERVER", tools::nats_server_path())
        .arg("--server-bin")
        .arg(&server)
        .args(run)
        .args(&args)
        .status()
        .context("cannot run streamhook-harness")?;
    // Exit 3: the run could not happen here (it printed why); never counted as passed.
    if status.code() == Some(3) {
        return Ok(Outcome::Skipped);
    }
    if !status.success() {
        bail!("`{line}` failed");
    }
    Ok(Outcome::Passed)
}

/// How a fault run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Passed,
    Skipped,
}

/// The short version of every fault run, for CI. Returns the runs that were skipped.
fn faults_short(rest: &[String]) -> Result<Vec<String>> {
    let release: Vec<String> = rest.iter().filter(|a| *a == "--release").cloned().collect();
    let with = |extra: &[&str]| -> Vec<String> {
        extra
            .iter()
            .map(|s| s.to_string())
            .chain(release.iter().cloned())
            .collect()
    };
    tools::ensure_nats_server()?;
    let runs: [(&str, Vec<String>); 7] = [
        ("crash", with(&["--cycles", "3"])),
        ("power-loss", with(&["--cycles", "3"])),
        ("outage", with(&["--seconds", "6"])),
        ("disk-full", with(&[])),
        ("slow-clients", with(&["--connections", "100"])),
        ("restart", with(&["--restarts", "5"])),
        ("ha", with(&["--cycles", "5", "--clients", "6"])),
    ];
    let mut summary = Vec::new();
    let mut skipped = Vec::new();
    for (run, args) in &runs {
        let outcome = harness(&[run], args)?;
        if outcome == Outcome::Skipped {
            skipped.push(format!("{run}-test"));
        }
        summary.push(format!(
            "{run}-test {}",
            match outcome {
                Outcome::Passed => "passed",
                Outcome::Skipped => "SKIPPED (see above)",
            }
        ));
    }
    eprintln!("fault runs: {}", summary.join(", "));
    Ok(skipped)
}

/// The whole benchmark run.
fn bench(rest: &[String]) -> Result<()> {
    // The JetStream rows run the pinned nats-server.
    tools::ensure_nats_server()?;
    cargo(
        &[
            "build",
            "--release",
            "--quiet",
            "-p",
            "streamhook-server",
            "-p",
            "streamhook-cli",
            "-p",
            "streamhook-harness",
        ],
        &[],
    )?;
    if !Command::new("jq")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("installing jq (for the validate comparison)");
        let _ = Command::new("apt-get").arg("update").status();
        let _ = Command::new("apt-get")
            .args(["install", "-y", "jq"])
            .status();
    }
    if !Command::new("webhook")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("installing webhook (adnanh/webhook, the bench's reference row)");
        let _ = Command::new("apt-get").arg("update").status();
        let _ = Command::new("apt-get")
            .args(["install", "-y", "webhook"])
            .status();
    }
    cargo(
        &[
            "bench",
            "--quiet",
            "-p",
            "streamhook-types",
            "--bench",
            "decode",
        ],
        &[],
    )?;
    cargo(
        &[
            "bench",
            "--quiet",
            "-p",
            "streamhook-core",
            "--bench",
            "journal",
        ],
        &[],
    )?;
    cargo(
        &[
            "bench",
            "--quiet",
            "-p",
            "streamhook-server",
            "--bench",
            "console",
        ],
        &[],
    )?;
    let release = project_root().join("target/release");
    let mut command = "cargo xtask bench".to_owned();
    for a in rest {
        command.push(' ');
        command.push_str(a);
    }
    let status = Command::new(release.join("streamhook-harness"))
        .arg("--server-bin")
        .arg(release.join("streamhook-server"))
        .arg("bench")
        .arg("--cli-bin")
        .arg(release.join("streamhook"))
        .args(["--command", &command])
        .args(rest)
        .current_dir(project_root())
        .status()
        .context("cannot run streamhook-harness")?;
    if !status.success() {
        bail!("the benchmark run failed");
    }
    Ok(())
}

/// Runs each fuzz target for a while, then minimises its corpus.
fn fuzz(rest: &[String]) -> Result<()> {
    let mut seconds = 60;
    let mut targets = Vec::new();
    let mut args = rest.iter();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .context("--seconds takes a number")?
            }
            t => targets.push(t.to_owned()),
        }
    }
    if targets.is_empty() {
        targets = vec!["decode".into(), "forwarded".into()];
    }
    let has = |cmd: &mut Command| cmd.output().is_ok_and(|o| o.status.success());
    if !has(Command::new("cargo").args(["fuzz", "--version"])) {
        eprintln!("installing cargo-fuzz");
        cargo(&["install", "cargo-fuzz", "--locked"], &[])?;
    }
    // cargo-fuzz needs nightly flags: use a nightly toolchain when there is one, else let
    // stable accept them.
    let nightly = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with("nightly"))
        });
    for target in &targets {
        for sub in [
            vec![
                "run".to_owned(),
                target.clone(),
                "--".into(),
                format!("-max_total_time={seconds}"),
            ],
            vec!["cmin".to_owned(), target.clone()],
        ] {
            let mut cmd = Command::new("cargo");
            if nightly {
                cmd.arg("+nightly");
            } else {
                cmd.env("RUSTC_BOOTSTRAP", "1");
            }
            cmd.arg("fuzz").args(&sub).current_dir(project_root());
            eprintln!(
                "$ cargo {}fuzz {}",
                if nightly { "+nightly " } else { "" },
                sub.join(" ")
            );
            let status = cmd.status().context("cannot run cargo fuzz")?;
            if !status.success() {
                bail!(
                    "cargo fuzz {} failed: a crashing input is in fuzz/artifacts/{target}/ (cargo test replays it)",
                    sub.join(" ")
                );
            }
        }
    }
    Ok(())
}

fn codegen() -> Result<()> {
    cargo(
        &[
            "test",
            "--quiet",
            "-p",
            "streamhook-types",
            "--test",
            "schema",
        ],
        &[("STREAMHOOK_CODEGEN", "write")],
    )?;
    eprintln!("wrote docs/schema/webhook.schema.json and docs/schema/envelope.schema.json");
    Ok(())
}
