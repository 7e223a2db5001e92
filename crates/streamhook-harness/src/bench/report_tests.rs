//! The renderer's tests: typed results built from the figures of the report recorded in
//! docs/performance.md (2026-11-28) render into that report's text, line for line; the
//! variants (a tool missing, no /proc) render their own sentences; notes are kept.

use std::time::{Duration, SystemTime};

use super::callgrind::{Callgrind, Instructions};
use super::criterion::Estimate;
use super::drain::Drains;
use super::intake::{BARE, Intake, IntakeRow, Round, Writeback};
use super::memory::{DownPeriod, SinkDown};
use super::report::{NOTES_MARKER, keep_notes, render};
use super::restart::Restart;
use super::validate::Validate;
use super::{BenchOptions, Machine, Results};
use crate::load::Phase;

/// The options `cargo xtask bench` runs with (every default).
fn options() -> BenchOptions {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchOptions,
    }
    <Cli as clap::Parser>::parse_from(["bench"]).bench
}

fn ms_to_us(ms: f64) -> u64 {
    (ms * 1000.0).round() as u64
}

/// A row from the report's figures: per round, requests/s, then p99 and max at the closed
/// loop and at the fixed rate (ms); all its errors counted in the first round.
fn row(name: &str, rounds: [(f64, [f64; 4]); 3], errors: u64, peak_rss: f64) -> IntakeRow {
    let rounds = rounds
        .iter()
        .enumerate()
        .map(|(i, (rps, [p99, max, fixed_p99, fixed_max]))| Round {
            closed: Phase {
                rps: *rps,
                p50: 0,
                p99: ms_to_us(*p99),
                max: ms_to_us(*max),
                errors: if i == 0 { errors } else { 0 },
            },
            fixed: Phase {
                rps: 2000.0,
                p50: 0,
                p99: ms_to_us(*fixed_p99),
                max: ms_to_us(*fixed_max),
                errors: 0,
            },
            cpu_us: None,
        })
        .collect();
    IntakeRow {
        name: name.to_owned(),
        rounds,
        peak_rss,
    }
}

