//! What a stream message holds: the resource's history key, its classifier state after the
//! event, how the request arrived, then the event record exactly as the redb journal stores it
//! (so a mirror stores what it copies byte for byte). And the neutral record a mirror hands
//! the journal ([`Imported`]).

use async_nats::HeaderMap;
use bytes::Bytes;
use streamhook_core::JournalError;
use streamhook_core::backend::{Imported, ImportedEvent};
use streamhook_core::journal::record::{decode_event, encode_record};
use streamhook_types::{Envelope, ResourceState};

/// A stream message's parts (see [`encode_message`]).
pub(crate) struct Message<'a> {
    pub(crate) key: Option<&'a str>,
    pub(crate) state: Option<&'a [u8]>,
    pub(crate) received: Option<&'a [u8]>,
    pub(crate) record: &'a [u8],
}

/// A message: version 1 (u8), then three length-prefixed parts (u32 big endian, `u32::MAX`
/// for none): the resource's history key, its classifier state after the event (JSON), how
/// the request arrived (JSON); then the event record as the redb journal stores it (its
/// envelope's seq is 0: the stream's sequence is the seq).
pub(crate) fn encode_message(
    key: Option<&str>,
    state: Option<&ResourceState>,
    received: Option<&[u8]>,
    received_at_ms: u64,
    prefix: &str,
    suffix: &str,
    envelope: &Envelope,
) -> Result<Bytes, JournalError> {
    let state = state.map(serde_json::to_vec).transpose().map_err(|e| {
        JournalError::Write(streamhook_core::Cause::of(
            streamhook_core::CauseKind::Encoding,
            e,
        ))
    })?;
    let mut out = vec![1u8];
    for part in [key.map(str::as_bytes), state.as_deref(), received] {
        match part {
            Some(bytes) => {
                out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                out.extend_from_slice(bytes);
            }
            None => out.extend_from_slice(&u32::MAX.to_be_bytes()),
        }
    }
    let mut record = Vec::new();
    encode_record(&mut record, received_at_ms, prefix, suffix, envelope)?;
    out.extend_from_slice(&record);
    Ok(Bytes::from(out))
}

/// Reads a message [`encode_message`] wrote.
pub(crate) fn decode_message(bytes: &[u8]) -> Result<Message<'_>, String> {
    if bytes.first() != Some(&1) {
        return Err("not a streamhook journal message (version byte)".into());
    }
    let mut at = 1;
    let mut parts: [Option<&[u8]>; 3] = [None; 3];
    for part in &mut parts {
        let len = bytes
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or("message too short")?;
        at += 4;
        if len != u32::MAX {
            let len = len as usize;
            *part = Some(bytes.get(at..at + len).ok_or("message too short")?);
            at += len;
        }
    }
    let key = parts[0]
        .map(std::str::from_utf8)
        .transpose()
        .map_err(|_| "history key is not UTF-8")?;
    Ok(Message {
        key,
        state: parts[1],
        received: parts[2],
        record: &bytes[at..],
    })
}

/// The header carrying the newest receive time (ms since the epoch) of the resource's events
/// as of the message: an event received before it is `late`. (A header, so receivers of the
/// earlier version, which do not know it, read the message unchanged.)
pub(crate) const NEWEST_HEADER: &str = "Streamhook-Newest-Ms";

/// The newest receive time of the resource's events as of a message: its header, or (a
/// message of the earlier version) the message's own receive time.
pub(crate) fn newest_ms(headers: Option<&HeaderMap>, record: &[u8]) -> u64 {
    headers
        .and_then(|h| h.get(NEWEST_HEADER))
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or_else(|| {
            record
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_be_bytes)
        })
}

/// A stream message as the journal imports it: unreadable ones are kept as such (with why).
pub(crate) fn imported(seq: u64, payload: &[u8]) -> Imported {
    let event = decode_message(payload).and_then(|message| {
        let stored = decode_event(seq, message.record).map_err(|e| e.to_string())?;
        Ok(ImportedEvent {
            stored,
            received: message.received.map(<[u8]>::to_vec),
            history: message
                .key
                .zip(message.state)
                .map(|(key, state)| (key.to_owned(), state.to_vec())),
        })
    });
    Imported { seq, event }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let envelope: Envelope = serde_json::from_str(
            r#"{"id":"x","seq":0,"received_at":"2026-11-28T00:00:00.000Z","source_ip":"127.0.0.1","kinds":["video.ready"],"resource":{"type":"video","id":5},"payload":{"type":"video"}}"#,
        )
        .unwrap();
        let bytes =
            encode_message(Some("video:5"), None, Some(b"{}"), 7, " ", "\n", &envelope).unwrap();
        let m = decode_message(&bytes).unwrap();
        assert_eq!(m.key, Some("video:5"));
        assert_eq!(m.state, None);
        assert_eq!(m.received, Some(&b"{}"[..]));
        let stored = decode_event(1, m.record).unwrap();
        assert_eq!(stored.body_suffix, "\n");
        assert!(decode_message(&bytes[..5]).is_err());
        assert!(decode_message(b"").is_err());
    }
}
