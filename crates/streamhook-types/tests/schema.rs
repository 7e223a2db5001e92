//! The JSON Schema files in `docs/schema/` must match the types; `cargo xtask codegen`
//! rewrites them (it runs this test with `STREAMHOOK_CODEGEN=write`).

use std::path::Path;

fn check_or_write(file: &str, generated: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/schema")
        .join(file);
    if std::env::var_os("STREAMHOOK_CODEGEN").is_some_and(|v| v == "write") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, generated).unwrap();
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "docs/schema/{file} is stale: run `cargo xtask codegen` and commit the result"
    );
}

#[test]
fn webhook_schema_is_fresh() {
    check_or_write(
        "webhook.schema.json",
        &streamhook_types::schema::webhook_schema(),
    );
}

#[test]
fn envelope_schema_is_fresh() {
    check_or_write(
        "envelope.schema.json",
        &streamhook_types::schema::envelope_schema(),
    );
}

#[test]
fn schema_accepts_a_seed_payload_shape() {
    let schema: serde_json::Value =
        serde_json::from_str(&streamhook_types::schema::webhook_schema()).unwrap();
    let variants = schema["oneOf"].as_array().unwrap();
    let types: Vec<&str> = variants
        .iter()
        .filter_map(|v| v["properties"]["type"]["const"].as_str())
        .collect();
    assert_eq!(
        types,
        ["stream", "video", "video_delete", "restream", "broadcast"]
    );
}
