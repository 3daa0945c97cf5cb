//! Live WebSocket sessions and the fan-out that wakes them.
//!
//! A session registers here when its device connects. When an envelope is
//! stored, the [`Fanout`] wakes the recipients' sessions, which then read
//! their mailbox from storage: the wake-up carries no message data, so the
//! store stays the single source of truth and nothing is lost if a wake-up is.
//!
//! A backend with one writer (SQLite) also hands each envelope, right after
//! its commit and in commit order, to the sessions here ([`CommitFeed`]):
//! it waits in the session's inbox with its mailbox sequence number, and a
//! session that has pushed everything older takes it from there instead of
//! reading it back. The mailbox stays the truth: the inbox is bounded, a
//! session that falls behind or is unsure reads the store, and nothing
//! leaves the mailbox before the device acknowledges it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use redoubt_proto::{DeviceId, EnvelopeId};
use tokio::sync::Notify;

use crate::storage::{CommitFeed, Committed};

/// Envelopes a session's inbox holds at most; past this it notes that it
/// overflowed and the session reads its mailbox instead.
pub const INBOX_CAPACITY: usize = 256;

/// Why the server ends a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The device was revoked.
    Revoked,
    /// A newer connection of the same device took over.
    Replaced,
    /// The service left this market (ISO code).
    MarketExited(String),
}

struct Entry {
    conn: u64,
    markets: Vec<String>,
    signal: Arc<Signal>,
}

/// What the rest of the relay tells one session: its mailbox may have
/// more, what was just committed for it, or it must close (and why). One
/// allocation per session; a watch channel for the close and a separate
/// `Notify` cost a few hundred bytes more per idle connection
/// (redoubt-load's idle scenario).
#[derive(Default)]
pub struct Signal {
    wake: Notify,
    close: Notify,
    state: Mutex<SignalState>,
}

#[derive(Default)]
struct SignalState {
    reason: Option<CloseReason>,
    inbox: Inbox,
}

/// Envelopes committed for a session since it last looked, in commit
/// order, and whether it must read its mailbox anyway.
#[derive(Default)]
pub struct Inbox {
    /// Each envelope with its sequence number in this device's mailbox.
    pub envelopes: std::collections::VecDeque<(i64, Arc<Committed>)>,
    /// Something may be in the mailbox that is not here: a wake-up without
    /// data (another path of the relay, another node), or the inbox was
    /// full.
    pub must_read: bool,
}

impl Signal {
    /// Wakes the session to read its mailbox (a permit is kept if it is
    /// busy).
    pub fn wake(&self) {
        self.lock().inbox.must_read = true;
        self.wake.notify_one();
    }

    /// Hands the session an envelope just committed for it, at mailbox
    /// position `seq`, and wakes it.
    fn deliver(&self, seq: i64, envelope: &Arc<Committed>) {
        {
            let mut state = self.lock();
            let inbox = &mut state.inbox;
            if inbox.envelopes.len() < INBOX_CAPACITY {
                inbox.envelopes.push_back((seq, envelope.clone()));
            } else {
                inbox.must_read = true;
            }
        }
        self.wake.notify_one();
    }

    /// Takes what the inbox holds, leaving it empty (and unallocated).
    pub fn take_inbox(&self) -> Inbox {
        std::mem::take(&mut self.lock().inbox)
    }

    /// Resolves when the session is woken.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Asks the session to close; the first reason stands. Returns whether
    /// this call gave it.
    pub fn close(&self, reason: CloseReason) -> bool {
        let mut state = self.lock();
        if state.reason.is_some() {
            return false;
        }
        state.reason = Some(reason);
        self.close.notify_one();
        true
    }

    /// Why the session must close, if it must.
    pub fn reason(&self) -> Option<CloseReason> {
        self.lock().reason.clone()
    }

