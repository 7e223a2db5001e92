//! JSON Schema of the payloads and of the envelope, generated from the types.
//!
//! `cargo xtask codegen` writes them to `docs/schema/`; `streamhook schema` prints them.

use schemars::generate::SchemaSettings;

use crate::{Envelope, Webhook};

/// The JSON Schema (2020-12) of a Gcore webhook payload, pretty-printed.
pub fn webhook_schema() -> String {
    let schema = SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<Webhook>();
    pretty(&schema)
}

/// The JSON Schema (2020-12) of the envelope sinks receive, pretty-printed.
pub fn envelope_schema() -> String {
    let schema = SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<Envelope>();
    pretty(&schema)
}

fn pretty(schema: &schemars::Schema) -> String {
    let mut out = serde_json::to_string_pretty(schema).unwrap_or_default();
    out.push('\n');
    out
}
