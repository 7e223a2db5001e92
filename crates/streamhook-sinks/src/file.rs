//! The file sink: envelopes appended as NDJSON, one event per line.
//!
//! - `path` may hold `{date}` (the UTC day the event was received, `2026-11-28`) and `{type}`
//!   (the webhook type): `events/{date}/{type}.jsonl`. Folders are created as needed.
//! - `max_bytes` rotates a file before it would grow past the size: `events.jsonl` is renamed
//!   `events.jsonl.1` (then `.2`, ...: the highest number is the newest) and a new one starts.
//! - `fsync`: `always` syncs each event before the dispatcher counts it delivered; `batch`
//!   (default) syncs when the dispatcher goes idle, at least once a second and every 4 MiB
//!   written, and tells the dispatcher what is not synced yet ([`Sink::not_durable_from`]), so
//!   the journal's cursor never passes a line a power cut could take: after one, the journal
//!   delivers again what the files lost. `never` leaves it to the OS (a power cut may lose
//!   lines the journal counts as delivered).
//! - A file moved away (logrotate) is noticed before the next write and a new one opened.
//! - Lines are whole: each is written with one `write`, a failed write is cut back off, and
//!   on opening a file whose last line was torn by a crash, the torn tail is cut off (the
//!   event is delivered again, since its delivery was never acknowledged).
//! - Effectively once across crashes: before each line the sink records, in a small position
//!   file (`.streamhook-<name>.pos` in the template's fixed folder), the seq and file it is
//!   about to write, and at each sync the last line made durable, with the machine's boot id.
//!   At start it reads that and the last line of the file it names, and tells the dispatcher
//!   what it already holds ([`Sink::delivered_through`]): after a killed process, the file's
//!   own last line (nothing is written twice); after a reboot (a power cut may have taken
//!   lines the kernel had not written), only what was synced (lines after it are written
//!   again, never lost).
//! - With `fsync = "always"` or `"batch"`, creating or rotating a file also syncs its folder,
//!   so the new name survives a power loss.
//! - `{type}` is the webhook type with characters other than `A-Z a-z 0-9 _ -` replaced by
//!   `_`, cut to 64 characters.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use streamhook_core::{Delivery, Held, Sink, SinkError};

use crate::BuildError;

/// `type = "file"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The sink's name (default `file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where to write; may hold `{date}` and `{type}`.
    pub path: String,
    /// Rotate before a file grows past this many bytes; 0 never rotates. Default 100 MiB.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// `always`, `batch` (default) or `never`.
    #[serde(default)]
    pub fsync: FsyncPolicy,
    /// Where the sink starts the first time it runs: `newest` (default: what arrives next),
    /// `oldest` (everything the journal holds), or an RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<crate::StartAt>,
}

fn default_max_bytes() -> u64 {
    100 * 1024 * 1024
}

impl FileConfig {
    /// A config for `path` with the defaults.
    pub fn new(path: impl Into<String>) -> Self {
        FileConfig {
            name: None,
            path: path.into(),
            max_bytes: default_max_bytes(),
            fsync: FsyncPolicy::default(),
            start: None,
        }
    }
}

/// When written lines are forced to disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsyncPolicy {
    /// After every event, before it counts as delivered.
    Always,
    /// When the dispatcher is idle, and at least once a second.
    #[default]
    Batch,
    /// Never; the OS writes back in its own time.
    Never,
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::Batch => "batch",
            FsyncPolicy::Never => "never",
        })
    }
}

/// The most files held open at once (templated paths); the least recently used is closed.
const MAX_OPEN: usize = 32;
/// With `fsync = "batch"`, the longest a written line waits for its sync.
const BATCH_SYNC: Duration = Duration::from_secs(1);
/// With `fsync = "batch"`, the most bytes written between syncs. A drain writes tens of MB in a
/// moment; on ext4 (ordered mode) the journal's next fsync would have to write them first,
/// stalling every request waiting on it. Syncing every few MB keeps that burst small.
const BATCH_SYNC_BYTES: u64 = 4 * 1024 * 1024;

/// Appends envelopes to NDJSON files.
#[derive(Debug)]
pub struct FileSink {
    name: String,
    template: String,
    max_bytes: u64,
    fsync: FsyncPolicy,
    state: Arc<Mutex<State>>,
}

/// The longest `{type}` put in a path.
const MAX_TYPE_LEN: usize = 64;

