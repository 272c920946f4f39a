//! Test support shared by the store crate's integration tests (`mod support;` in a test file).
//!
//! - [`seaweed`]: a real SeaweedFS (`weed mini`) on random free ports, for the S3 backend.

// Each test binary uses a different part of the harness.
#![allow(dead_code)]

pub mod seaweed;

pub use seaweed::Seaweed;
