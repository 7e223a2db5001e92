//! The documented example config parses, validates, and states the real defaults.

use streamhook_server::Config;

fn example() -> Config {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/streamhook.example.toml");
    Config::from_file(&path).unwrap()
}

#[test]
fn the_example_config_is_valid() {
    example().validate().unwrap();
}

#[test]
fn the_example_states_the_defaults() {
    let (example, default) = (example(), Config::default());
    assert_eq!(example.listen, default.listen);
    assert_eq!(example.path, default.path);
    assert_eq!(example.data_dir, default.data_dir);
    assert_eq!(example.allow, default.allow);
    assert_eq!(example.trusted_proxies, default.trusted_proxies);
    assert_eq!(example.log_format, default.log_format);
    assert_eq!(example.limits, default.limits);
    assert_eq!(example.retry, default.retry);
    assert_eq!(example.retention, default.retention);
    assert_eq!(example.admin, default.admin);
    assert_eq!(example.strict, default.strict);
    assert_eq!(example.journal, default.journal);
    assert_eq!(example.gcore, default.gcore);
    assert_eq!(example.reconcile, default.reconcile);
}

#[test]
fn a_jetstream_journal_needs_urls_a_stream_name_and_sane_replicas() {
    let check = |toml: &str| {
        Config::from_toml(toml)
            .map_err(|e| e.to_string())
            .and_then(|c| c.validate().map_err(|e| e.to_string()))
    };
    assert_eq!(
        check("[journal]\nbackend = \"jetstream\"").unwrap_err(),
        "[journal] backend = \"jetstream\" needs nats_urls (or --nats URL)"
    );
    let ok = "[journal]\nbackend = \"jetstream\"\nnats_urls = [\"nats://127.0.0.1:4222\"]";
    check(ok).unwrap();
    let js = Config::from_toml(ok).unwrap().journal.jetstream().unwrap();
    assert_eq!((js.stream.as_str(), js.replicas), ("STREAMHOOK", 3));
    assert!(
        check(&format!("{ok}\nreplicas = 7"))
            .unwrap_err()
            .contains("1 to 5")
    );
    assert_eq!(js.spool_after, std::time::Duration::from_millis(500));
    assert_eq!(js.ping_interval, std::time::Duration::from_secs(2));
    let tuned = Config::from_toml(&format!(
        "{ok}\nspool_after = \"2s\"\nping_interval = \"1s\"\nmirror_grace = \"2h\""
    ))
    .unwrap();
    tuned.validate().unwrap();
    let js = tuned.journal.jetstream().unwrap();
    assert_eq!(js.spool_after, std::time::Duration::from_secs(2));
    assert_eq!(js.mirror_grace, std::time::Duration::from_secs(7200));
    for (bad, says) in [
        ("spool_after = \"0s\"", "50ms to 30s"),
        ("ping_interval = \"5min\"", "500ms to 60s"),
        ("mirror_grace = \"10s\"", "at least 1m"),
    ] {
        let err = check(&format!("{ok}\n{bad}")).unwrap_err();
        assert!(err.contains(says), "{bad}: {err}");
    }
    assert!(
        check(&format!("{ok}\nstream = \"a.b\""))
            .unwrap_err()
            .contains("letters, digits")
    );
    assert!(
        check("[journal]\nbackend = \"jetstream\"\nnats_urls = [\"nats://[::1\"]")
            .unwrap_err()
            .contains("not a NATS URL")
    );
    assert!(
        Config::default().journal.jetstream().is_none(),
        "redb by default"
    );
}

#[test]
fn config_errors_name_the_problem() {
    let check = |toml: &str| {
        Config::from_toml(toml)
            .map_err(|e| e.to_string())
            .and_then(|c| c.validate().map_err(|e| e.to_string()))
    };
    assert_eq!(
        check("allow = []").unwrap_err(),
        "the allowlist is empty: no request could ever be accepted"
    );
    assert_eq!(
        check("path = \"webhook\"").unwrap_err(),
        "path \"webhook\" must start with / and not end with one, like \"/webhook\""
    );
    assert_eq!(
        check("[[sinks]]\ntype = \"stdout\"\n[[sinks]]\ntype = \"stdout\"").unwrap_err(),
        "two sinks are named \"stdout\"; give each a unique `name`"
    );
    let err = check("[[sinks]]\ntype = \"s3\"").unwrap_err();
    assert!(
        err.contains("unknown variant `s3`, expected one of `stdout`, `file`, `http`, `nats`"),
        "{err}"
    );
    let err = check("[retry]\nmax_age = \"soon\"").unwrap_err();
    assert!(err.contains("\"soon\" is not a duration"), "{err}");
    assert_eq!(
        check("path_token = \"short\"").unwrap_err(),
        "the path token must be 16 to 128 characters of A-Z, a-z, 0-9, '-' or '_'"
    );
}

