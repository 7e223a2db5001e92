//! The commands that talk to servers: `send` (as Gcore would) and, through a running
//! streamhook-server's admin API, `tail`, `replay`, `dead-letters` and `status`; `tail --file`
//! follows a file sink's archive instead.

use std::io::{BufRead, Seek, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use streamhook_types::Envelope;

use crate::check::{INVALID, OK, TROUBLE};
use crate::input::{self, Found};
use crate::style::Style;

fn client(bind: Option<IpAddr>, timeout: Duration) -> Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("streamhook/", env!("CARGO_PKG_VERSION")));
    if let Some(ip) = bind {
        builder = builder.local_address(ip);
    }
    builder.build().context("cannot build the HTTP client")
}

/// `send`'s options.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// Where to POST.
    pub to: String,
    /// The source address to send from.
    pub bind: Option<IpAddr>,
    /// Pause between requests.
    pub delay: Duration,
}

/// POSTs each payload, its bytes as they are, one request each; returns the exit code.
pub async fn send(
    paths: &[String],
    options: &SendOptions,
    out: &mut dyn Write,
    style: Style,
) -> Result<u8> {
    let client = client(options.bind, Duration::from_secs(30))?;
    let files = input::expand(paths).map_err(|e| anyhow!("{}: {}", e.file, e.message))?;
    // Collected first (small files), so the requests can be awaited in order.
    let mut payloads: Vec<(String, Vec<u8>)> = Vec::new();
    let mut code = OK;
    for file in &files {
        input::read(file, &mut |found| match found {
            Found::Item(item) => payloads.push((item.position(None), item.bytes.to_vec())),
            Found::Error(e) => {
                code = TROUBLE;
                let _ = writeln!(
                    out,
                    "{}: {} {}",
                    style.bold(&e.file),
                    style.error("error:"),
                    e.message
                );
            }
        });
    }
    let (mut accepted, mut refused) = (0, 0);
    for (i, (position, body)) in payloads.iter().enumerate() {
        if i > 0 && !options.delay.is_zero() {
            tokio::time::sleep(options.delay).await;
        }
        let response = client
            .post(&options.to)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        match response {
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                let shown = if status.is_success() {
                    style.ok(status.as_str())
                } else {
                    style.error(status.as_str())
                };
                writeln!(out, "{}  {shown}  {}", style.dim(position), text.trim())?;
                if status.is_success() {
                    accepted += 1;
                } else {
                    refused += 1;
                }
            }
            Err(e) => {
                refused += 1;
                let mut why = streamhook_core::error_chain(&e);
                if e.is_request() && !e.is_connect() && !e.is_timeout() {
                    // streamhook closes a peer it can never allow at accept, without an answer.
                    why.push_str(
                        " (closed without an answer: is this source address allowed? try --bind)",
                    );
                }
                writeln!(
                    out,
                    "{}  {} {why}",
                    style.dim(position),
                    style.error("failed:"),
                )?;
            }
        }
    }
    writeln!(
        out,
        "sent {}: {accepted} accepted, {refused} refused",
        payloads.len()
    )?;
    Ok(if code != OK {
        code
    } else if refused > 0 {
        INVALID
    } else {
        OK
    })
}

/// How to reach a server's admin API.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Base URL, like `http://127.0.0.1:8081`.
    pub url: String,
    /// `--token`, or from the environment.
    pub token: Option<String>,
    /// Where to find a generated token (`DATA_DIR/admin.token`).
    pub data_dir: PathBuf,
}

impl Admin {
    fn token(&self) -> Result<String> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let path = self.data_dir.join("admin.token");
        std::fs::read_to_string(&path).map(|t| t.trim().to_owned()).with_context(|| {
            format!("no admin token: pass --token (or STREAMHOOK_ADMIN_TOKEN), or --data-dir where the server wrote admin.token (tried {})", path.display())
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(reqwest::header::HeaderMap, String)> {
        self.call_within(method, path, body, Duration::from_secs(90))
            .await
    }

    async fn call_within(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<(reqwest::header::HeaderMap, String)> {
        let client = client(None, timeout)?;
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let mut request = client.request(method, &url).bearer_auth(self.token()?);
        if let Some(b) = body {
            request = request
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let response = request.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the admin API at {url}: {}",
                streamhook_core::error_chain(&e)
            )
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or(text);
            bail!("{status}: {message}");
        }
        Ok((headers, text))
    }

    async fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let (_, text) = self.call(method, path, body).await?;
        serde_json::from_str(&text).context("the admin API answered something that is not JSON")
    }
}

/// What `tail` prints, and which events.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// Raw envelope lines instead of pretty ones.
    pub json: bool,
    /// Print what is there and stop, instead of following.
    pub once: bool,
    /// Start at this seq (server) instead of at new events.
    pub from: Option<u64>,
    /// Filters, as for `inspect`.
    pub filter: crate::check::InspectOptions,
}

