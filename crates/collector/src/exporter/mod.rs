//! Exporters: each a small module with its `Config` (the reference collector's keys and
//! defaults) and a `build` returning a [`crate::Consumer`]. `exporterhelper` holds what they
//! share: retry with backoff and the sending queue (in memory or persistent on disk).

pub mod debug;
pub mod exporterhelper;
pub mod loadbalancing;
pub mod otlp;
pub mod otlphttp;
