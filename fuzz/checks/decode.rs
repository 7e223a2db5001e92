//! The properties the `decode` fuzz target checks, shared with the regression test that runs
//! the kept corpus on stable (`crates/streamhook-types/tests/fuzz_corpus.rs`).

use streamhook_types::decode::{self, WarningKind};

/// Any bytes: decoding never panics; an error has a message and a location inside the input;
/// a decoded payload classifies, summarises, and re-serialises to JSON that decodes to the
/// same webhook (with no coercion left to report).
pub fn check(data: &[u8]) {
    match decode::decode(data) {
        Err(e) => {
            assert!(!e.to_string().is_empty());
            if let Some(loc) = e.location() {
                assert!(loc.line >= 1);
            }
        }
        Ok(decoded) => {
            let webhook = &decoded.webhook;
            let meaning = streamhook_types::classify::classify(webhook);
            assert!(!meaning.kinds.is_empty(), "no kinds for {webhook:?}");
            let _ = streamhook_types::summary::summary(webhook);
            for w in &decoded.warnings {
                assert!(!w.to_string().is_empty());
            }
            let value = serde_json::to_value(webhook).expect("a decoded webhook serialises");
            let again = decode::decode_value(&value).expect("a re-serialised webhook decodes");
            assert_eq!(
                &again.webhook, webhook,
                "re-serialising changed the webhook"
            );
            assert!(
                again
                    .warnings
                    .iter()
                    .all(|w| !matches!(w.kind, WarningKind::Coerced { .. })),
                "re-serialised values still need coercion"
            );
            if decoded
                .warnings
                .iter()
                .all(|w| !matches!(w.kind, WarningKind::Coerced { .. }))
            {
                let original: serde_json::Value =
                    serde_json::from_slice(data).expect("it decoded, so it is JSON");
                assert_eq!(
                    value, original,
                    "a payload without coercions must round-trip exactly"
                );
            }
        }
    }
}
