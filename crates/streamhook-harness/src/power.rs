//! The power-loss fault run, emulated: the server runs under `strace`, which records every
//! write, truncation and sync of its files; after a SIGKILL the file sink's archive and its
//! position file are rolled back to what they held at their last sync (what a power cut would
//! have left on disk), and the server starts again. Every acknowledged event must then be in
//! the archive exactly once: the journal's cursor may not have passed a line that was not
//! synced, and the sink may not trust a position its files do not bear out.
//!
//! Why strace: a SIGKILL keeps the kernel's page cache, so a plain crash run would pass without
//! any sync at all. The trace shows the real system calls, so the emulation cannot be fooled
//! by what the program believes it synced. (The journal itself is not rolled back: redb
//! syncs before every commit returns; `durability` in the server's tests checks that order.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::faults::{Skipped, archive_ids, temp_dir, until};
use crate::load::Load;
use crate::server::ServerProcess;

/// What a file held at its last sync.
#[derive(Debug, Default, Clone)]
struct FileModel {
    /// Its content now (only its length for append-only files).
    content: Vec<u8>,
    len: u64,
    offset: u64,
    /// Its length and content at its last `fsync`/`fdatasync` (`None`: never synced).
    synced: Option<(u64, Vec<u8>)>,
    /// Whether its content is tracked (small files: the position file).
    keep_content: bool,
}

impl FileModel {
    fn write(&mut self, bytes: Option<&[u8]>, n: u64, append: bool) {
        let at = if append { self.len } else { self.offset };
        if self.keep_content
            && let Some(bytes) = bytes
        {
            let end = at as usize + bytes.len();
            if self.content.len() < end {
                self.content.resize(end, 0);
            }
            self.content[at as usize..end].copy_from_slice(bytes);
        }
        self.len = self.len.max(at + n);
        self.offset = at + n;
    }

    fn truncate(&mut self, len: u64) {
        self.len = len;
        if self.keep_content {
            self.content.resize(len as usize, 0);
        }
    }

    fn sync(&mut self) {
        self.synced = Some((self.len, self.content.clone()));
    }
}

/// Decodes strace's `-xx` string (`"\x61\x62"`), possibly cut short (`"..."...`).
fn hex_string(s: &str) -> Option<Vec<u8>> {
    let inner = s.strip_prefix('"')?;
    let end = inner.find('"')?;
    hex_bytes(&inner[..end])
}

/// Decodes `\x61\x62` (a path in `-y`'s brackets is written so too with `-xx`); text without
/// escapes is taken as it is.
fn hex_bytes(body: &str) -> Option<Vec<u8>> {
    if !body.starts_with("\\x") {
        return Some(body.as_bytes().to_vec());
    }
    let mut out = Vec::with_capacity(body.len() / 4);
    let mut rest = body;
    while let Some(r) = rest.strip_prefix("\\x") {
        let byte = u8::from_str_radix(r.get(..2)?, 16).ok()?;
        out.push(byte);
        rest = &r[2..];
    }
    rest.is_empty().then_some(out)
}

/// What each of `files` holds on disk now (for `small` ones, their content too): where a
/// traced run starts from, all of it durable.
fn on_disk(files: &[(&Path, bool)]) -> HashMap<PathBuf, FileModel> {
    files
        .iter()
        .map(|(p, small)| {
            let content = if *small {
                std::fs::read(p).unwrap_or_default()
            } else {
                Vec::new()
            };
            let len = std::fs::metadata(p).map_or(0, |m| m.len());
            (
                p.to_path_buf(),
                FileModel {
                    synced: Some((len, content.clone())),
                    content,
                    len,
                    offset: 0,
                    keep_content: *small,
                },
            )
        })
        .collect()
}

