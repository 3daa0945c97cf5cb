//! How much one account may queue into any one device's mailbox (issue 16,
//! item 1): a token bucket per (sender account, recipient device), so that
//! one sender can no longer fill a victim's mailbox and lock everyone else
//! out of it for the message TTL.
//!
//! Why in memory, per node, and not in the database like the other limits:
//! a stored row per pair would be a table of who writes to whom, which the
//! relay promises not to keep (issue 16, item 9), and a write per recipient
//! on the hottest path. The buckets live only in this process and are
//! forgotten once full again. With N nodes a sender spreading its sends
//! over all of them gets at most N times the rate; the mailbox cap, which
//! is in the database, bounds the rest.

use std::collections::HashMap;
use std::sync::Mutex;

use redoubt_proto::{AccountId, DeviceId, Timestamp};

use crate::config::RateLimit;

/// Beyond this many buckets, the full ones are dropped (a full bucket is
/// the same as none).
const MAX_BUCKETS: usize = 200_000;

/// The buckets of one node.
pub struct SenderQuota {
    limit: RateLimit,
    buckets: Mutex<HashMap<(AccountId, DeviceId), Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    /// Envelopes the sender may still queue, fractional while refilling.
    tokens: f64,
    /// When `tokens` was last brought up to date, in milliseconds.
    at: i64,
}

impl SenderQuota {
    /// Buckets holding `limit.max` envelopes, refilled at `limit.max` per
    /// `limit.window`.
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            buckets: Mutex::default(),
        }
    }

    /// Takes one envelope from `sender`'s bucket for each recipient, and
    /// returns the recipients whose bucket was empty (nothing taken from
    /// theirs).
    pub fn take(
        &self,
        sender: AccountId,
        recipients: &[DeviceId],
        now: Timestamp,
    ) -> Vec<DeviceId> {
        let max = f64::from(self.limit.max);
        let window_ms = self.limit.window.as_millis().max(1) as f64;
        let per_ms = max / window_ms;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|_, b| b.tokens + (now.millis() - b.at) as f64 * per_ms < max);
        }
        let mut over = Vec::new();
        for &device in recipients {
            let bucket = buckets.entry((sender, device)).or_insert(Bucket {
                tokens: max,
                at: now.millis(),
            });
            // A clock that went back refills nothing.
            let elapsed = (now.millis() - bucket.at).max(0) as f64;
            bucket.tokens = (bucket.tokens + elapsed * per_ms).min(max);
            bucket.at = bucket.at.max(now.millis());
            if bucket.tokens >= 1.0 {
                bucket.tokens -= 1.0;
            } else {
                over.push(device);
            }
        }
        over
    }

    /// How long until `sender` may queue one more envelope for a device
    /// whose bucket is empty.
    pub fn retry_after(&self) -> std::time::Duration {
        self.limit.window / self.limit.max.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_sender_gets_the_burst_then_the_refill_per_recipient() {
        let quota = SenderQuota::new(RateLimit {
            max: 3,
            window: Duration::from_secs(3),
        });
        let (alice, bob) = (AccountId::random(), AccountId::random());
        let (victim, other) = (DeviceId::random(), DeviceId::random());
        let t0 = Timestamp(1_000_000);
        for _ in 0..3 {
            assert!(quota.take(alice, &[victim], t0).is_empty());
        }
        assert_eq!(quota.take(alice, &[victim, other], t0), vec![victim]);
        assert!(
            quota.take(bob, &[victim], t0).is_empty(),
            "another sender has a bucket of its own"
        );
        assert_eq!(
            quota.take(alice, &[victim], t0.plus(Duration::from_millis(500))),
            vec![victim]
        );
        assert!(quota
            .take(alice, &[victim], t0.plus(Duration::from_secs(1)))
            .is_empty());
        assert_eq!(quota.retry_after(), Duration::from_secs(1));
    }
}
