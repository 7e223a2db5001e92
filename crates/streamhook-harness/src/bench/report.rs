//! The report: the one place that turns a run's typed results into `docs/performance.md`'s
//! text (its sections, tables, wording and the targets met or missed), and keeps the
//! hand-written notes after [`NOTES_MARKER`] when the report is regenerated.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use super::callgrind::Callgrind;
use super::intake::{IntakeRow, Round};
use super::{BenchOptions, Machine, Results};
use crate::load::{PAYLOAD, RESOURCES};

/// Everything after this line in the report is kept when it is regenerated.
pub const NOTES_MARKER: &str = "<!-- notes below are kept by cargo xtask bench -->";

/// `when`'s date (UTC), `2026-11-28`.
fn date(when: SystemTime) -> String {
    humantime::format_rfc3339(when)
        .to_string()
        .chars()
        .take(10)
        .collect()
}

fn machine(m: &Machine) -> String {
    format!("{} cores ({})", m.cores, m.cpu)
}

/// Microseconds as milliseconds, two decimals.
fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// The report's text up to the notes marker (which it does not include).
pub fn render(o: &BenchOptions, r: &Results) -> String {
    let mut report = String::new();
    header(&mut report, o, r);
    intake(&mut report, o, r);
    sink_down(&mut report, o, r);
    drain(&mut report, o, r);
    callgrind(&mut report, o, &r.callgrind);
    restart(&mut report, o, r);
    validate(&mut report, r);
    criterion(&mut report, r);
    targets(&mut report, o, r);
    report
}

/// `report` followed by the notes of the `old` report (from its marker on), if it has any.
pub fn keep_notes(report: &mut String, old: &str) {
    if let Some(at) = old.find(NOTES_MARKER) {
        let _ = write!(report, "{}", &old[at..]);
    }
}

fn header(report: &mut String, o: &BenchOptions, r: &Results) {
    let _ = writeln!(report, "# Performance\n");
    let _ = writeln!(
        report,
        "Measured by `{}` on {} on {}, every figure from the same run.",
        o.command,
        date(r.when),
        machine(&r.machine)
    );
    let _ = writeln!(
        report,
        "The load generator is the hyper client in `streamhook-harness` (on the same machine, so it shares the cores);"
    );
    let _ = writeln!(
        report,
        "the payload is the seed page's \"video completely processed\" ({} bytes), each request carrying the next of {} video ids in turn, as Gcore's traffic spreads over many videos and streams.\n",
        PAYLOAD.len(),
        RESOURCES
    );
}

