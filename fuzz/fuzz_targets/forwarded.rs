//! Fuzz target: the forwarded-header parser and source filter.

#![no_main]

#[path = "../checks/forwarded.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));
