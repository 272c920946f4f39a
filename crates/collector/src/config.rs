//! Settings of the built-in processors (batch, memory_limiter), with the reference
//! collector's keys and defaults, and the duration format they share.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The batch processor (`send_batch_size` 8192, `timeout` 200ms, `send_batch_max_size` 0).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// Send once this many spans are waiting.
    pub send_batch_size: usize,
    /// Send at the latest this long after the first span of a batch arrived.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Split batches larger than this (0: no limit).
    pub send_batch_max_size: usize,
    /// Send as soon as no more requests are waiting, instead of waiting for `timeout`.
    /// Clients wait for their spans to be durable, so waiting only adds latency; `false`
    /// restores the reference collector's timing.
    pub flush_when_idle: bool,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            send_batch_size: 8192,
            timeout: Duration::from_millis(200),
            send_batch_max_size: 0,
            flush_when_idle: true,
        }
    }
}

/// The memory limiter. `limit_mib` 0 means "no limit".
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryLimiterConfig {
    #[serde(with = "duration")]
    pub check_interval: Duration,
    pub limit_mib: u64,
    /// Headroom below the limit; the soft limit is `limit - spike`. Default: 20% of the limit.
    pub spike_limit_mib: Option<u64>,
    /// The limit as a percentage of the memory available (the cgroup's limit, else the
    /// machine's); used when `limit_mib` is 0.
    pub limit_percentage: Option<u64>,
    /// The headroom as a percentage of the memory available.
    pub spike_limit_percentage: Option<u64>,
}

impl MemoryLimiterConfig {
    /// `limit_mib` and `spike_limit_mib`, with percentages resolved against `total_mib`.
    pub fn resolved(&self, total_mib: u64) -> MemoryLimiterConfig {
        let mut c = self.clone();
        if c.limit_mib == 0 {
            if let Some(p) = c.limit_percentage {
                c.limit_mib = total_mib * p / 100;
            }
        }
        if c.spike_limit_mib.is_none() {
            if let Some(p) = c.spike_limit_percentage {
                c.spike_limit_mib = Some(total_mib * p / 100);
            }
        }
        c
    }
}

impl Default for MemoryLimiterConfig {
    fn default() -> Self {
        Self {
            check_interval: Duration::from_millis(100),
            limit_mib: 0,
            spike_limit_mib: None,
            limit_percentage: None,
            spike_limit_percentage: None,
        }
    }
}

/// Durations as the reference writes them: `200ms`, `5s`, `1m30s`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim()).map_err(|e| {
            serde::de::Error::custom(format!("{text:?} is not a duration like 200ms or 5s: {e}"))
        })
    }
}