fn intake(report: &mut String, o: &BenchOptions, r: &Results) {
    let intake = &r.intake;
    let bare = &intake.rows[0];
    let _ = writeln!(report, "## Intake\n");
    let _ = writeln!(
        report,
        "Every server runs at once and is measured in turns, {} rounds: `sync` (the disk writes what earlier work left, so no phase pays for another's writeback), {} connections back to back for {} s, streamhook's sinks catch up (their lag, from `/readyz`, reaches 0), `sync` again, then a fixed {} requests/s for {} s (latency timed from when each request was due: a steady state, no backlog draining), the sinks catch up again, then {} s idle. Figures per round, in order.\n",
        o.rounds, o.connections, o.seconds, o.rate, o.seconds, o.gap
    );
    let _ = writeln!(
        report,
        "| server | requests/s at {} connections | ratio to bare | server CPU µs/request | p99 ms | max ms | at {}/s: p99 ms | max ms | errors | peak RSS MiB |",
        o.connections, o.rate
    );
    let _ = writeln!(
        report,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let per_round = |r: &IntakeRow, f: &dyn Fn(usize, &Round) -> String| -> String {
        r.rounds
            .iter()
            .enumerate()
            .map(|(i, p)| f(i, p))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    for r in &intake.rows {
        let _ = writeln!(
            report,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} |",
            r.name,
            per_round(r, &|_, p| format!("{:.0}", p.closed.rps)),
            per_round(r, &|i, p| format!(
                "{:.2}",
                p.closed.rps / bare.rounds[i].closed.rps
            )),
            per_round(r, &|_, p| p
                .cpu_us
                .map_or_else(|| "?".to_owned(), |c| format!("{c:.0}"))),
            per_round(r, &|_, p| ms(p.closed.p99)),
            per_round(r, &|_, p| ms(p.closed.max)),
            per_round(r, &|_, p| ms(p.fixed.p99)),
            per_round(r, &|_, p| ms(p.fixed.max)),
            r.rounds
                .iter()
                .map(|p| p.closed.errors + p.fixed.errors)
                .sum::<u64>(),
            r.peak_rss
        );
    }
    if intake.writeback.iter().all(Option::is_some) {
        let all: Vec<_> = intake.writeback.iter().flatten().copied().collect();
        let dirty_max = all.iter().map(|d| d.dirty_mib).fold(0.0, f64::max);
        let sync_max = all.iter().map(|d| d.sync_seconds).fold(0.0, f64::max);
        let _ = writeln!(
            report,
            "\nBefore each phase the kernel held up to {dirty_max:.1} MiB of dirty data (`Dirty` + `Writeback` in /proc/meminfo); `sync` took up to {sync_max:.2} s."
        );
    } else {
        let _ = writeln!(
            report,
            "\nThe dirty data before each phase is unavailable here (no /proc/meminfo, or `sync` failed): turns may have paid for each other's writeback."
        );
    }
    if let Some(why) = &intake.webhook_missing {
        let _ = writeln!(report, "\nadnanh/webhook: no row ({why}).");
    }
    match &intake.jetstream {
        Err(why) => {
            let _ = writeln!(report, "\nJetStream journal: no rows ({why}).");
        }
        Ok(version) => {
            let _ = writeln!(
                report,
                "\nThe JetStream rows journal in nats-server {version} processes on the same two cores \
                 (their CPU counts against streamhook's); a 2xx there means a quorum of the \
                 stream's replicas stored the event (NATS's default `sync_interval`: not fsync'd \
                 per event, see docs/ha.md), where the redb rows mean fsync'd on this disk."
            );
        }
    }
}

fn sink_down(report: &mut String, o: &BenchOptions, r: &Results) {
    let _ = writeln!(report, "\n## A sink down for {} s\n", o.down_seconds);
    let _ = writeln!(
        report,
        "The http sink's receiver is down; load runs at {} connections; the backlog is the journal's own count of events the sink has not passed (from `/readyz`).\n",
        o.connections
    );
    let _ = writeln!(
        report,
        "| after | requests/s in the last 10 s | backlog (events) | RSS MiB |\n| --- | ---: | ---: | ---: |"
    );
    for d in &r.sink_down.periods {
        let _ = writeln!(
            report,
            "| {} s | {:.0} | {} | {:.1} |",
            d.at, d.rps, d.backlog, d.rss
        );
    }
    let _ = writeln!(
        report,
        "\nPeak RSS in that run: {:.1} MiB.\n",
        r.sink_down.peak_rss
    );
}

fn drain(report: &mut String, o: &BenchOptions, r: &Results) {
    let d = &r.drains;
    let _ = writeln!(report, "## Dispatcher drain\n");
    let _ = writeln!(
        report,
        "{} events already journaled, timed from the server's start until the sink has passed them all (the http sink's receiver is the bare server, in a process of its own):\n",
        o.drain_events
    );
    let _ = writeln!(
        report,
        "| sink | seconds | events/s |\n| --- | ---: | ---: |\n| file | {:.2} | {:.0} |\n| http (concurrency 4, keep-alive, local receiver) | {:.2} | {:.0} |\n",
        d.file.as_secs_f64(),
        d.file_rate(),
        d.http.as_secs_f64(),
        d.http_rate()
    );
}

fn callgrind(report: &mut String, o: &BenchOptions, callgrind: &Callgrind) {
    let _ = writeln!(report, "## Instructions per request (callgrind)\n");
    match callgrind {
        Callgrind::Measured(figures) => {
            let _ = writeln!(
                report,
                "valgrind's callgrind counts the server's instructions (every thread) over {} requests sent one after another on one connection, after 100 for warm-up, all naming the same video: a figure that does not move with the machine's load. With one request at a time, every append is its own commit.\n",
                o.callgrind_requests
            );
            let _ = writeln!(
                report,
                "| server | instructions per request | ratio to bare |\n| --- | ---: | ---: |"
            );
            let base = figures.first().map_or(1.0, |f| f.per_request);
            for f in figures {
                let _ = writeln!(
                    report,
                    "| {} | {:.0} | {:.1} |",
                    f.name,
                    f.per_request,
                    f.per_request / base
                );
            }
            let _ = writeln!(report);
        }
        Callgrind::NotMeasured(why) => {
            let _ = writeln!(report, "Not measured: {why}.\n");
        }
    }
}

fn restart(report: &mut String, o: &BenchOptions, r: &Results) {
    let s = &r.restart;
    let _ = writeln!(report, "## Restart\n");
    let _ = writeln!(
        report,
        "{} events journaled ({:.0} MB, filled through the real append path in {:.1} s); from process start to `/readyz` 200, three clean restarts: **{}** ms (best {:.0} ms).\n",
        o.restart_events,
        s.size_mb,
        s.fill.as_secs_f64(),
        s.ready
            .iter()
            .map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
            .collect::<Vec<_>>()
            .join(", "),
        s.ready.first().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    );
}

fn validate(report: &mut String, r: &Results) {
    let v = &r.validate;
    let _ = writeln!(report, "## `streamhook validate` against `jq -c .`\n");
    let _ = writeln!(
        report,
        "A {:.0} MB NDJSON archive, each tool pinned to one core{}, best of three.\n",
        v.bytes as f64 / 1e6,
        if v.pinned { " (`taskset -c 0`)" } else { "" }
    );
    let _ = writeln!(
        report,
        "| tool | MB/s |\n| --- | ---: |\n| `streamhook validate` | {:.0} |",
        v.validate
    );
    match v.jq {
        Some(j) => {
            let _ = writeln!(
                report,
                "| `jq -c . >/dev/null` | {j:.0} |\n\nRatio: **{:.1}x** jq.\n",
                v.validate / j
            );
        }
        None => {
            let _ = writeln!(report, "\n`jq` is not installed: no comparison.\n");
        }
    }
}

fn criterion(report: &mut String, r: &Results) {
    if r.criterion.is_empty() {
        return;
    }
    let _ = writeln!(report, "## Micro-benchmarks (criterion, mean)\n");
    let _ = writeln!(report, "| benchmark | time |\n| --- | ---: |");
    for e in &r.criterion {
        let ns = e.mean_ns;
        let shown = if ns >= 1e6 {
            format!("{:.2} ms", ns / 1e6)
        } else if ns >= 1e3 {
            format!("{:.2} µs", ns / 1e3)
        } else {
            format!("{ns:.0} ns")
        };
        let _ = writeln!(report, "| {} | {shown} |", e.name);
    }
    let _ = writeln!(report);
}

fn targets(report: &mut String, o: &BenchOptions, r: &Results) {
    let check = |ok: bool| if ok { "met" } else { "**missed**" };
    let rows = &r.intake.rows;
    let (bare, file) = (&rows[0], &rows[1]);
    let ratios: Vec<f64> = file
        .rounds
        .iter()
        .zip(&bare.rounds)
        .map(|(f, b)| f.closed.rps / b.closed.rps)
        .collect();
    let worst_ratio = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let worst_fixed = file.rounds.iter().map(|p| p.fixed.p99).max().unwrap_or(0);
    let worst_closed = file.rounds.iter().map(|p| p.closed.p99).max().unwrap_or(0);
    let _ = writeln!(report, "## Targets\n");
    let _ = writeln!(report, "| target | measured | |\n| --- | --- | --- |");
    let _ = writeln!(
        report,
        "| durable intake with a file sink ≥ 0.45x bare, every round | {} | {} |",
        ratios
            .iter()
            .map(|r| format!("{r:.2}x"))
            .collect::<Vec<_>>()
            .join(" / "),
        check(worst_ratio >= 0.45)
    );
    let _ = writeln!(
        report,
        "| p99 ≤ 5 ms at {}/s, every round | worst {} ms | {} |",
        o.rate,
        ms(worst_fixed),
        check(worst_fixed <= 5_000)
    );
    let _ = writeln!(
        report,
        "| p99 ≤ 15 ms at {} connections, every round | worst {} ms | {} |",
        o.connections,
        ms(worst_closed),
        check(worst_closed <= 15_000)
    );
    let down = &r.sink_down.periods;
    let peak = r.intake.streamhook_peak_rss.max(r.sink_down.peak_rss);
    let _ = writeln!(
        report,
        "| peak RSS ≤ 64 MiB | {peak:.1} MiB | {} |",
        check(peak <= 64.0)
    );
    let (first_rss, last_rss) = (
        down.first().map_or(0.0, |d| d.rss),
        down.last().map_or(0.0, |d| d.rss),
    );
    let _ = writeln!(
        report,
        "| RSS flat with a sink down {} s | {first_rss:.1} -> {last_rss:.1} MiB as the backlog grew to {} | {} |",
        o.down_seconds,
        down.last().map_or(0, |d| d.backlog),
        check(last_rss <= first_rss * 1.25 + 2.0)
    );
    let http_row = &rows[2];
    let mut normal: Vec<f64> = http_row.rounds.iter().map(|p| p.closed.rps).collect();
    normal.sort_by(f64::total_cmp);
    let median = normal.get(normal.len() / 2).copied().unwrap_or(0.0);
    let down_mean = down.iter().map(|d| d.rps).sum::<f64>() / down.len().max(1) as f64;
    let _ = writeln!(
        report,
        "| intake unchanged with a sink down | {down_mean:.0}/s against {median:.0}/s (http sink row, median) | {} |",
        check(down_mean >= median * 0.8)
    );
    let (file_rate, http_rate) = (r.drains.file_rate(), r.drains.http_rate());
    let _ = writeln!(
        report,
        "| drain, file sink ≥ 50,000 events/s | {file_rate:.0}/s | {} |",
        check(file_rate >= 50_000.0)
    );
    let _ = writeln!(
        report,
        "| drain, http sink ≥ 30,000 events/s | {http_rate:.0}/s | {} |",
        check(http_rate >= 30_000.0)
    );
    let best_ready = r.restart.ready.first().copied().unwrap_or_default();
    let _ = writeln!(
        report,
        "| ready within 1 s with {} events | {:.0} ms | {} |",
        o.restart_events,
        best_ready.as_secs_f64() * 1000.0,
        check(best_ready < Duration::from_secs(1))
    );
    if let Some(j) = r.validate.jq {
        let v = r.validate.validate;
        let _ = writeln!(
            report,
            "| validate ≥ 3x jq on one core | {:.1}x | {} |",
            v / j,
            check(v / j >= 3.0)
        );
    }
}
