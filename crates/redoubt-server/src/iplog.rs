//! Feeds the IP-address log: one row per (account, IP, port), with first and
//! last sighting. Rows are refreshed at most once per `touch_interval` per
//! connection, so a chatty client does not turn every request into a write.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redoubt_proto::AccountId;

use crate::clock::Clock;
use crate::storage::{IpObservation, Store};

/// Entries kept in the throttle cache before stale ones are dropped.
const CACHE_PRUNE_AT: usize = 100_000;

/// Records sightings, throttled.
pub struct IpRecorder {
    store: Arc<dyn Store>,
    clock: Clock,
    touch_interval_ms: i64,
    recent: Mutex<HashMap<(AccountId, SocketAddr), i64>>,
}

impl IpRecorder {
    /// A recorder writing to `store`.
    pub fn new(store: Arc<dyn Store>, clock: Clock, touch_interval: Duration) -> Self {
        Self {
            store,
            clock,
            touch_interval_ms: i64::try_from(touch_interval.as_millis()).unwrap_or(i64::MAX),
            recent: Mutex::new(HashMap::new()),
        }
    }

    /// Notes that `account` was seen at `addr` now. With `force`, writes even
    /// if the row was refreshed recently (used when a WebSocket closes, so its
    /// last sighting is exact).
    pub async fn observe(&self, account: AccountId, addr: SocketAddr, force: bool) {
        let now = self.clock.now();
        {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            let key = (account, addr);
            if !force {
                if let Some(last) = recent.get(&key) {
                    if now.millis() - last < self.touch_interval_ms {
                        return;
                    }
                }
            }
            recent.insert(key, now.millis());
            if recent.len() > CACHE_PRUNE_AT {
                let horizon = now.millis() - self.touch_interval_ms;
                recent.retain(|_, last| *last >= horizon);
            }
        }
        let observation = IpObservation {
            account_id: account,
            ip: addr.ip(),
            port: addr.port(),
            at: now,
        };
        if let Err(e) = self.store.record_ip(observation).await {
            // A failed log write must not fail the user's request; the next
            // sighting retries because the cache entry is dropped.
            tracing::error!(error = %e, "could not record IP-log entry");
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            recent.remove(&(account, addr));
        }
    }
}