    /// Resolves with the reason once the session must close.
    pub async fn closed(&self) -> CloseReason {
        loop {
            if let Some(reason) = self.reason() {
                return reason;
            }
            self.close.notified().await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SignalState> {
        // Each critical section is one assignment, push or take: a panic
        // cannot leave the state half-written.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sessions connected to this node.
#[derive(Default)]
pub struct Sessions {
    next_conn: AtomicU64,
    map: Mutex<HashMap<DeviceId, Entry>>,
}

/// A connected session's handle; dropping it unregisters the session.
pub struct Subscription {
    sessions: Arc<Sessions>,
    device: DeviceId,
    conn: u64,
    /// Wake-ups and the close request.
    pub signal: Arc<Signal>,
}

impl Sessions {
    /// Registers a session for `device`, closing any older one. `markets`
    /// are the markets the session was placed in when it connected.
    pub fn attach(self: &Arc<Self>, device: DeviceId, markets: Vec<String>) -> Subscription {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let signal = Arc::new(Signal::default());
        let entry = Entry {
            conn,
            markets,
            signal: signal.clone(),
        };
        let previous = self.lock().insert(device, entry);
        if let Some(previous) = previous {
            previous.signal.close(CloseReason::Replaced);
        }
        Subscription {
            sessions: self.clone(),
            device,
            conn,
            signal,
        }
    }

    /// Wakes the session of `device`, if it is connected here.
    pub fn wake(&self, device: &DeviceId) {
        if let Some(entry) = self.lock().get(device) {
            entry.signal.wake();
        }
    }

    /// Closes the session of `device`, if it is connected here.
    pub fn close(&self, device: &DeviceId, reason: CloseReason) {
        if let Some(entry) = self.lock().get(device) {
            entry.signal.close(reason);
        }
    }

    /// Closes every session placed in `market`; returns how many.
    pub fn close_market(&self, market: &str) -> usize {
        let map = self.lock();
        let mut closed = 0;
        for entry in map
            .values()
            .filter(|e| e.markets.iter().any(|m| m == market))
        {
            if entry
                .signal
                .close(CloseReason::MarketExited(market.to_owned()))
            {
                closed += 1;
            }
        }
        closed
    }

    /// How many devices are connected here.
    pub fn connected(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, Entry>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every operation is a single insert, lookup or remove).
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl CommitFeed for Sessions {
    fn committed(&self, envelopes: Vec<Committed>) {
        let map = self.lock();
        for envelope in envelopes {
            let envelope = Arc::new(envelope);
            for (device, seq) in &envelope.mailboxes {
                if let Some(entry) = map.get(device) {
                    entry.signal.deliver(*seq, &envelope);
                }
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut map = self.sessions.lock();
        if map.get(&self.device).is_some_and(|e| e.conn == self.conn) {
            map.remove(&self.device);
        }
    }
}

/// Tells the node holding a device's session that something happened. With
/// one node this is a direct call; across nodes it travels on a message bus.
#[async_trait]
pub trait Fanout: Send + Sync + 'static {
    /// Envelope `envelope` was queued for these devices.
    async fn wake(&self, envelope: EnvelopeId, devices: &[DeviceId]);
    /// This device was revoked: close its session.
    async fn revoked(&self, device: DeviceId);
    /// A session of this device opened here; sessions of it elsewhere are
    /// replaced. Nothing to do within one process (`Sessions::attach` did).
    async fn attached(&self, _device: DeviceId) {}
    /// Whether a wake-up can be lost on the way (over a network), so that
    /// sessions must also look at their mailbox now and then.
    fn may_lose_wakeups(&self) -> bool {
        false
    }
}

/// Fan-out within one process.
pub struct LocalFanout {
    sessions: Arc<Sessions>,
}

impl LocalFanout {
    /// Fan-out to the sessions of this process.
    pub fn new(sessions: Arc<Sessions>) -> Self {
        Self { sessions }
    }
}

#[async_trait]
impl Fanout for LocalFanout {
    async fn wake(&self, _envelope: EnvelopeId, devices: &[DeviceId]) {
        for d in devices {
            self.sessions.wake(d);
        }
    }

    async fn revoked(&self, device: DeviceId) {
        self.sessions.close(&device, CloseReason::Revoked);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(to: &[(DeviceId, i64)]) -> Committed {
        Committed {
            id: EnvelopeId::random(),
            kind: redoubt_proto::api::EnvelopeKind::Mls,
            received_at: redoubt_proto::Timestamp(0),
            payload: Arc::new(vec![1, 2, 3]),
            mailboxes: to.to_vec(),
        }
    }

    #[tokio::test]
    async fn commits_reach_live_sessions_in_order_until_the_inbox_is_full() {
        let sessions = Arc::new(Sessions::default());
        let (bob, carol, offline) = (DeviceId::random(), DeviceId::random(), DeviceId::random());
        let b = sessions.attach(bob, vec![]);
        let c = sessions.attach(carol, vec![]);
        let first = committed(&[(bob, 7), (carol, 3), (offline, 1)]);
        let second = committed(&[(bob, 8)]);
        sessions.committed(vec![first.clone(), second.clone()]);
        b.signal.woken().await;
        let inbox = b.signal.take_inbox();
        assert!(!inbox.must_read);
        let got: Vec<(i64, EnvelopeId)> = inbox.envelopes.iter().map(|(s, e)| (*s, e.id)).collect();
        assert_eq!(got, vec![(7, first.id), (8, second.id)]);
        assert_eq!(inbox.envelopes[0].1.queued(7).payload, vec![1, 2, 3]);
        assert_eq!(c.signal.take_inbox().envelopes.len(), 1);
        // Taken means gone.
        assert!(b.signal.take_inbox().envelopes.is_empty());
        // A full inbox keeps what it has and asks for a mailbox read.
        for seq in 0..INBOX_CAPACITY as i64 + 1 {
            sessions.committed(vec![committed(&[(bob, 100 + seq)])]);
        }
        let inbox = b.signal.take_inbox();
        assert_eq!(inbox.envelopes.len(), INBOX_CAPACITY);
        assert!(inbox.must_read);
        // A wake-up without data asks for a read too.
        sessions.wake(&carol);
        assert!(c.signal.take_inbox().must_read);
    }

    #[tokio::test]
    async fn a_new_session_replaces_the_old_one() {
        let sessions = Arc::new(Sessions::default());
        let device = DeviceId::random();
        let first = sessions.attach(device, vec![]);
        let second = sessions.attach(device, vec!["FR".into()]);
        assert_eq!(first.signal.reason(), Some(CloseReason::Replaced));
        drop(first);
        // Dropping the replaced session must not unregister its successor.
        assert_eq!(sessions.connected(), 1);
        sessions.wake(&device);
        second.signal.woken().await;
        assert_eq!(sessions.close_market("DE"), 0);
        assert_eq!(sessions.close_market("FR"), 1);
        assert_eq!(
            second.signal.reason(),
            Some(CloseReason::MarketExited("FR".into()))
        );
        drop(second);
        assert_eq!(sessions.connected(), 0);
    }
}