#[derive(Debug, Default)]
struct State {
    open: HashMap<PathBuf, Open>,
    last_sync: Option<Instant>,
    /// Bytes written since the last sync (`fsync = "batch"`).
    unsynced: u64,
    /// Where the seq and file of the line being written are recorded.
    position: Option<Position>,
    /// Bumped by each rewind: a write handed over before it records no position.
    generation: u64,
    /// The oldest in-order seq written since the last successful sync (`fsync = "batch"`).
    unsynced_from: Option<u64>,
    /// A failed sync was logged (once until a sync succeeds again).
    sync_warned: bool,
}

/// The position file, rewritten in place before each line (and synced at each sync):
///
/// ```text
/// <seq> <id> <path>       the line about to be written, and its file
/// <seq> <id>              the line written before it (or `0 -`)
/// @ <offset>              (a run of lines) where the run starts in the file
/// synced <seq> <id>       the last line made durable (data and this file synced)
/// boot <id>               the boot of the machine this was written in
/// ```
///
/// Files written before the last two lines existed are read as written in this boot.
#[derive(Debug)]
struct Position {
    path: PathBuf,
    file: Option<File>,
    len: u64,
    /// The last line written, by seq and id.
    done: Option<Held>,
    /// The last line made durable, by seq and id.
    synced: Option<Held>,
    /// The intent last recorded (rewritten with `synced` at a sync).
    intent: Option<(u64, String, PathBuf, Option<u64>)>,
    /// Whether a failure to write it was already logged (it is not fatal).
    warned: bool,
}

impl Position {
    fn new(path: PathBuf) -> Self {
        Position {
            path,
            file: None,
            len: 0,
            done: None,
            synced: None,
            intent: None,
            warned: false,
        }
    }

    /// Records the line about to be written. A failure only costs the effectively-once
    /// promise (delivery stays at least once), so it is logged once, not returned.
    /// Records the line (or the last line of a run) about to be written; `run_start` is the
    /// file's size where the run begins, when a run of several lines is written at once.
    fn record(&mut self, seq: u64, id: &str, line_path: &Path, run_start: Option<u64>) {
        if let Err(e) = self.write(seq, id, line_path, run_start) {
            self.file = None;
            if !self.warned {
                self.warned = true;
                tracing::warn!(position = %self.path.display(), error = %e, "cannot record the file sink's position; after a crash it may write some lines twice");
            }
        }
    }

    fn write(
        &mut self,
        seq: u64,
        id: &str,
        line_path: &Path,
        run_start: Option<u64>,
    ) -> std::io::Result<()> {
        if self.file.is_none() {
            if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.path)?;
            self.len = file.metadata().map(|m| m.len()).unwrap_or(0);
            self.file = Some(file);
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        self.intent = Some((seq, id.to_owned(), line_path.to_owned(), run_start));
        let (done_seq, done_id) = self
            .done
            .as_ref()
            .map_or((0, "-"), |h| (h.seq, h.id.as_str()));
        let mut text = format!("{seq} {id} {}\n{done_seq} {done_id}\n", line_path.display());
        if let Some(offset) = run_start {
            text.push_str(&format!("@ {offset}\n"));
        }
        if let Some(synced) = &self.synced {
            text.push_str(&format!("synced {} {}\n", synced.seq, synced.id));
        }
        if let Some(boot) = boot_id() {
            text.push_str(&format!("boot {boot}\n"));
        }
        file.seek(SeekFrom::Start(0))?;
        file.write_all(text.as_bytes())?;
        if (text.len() as u64) < self.len {
            file.set_len(text.len() as u64)?;
        }
        self.len = text.len() as u64;
        Ok(())
    }

    /// The line just recorded was written.
    fn written(&mut self, seq: u64, id: &str) {
        self.done = Some(Held {
            seq,
            id: id.to_owned(),
        });
    }

    /// The lines written so far are durable: record it, and sync this file.
    fn synced(&mut self) -> std::io::Result<()> {
        self.synced = self.done.clone();
        if let Some((seq, id, path, run_start)) = self.intent.clone() {
            self.write(seq, &id, &path, run_start)?;
        }
        if let Some(file) = &self.file {
            file.sync_data()?;
        }
        Ok(())
    }

