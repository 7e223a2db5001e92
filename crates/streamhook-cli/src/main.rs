//! `streamhook`: debug a Gcore Video Streaming webhook integration. Validate payloads, say what
//! they mean, send them as Gcore would, follow and replay what a streamhook-server received.

#![allow(clippy::print_stdout, clippy::print_stderr)] // the binary speaks to its user here

mod check;
mod input;
mod remote;
mod style;

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use streamhook_core::KindPattern;

use crate::check::{InspectOptions, TROUBLE, ValidateOptions};
use crate::remote::{Admin, ReplayStart, SendOptions, TailOptions};
use crate::style::{ColorChoice, Style};

/// Validate, inspect, send, tail and replay Gcore Video Streaming webhooks.
#[derive(Debug, Parser)]
#[command(
    name = "streamhook",
    version,
    about,
    after_help = "Run `streamhook help COMMAND` for examples."
)]
struct Cli {
    /// Colour: auto (on a terminal, unless NO_COLOR), always, never.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    color: ColorChoice,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct Filters {
    /// Only these webhook types (stream, video, video_delete, restream, broadcast, ...).
    #[arg(long = "type", value_name = "TYPE")]
    types: Vec<String>,
    /// Only events with a kind matching this pattern (`video.ready`, `stream.*`, `*.stopped`).
    #[arg(long = "kind", value_name = "PATTERN", value_parser = parse_kind)]
    kinds: Vec<KindPattern>,
    /// Only this resource id (stream, video, ...).
    #[arg(long = "id", value_name = "ID")]
    ids: Vec<u64>,
}

fn parse_kind(s: &str) -> Result<KindPattern, String> {
    KindPattern::new(s)
}

#[derive(Debug, clap::Args)]
struct AdminArgs {
    /// The server's admin API.
    #[arg(
        long = "admin",
        env = "STREAMHOOK_ADMIN_URL",
        default_value = "http://127.0.0.1:8081",
        value_name = "URL"
    )]
    url: String,
    /// The admin token [default: read from DATA_DIR/admin.token].
    #[arg(
        long,
        env = "STREAMHOOK_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
    /// The server's data folder, where it wrote admin.token.
    #[arg(
        long,
        env = "STREAMHOOK_DATA_DIR",
        default_value = "./streamhook-data",
        value_name = "DIR"
    )]
    data_dir: PathBuf,
}

