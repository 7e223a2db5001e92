//! The spool: events a backend accepted (answered 2xx) but could not yet hand to the shared
//! journal it sequences into (the replicated journal while NATS is away, or slow). They are
//! kept in the local file, synced like any append (the writer commits them in its group
//! commit), in arrival order, until the backend has forwarded each and takes it out.
//!
//! A spooled event keeps what it was given on arrival: its id and receive time, so that
//! forwarding it later (with the same `Nats-Msg-Id`) stores the same event.

use std::collections::HashMap;
use std::net::IpAddr;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use streamhook_types::{EventId, Problem, Resource};

use super::error::{JournalError, read_err, write_err};
use super::record::{Parsed, SPOOL};
use super::{Journal, SpoolStats, Spooled};
use crate::backend::Draft;

/// A spooled event as stored: JSON, the payload embedded as it came.
#[derive(Serialize, Deserialize)]
struct Stored<'a> {
    id: String,
    received_at_ms: u64,
    source: IpAddr,
    #[serde(borrow)]
    payload: &'a RawValue,
    prefix: String,
    suffix: String,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    received: Option<&'a RawValue>,
    /// Set for an invalid event: its resource and problems (a webhook is decoded again from
    /// its payload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    invalid: Option<(Resource, Vec<Problem>)>,
    /// The resource's history key (`stream:12`), for a webhook that has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    /// Set for an event recovered from the provider's API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reconciled: Option<streamhook_types::Reconciled>,
}

/// Only the resource key of a spooled event (read without decoding the rest).
#[derive(Deserialize)]
struct KeyOnly {
    #[serde(default)]
    key: Option<String>,
}

/// Encodes a spooled event.
pub(crate) fn encode(
    id: &EventId,
    received_at_ms: u64,
    draft: &Draft,
) -> Result<Vec<u8>, JournalError> {
    let received = match &draft.received {
        Some(bytes) => Some(serde_json::from_slice::<&RawValue>(bytes).map_err(write_err)?),
        None => None,
    };
    let (invalid, key) = match &draft.parsed {
        Parsed::Webhook(webhook) => (None, super::record::history_key(webhook)),
        Parsed::Invalid { resource, problems } => {
            (Some((resource.clone(), problems.clone())), None)
        }
    };
    let stored = Stored {
        id: id.0.clone(),
        received_at_ms,
        source: draft.source,
        payload: &draft.payload,
        prefix: draft.prefix.clone(),
        suffix: draft.suffix.clone(),
        received,
        invalid,
        key,
        reconciled: draft.reconciled.clone(),
    };
    serde_json::to_vec(&stored).map_err(write_err)
}

/// Decodes a spooled event.
fn decode(key: u64, bytes: &[u8]) -> Result<Spooled, JournalError> {
    let corrupt = |message: String| JournalError::Corrupt {
        seq: key,
        message: format!("spooled event: {message}"),
    };
    let stored: Stored<'_> = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    let parsed = match stored.invalid {
        Some((resource, problems)) => Parsed::Invalid { resource, problems },
        None => {
            // Decoded again (the webhook is not stored twice). A payload this version's
            // decoder does not take (it was accepted by another) is kept, as invalid, with
            // why: never dropped.
            let decoded = streamhook_types::decode::parse_json(stored.payload.get().as_bytes())
                .map_err(|e| e.to_string())
                .and_then(|value| {
                    streamhook_types::decode::decode_value(&value).map_err(|e| e.to_string())
                });
            match decoded {
                Ok(decoded) => Parsed::Webhook(decoded.webhook),
                Err(why) => Parsed::Invalid {
                    resource: Resource {
                        kind: serde_json::from_str::<serde_json::Value>(stored.payload.get())
                            .ok()
                            .and_then(|v| v["type"].as_str().map(str::to_owned))
                            .unwrap_or_default(),
                        id: None,
                    },
                    problems: vec![Problem {
                        path: "$".into(),
                        line: None,
                        column: None,
                        message: format!(
                            "accepted into the spool, then not decoded again when forwarded: {why}"
                        ),
                    }],
                },
            }
        }
    };
    Ok(Spooled {
        key,
        resource: stored.key,
        id: EventId(stored.id),
        received_at_ms: stored.received_at_ms,
        draft: Draft {
            parsed,
            payload: stored.payload.to_owned(),
            prefix: stored.prefix,
            suffix: stored.suffix,
            source: stored.source,
            received: stored.received.map(|r| r.get().as_bytes().to_vec()),
            reconciled: stored.reconciled,
            expect: None,
        },
    })
}