    /// Forgets everything (a replay moved the sink back).
    fn forget(&mut self) -> std::io::Result<()> {
        self.file = None;
        self.len = 0;
        self.done = None;
        self.synced = None;
        self.intent = None;
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// What the position file and the file it names say was written last. In the boot it was
/// written in (a killed process: the kernel still had every line), the run about to be
/// written counts up to the named file's last line when that line is the run's last event or
/// one of the run's (a seq after the line written before the run); otherwise the line written
/// before it. After a reboot only the last line made durable counts: the kernel may have lost
/// any line written after it, in any file.
///
/// A template without placeholders writes one file, whose last line is always the newest
/// written: that line decides where to resume, whatever the position says (a power cut may
/// leave the position file behind or ahead of the file; the file's own content is what it
/// holds). Only a missing position file (a replay moved the sink back) says nothing.
fn read_position(position: &Path, single_file: Option<&Path>) -> Option<Held> {
    let text = std::fs::read_to_string(position).ok()?;
    if let Some(path) = single_file
        && let Some((seq, id, _)) = last_line_of(path)
    {
        return Some(Held { seq, id });
    }
    let mut lines = text.lines();
    let mut intent = lines.next()?.splitn(3, ' ');
    let seq: u64 = intent.next()?.parse().ok()?;
    let id = intent.next()?.to_owned();
    let path = intent.next()?;
    let mut before = lines.next()?.split(' ');
    let before_seq: u64 = before.next()?.parse().ok()?;
    let before_id = before.next()?.to_owned();
    let (mut run_start, mut synced, mut boot) = (None, None, None);
    for line in lines {
        if let Some(n) = line.strip_prefix("@ ") {
            run_start = n.trim().parse::<u64>().ok();
        } else if let Some(rest) = line.strip_prefix("synced ") {
            let mut parts = rest.split(' ');
            let seq = parts.next().and_then(|s| s.parse::<u64>().ok());
            let id = parts.next().map(str::to_owned);
            synced = seq.zip(id).map(|(seq, id)| Held { seq, id });
        } else if let Some(id) = line.strip_prefix("boot ") {
            boot = Some(id.trim().to_owned());
        }
    }
    if let (Some(then), Some(now)) = (&boot, boot_id())
        && *then != now
    {
        return synced;
    }
    match last_line_of(Path::new(path)) {
        Some((s, i, _)) if s == seq && i == id => return Some(Held { seq, id }),
        // Lines are recorded a run at a time (the position names the run's last line and
        // where the run starts in the file): a crash within the run leaves one of its earlier
        // lines last. A line before the run's start (from before a replay, say) never counts.
        // Whether that event is the journal's, the dispatcher checks, as for any position.
        Some((s, i, at)) if run_start.is_some_and(|r| at >= r) && s > before_seq && s < seq => {
            return Some(Held { seq: s, id: i });
        }
        _ => {}
    }
    (before_seq > 0 && before_id != "-").then_some(Held {
        seq: before_seq,
        id: before_id,
    })
}

/// This boot of the machine (Linux), to tell a restarted process (the kernel kept every line
/// written) from a rebooted machine (it may not have).
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The seq and id of the last whole line of an NDJSON envelope file, and where it starts.
fn last_line_of(path: &Path) -> Option<(u64, String, u64)> {
    #[derive(Deserialize)]
    struct Line {
        seq: u64,
        id: String,
    }
    let mut file = File::open(path).ok()?;
    let size = file.metadata().ok()?.len();
    let end = whole_lines_len(&mut file, size).ok()?;
    if end == 0 {
        return None;
    }
    // The last line: back from its newline to the one before, however long it is.
    let mut from = end - 1;
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let start = loop {
        let chunk_start = from.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(from - chunk_start) as usize];
        file.seek(SeekFrom::Start(chunk_start)).ok()?;
        file.read_exact(chunk).ok()?;
        match chunk.iter().rposition(|&b| b == b'\n') {
            Some(p) => {
                let mut line = chunk[p + 1..].to_vec();
                line.extend_from_slice(&tail);
                tail = line;
                break chunk_start + p as u64 + 1;
            }
            None => {
                let mut line = chunk.to_vec();
                line.extend_from_slice(&tail);
                tail = line;
                if chunk_start == 0 {
                    break 0;
                }
                from = chunk_start;
            }
        }
    };
    serde_json::from_slice::<Line>(&tail)
        .ok()
        .map(|l| (l.seq, l.id, start))
}

/// The position file of sink `name` writing `template`: `.streamhook-<name>.pos` in the
/// template's fixed folder. A name with characters other than `A-Z a-z 0-9 - _ .` (a flag-made
/// sink's, which holds its path) is written with those replaced by `_` and a hash of the whole
/// name, so two names never share a file.
pub fn position_file(template: &str, name: &str) -> PathBuf {
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    let file = if plain {
        format!(".streamhook-{name}.pos")
    } else {
        let clean: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        // FNV-1a: the same on every version and platform.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!(".streamhook-{clean}-{:08x}.pos", hash as u32)
    };
    fixed_folder(template).join(file)
}

/// The folder a template writes under before its first placeholder.
fn fixed_folder(template: &str) -> PathBuf {
    let fixed = &template[..template.find('{').unwrap_or(template.len())];
    if fixed.ends_with('/') {
        return PathBuf::from(fixed);
    }
    Path::new(fixed)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

#[derive(Debug)]
struct Open {
    file: File,
    size: u64,
    identity: Identity,
    last_used: Instant,
    dirty: bool,
}

/// What identifies a file on disk, to notice it was moved or replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
}

fn identity(meta: &std::fs::Metadata) -> Identity {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        Identity { dev: 0, ino: 0 }
    }
}