/// The figures of the run recorded in docs/performance.md on 2026-11-28.
fn recorded() -> Results {
    let rows = vec![
        row(
            BARE,
            [
                (48904.0, [4.71, 24.99, 1.95, 8.22]),
                (34440.0, [5.20, 12.02, 2.86, 10.90]),
                (58046.0, [2.56, 9.56, 2.13, 5.92]),
            ],
            0,
            8.7,
        ),
        row(
            "streamhook-server + file sink",
            [
                (8599.0, [13.32, 18.83, 7.47, 20.62]),
                (6343.0, [19.77, 40.51, 10.00, 22.80]),
                (10923.0, [12.51, 19.74, 5.27, 8.35]),
            ],
            0,
            51.8,
        ),
        row(
            "streamhook-server + http sink",
            [
                (7076.0, [19.18, 25.82, 138.11, 189.31]),
                (5819.0, [21.93, 312.06, 14.24, 29.07]),
                (7387.0, [20.48, 286.21, 22.09, 40.96]),
            ],
            118,
            57.2,
        ),
        row(
            "adnanh/webhook 2.8 (`ip-whitelist` rule, runs /bin/true; stores nothing)",
            [
                (4491.0, [57.34, 216.83, 63.58, 117.63]),
                (3417.0, [63.94, 406.78, 134.27, 240.51]),
                (3830.0, [72.58, 574.98, 555.01, 669.18]),
            ],
            0,
            283.9,
        ),
        row(
            "streamhook-server + file sink, JetStream journal (1 node, replicas 1)",
            [
                (1197.0, [101.12, 127.17, 222.97, 260.61]),
                (1651.0, [81.28, 99.45, 28.21, 37.12]),
                (2626.0, [65.34, 82.50, 26.66, 39.07]),
            ],
            831,
            55.0,
        ),
        row(
            "streamhook-server + file sink, JetStream journal (3-node cluster, replicas 3)",
            [
                (2536.0, [48.93, 69.25, 73.92, 94.72]),
                (2268.0, [64.89, 105.47, 77.25, 120.70]),
                (2226.0, [55.30, 86.53, 148.61, 200.83]),
            ],
            128,
            51.7,
        ),
    ];
    let writeback = (0..36)
        .map(|i| {
            Some(Writeback {
                dirty_mib: if i == 7 { 67.3 } else { 1.0 },
                sync_seconds: if i == 9 { 0.27 } else { 0.01 },
            })
        })
        .collect();
    let periods = [
        (8331.0, 83379, 39.3),
        (8401.0, 167438, 39.2),
        (8296.0, 250450, 39.3),
        (7812.0, 328640, 39.4),
        (8273.0, 411414, 39.4),
        (8817.0, 499662, 39.4),
    ]
    .iter()
    .zip(1..)
    .map(|(&(rps, backlog, rss), i)| DownPeriod {
        at: i * 10,
        rps,
        backlog,
        rss,
    })
    .collect();
    let criterion = [
        ("console, 100k events/first page (50 newest)", 1.07e6),
        (
            "console, 100k events/kind filter matching 1 in 1000 (one call)",
            35.18e6,
        ),
        ("console, 100k events/one event", 190.23e3),
        (
            "console, 100k events/text filter matching 1 in 1000 (one call)",
            20.51e6,
        ),
        (
            "console, 100k events/timeline of a stream (200 of 100k events)",
            91.35e6,
        ),
        ("decode+classify/broadcast", 1.16e3),
        ("decode+classify/restream", 1.66e3),
        ("decode+classify/stream", 3.31e3),
        ("decode+classify/unknown", 2.51e3),
        ("decode+classify/video", 4.14e3),
        ("decode+classify/video_delete", 1.85e3),
        (
            "journal append/per event, 64 concurrent (group commit, on ext2_ext3)",
            33.31e3,
        ),
        (
            "journal append/single (one fsync each, on ext2_ext3)",
            578.26e3,
        ),
    ]
    .iter()
    .map(|&(name, mean_ns)| Estimate {
        name: name.to_owned(),
        mean_ns,
    })
    .collect();
    Results {
        // 2026-11-28, 00:00 UTC.
        when: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_824_000),
        machine: Machine {
            cores: 2,
            cpu: "AMD EPYC".to_owned(),
        },
        intake: Intake {
            rows,
            streamhook_peak_rss: 57.2,
            writeback,
            webhook_missing: None,
            jetstream: Ok("v2.15.1".to_owned()),
        },
        sink_down: SinkDown {
            periods,
            peak_rss: 39.6,
        },
        drains: Drains {
            events: 100_000,
            file: Duration::from_secs_f64(100_000.0 / 119_624.0),
            http: Duration::from_secs_f64(100_000.0 / 10_689.0),
            http_delivered: 100_000,
        },
        restart: Restart {
            events: 1_000_000,
            size_mb: 549.0,
            fill: Duration::from_secs_f64(21.7),
            ready: [10, 13, 15].map(Duration::from_millis).to_vec(),
        },
        validate: Validate {
            bytes: 100_000_500,
            pinned: true,
            validate: 76.0,
            jq: Some(21.0),
        },
        callgrind: Callgrind::Measured(
            [
                (BARE, 21198.0),
                ("streamhook-server, journal only (no sink)", 482_785.0),
                ("streamhook-server + file sink", 627_128.0),
            ]
            .iter()
            .map(|&(name, per_request)| Instructions {
                name: name.to_owned(),
                per_request,
            })
            .collect(),
        ),
        criterion,
    }
}

/// docs/performance.md as the run of 2026-11-28 wrote it, up to the notes.
const RECORDED: &str = r###"# Performance

Measured by `cargo xtask bench` on 2026-11-28 on 2 cores (AMD EPYC), every figure from the same run.
The load generator is the hyper client in `streamhook-harness` (on the same machine, so it shares the cores);
the payload is the seed page's "video completely processed" (641 bytes), each request carrying the next of 1000 video ids in turn, as Gcore's traffic spreads over many videos and streams.

## Intake