impl Journal {
    /// Keeps `draft` in the spool (synced before this returns, in the writer's group
    /// commit), with the id and receive time it is answered with.
    pub async fn spool(
        &self,
        id: EventId,
        received_at_ms: u64,
        draft: Draft,
    ) -> Result<u64, JournalError> {
        let bytes = encode(&id, received_at_ms, &draft)?;
        self.inner.writer.spool(bytes).await
    }

    /// Up to `limit` spooled events, oldest first, each by its key. One that cannot be read
    /// is an `Err` among the others (it stays in the spool until taken out).
    #[allow(clippy::type_complexity)]
    pub fn spooled(
        &self,
        limit: usize,
    ) -> Result<Vec<(u64, Result<Spooled, JournalError>)>, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(read_err)?;
        let table = txn.open_table(SPOOL).map_err(read_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(read_err)?.take(limit) {
            let (k, v) = entry.map_err(read_err)?;
            out.push((k.value(), decode(k.value(), v.value())));
        }
        Ok(out)
    }

    /// Takes forwarded events out of the spool (one synced commit).
    pub fn unspool(&self, keys: &[u64]) -> Result<(), JournalError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(write_err)?;
        let mut removed = 0;
        {
            let mut table = txn.open_table(SPOOL).map_err(write_err)?;
            for key in keys {
                if table.remove(*key).map_err(write_err)?.is_some() {
                    removed += 1;
                }
            }
        }
        self.inner.health.commit(txn)?;
        self.inner
            .spool_count
            .fetch_sub(removed, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// How many spooled events each resource has (by history key), read without decoding
    /// them; records that cannot be read count under no resource.
    pub fn spool_resources(&self) -> Result<HashMap<String, u64>, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(read_err)?;
        let table = txn.open_table(SPOOL).map_err(read_err)?;
        let mut out = HashMap::new();
        for entry in table.iter().map_err(read_err)? {
            let (_, v) = entry.map_err(read_err)?;
            if let Ok(KeyOnly { key: Some(key) }) = serde_json::from_slice(v.value()) {
                *out.entry(key).or_default() += 1;
            }
        }
        Ok(out)
    }

    /// How many events wait in the spool, from memory (no database access).
    pub fn spool_len(&self) -> u64 {
        self.inner
            .spool_count
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How much waits in the spool, and since when.
    pub fn spool_stats(&self) -> Result<SpoolStats, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(read_err)?;
        let table = txn.open_table(SPOOL).map_err(read_err)?;
        let events = table.len().map_err(read_err)?;
        #[derive(Deserialize)]
        struct Time {
            received_at_ms: u64,
        }
        let oldest_ms = match table.first().map_err(read_err)? {
            Some((_, v)) => serde_json::from_slice::<Time>(v.value())
                .ok()
                .map(|t| t.received_at_ms),
            None => None,
        };
        Ok(SpoolStats { events, oldest_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spooled_payload_this_version_does_not_decode_is_kept_as_invalid() {
        // What another version accepted (or a damaged payload): not a webhook this decoder
        // takes. It must be forwarded as an invalid event with why, never dropped.
        let bytes = br#"{"id":"x","received_at_ms":5,"source":"127.0.0.1","payload":[1,2],"prefix":"","suffix":"","key":"stream:1"}"#;
        let spooled = decode(3, bytes).expect("kept");
        assert_eq!(spooled.resource.as_deref(), Some("stream:1"));
        match spooled.draft.parsed {
            Parsed::Invalid { problems, .. } => {
                assert!(
                    problems[0].message.contains("not decoded again"),
                    "{problems:?}"
                )
            }
            Parsed::Webhook(_) => panic!("decoded"),
        }
        assert!(decode(4, b"not json").is_err());
    }
}