fn print_envelope(
    line: &str,
    options: &TailOptions,
    out: &mut dyn Write,
    style: Style,
) -> Result<()> {
    let Ok(envelope) = serde_json::from_str::<Envelope>(line) else {
        return Ok(()); // a torn last line of an archive: skipped
    };
    let f = &options.filter;
    let type_name = streamhook_core::dispatch::payload_type(&envelope);
    let keep = (f.types.is_empty() || f.types.contains(&type_name))
        && (f.kinds.is_empty()
            || envelope
                .kinds
                .iter()
                .any(|k| f.kinds.iter().any(|p| p.matches(k.as_str()))))
        && (f.ids.is_empty() || envelope.resource.id.is_some_and(|id| f.ids.contains(&id)));
    if !keep {
        return Ok(());
    }
    if options.json {
        writeln!(out, "{line}")?;
    } else {
        writeln!(
            out,
            "{}",
            streamhook_sinks::stdout::pretty_line(&envelope, style.on)
        )?;
    }
    out.flush()?;
    Ok(())
}

/// Follows a running server's events.
pub async fn tail_server(
    admin: &Admin,
    options: &TailOptions,
    out: &mut dyn Write,
    style: Style,
) -> Result<u8> {
    let mut from = match options.from {
        Some(f) => f,
        None => {
            admin
                .json(reqwest::Method::GET, "/admin/status", None)
                .await?["last_seq"]
                .as_u64()
                .unwrap_or(0)
                + 1
        }
    };
    loop {
        let wait = if options.once { 0 } else { 25 };
        let (headers, text) = admin
            .call(
                reqwest::Method::GET,
                &format!("/admin/events?from={from}&limit=500&wait={wait}"),
                None,
            )
            .await?;
        for line in text.lines() {
            print_envelope(line, options, out, style)?;
        }
        let next = headers
            .get("x-next-from")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(from);
        if options.once && (text.is_empty() || next == from) {
            return Ok(OK);
        }
        from = next;
    }
}