impl FileSink {
    /// A file sink; checks the template.
    pub fn new(name: String, config: &FileConfig) -> Result<Self, BuildError> {
        let err = |message: String| BuildError {
            sink: name.clone(),
            message,
        };
        if config.path.trim().is_empty() {
            return Err(err("`path` is empty".into()));
        }
        let mut rest = config.path.as_str();
        while let Some(open) = rest.find('{') {
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| err(format!("unclosed `{{` in path {:?}", config.path)))?;
            let var = &rest[open + 1..open + close];
            if var != "date" && var != "type" {
                return Err(err(format!(
                    "unknown placeholder `{{{var}}}` in path {:?}; use {{date}} or {{type}}",
                    config.path
                )));
            }
            rest = &rest[open + close + 1..];
        }
        let position = position_file(&config.path, &name);
        Ok(FileSink {
            name,
            template: config.path.clone(),
            max_bytes: config.max_bytes,
            fsync: config.fsync,
            state: Arc::new(Mutex::new(State {
                position: Some(Position::new(position)),
                ..State::default()
            })),
        })
    }

    /// The position file, where the seq and file of the line being written are recorded.
    pub fn position_path(&self) -> PathBuf {
        position_file(&self.template, &self.name)
    }

    /// The file an event goes to.
    pub fn path_for(&self, delivery: &Delivery) -> PathBuf {
        if !self.template.contains('{') {
            return PathBuf::from(&self.template);
        }
        let date = delivery
            .envelope
            .received_at
            .get(..10)
            .unwrap_or("unknown-date");
        let type_name = streamhook_core::dispatch::payload_type(&delivery.envelope);
        let type_name: String = type_name
            .chars()
            .take(MAX_TYPE_LEN)
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let type_name = if type_name.is_empty() {
            "unknown".to_owned()
        } else {
            type_name
        };
        PathBuf::from(
            self.template
                .replace("{date}", date)
                .replace("{type}", &type_name),
        )
    }
}

