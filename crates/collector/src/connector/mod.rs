//! Connectors: the end of a traces pipeline that turns spans into metrics (spanmetrics,
//! servicegraph), served in Prometheus format.

pub mod servicegraph;
pub mod spanmetrics;