/// Follows a file sink's archive, across rotations.
pub async fn tail_file(
    path: &str,
    options: &TailOptions,
    out: &mut dyn Write,
    style: Style,
) -> Result<u8> {
    let open = || std::fs::File::open(path).with_context(|| format!("cannot open {path}"));
    let mut reader = std::io::BufReader::new(open()?);
    let mut identity = file_identity(path);
    let mut pending = String::new();
    loop {
        let mut chunk = String::new();
        let n = reader.read_line(&mut chunk)?;
        if n > 0 {
            pending.push_str(&chunk);
            if pending.ends_with('\n') {
                print_envelope(pending.trim_end(), options, out, style)?;
                pending.clear();
            }
            continue;
        }
        if options.once {
            return Ok(OK);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Rotated or truncated: start on the new file.
        let now = file_identity(path);
        let position = reader.stream_position()?;
        let shrunk = std::fs::metadata(path)
            .map(|m| m.len() < position)
            .unwrap_or(false);
        if (now.is_some() && now != identity) || shrunk {
            if let Ok(f) = open() {
                reader = std::io::BufReader::new(f);
                identity = now;
                pending.clear();
            }
        }
    }
}

fn file_identity(path: &str) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Where a replay starts.
#[derive(Debug, Clone)]
pub enum ReplayStart {
    /// From a seq.
    Seq(u64),
    /// From a time (RFC 3339) or a duration back from now (`2h`).
    Since(String),
}

/// Asks the server to deliver a sink's events again: first what it would do (printed), then,
/// unless `dry_run`, does it and prints what it did.
pub async fn replay(
    admin: &Admin,
    sink: &str,
    start: ReplayStart,
    dry_run: bool,
    out: &mut dyn Write,
) -> Result<u8> {
    let body = |dry_run: bool| match &start {
        ReplayStart::Seq(s) => json!({ "sink": sink, "from_seq": s, "dry_run": dry_run }),
        ReplayStart::Since(t) => json!({ "sink": sink, "since": t, "dry_run": dry_run }),
    };
    let plan = admin
        .json(reqwest::Method::POST, "/admin/replay", Some(body(true)))
        .await?;
    writeln!(out, "{}", plan["message"].as_str().unwrap_or_default())?;
    if dry_run {
        return Ok(OK);
    }
    let done = admin
        .json(reqwest::Method::POST, "/admin/replay", Some(body(false)))
        .await?;
    if done["moved"].as_bool() == Some(true) {
        writeln!(out, "replaying sink {sink} from seq {}", done["from_seq"])?;
    } else {
        writeln!(
            out,
            "sink {sink} keeps its place at seq {} (nothing skipped, nothing replayed)",
            done["from_seq"]
        )?;
    }
    Ok(OK)
}

/// Forgets a sink taken out of the configuration.
pub async fn forget_sink(admin: &Admin, sink: &str, out: &mut dyn Write) -> Result<u8> {
    let answer = admin
        .json(
            reqwest::Method::POST,
            "/admin/sinks/forget",
            Some(json!({ "sink": sink })),
        )
        .await?;
    writeln!(
        out,
        "forgot sink {sink}: its events no longer hold retention ({} dead letters and {} requeued events removed)",
        answer["dead_letters"], answer["requeued"]
    )?;
    Ok(OK)
}

/// Lists dead letters.
pub async fn dead_letters(
    admin: &Admin,
    sink: Option<&str>,
    as_json: bool,
    out: &mut dyn Write,
    style: Style,
) -> Result<u8> {
    let path = match sink {
        Some(s) => format!("/admin/dead-letters?sink={s}"),
        None => "/admin/dead-letters".to_owned(),
    };
    let letters = admin.json(reqwest::Method::GET, &path, None).await?;
    let list = letters.as_array().cloned().unwrap_or_default();
    if as_json {
        for l in &list {
            writeln!(out, "{l}")?;
        }
        return Ok(OK);
    }
    if list.is_empty() {
        writeln!(out, "no dead letters")?;
    }
    for l in &list {
        let kinds: Vec<&str> = l["kinds"]
            .as_array()
            .map(|k| k.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        let resource = format!(
            "{} {}",
            l["resource"]["type"].as_str().unwrap_or("?"),
            l["resource"]["id"]
        );
        writeln!(
            out,
            "{}  seq {}  {}  {}  {} attempts, failed {}: {}",
            style.bold(l["sink"].as_str().unwrap_or("?")),
            l["seq"],
            kinds.join(","),
            resource,
            l["attempts"],
            l["failed_at"].as_str().unwrap_or("?"),
            style.error(l["error"].as_str().unwrap_or("?")),
        )?;
    }
    Ok(OK)
}

/// Requeues one dead letter or all of a sink's.
pub async fn requeue(
    admin: &Admin,
    sink: &str,
    seq: Option<u64>,
    out: &mut dyn Write,
) -> Result<u8> {
    let body = match seq {
        Some(s) => json!({ "sink": sink, "seq": s }),
        None => json!({ "sink": sink, "all": true }),
    };
    let answer = admin
        .json(
            reqwest::Method::POST,
            "/admin/dead-letters/requeue",
            Some(body),
        )
        .await?;
    let n = answer["requeued"].as_array().map_or(0, Vec::len);
    writeln!(
        out,
        "requeued {n} dead letter{} of sink {sink}",
        if n == 1 { "" } else { "s" }
    )?;
    Ok(OK)
}

/// Shows each sink's position and backlog.
pub async fn status(admin: &Admin, as_json: bool, out: &mut dyn Write, style: Style) -> Result<u8> {
    let s = admin
        .json(reqwest::Method::GET, "/admin/status", None)
        .await?;
    if as_json {
        writeln!(out, "{s}")?;
        return Ok(OK);
    }
    writeln!(
        out,
        "journal: {} events held, last seq {}",
        s["events"], s["last_seq"]
    )?;
    for sink in s["sinks"].as_array().cloned().unwrap_or_default() {
        let dead = sink["dead_letters"].as_u64().unwrap_or(0);
        let dead = if dead > 0 {
            style.error(&format!("{dead} dead letters"))
        } else {
            "0 dead letters".to_owned()
        };
        let mut line = format!(
            "{}  cursor {}  lag {}  {dead}",
            style.bold(sink["name"].as_str().unwrap_or("?")),
            sink["cursor"],
            sink["lag"]
        );
        if let Some(until) = sink["holds_events_until"].as_str() {
            line.push_str(&format!(
                "  (removed from the configuration; holds its events until {until})"
            ));
        }
        if let Some(skipped) = sink["skipped"].as_u64().filter(|n| *n > 0) {
            line.push_str(&style.error(&format!("  {skipped} events pruned before it had them")));
        }
        writeln!(out, "{line}")?;
    }
    if s["reconcile"].is_object() {
        writeln!(out, "{}", reconcile_line(&s["reconcile"], style))?;
    }
    Ok(OK)
}

/// One line on reconciliation: its state and last run.
fn reconcile_line(r: &Value, style: Style) -> String {
    let mut line = match r["state"].as_str() {
        Some("paused") => style.error(&format!(
            "reconcile: paused: {}",
            r["reason"].as_str().unwrap_or("?")
        )),
        Some(state) => format!("reconcile: {state}"),
        None => "reconcile: ?".to_owned(),
    };
    let last = &r["last_run"];
    if last.is_object() {
        line.push_str(&format!(
            "; last run {} ({}): {} requests, {} differences, {} events journaled",
            last["finished_at"].as_str().unwrap_or("?"),
            last["outcome"].as_str().unwrap_or("?"),
            last["requests"],
            last["differences"],
            last["emitted"].as_array().map_or(0, Vec::len),
        ));
        if let Some(errors) = last["errors"].as_array().filter(|e| !e.is_empty()) {
            line.push_str(&style.error(&format!("; {} errors", errors.len())));
        }
    } else {
        line.push_str("; no run yet");
    }
    if let Some(next) = r["next_run_at"].as_str() {
        line.push_str(&format!("; next {next}"));
    }
    line
}

/// Runs reconciliation with Gcore's API now (or, `dry_run`, prints what it would journal).
pub async fn reconcile(
    admin: &Admin,
    dry_run: bool,
    as_json: bool,
    out: &mut dyn Write,
    style: Style,
) -> Result<u8> {
    // A run over a large account can take minutes at the rate cap.
    let (_, text) = admin
        .call_within(
            reqwest::Method::POST,
            "/admin/reconcile",
            Some(json!({ "dry_run": dry_run })),
            Duration::from_secs(3600),
        )
        .await?;
    let report: Value =
        serde_json::from_str(&text).context("the admin API answered something that is not JSON")?;
    let outcome = report["outcome"].as_str().unwrap_or("?");
    let code = match outcome {
        "ok" | "elsewhere" => OK,
        "partial" => INVALID,
        _ => TROUBLE,
    };
    if as_json {
        writeln!(out, "{report}")?;
        return Ok(code);
    }
    if outcome == "elsewhere" {
        writeln!(
            out,
            "another receiver sharing the journal is reconciling now; nothing done here"
        )?;
        return Ok(OK);
    }
    let compared: Vec<String> = report["compared"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{v} {k}")).collect())
        .unwrap_or_default();
    writeln!(
        out,
        "compared {} with Gcore's API ({} requests): {} differences",
        if compared.is_empty() {
            "nothing".to_owned()
        } else {
            compared.join(", ")
        },
        report["requests"],
        report["differences"]
    )?;
    let emitted = report["emitted"].as_array().cloned().unwrap_or_default();
    for e in &emitted {
        let kinds: Vec<&str> = e["kinds"]
            .as_array()
            .map(|k| k.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let at = e["happened_at"]
            .as_str()
            .map(|t| format!(" at {t}"))
            .unwrap_or_default();
        let seq = e["seq"]
            .as_u64()
            .map(|s| format!("seq {s}  "))
            .unwrap_or_default();
        writeln!(
            out,
            "  {seq}{}  {}{at}  ({})",
            style.bold(e["resource"].as_str().unwrap_or("?")),
            kinds.join(", "),
            e["reason"].as_str().unwrap_or("")
        )?;
    }
    let verb = if dry_run {
        "would be journaled (dry run: nothing changed)"
    } else {
        "journaled"
    };
    writeln!(out, "{} events {verb}", emitted.len())?;
    if let Some(n) = report["changed_meanwhile"].as_u64().filter(|n| *n > 0) {
        writeln!(
            out,
            "{n} resources changed by a webhook meanwhile: left to the next run"
        )?;
    }
    let errors = report["errors"].as_array().cloned().unwrap_or_default();
    for e in &errors {
        writeln!(
            out,
            "{} {}",
            style.error("error:"),
            e.as_str().unwrap_or("")
        )?;
    }
    Ok(code)
}