/// The files' state at their last sync, from an strace log (`-f -y -xx -s N`) of a run that
/// started from `models` (see [`on_disk`]).
fn replay_trace(
    trace: &str,
    mut models: HashMap<PathBuf, FileModel>,
) -> HashMap<PathBuf, FileModel> {
    // A call cut in two by another thread's (`<unfinished ...>`, `<... x resumed>`), by pid.
    let mut unfinished: HashMap<String, String> = HashMap::new();
    for raw in trace.lines() {
        // `PID  call(...)`: strace pads the pid.
        let Some((pid, rest)) = raw.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        let line = if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
            unfinished.insert(pid.to_owned(), head.to_owned());
            continue;
        } else if let Some(tail) = rest.strip_prefix("<... ") {
            let Some(head) = unfinished.remove(pid) else {
                continue;
            };
            let Some((_, after)) = tail.split_once(" resumed>") else {
                continue;
            };
            format!("{head}{after}")
        } else {
            rest.to_owned()
        };
        let Some((call, args)) = line.split_once('(') else {
            continue;
        };
        // The file, from `-y`: `7</path/to/file>`.
        let Some(open) = args.find('<') else {
            continue;
        };
        let Some(close) = args[open..].find(">,").or_else(|| args[open..].find(">)")) else {
            continue;
        };
        let Some(path) = hex_bytes(&args[open + 1..open + close]) else {
            continue;
        };
        let path = PathBuf::from(String::from_utf8_lossy(&path).into_owned());
        let Some(model) = models.get_mut(&path) else {
            continue;
        };
        let result: Option<i64> = line
            .rsplit_once(" = ")
            .and_then(|(_, r)| r.split_whitespace().next()?.parse().ok());
        let Some(result) = result.filter(|r| *r >= 0) else {
            continue;
        };
        let after_fd = &args[open + close + 1..];
        match call {
            "write" => {
                let data = after_fd.trim_start_matches(',').trim_start();
                let bytes = hex_string(data);
                // The archive is opened to append; the position file is written at an offset.
                let append = !model.keep_content;
                model.write(bytes.as_deref(), result as u64, append);
            }
            "pwrite64" => {
                let data = after_fd.trim_start_matches(',').trim_start();
                let bytes = hex_string(data);
                let offset = line
                    .rsplit_once(", ")
                    .and_then(|(head, _)| head.rsplit_once(", "))
                    .and_then(|(_, o)| o.trim_end_matches(')').parse::<u64>().ok());
                if let Some(offset) = offset {
                    model.offset = offset;
                }
                model.write(bytes.as_deref(), result as u64, false);
            }
            "lseek" => model.offset = result as u64,
            "ftruncate" => {
                let len = after_fd
                    .trim_start_matches(',')
                    .trim()
                    .trim_end_matches(|c: char| !c.is_ascii_digit())
                    .split(')')
                    .next()
                    .and_then(|n| n.trim().parse().ok());
                if let Some(len) = len {
                    model.truncate(len);
                }
            }
            "fsync" | "fdatasync" => model.sync(),
            _ => {}
        }
    }
    models
}

