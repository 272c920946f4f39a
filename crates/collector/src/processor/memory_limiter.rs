//! The memory limiter: refuses new data while the process is over its soft limit.
//!
//! Two checks, so that a burst cannot outrun the periodic one:
//! * the process RSS, sampled every `check_interval` (soft limit = `limit - spike`), as the
//!   reference collector does;
//! * the bytes of requests admitted but not yet finished, which may not exceed the spike
//!   headroom (decoded spans weigh about [`DECODED_FACTOR`] times their wire size). One request
//!   is always admitted when none is in flight, so a lone large request still gets through.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::MemoryLimiterConfig;
use crate::error::PipelineError;
use crate::metrics::CollectorMetrics;

/// How much more memory a request takes decoded than on the wire (measured: about 3-4x).
pub const DECODED_FACTOR: u64 = 4;

const MIB: u64 = 1024 * 1024;

/// Shared admission state; cheap to clone.
#[derive(Clone)]
pub struct MemoryLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    limit: u64,
    soft_limit: u64,
    spike: u64,
    /// Over the soft limit: one request at a time.
    over: AtomicBool,
    /// Over the hard limit: nothing.
    over_hard: AtomicBool,
    last_rss: AtomicU64,
    in_flight: AtomicU64,
    retry_after: Duration,
    metrics: CollectorMetrics,
    release: Option<ReleaseMemory>,
}

/// Gives freed memory back to the operating system (the binary knows its allocator); called
/// when the process is over its soft limit, before refusing data. Without it, memory freed
/// after a burst may stay resident and keep the limiter refusing.
pub type ReleaseMemory = Arc<dyn Fn() + Send + Sync>;

/// Admission of one request; dropping it releases its bytes.
pub struct Admission {
    inner: Option<Arc<Inner>>,
    bytes: u64,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(inner) = &self.inner {
            inner.in_flight.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

impl MemoryLimiter {
    /// A limiter; when `limit_mib` is 0 it admits everything. Spawns the RSS sampler on the
    /// current tokio runtime; the sampler stops when the last clone is dropped.
    pub fn new(config: &MemoryLimiterConfig, metrics: CollectorMetrics) -> Self {
        Self::with_release(config, metrics, None)
    }

    /// A limiter that calls `release` when the process is found over its soft limit.
    pub fn with_release(
        config: &MemoryLimiterConfig,
        metrics: CollectorMetrics,
        release: Option<ReleaseMemory>,
    ) -> Self {
        let limit = config.limit_mib * MIB;
        let spike = config.spike_limit_mib.map(|s| s * MIB).unwrap_or(limit / 5);
        let inner = Arc::new(Inner {
            limit,
            soft_limit: limit.saturating_sub(spike),
            spike,
            over: AtomicBool::new(false),
            over_hard: AtomicBool::new(false),
            last_rss: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            retry_after: Duration::from_secs(1),
            metrics,
            release,
        });
        if limit > 0 {
            let weak = Arc::downgrade(&inner);
            let interval = config.check_interval.max(Duration::from_millis(10));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                loop {
                    tick.tick().await;
                    let Some(inner) = weak.upgrade() else { break };
                    inner.sample();
                }
            });
            inner.sample();
        }
        Self { inner }
    }

    /// Whether the process is over its soft limit right now (cheap; no request needed).
    ///
    /// Over the soft limit, requests are admitted one at a time (only while none is in
    /// flight), so that memory the process keeps after a burst (allocator caches, buffers)
    /// cannot leave it refusing for good; over the hard limit, nothing is admitted.
    pub fn is_over(&self) -> bool {
        let inner = &self.inner;
        inner.limit > 0
            && (inner.over_hard.load(Ordering::Acquire)
                || (inner.over.load(Ordering::Acquire)
                    && inner.in_flight.load(Ordering::Acquire) > 0))
    }

    /// The refusal to give while over the limit.
    pub fn refusal(&self) -> PipelineError {
        self.inner.metrics.memory_refusals.inc();
        PipelineError::MemoryLimited {
            detail: format!(
                "process RSS {} MiB, soft limit {} MiB, {} MiB of requests in flight",
                self.inner.last_rss.load(Ordering::Relaxed) / MIB,
                self.inner.soft_limit / MIB,
                self.inner.in_flight.load(Ordering::Relaxed) / MIB,
            ),
            retry_after: self.inner.retry_after,
        }
    }