impl AdminArgs {
    fn admin(&self) -> Admin {
        Admin {
            url: self.url.clone(),
            token: self.token.clone(),
            data_dir: self.data_dir.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check that files hold valid Gcore webhooks; errors name file, line, column and JSON path.
    #[command(after_help = "\
Each PATH is a file with one payload, a JSON array of payloads, or NDJSON (a file sink's archive
too), a folder (searched for *.json, *.jsonl, *.ndjson), or - for stdin.
Exit status: 0 all valid, 1 some invalid, 2 usage or I/O error.

Examples:
  streamhook validate payload.json
  streamhook validate --strict fixtures/
  curl -s https://example.com/hook.json | streamhook validate -
  streamhook validate --json archive.jsonl | jq 'select(.valid == false)'")]
    Validate {
        /// Also report what the lenient decoder tolerated: unknown fields, statuses and types,
        /// nulls, values of a coercible wrong type.
        #[arg(long)]
        strict: bool,
        /// Exit 1 when anything was tolerated (with or without --strict).
        #[arg(long)]
        deny_warnings: bool,
        /// One JSON object per payload with problems, then a summary object.
        #[arg(long)]
        json: bool,
        /// Files, folders, or - for stdin.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<String>,
    },
    /// Say what each payload means: event kinds, resource, origin, status, renditions.
    #[command(after_help = "\
Payloads are classified in the order given, each stream and video remembering what came
before (as the server does): the same `live: true, recording: false` is stream.started after
nothing and stream.recording_stopped after a recording started. Archive lines show the kinds
the server decided.

Examples:
  streamhook inspect fixtures/seed/
  streamhook inspect --timeline streamhook-events/2026-11-28/*.jsonl
  streamhook inspect --kind 'video.*' --id 784280 archive.jsonl
  streamhook inspect --json payload.json")]
    Inspect {
        /// One JSON object per payload.
        #[arg(long)]
        json: bool,
        /// Group by resource: each stream's and video's history in order, with times.
        #[arg(long)]
        timeline: bool,
        /// Classify each payload on its own, as if nothing came before it.
        #[arg(long)]
        no_history: bool,
        #[command(flatten)]
        filters: Filters,
        /// Files, folders, or - for stdin.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<String>,
    },
    /// POST payloads to a URL as Gcore would: one request each, the bytes as they are.
    #[command(after_help = "\
Exit status: 0 all accepted (2xx), 1 some refused or unreachable, 2 usage or I/O error.

Examples:
  streamhook send --to http://127.0.0.1:8080/webhook fixtures/seed/
  streamhook send --to http://127.0.0.1:8080/webhook --bind 127.0.0.2 payload.json   # test the allowlist
  streamhook send --to http://127.0.0.1:8080/webhook --delay 500 archive.jsonl")]
    Send {
        /// The webhook URL.
        #[arg(long, value_name = "URL")]
        to: String,
        /// Send from this local address (127.0.0.2 and so on are local too).
        #[arg(long, value_name = "IP")]
        bind: Option<IpAddr>,
        /// Milliseconds to wait between requests.
        #[arg(long, default_value_t = 0, value_name = "MS")]
        delay: u64,
        /// Files, folders, or - for stdin.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<String>,
    },
    /// Follow a running server's events (its admin API), or a file sink's archive.
    #[command(after_help = "\
Examples:
  streamhook tail                                  # new events of the server on this host
  streamhook tail --from 1 --once                  # everything the journal holds, then stop
  streamhook tail --kind 'stream.*' --json
  streamhook tail --file streamhook-events/2026-11-28/video.jsonl")]
    Tail {
        /// Follow this archive file instead of a server.
        #[arg(long, value_name = "PATH")]
        file: Option<String>,
        /// Start at this journal position instead of at new events (server only).
        #[arg(long, value_name = "SEQ")]
        from: Option<u64>,
        /// Print what there is and stop.
        #[arg(long)]
        once: bool,
        /// Print envelopes as JSON lines.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        filters: Filters,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Deliver a sink's events again, from a seq or a time.
    #[command(after_help = "\
The sink gets every event from there on again, with the same ids (deduplicate on them). It
prints how many events that is before asking for it. A replay only moves a sink back: from a
point the sink has not reached yet (its destination was down) it changes nothing, and says so:
nothing the sink has not had is ever skipped.

Examples:
  streamhook replay --sink app --from-seq 1200
  streamhook replay --sink app --since 2026-11-28T09:00:00Z
  streamhook replay --sink app --since 2h --dry-run")]
    Replay {
        /// The sink's name.
        #[arg(long)]
        sink: String,
        /// From this journal position.
        #[arg(
            long,
            value_name = "SEQ",
            conflicts_with = "since",
            required_unless_present = "since"
        )]
        from_seq: Option<u64>,
        /// From this time (RFC 3339) or this long ago (`2h`, `30m`).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Only say what it would do.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Recover the transitions Gcore never sent, from its Streaming API (through the server).
    #[command(after_help = "\
The server compares what Gcore's API shows (streams live or not and their last session's times,
videos' statuses, deleted videos) with the last state its journal knows of each, and journals
each difference as the webhook Gcore would have sent, marked \"reconciled\" in the envelope; sinks
get them like any other event. States that agree emit nothing, so running it twice is safe. It
uses the server's API key ([gcore] api_key_file) and runs on its own every [reconcile] interval.
Exit status: 0 done, 1 part of the run failed (listed), 2 the key was refused or the journal failed.

Examples:
  streamhook reconcile --dry-run
  streamhook reconcile
  streamhook reconcile --json | jq '.emitted[]'")]
    Reconcile {
        /// Only print what a run would journal.
        #[arg(long)]
        dry_run: bool,
        /// The server's report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Sinks the journal knows: forget one taken out of the configuration.
    #[command(after_help = "\
A sink taken out of the configuration keeps its place for retention.removed_sink_grace
(default 7 days): its cursor keeps holding the events it has not had, so putting it back
resumes it where it stood. `forget` ends that at once (its dead letters go too); if it comes
back later it starts as a new sink. `streamhook status` lists removed sinks.

Example:
  streamhook sinks forget old-app")]
    Sinks {
        #[command(subcommand)]
        action: SinksAction,
    },
    /// List or requeue events a sink gave up on.
    #[command(
        name = "dead-letters",
        after_help = "\
Examples:
  streamhook dead-letters list
  streamhook dead-letters requeue --sink app --seq 1234
  streamhook dead-letters requeue --sink app --all"
    )]
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// Show each sink's position, backlog and dead letters.
    Status {
        /// As JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Print the JSON Schema of Gcore's payloads (or of the envelope sinks receive).
    #[command(after_help = "Example:\n  streamhook schema > webhook.schema.json")]
    Schema {
        /// The envelope's schema instead.
        #[arg(long)]
        envelope: bool,
    },
    /// Print shell completions.
    #[command(
        after_help = "Example:\n  streamhook completions bash > /etc/bash_completion.d/streamhook"
    )]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum SinksAction {
    /// Stop holding events for a sink that is no longer configured.
    Forget {
        /// The sink's name.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Subcommand)]
enum DeadLetterAction {
    /// List them with their last error.
    List {
        /// Only this sink's.
        #[arg(long)]
        sink: Option<String>,
        /// As JSON lines.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Deliver them again (same ids).
    Requeue {
        /// The sink.
        #[arg(long)]
        sink: String,
        /// This one.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        seq: Option<u64>,
        /// All of the sink's.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

fn inspect_options(json: bool, timeline: bool, no_history: bool, f: Filters) -> InspectOptions {
    InspectOptions {
        json,
        timeline,
        no_history,
        types: f.types,
        kinds: f.kinds,
        ids: f.ids,
    }
}

fn main() -> ExitCode {
    if let Some(code) = generate() {
        return code;
    }
    let cli = Cli::parse();
    let style = Style::new(cli.color);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let code = match run(cli.command, &mut out, style) {
        Ok(code) => code,
        Err(e) => {
            let _ = out.flush();
            eprintln!("streamhook: {e:#}");
            TROUBLE
        }
    };
    // A closed pipe (`| head`) is not an error worth a message.
    let _ = out.flush();
    ExitCode::from(code)
}

/// `streamhook --generate man|complete-bash|complete-zsh|complete-fish`: a man page or a
/// completion script on stdout, for packagers (hidden; `streamhook completions SHELL` is the
/// documented way to get a completion script).
fn generate() -> Option<ExitCode> {
    let mut argv = std::env::args().skip(1);
    if argv.next().as_deref() != Some("--generate") {
        return None;
    }
    let what = argv.next().unwrap_or_default();
    let mut command = Cli::command();
    let mut out = std::io::stdout().lock();
    let shell = match what.as_str() {
        "man" => {
            return Some(match clap_mangen::Man::new(command).render(&mut out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("streamhook: cannot write the man page: {e}");
                    ExitCode::from(TROUBLE)
                }
            });
        }
        "complete-bash" => clap_complete::Shell::Bash,
        "complete-zsh" => clap_complete::Shell::Zsh,
        "complete-fish" => clap_complete::Shell::Fish,
        other => {
            eprintln!(
                "streamhook: --generate takes man, complete-bash, complete-zsh or complete-fish (not {other:?})"
            );
            return Some(ExitCode::from(TROUBLE));
        }
    };
    clap_complete::generate(shell, &mut command, "streamhook", &mut out);
    Some(ExitCode::SUCCESS)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn run(command: Command, out: &mut dyn Write, style: Style) -> anyhow::Result<u8> {
    Ok(match command {
        Command::Validate {
            strict,
            deny_warnings,
            json,
            paths,
        } => check::validate(
            &paths,
            &ValidateOptions {
                strict,
                deny_warnings,
                json,
            },
            out,
            style,
        )?,
        Command::Inspect {
            json,
            timeline,
            no_history,
            filters,
            paths,
        } => check::inspect(
            &paths,
            &inspect_options(json, timeline, no_history, filters),
            out,
            style,
        )?,
        Command::Send {
            to,
            bind,
            delay,
            paths,
        } => {
            let options = SendOptions {
                to,
                bind,
                delay: Duration::from_millis(delay),
            };
            runtime()?.block_on(remote::send(&paths, &options, out, style))?
        }
        Command::Tail {
            file,
            from,
            once,
            json,
            filters,
            admin,
        } => {
            let options = TailOptions {
                json,
                once,
                from,
                filter: inspect_options(false, false, false, filters),
            };
            match file {
                Some(path) => {
                    runtime()?.block_on(remote::tail_file(&path, &options, out, style))?
                }
                None => runtime()?.block_on(remote::tail_server(
                    &admin.admin(),
                    &options,
                    out,
                    style,
                ))?,
            }
        }
        Command::Replay {
            sink,
            from_seq,
            since,
            dry_run,
            admin,
        } => {
            let start = match (from_seq, since) {
                (Some(seq), _) => ReplayStart::Seq(seq),
                (None, Some(t)) => ReplayStart::Since(t),
                (None, None) => anyhow::bail!("give --from-seq or --since"),
            };
            runtime()?.block_on(remote::replay(&admin.admin(), &sink, start, dry_run, out))?
        }
        Command::Reconcile {
            dry_run,
            json,
            admin,
        } => runtime()?.block_on(remote::reconcile(&admin.admin(), dry_run, json, out, style))?,
        Command::Sinks {
            action: SinksAction::Forget { name, admin },
        } => runtime()?.block_on(remote::forget_sink(&admin.admin(), &name, out))?,
        Command::DeadLetters { action } => match action {
            DeadLetterAction::List { sink, json, admin } => runtime()?.block_on(
                remote::dead_letters(&admin.admin(), sink.as_deref(), json, out, style),
            )?,
            DeadLetterAction::Requeue {
                sink,
                seq,
                all: _,
                admin,
            } => runtime()?.block_on(remote::requeue(&admin.admin(), &sink, seq, out))?,
        },
        Command::Status { json, admin } => {
            runtime()?.block_on(remote::status(&admin.admin(), json, out, style))?
        }
        Command::Schema { envelope } => {
            let schema = if envelope {
                streamhook_types::schema::envelope_schema()
            } else {
                streamhook_types::schema::webhook_schema()
            };
            out.write_all(schema.as_bytes())?;
            0
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "streamhook", out);
            0
        }
    })
}