#[test]
fn an_empty_or_short_admin_token_is_refused() {
    let check = |toml: &str| {
        Config::from_toml(toml)
            .map_err(|e| e.to_string())
            .and_then(|c| c.validate().map_err(|e| e.to_string()))
    };
    let empty = check("[admin]\ntoken = \"\"").unwrap_err();
    assert!(
        empty.starts_with("admin.token (--admin-token, STREAMHOOK_ADMIN_TOKEN) is empty"),
        "{empty}"
    );
    let short = check("[admin]\ntoken = \"hunter2\"").unwrap_err();
    assert!(
        short.starts_with(
            "admin.token (--admin-token, STREAMHOOK_ADMIN_TOKEN) has 7 characters; use at least 32"
        ),
        "{short}"
    );
    check("[admin]\ntoken = \"0123456789abcdef0123456789abcdef\"").unwrap();
}

#[test]
fn check_config_refuses_an_empty_admin_token_naming_the_key() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_streamhook-server"))
        .args(["--admin-token", "", "--check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("admin.token (--admin-token, STREAMHOOK_ADMIN_TOKEN) is empty"),
        "{err}"
    );
}

#[test]
fn two_file_sinks_on_one_path_are_refused() {
    let toml = "[[sinks]]\ntype = \"file\"\nname = \"a\"\npath = \"ev/{date}.jsonl\"\n[[sinks]]\ntype = \"file\"\nname = \"b\"\npath = \"ev/{date}.jsonl\"\n";
    let err = Config::from_toml(toml)
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("two file sinks write \"ev/{date}.jsonl\""),
        "{err}"
    );
}

/// Flag-made sinks are named by what they write to: dropping one flag never hands its place
/// (cursor, position file) to another. Their old names (by flag order) are kept as aliases.
#[test]
fn flag_made_sinks_are_named_by_their_path_or_url() {
    use clap::Parser;
    let load = |args: &[&str]| {
        let args = streamhook_server::Args::try_parse_from(
            ["streamhook-server", "--no-stdout"].iter().chain(args),
        )
        .unwrap();
        Config::load(&args).unwrap()
    };
    let both = load(&[
        "--file",
        "a.jsonl",
        "--file",
        "b.jsonl",
        "--forward",
        "https://user:pw@app.example/hook?key=1",
    ]);
    assert_eq!(
        both.sink_names(),
        [
            "file:a.jsonl",
            "file:b.jsonl",
            "forward:https://app.example/hook"
        ]
    );
    assert_eq!(
        both.sink_aliases[1],
        ("file:b.jsonl".into(), "file-2".into())
    );
    let one = load(&["--file", "b.jsonl"]);
    assert_eq!(one.sink_names(), ["file:b.jsonl"]);
}

#[test]
fn two_file_sinks_writing_one_file_under_two_spellings_are_refused() {
    let toml = r#"
[[sinks]]
type = "file"
name = "a"
path = "a.jsonl"

[[sinks]]
type = "file"
name = "b"
path = "./x/../a.jsonl"
"#;
    let err = Config::from_toml(toml).unwrap().validate().unwrap_err();
    assert!(err.to_string().contains("two file sinks write"), "{err}");
}

#[test]
fn path_tokens_rotate_from_flags_or_the_file() {
    use clap::Parser;
    let new = "new-token-0123456789abcdef";
    let old = "old-token-0123456789abcdef";
    let args = streamhook_server::Args::try_parse_from([
        "streamhook-server",
        "--path-token",
        new,
        "--path-token",
        old,
    ])
    .unwrap();
    assert_eq!(Config::load(&args).unwrap().path_tokens(), [new, old]);
    let toml = format!("path_tokens = [\"{new}\", \"{old}\"]");
    let config = Config::from_toml(&toml).unwrap();
    config.validate().unwrap();
    assert!(
        config
            .redacted()
            .path_tokens
            .iter()
            .all(|t| t == "<redacted>")
    );
    let twice = format!("path_tokens = [\"{new}\", \"{new}\"]");
    assert!(Config::from_toml(&twice).unwrap().validate().is_err());
}

#[test]
fn a_sinks_start_is_newest_oldest_or_a_time() {
    let toml = r#"
[[sinks]]
type = "stdout"
start = "oldest"

[[sinks]]
type = "file"
path = "x.jsonl"
start = "2026-12-01T00:00:00Z"
"#;
    let config = Config::from_toml(toml).unwrap();
    assert_eq!(config.sinks[0].start().to_string(), "oldest");
    assert_eq!(config.sinks[1].start().to_string(), "2026-12-01T00:00:00Z");
    let bad = "[[sinks]]\ntype = \"stdout\"\nstart = \"yesterday\"";
    let err = Config::from_toml(bad).unwrap_err();
    assert!(
        err.contains("use \"newest\", \"oldest\" or an RFC 3339 time"),
        "{err}"
    );
}
