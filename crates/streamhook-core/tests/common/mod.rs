//! Helpers shared by the core's integration tests: those of [`streamhook_core::testing`].

#![allow(dead_code, unused_imports)]

pub use streamhook_core::testing::*;