    /// Admits a request of `wire_bytes`, or refuses it with a retryable error.
    pub fn admit(&self, wire_bytes: usize) -> Result<Admission, PipelineError> {
        let inner = &self.inner;
        if inner.limit == 0 {
            return Ok(Admission {
                inner: None,
                bytes: 0,
            });
        }
        if inner.over_hard.load(Ordering::Acquire) {
            return Err(self.refusal());
        }
        let bytes = wire_bytes as u64 * DECODED_FACTOR;
        let before = inner.in_flight.fetch_add(bytes, Ordering::AcqRel);
        let over_soft = inner.over.load(Ordering::Acquire);
        if before > 0 && (over_soft || before + bytes > inner.spike) {
            inner.in_flight.fetch_sub(bytes, Ordering::AcqRel);
            return Err(self.refusal());
        }
        Ok(Admission {
            inner: Some(inner.clone()),
            bytes,
        })
    }
}

impl Inner {
    fn sample(&self) {
        let Some(mut rss) = process_rss() else { return };
        if rss > self.soft_limit {
            if let Some(release) = &self.release {
                release();
                rss = process_rss().unwrap_or(rss);
            }
        }
        self.last_rss.store(rss, Ordering::Relaxed);
        self.over_hard.store(rss > self.limit, Ordering::Release);
        let over = rss > self.soft_limit;
        let was = self.over.swap(over, Ordering::AcqRel);
        if over != was {
            if over {
                tracing::warn!(
                    rss_mib = rss / MIB,
                    soft_limit_mib = self.soft_limit / MIB,
                    "memory over soft limit: refusing data"
                );
            } else {
                tracing::info!(
                    rss_mib = rss / MIB,
                    "memory back under soft limit: accepting data"
                );
            }
        }
    }
}

/// The resident set size of this process, in bytes (Linux: /proc/self/statm).
pub fn process_rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(4096) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(limit_mib: u64, spike_mib: u64) -> MemoryLimiter {
        MemoryLimiter::new(
            &MemoryLimiterConfig {
                check_interval: Duration::from_millis(10),
                limit_mib,
                spike_limit_mib: Some(spike_mib),
                ..Default::default()
            },
            CollectorMetrics::unregistered(),
        )
    }

    #[tokio::test]
    async fn no_limit_admits_everything() {
        let l = limiter(0, 0);
        let _a = l.admit(1 << 30).unwrap();
        let _b = l.admit(1 << 30).unwrap();
    }

    #[tokio::test]
    async fn in_flight_bytes_are_bounded_and_released() {
        let l = limiter(100_000, 8); // far above RSS: only the in-flight check acts
        let first = l.admit(3 * MIB as usize).unwrap(); // alone: always admitted (12 MiB decoded)
        let refused = l.admit(MIB as usize);
        assert!(matches!(refused, Err(PipelineError::MemoryLimited { .. })));
        drop(first);
        let _again = l.admit(MIB as usize).unwrap();
    }

    #[tokio::test]
    async fn release_runs_before_refusing() {
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let l = MemoryLimiter::with_release(
            &MemoryLimiterConfig {
                check_interval: Duration::from_millis(10),
                limit_mib: 1,
                spike_limit_mib: Some(0),
                ..Default::default()
            },
            CollectorMetrics::unregistered(),
            Some(Arc::new(move || {
                c.fetch_add(1, Ordering::Relaxed);
            })),
        );
        assert!(l.is_over());
        assert!(calls.load(Ordering::Relaxed) >= 1);
    }

    #[tokio::test]
    async fn over_the_soft_limit_requests_pass_one_at_a_time() {
        // A hard limit far above the process, a soft limit of zero.
        let l = limiter(100_000, 200_000);
        assert!(!l.is_over(), "nothing in flight: one request may come in");
        let first = l.admit(100).unwrap();
        assert!(l.is_over(), "one in flight: the next waits");
        assert!(matches!(
            l.admit(100),
            Err(PipelineError::MemoryLimited { .. })
        ));
        drop(first);
        let _again = l.admit(100).unwrap();
    }

    #[tokio::test]
    async fn over_rss_refuses() {
        let l = limiter(1, 0); // 1 MiB: every process is over it
        assert!(l.is_over());
        let e = l.admit(10).err().unwrap();
        assert!(e.to_string().contains("soft limit"), "{e}");
        assert!(e.retry_after().is_some());
    }
}