#[async_trait]
impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, delivery: &Delivery) -> Result<(), SinkError> {
        let path = self.path_for(delivery);
        let mut line = delivery.json.clone().into_bytes();
        line.push(b'\n');
        let state = Arc::clone(&self.state);
        let (max_bytes, fsync, seq) = (self.max_bytes, self.fsync, delivery.envelope.seq);
        let id = delivery.envelope.id.0.clone();
        // Only deliveries in journal order say where to resume: a requeued dead letter does
        // not, nor a write handed over before a replay rewound the sink.
        let in_order = !delivery.requeued;
        let generation = self.state.lock().map(|s| s.generation).unwrap_or(0);
        tokio::task::spawn_blocking(move || {
            let mut state = state
                .lock()
                .map_err(|_| SinkError::retryable("file sink state poisoned"))?;
            let record = in_order && state.generation == generation;
            if record && let Some(position) = state.position.as_mut() {
                position.record(seq, &id, &path, None);
            }
            if record {
                // Not durable until a sync (which the write itself may do).
                state.written(seq, fsync);
            }
            state.write(&path, &line, max_bytes, fsync)?;
            if record && let Some(position) = state.position.as_mut() {
                position.written(seq, &id);
            }
            Ok(())
        })
        .await
        .map_err(|e| SinkError::retryable(format!("file sink task failed: {e}")))?
    }

    /// Many events in one hand-off: consecutive lines for the same file (at most `max_bytes`
    /// of them) are recorded once in the position file (the last of them, and where the run
    /// starts) and written with one `write` (one sync with `fsync = "always"`).
    fn batches(&self) -> bool {
        true
    }

    async fn send_batch(&self, deliveries: &[&Delivery]) -> Result<(), (usize, SinkError)> {
        /// Consecutive lines for one file, written at once.
        struct Run {
            path: PathBuf,
            lines: Vec<u8>,
            /// The index of its first delivery.
            first: usize,
            first_seq: u64,
            last_seq: u64,
            last_id: String,
            in_order: bool,
        }
        let mut runs: Vec<Run> = Vec::new();
        for (i, d) in deliveries.iter().enumerate() {
            let path = self.path_for(d);
            let in_order = !d.requeued;
            // A run never holds more than `max_bytes` (files rotate before a run that would
            // take them past it, so no file grows past it but by a single longer line).
            let joins = runs.last().is_some_and(|r| {
                r.path == path
                    && r.in_order == in_order
                    && (self.max_bytes == 0
                        || (r.lines.len() + d.json.len() + 1) as u64 <= self.max_bytes)
            });
            if !joins {
                runs.push(Run {
                    path,
                    lines: Vec::with_capacity(d.json.len() + 1),
                    first: i,
                    first_seq: d.envelope.seq,
                    last_seq: 0,
                    last_id: String::new(),
                    in_order,
                });
            }
            let Some(run) = runs.last_mut() else {
                continue;
            };
            run.lines.extend_from_slice(d.json.as_bytes());
            run.lines.push(b'\n');
            run.last_seq = d.envelope.seq;
            run.last_id.clear();
            run.last_id.push_str(&d.envelope.id.0);
        }
        let state = Arc::clone(&self.state);
        let (max_bytes, fsync) = (self.max_bytes, self.fsync);
        let generation = self.state.lock().map(|s| s.generation).unwrap_or(0);
        tokio::task::spawn_blocking(move || {
            let mut state = state
                .lock()
                .map_err(|_| (0, SinkError::retryable("file sink state poisoned")))?;
            for run in &runs {
                let record = run.in_order && state.generation == generation;
                // Recorded before a rotation or a reopen can start a new file (a crash
                // between them must not leave the position naming lines the new file lacks
                // with a run start it never had), then again with where the run starts.
                if record && let Some(position) = state.position.as_mut() {
                    position.record(run.last_seq, &run.last_id, &run.path, None);
                }
                let start = state
                    .prepare(&run.path, run.lines.len() as u64, max_bytes, fsync)
                    .map_err(|e| (run.first, e))?;
                if record && let Some(position) = state.position.as_mut() {
                    position.record(run.last_seq, &run.last_id, &run.path, Some(start));
                }
                if record {
                    // Not durable until a sync (which the write itself may do).
                    state.written(run.first_seq, fsync);
                }
                // A failed write is cut back off whole: none of the run was delivered.
                state
                    .append(&run.path, &run.lines, fsync)
                    .map_err(|e| (run.first, e))?;
                if record && let Some(position) = state.position.as_mut() {
                    position.written(run.last_seq, &run.last_id);
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| {
            (
                0,
                SinkError::retryable(format!("file sink task failed: {e}")),
            )
        })?
    }

    async fn flush(&self) -> Result<(), SinkError> {
        let state = Arc::clone(&self.state);
        tokio::task::spawn_blocking(move || {
            let mut state = state
                .lock()
                .map_err(|_| SinkError::retryable("file sink state poisoned"))?;
            state.sync_all()
        })
        .await
        .map_err(|e| SinkError::retryable(format!("file sink task failed: {e}")))?
    }

    fn not_durable_from(&self) -> Option<u64> {
        self.state.lock().ok().and_then(|s| s.unsynced_from)
    }

    async fn delivered_through(&self) -> Option<Held> {
        let position = self.position_path();
        let single = (!self.template.contains('{')).then(|| PathBuf::from(&self.template));
        let held = tokio::task::spawn_blocking(move || read_position(&position, single.as_deref()))
            .await
            .ok()
            .flatten();
        if let (Some(h), Ok(mut state)) = (&held, self.state.lock())
            && let Some(position) = state.position.as_mut()
        {
            position.done = Some(h.clone());
        }
        held
    }

    async fn rewound(&self, _seq: u64) -> Result<(), SinkError> {
        let state = Arc::clone(&self.state);
        let path = self.position_path();
        tokio::task::spawn_blocking(move || {
            let mut state = state
                .lock()
                .map_err(|_| SinkError::retryable("file sink state poisoned"))?;
            state.generation += 1;
            if let Some(position) = state.position.as_mut()
                && let Err(e) = position.forget()
            {
                // Cannot remove it: empty it (it then says nothing); failing that, warn and go
                // on rather than stop the sink.
                if let Err(e2) = std::fs::write(&path, b"") {
                    tracing::warn!(position = %path.display(), error = %e, also = %e2, "cannot forget the file sink's position after a replay; after a crash it may resume past part of the replay");
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| SinkError::retryable(format!("file sink task failed: {e}")))?
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> SinkError {
    SinkError::retryable(format!("cannot {what} {}: {e}", path.display()))
}

impl State {
    fn write(
        &mut self,
        path: &Path,
        line: &[u8],
        max_bytes: u64,
        fsync: FsyncPolicy,
    ) -> Result<(), SinkError> {
        self.prepare(path, line.len() as u64, max_bytes, fsync)?;
        self.append(path, line, fsync)
    }

    /// Opens (or reopens after a move, or rotates for `incoming` more bytes) the file at
    /// `path`; returns its size, where the next write starts.
    fn prepare(
        &mut self,
        path: &Path,
        incoming: u64,
        max_bytes: u64,
        fsync: FsyncPolicy,
    ) -> Result<u64, SinkError> {
        // Moved or deleted since we opened it (logrotate): start a new file.
        let moved = match (self.open.get(path), std::fs::metadata(path)) {
            (Some(open), Ok(meta)) => identity(&meta) != open.identity,
            (Some(_), Err(_)) => true,
            (None, _) => false,
        };
        if moved && let Some(old) = self.open.remove(path) {
            let _ = old.file.sync_data();
        }
        let sync_folders = fsync != FsyncPolicy::Never;
        if !self.open.contains_key(path) {
            self.evict_if_full();
            let opened = open_repaired(path, sync_folders)?;
            self.open.insert(path.to_owned(), opened);
        }
        let needs_rotation = self
            .open
            .get(path)
            .is_some_and(|o| max_bytes > 0 && o.size > 0 && o.size + incoming > max_bytes);
        if needs_rotation {
            if let Some(old) = self.open.remove(path) {
                old.file.sync_all().map_err(|e| io_err("sync", path, e))?;
            }
            rotate(path)?;
            let opened = open_repaired(path, sync_folders)?;
            self.open.insert(path.to_owned(), opened);
        }
        self.open
            .get(path)
            .map(|o| o.size)
            .ok_or_else(|| SinkError::retryable(format!("cannot open {}", path.display())))
    }

    /// Appends whole lines to the file [`State::prepare`] opened.
    fn append(&mut self, path: &Path, line: &[u8], fsync: FsyncPolicy) -> Result<(), SinkError> {
        let Some(open) = self.open.get_mut(path) else {
            return Err(SinkError::retryable(format!(
                "cannot open {}",
                path.display()
            )));
        };
        if let Err(e) = open.file.write_all(line) {
            // Cut a partial line back off, so no reader sees half an event.
            let _ = open.file.set_len(open.size);
            self.open.remove(path);
            return Err(io_err("write", path, e));
        }
        let before = open.size;
        open.size += line.len() as u64;
        open.last_used = Instant::now();
        open.dirty = true;
        match fsync {
            FsyncPolicy::Always => {
                if let Err(e) = open.file.sync_data() {
                    // Not durable, so not delivered: cut it back off, so the retry writes it
                    // once.
                    let _ = open.file.set_len(before);
                    self.open.remove(path);
                    return Err(io_err("sync", path, e));
                }
                open.dirty = false;
            }
            FsyncPolicy::Batch => {
                self.unsynced += line.len() as u64;
                if self.unsynced >= BATCH_SYNC_BYTES
                    || self.last_sync.is_none_or(|t| t.elapsed() >= BATCH_SYNC)
                {
                    // The lines are written; a failed sync leaves them not durable, and the
                    // dispatcher's cursor waits for them (`not_durable_from`): failing this
                    // write would have it written twice.
                    if let Err(e) = self.sync_all() {
                        if !self.sync_warned {
                            self.sync_warned = true;
                            tracing::warn!(error = %e, "file sink: sync failed; its lines are written but not durable, so the journal's cursor waits for them (retried at the next write or when idle)");
                        }
                    }
                }
            }
            FsyncPolicy::Never => {}
        }
        Ok(())
    }

    /// In-order lines from `first` on were written: until the next sync they are not durable.
    fn written(&mut self, first: u64, fsync: FsyncPolicy) {
        if fsync == FsyncPolicy::Batch && self.unsynced_from.is_none() {
            self.unsynced_from = Some(first);
        }
    }

    /// Syncs every written file, then records in the position file (synced too) that the
    /// lines written so far are durable.
    fn sync_all(&mut self) -> Result<(), SinkError> {
        for (path, open) in &mut self.open {
            if open.dirty {
                open.file.sync_data().map_err(|e| io_err("sync", path, e))?;
                open.dirty = false;
            }
        }
        if let Some(position) = self.position.as_mut()
            && let Err(e) = position.synced()
        {
            // The lines are durable; only the record of it is not (after a reboot, some may be
            // written again).
            position.file = None;
            tracing::debug!(position = %position.path.display(), error = %e, "cannot sync the file sink's position");
        }
        self.last_sync = Some(Instant::now());
        self.unsynced = 0;
        self.unsynced_from = None;
        self.sync_warned = false;
        Ok(())
    }

    fn evict_if_full(&mut self) {
        if self.open.len() < MAX_OPEN {
            return;
        }
        let oldest = self
            .open
            .iter()
            .min_by_key(|(_, o)| o.last_used)
            .map(|(p, _)| p.clone());
        if let Some(path) = oldest
            && let Some(open) = self.open.remove(&path)
        {
            let _ = open.file.sync_data();
        }
    }
}

/// Opens for appending, creating folders, and cuts off a torn last line left by a crash. With
/// `sync_folders`, a file (or folder) it creates is made durable by syncing its parent.
fn open_repaired(path: &Path, sync_folders: bool) -> Result<Open, SinkError> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.exists() {
        // Create each missing folder, syncing the one above it.
        let mut missing = Vec::new();
        let mut at = parent;
        while !at.as_os_str().is_empty() && !at.exists() {
            missing.push(at.to_path_buf());
            at = at.parent().unwrap_or(Path::new(""));
        }
        std::fs::create_dir_all(parent).map_err(|e| io_err("create the folder", parent, e))?;
        if sync_folders {
            for folder in missing.iter().rev() {
                sync_parent(folder)?;
            }
        }
    }
    let existed = path.exists();
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| io_err("open", path, e))?;
    if !existed && sync_folders {
        sync_parent(path)?;
    }
    let meta = file.metadata().map_err(|e| io_err("inspect", path, e))?;
    let mut size = meta.len();
    if size > 0 {
        let whole = whole_lines_len(&mut file, size).map_err(|e| io_err("read", path, e))?;
        if whole < size {
            tracing::warn!(path = %path.display(), bytes = size - whole, "cutting off a torn last line (its event is delivered again)");
            file.set_len(whole).map_err(|e| io_err("repair", path, e))?;
            file.sync_all().map_err(|e| io_err("sync", path, e))?;
            size = whole;
        }
    }
    Ok(Open {
        file,
        size,
        identity: identity(&meta),
        last_used: Instant::now(),
        dirty: false,
    })
}

/// The length of the file up to and including its last newline.
fn whole_lines_len(file: &mut File, size: u64) -> std::io::Result<u64> {
    let mut end = size;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(pos) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + pos as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Syncs the folder holding `path`, so that its entry (a new or renamed name) is durable.
fn sync_parent(path: &Path) -> Result<(), SinkError> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("sync the folder", parent, e))
}

/// Renames `path` to `path.N`, N one more than the highest that exists.
fn rotate(path: &Path) -> Result<(), SinkError> {
    let mut n = 1;
    loop {
        let mut target = path.as_os_str().to_owned();
        target.push(format!(".{n}"));
        let target = PathBuf::from(target);
        if !target.exists() {
            return std::fs::rename(path, &target).map_err(|e| io_err("rotate", path, e));
        }
        n += 1;
    }
}