/// Runs `cycles` emulated power cuts under load.
pub async fn power_loss(server_bin: &Path, cycles: usize) -> Result<()> {
    if Command::new("strace").arg("-V").output().is_err() {
        return Err(Skipped(
            "strace is not installed (apt-get install strace): the emulation reads its trace"
                .into(),
        )
        .into());
    }
    let dir = temp_dir("power-loss")?;
    let archive = dir.join("events.jsonl");
    let config = format!(
        "allow = [\"127.0.0.1/32\"]\ndata_dir = \"{}\"\n[admin]\nenabled = false\n[[sinks]]\ntype = \"file\"\nname = \"archive\"\npath = \"{}\"\n",
        dir.join("data").display(),
        archive.display()
    );
    let mut server = ServerProcess::new(server_bin, &dir, &config)?;
    let position = streamhook_sinks_position(&archive);
    let load_url = server.url();
    let mut load: Option<Load> = None;
    let mut cut_lines = 0usize;
    let mut cut_runs = 0usize;
    for cycle in 1..=cycles {
        let trace = dir.join(format!("trace-{cycle}"));
        let before = on_disk(&[(&archive, false), (&position, true)]);
        let traced = server.wrapped(vec![
            "strace".into(),
            "-f".into(),
            "-y".into(),
            "-xx".into(),
            "-s".into(),
            "4096".into(),
            "-e".into(),
            "trace=write,pwrite64,lseek,ftruncate,fsync,fdatasync".into(),
            "-o".into(),
            trace.clone().into_os_string(),
        ]);
        let mut process = traced.spawn_started().await?;
        if load.is_none() {
            load = Some(Load::start(load_url.clone(), 32, 200, 64)?);
        }
        tokio::time::sleep(Duration::from_millis(fastrand::u64(1500..3500))).await;
        // The power cut: the server dies at once (its tracer writes the trace and exits).
        let tracee = child_of(process.id()).context("the traced server's pid")?;
        let _ = Command::new("kill")
            .args(["-9", &tracee.to_string()])
            .status();
        process.wait_exit(Duration::from_secs(30))?;
        let text = std::fs::read_to_string(&trace)
            .with_context(|| format!("reading {}", trace.display()))?;
        let models = replay_trace(&text, before);
        // Roll both back to their last sync.
        let file = &models[&archive];
        let synced_len = file.synced.as_ref().map_or(0, |(len, _)| *len);
        let now_len = std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
        if now_len > synced_len {
            let text = std::fs::read(&archive)?;
            let cut = text[synced_len as usize..]
                .iter()
                .filter(|b| **b == b'\n')
                .count();
            cut_lines += cut;
            cut_runs += usize::from(cut > 0);
            std::fs::OpenOptions::new()
                .write(true)
                .open(&archive)?
                .set_len(synced_len)?;
        }
        match &models[&position].synced {
            Some((len, content)) => std::fs::write(&position, &content[..*len as usize])?,
            None => {
                let _ = std::fs::remove_file(&position);
            }
        }
        let _ = std::fs::remove_file(&trace);
        eprintln!(
            "power-loss-test: cycle {cycle}/{cycles}: SIGKILL, archive rolled back to its last sync ({} bytes; lines written since: cut)",
            synced_len
        );
    }
    // Back on: the server (not traced) delivers what the archive lost.
    server.start().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tally = match load {
        Some(load) => load.stop().await,
        None => bail!("no load ran"),
    };
    let acked = tally.acked.lock().map(|a| a.clone()).unwrap_or_default();
    let delivered = until(Duration::from_secs(120), || {
        let file = archive_ids(&archive);
        acked.keys().all(|id| file.contains_key(id))
    })
    .await;
    server.terminate()?;
    let file = archive_ids(&archive);
    let lost = acked.keys().filter(|id| !file.contains_key(*id)).count();
    let duplicated: usize = file.values().filter(|n| **n > 1).map(|n| n - 1).sum();
    println!(
        "power-loss-test: {cycles} emulated power cuts (archive and position file rolled back to their last sync) under load"
    );
    println!("  acknowledged {}", acked.len());
    println!(
        "  lines the cuts took from the archive: {cut_lines} (in {cut_runs} of {cycles} cuts)"
    );
    println!("  acknowledged but not in the archive after restart: {lost}");
    println!("  in the archive more than once: {duplicated}");
    if acked.is_empty() {
        bail!("power-loss-test: nothing was acknowledged; the run proves nothing");
    }
    if lost > 0 || !delivered || duplicated > 0 {
        bail!(
            "power-loss-test failed: every acknowledged event must be in the archive exactly once; the data is kept in {}",
            dir.display()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The file sink's position file for the archive above.
fn streamhook_sinks_position(archive: &Path) -> PathBuf {
    archive
        .parent()
        .unwrap_or(Path::new("."))
        .join(".streamhook-archive.pos")
}

/// The (first) child of process `pid`.
fn child_of(pid: u32) -> Option<u32> {
    for _ in 0..100 {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(child) = children.split_whitespace().next() {
            return child.parse().ok();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_gives_each_file_at_its_last_sync() {
        let archive = Path::new("/d/events.jsonl");
        let position = Path::new("/d/.streamhook-archive.pos");
        let trace = r#"10  write(7<\x2f\x64\x2f\x65\x76\x65\x6e\x74\x73\x2e\x6a\x73\x6f\x6e\x6c>, "\x61\x0a", 2) = 2
11 lseek(8</d/.streamhook-archive.pos>, 0, SEEK_SET) = 0
11 write(8</d/.streamhook-archive.pos>, "\x31\x0a", 2 <unfinished ...>
10 fdatasync(7</d/events.jsonl>) = 0
11 <... write resumed>) = 2
11 fdatasync(8</d/.streamhook-archive.pos>) = 0
10 write(7</d/events.jsonl>, "\x62\x0a", 2) = 2
11 lseek(8</d/.streamhook-archive.pos>, 0, SEEK_SET) = 0
11 write(8</d/.streamhook-archive.pos>, "\x32", 1) = 1
11 ftruncate(8</d/.streamhook-archive.pos>, 1) = 0
"#;
        let start: HashMap<PathBuf, FileModel> = [(archive, false), (position, true)]
            .into_iter()
            .map(|(p, small)| {
                (
                    p.to_path_buf(),
                    FileModel {
                        keep_content: small,
                        ..FileModel::default()
                    },
                )
            })
            .collect();
        let models = replay_trace(trace, start);
        assert_eq!(models[archive].synced.as_ref().map(|s| s.0), Some(2));
        assert_eq!(models[archive].len, 4);
        let pos = models[position].synced.clone().unwrap();
        assert_eq!(&pos.1[..pos.0 as usize], b"1\n");
        assert_eq!(models[position].content, b"2");
    }
}
