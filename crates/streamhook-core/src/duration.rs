//! Durations in config files as people write them: `"10s"`, `"5m"`, `"1h 30m"`, `"250ms"`.
//!
//! Use with `#[serde(with = "streamhook_core::duration")]`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Serialises as `"1m 30s"`.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

/// Reads `"10s"`, `"5m"`, `"1h 30m"`, `"250ms"`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse(&s).map_err(serde::de::Error::custom)
}

/// Parses a duration, with an error that shows the accepted forms.
pub fn parse(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!(
            "{s:?} is not a duration ({e}); write it like \"10s\", \"5m\", \"1h 30m\" or \"250ms\""
        )
    })
}

/// The same for `Option<Duration>`.
pub mod option {
    use super::*;

    /// Serialises `Some` as `"1m 30s"`, `None` as nothing.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    /// Reads an optional duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => parse(&s).map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}
