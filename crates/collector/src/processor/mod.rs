//! Processors: each a small module with its config (in `config`) and a `new`.

pub mod batch;
pub mod memory_limiter;