Every server runs at once and is measured in turns, 3 rounds: `sync` (the disk writes what earlier work left, so no phase pays for another's writeback), 64 connections back to back for 6 s, streamhook's sinks catch up (their lag, from `/readyz`, reaches 0), `sync` again, then a fixed 2000 requests/s for 6 s (latency timed from when each request was due: a steady state, no backlog draining), the sinks catch up again, then 8 s idle. Figures per round, in order.

| server | requests/s at 64 connections | ratio to bare | server CPU µs/request | p99 ms | max ms | at 2000/s: p99 ms | max ms | errors | peak RSS MiB |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
| bare axum (reads the body, answers 200) | 48904 / 34440 / 58046 | 1.00 / 1.00 / 1.00 | ? / ? / ? | 4.71 / 5.20 / 2.56 | 24.99 / 12.02 / 9.56 | 1.95 / 2.86 / 2.13 | 8.22 / 10.90 / 5.92 | 0 | 8.7 |
| streamhook-server + file sink | 8599 / 6343 / 10923 | 0.18 / 0.18 / 0.19 | ? / ? / ? | 13.32 / 19.77 / 12.51 | 18.83 / 40.51 / 19.74 | 7.47 / 10.00 / 5.27 | 20.62 / 22.80 / 8.35 | 0 | 51.8 |
| streamhook-server + http sink | 7076 / 5819 / 7387 | 0.14 / 0.17 / 0.13 | ? / ? / ? | 19.18 / 21.93 / 20.48 | 25.82 / 312.06 / 286.21 | 138.11 / 14.24 / 22.09 | 189.31 / 29.07 / 40.96 | 118 | 57.2 |
| adnanh/webhook 2.8 (`ip-whitelist` rule, runs /bin/true; stores nothing) | 4491 / 3417 / 3830 | 0.09 / 0.10 / 0.07 | ? / ? / ? | 57.34 / 63.94 / 72.58 | 216.83 / 406.78 / 574.98 | 63.58 / 134.27 / 555.01 | 117.63 / 240.51 / 669.18 | 0 | 283.9 |
| streamhook-server + file sink, JetStream journal (1 node, replicas 1) | 1197 / 1651 / 2626 | 0.02 / 0.05 / 0.05 | ? / ? / ? | 101.12 / 81.28 / 65.34 | 127.17 / 99.45 / 82.50 | 222.97 / 28.21 / 26.66 | 260.61 / 37.12 / 39.07 | 831 | 55.0 |
| streamhook-server + file sink, JetStream journal (3-node cluster, replicas 3) | 2536 / 2268 / 2226 | 0.05 / 0.07 / 0.04 | ? / ? / ? | 48.93 / 64.89 / 55.30 | 69.25 / 105.47 / 86.53 | 73.92 / 77.25 / 148.61 | 94.72 / 120.70 / 200.83 | 128 | 51.7 |

Before each phase the kernel held up to 67.3 MiB of dirty data (`Dirty` + `Writeback` in /proc/meminfo); `sync` took up to 0.27 s.

The JetStream rows journal in nats-server v2.15.1 processes on the same two cores (their CPU counts against streamhook's); a 2xx there means a quorum of the stream's replicas stored the event (NATS's default `sync_interval`: not fsync'd per event, see docs/ha.md), where the redb rows mean fsync'd on this disk.

## A sink down for 60 s

The http sink's receiver is down; load runs at 64 connections; the backlog is the journal's own count of events the sink has not passed (from `/readyz`).

| after | requests/s in the last 10 s | backlog (events) | RSS MiB |
| --- | ---: | ---: | ---: |
| 10 s | 8331 | 83379 | 39.3 |
| 20 s | 8401 | 167438 | 39.2 |
| 30 s | 8296 | 250450 | 39.3 |
| 40 s | 7812 | 328640 | 39.4 |
| 50 s | 8273 | 411414 | 39.4 |
| 60 s | 8817 | 499662 | 39.4 |

Peak RSS in that run: 39.6 MiB.

## Dispatcher drain

100000 events already journaled, timed from the server's start until the sink has passed them all (the http sink's receiver is the bare server, in a process of its own):

| sink | seconds | events/s |
| --- | ---: | ---: |
| file | 0.84 | 119624 |
| http (concurrency 4, keep-alive, local receiver) | 9.36 | 10689 |

## Instructions per request (callgrind)

valgrind's callgrind counts the server's instructions (every thread) over 1000 requests sent one after another on one connection, after 100 for warm-up, all naming the same video: a figure that does not move with the machine's load. With one request at a time, every append is its own commit.

| server | instructions per request | ratio to bare |
| --- | ---: | ---: |
| bare axum (reads the body, answers 200) | 21198 | 1.0 |
| streamhook-server, journal only (no sink) | 482785 | 22.8 |
| streamhook-server + file sink | 627128 | 29.6 |

## Restart

1000000 events journaled (549 MB, filled through the real append path in 21.7 s); from process start to `/readyz` 200, three clean restarts: **10, 13, 15** ms (best 10 ms).

## `streamhook validate` against `jq -c .`

A 100 MB NDJSON archive, each tool pinned to one core (`taskset -c 0`), best of three.

| tool | MB/s |
| --- | ---: |
| `streamhook validate` | 76 |
| `jq -c . >/dev/null` | 21 |

Ratio: **3.6x** jq.

## Micro-benchmarks (criterion, mean)

| benchmark | time |
| --- | ---: |
| console, 100k events/first page (50 newest) | 1.07 ms |
| console, 100k events/kind filter matching 1 in 1000 (one call) | 35.18 ms |
| console, 100k events/one event | 190.23 µs |
| console, 100k events/text filter matching 1 in 1000 (one call) | 20.51 ms |
| console, 100k events/timeline of a stream (200 of 100k events) | 91.35 ms |
| decode+classify/broadcast | 1.16 µs |
| decode+classify/restream | 1.66 µs |
| decode+classify/stream | 3.31 µs |
| decode+classify/unknown | 2.51 µs |
| decode+classify/video | 4.14 µs |
| decode+classify/video_delete | 1.85 µs |
| journal append/per event, 64 concurrent (group commit, on ext2_ext3) | 33.31 µs |
| journal append/single (one fsync each, on ext2_ext3) | 578.26 µs |

## Targets

| target | measured | |
| --- | --- | --- |
| durable intake with a file sink ≥ 0.45x bare, every round | 0.18x / 0.18x / 0.19x | **missed** |
| p99 ≤ 5 ms at 2000/s, every round | worst 10.00 ms | **missed** |
| p99 ≤ 15 ms at 64 connections, every round | worst 19.77 ms | **missed** |
| peak RSS ≤ 64 MiB | 57.2 MiB | met |
| RSS flat with a sink down 60 s | 39.3 -> 39.4 MiB as the backlog grew to 499662 | met |
| intake unchanged with a sink down | 8322/s against 7076/s (http sink row, median) | met |
| drain, file sink ≥ 50,000 events/s | 119624/s | met |
| drain, http sink ≥ 30,000 events/s | 10689/s | **missed** |
| ready within 1 s with 1000000 events | 10 ms | met |
| validate ≥ 3x jq on one core | 3.6x | met |
"###;

#[test]
fn the_recorded_runs_figures_render_into_the_recorded_report_line_for_line() {
    let rendered = render(&options(), &recorded());
    for (i, (got, want)) in rendered.lines().zip(RECORDED.lines()).enumerate() {
        assert_eq!(got, want, "line {}", i + 1);
    }
    assert_eq!(rendered, RECORDED);
}

#[test]
fn what_could_not_be_measured_is_said_in_place_of_its_figures() {
    let mut r = recorded();
    r.intake.writeback[3] = None;
    r.intake.webhook_missing = Some("the `webhook` program is not installed".to_owned());
    r.intake.jetstream = Err("no nats-server".to_owned());
    r.callgrind = Callgrind::NotMeasured("valgrind is not installed".to_owned());
    r.validate.jq = None;
    r.validate.pinned = false;
    r.criterion.clear();
    let rendered = render(&options(), &r);
    for line in [
        "The dirty data before each phase is unavailable here (no /proc/meminfo, or `sync` failed): turns may have paid for each other's writeback.",
        "adnanh/webhook: no row (the `webhook` program is not installed).",
        "JetStream journal: no rows (no nats-server).",
        "Not measured: valgrind is not installed.",
        "A 100 MB NDJSON archive, each tool pinned to one core, best of three.",
        "`jq` is not installed: no comparison.",
    ] {
        assert!(
            rendered.lines().any(|l| l == line),
            "missing {line:?} in\n{rendered}"
        );
    }
    assert!(!rendered.contains("Micro-benchmarks"));
    assert!(!rendered.contains("validate ≥ 3x jq"));
    assert!(!rendered.contains("Before each phase the kernel"));
}

#[test]
fn the_notes_after_the_marker_are_kept_and_nothing_before_it() {
    let old = format!("# Old figures\n\n| a | b |\n{NOTES_MARKER}\n\n## Notes\n\nkept\n");
    let mut report = "# Performance\n".to_owned();
    keep_notes(&mut report, &old);
    assert_eq!(
        report,
        format!("# Performance\n{NOTES_MARKER}\n\n## Notes\n\nkept\n")
    );
    let mut report = "# Performance\n".to_owned();
    keep_notes(&mut report, "# no marker here\n");
    assert_eq!(report, "# Performance\n");
}
