//! The validate phase: `streamhook validate` against `jq -c .` over a large NDJSON archive of
//! the seed payload, each pinned to one core when `taskset` is there, best of three.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Result, bail};

use super::BenchOptions;
use crate::load::PAYLOAD;

/// What the validate phase measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Validate {
    /// The archive's size, bytes.
    pub bytes: u64,
    /// Whether each tool was pinned to one core (`taskset -c 0`).
    pub pinned: bool,
    /// `streamhook validate`, MB/s.
    pub validate: f64,
    /// `jq -c .`, MB/s; `None` when jq is not installed.
    pub jq: Option<f64>,
}

/// Times one command over a file, best of three, in MB/s.
fn throughput(cmd: &mut dyn FnMut() -> Command, bytes: u64) -> Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let status = cmd().stdout(Stdio::null()).stderr(Stdio::null()).status()?;
        let took = t.elapsed().as_secs_f64();
        if !status.success() && status.code() != Some(1) {
            bail!("the command failed: {status}");
        }
        best = best.min(took);
    }
    Ok(bytes as f64 / 1e6 / best)
}

/// streamhook validate against jq on a large NDJSON archive, one core each.
pub fn measure(o: &BenchOptions, dir: &Path) -> Result<Validate> {
    eprintln!("bench: validate vs jq over {} MB", o.validate_mb);
    let ndjson = dir.join("archive.jsonl");
    {
        let line =
            serde_json::to_string(&serde_json::from_str::<serde_json::Value>(PAYLOAD)?)? + "\n";
        let mut text = String::with_capacity(o.validate_mb * 1_000_000 + line.len());
        while text.len() < o.validate_mb * 1_000_000 {
            text.push_str(&line);
        }
        std::fs::write(&ndjson, text)?;
    }
    let bytes = std::fs::metadata(&ndjson)?.len();
    let taskset = Command::new("taskset").arg("--version").output().is_ok();
    let pinned = |program: &Path, args: Vec<String>| {
        let program = program.to_owned();
        move || {
            let mut c = if taskset {
                Command::new("taskset")
            } else {
                Command::new(&program)
            };
            if taskset {
                c.args(["-c", "0"]).arg(&program);
            }
            c.args(&args);
            c
        }
    };
    let validate = throughput(
        &mut pinned(
            &o.cli_bin,
            vec!["validate".into(), ndjson.display().to_string()],
        ),
        bytes,
    )?;
    let jq = Command::new("jq").arg("--version").output().is_ok();
    let jq = if jq {
        Some(throughput(
            &mut pinned(
                Path::new("jq"),
                vec!["-c".into(), ".".into(), ndjson.display().to_string()],
            ),
            bytes,
        )?)
    } else {
        None
    };
    Ok(Validate {
        bytes,
        pinned: taskset,
        validate,
        jq,
    })
}
