//! The server's notion of "now".
//!
//! Expiry, retention and rate limits all read the time through a [`Clock`],
//! so tests can move time forward instead of sleeping. Production uses the
//! system clock: timestamps in the IP log may be read by a court, so they
//! must follow real (NTP-disciplined) wall time, not a monotonic counter.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redoubt_proto::Timestamp;

/// A timestamp in the legal desk's time type (the market book, court
/// orders and notices use `time::OffsetDateTime`).
pub fn offset(t: Timestamp) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.millis()) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// A source of wall-clock time. Cheap to clone; clones share one time line.
#[derive(Clone, Debug)]
pub struct Clock(Arc<Source>);

#[derive(Debug)]
enum Source {
    /// The system's real-time clock.
    System,
    /// The system clock plus an offset that tests push forward.
    Adjustable { offset_ms: AtomicI64 },
    /// Follows tokio's clock from a fixed start, so `tokio::time::pause()` and
    /// `tokio::time::advance()` move it.
    Tokio {
        start_ms: i64,
        start: tokio::time::Instant,
    },
}

fn system_now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

impl Clock {
    /// The real clock, for production.
    pub fn system() -> Self {
        Self(Arc::new(Source::System))
    }

    /// The real clock plus an offset moved by [`Clock::advance`], for tests
    /// that drive a running server through days of simulated time.
    pub fn adjustable() -> Self {
        Self(Arc::new(Source::Adjustable {
            offset_ms: AtomicI64::new(0),
        }))
    }

    /// A clock tied to tokio's time, for tests under `tokio::time::pause()`.
    /// Must be created inside a tokio runtime.
    pub fn tokio() -> Self {
        Self(Arc::new(Source::Tokio {
            start_ms: system_now_ms(),
            start: tokio::time::Instant::now(),
        }))
    }

    /// The current time.
    pub fn now(&self) -> Timestamp {
        match &*self.0 {
            Source::System => Timestamp(system_now_ms()),
            Source::Adjustable { offset_ms } => {
                Timestamp(system_now_ms().saturating_add(offset_ms.load(Ordering::SeqCst)))
            }
            Source::Tokio { start_ms, start } => Timestamp(*start_ms).plus(start.elapsed()),
        }
    }

    /// The current time in the legal desk's time type.
    pub fn now_offset(&self) -> time::OffsetDateTime {
        offset(self.now())
    }

    /// Moves an adjustable clock forward. Other clocks ignore it: the system
    /// clock cannot be moved, and a tokio clock moves with `tokio::time::advance`.
    pub fn advance(&self, by: Duration) {
        if let Source::Adjustable { offset_ms } = &*self.0 {
            let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
            offset_ms.fetch_add(ms, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjustable_clock_moves_forward() {
        let clock = Clock::adjustable();
        let before = clock.now();
        clock.advance(Duration::from_secs(86_400));
        assert!(clock.now().millis() - before.millis() >= 86_400_000);
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let clock = Clock::tokio();
        let before = clock.now();
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(clock.now().millis() - before.millis(), 3_600_000);
    }
}
