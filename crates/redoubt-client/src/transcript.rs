//! The shape of a conversation, checked on the device (no I/O). MLS makes
//! each message confidential and authentic, but the relay still chooses
//! what each device receives and in which order. So every application
//! message carries, inside its encryption, its place in its sender's
//! stream ([`SenderOrder`]): a counter and the hash of the sender's
//! previous message. Receivers put each sender's messages in that order,
//! show a gap where a counter is skipped (filled in if the message comes
//! later), and drop a repeat.
//!
//! Counters restart at 1 in every MLS epoch, per sending device. That
//! makes restarts unambiguous: a device that joins, is re-added, or is
//! linked starts in an epoch of its own, so a receiver that was a member
//! in an epoch expects every sender's messages of that epoch from 1, and
//! nothing from before it joined. The first message a device sends in a
//! new epoch also says how many it sent in the last epoch it sent any, so
//! the tail of an epoch cannot be dropped unseen either.

use std::collections::BTreeMap;

use redoubt_proto::DeviceId;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

/// How many epochs of each sender's counters a device keeps per chat.
const EPOCHS_KEPT: usize = 16;

/// A message's place in its sender's stream, carried inside the MLS
/// ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderOrder {
    /// 1 for the sender device's first application message in this MLS
    /// epoch, then 2, 3, …
    pub n: u64,
    /// SHA-256 (hex) of the sender's previous message in this epoch (its
    /// plaintext payload); empty for `n` = 1.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prev: String,
    /// On `n` = 1: the last earlier epoch this device sent in, and how
    /// many messages it sent there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<(u64, u64)>,
}

/// The hash a message is chained by.
pub fn message_hash(payload: &[u8]) -> String {
    let digest = Sha256::digest(payload);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// What this device sent in a chat's current epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Sent {
    epoch: u64,
    count: u64,
    last: String,
}

/// What this device received from one sender in one epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Received {
    /// The highest counter seen.
    highest: u64,
    /// The hash of the message with the highest counter.
    last: String,
    /// Counters skipped and not (yet) received, with the placeholder that
    /// stands in the history for each.
    missing: BTreeMap<u64, Uuid>,
}

/// One chat's transcript state on this device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatTranscript {
    /// The MLS epoch this device joined (or made) the chat in.
    #[serde(default)]
    joined: u64,
    #[serde(default)]
    sent: Option<Sent>,
    /// Per sending device, per epoch.
    #[serde(default)]
    received: BTreeMap<DeviceId, BTreeMap<u64, Received>>,
}

/// What a received message means for the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// The next message of its sender: append it.
    Next,
    /// It comes after messages that have not arrived: append a placeholder
    /// for each of these counters first (`placeholders[i]` is the id to
    /// give the i-th), then it.
    AfterGap {
        /// Ids for the placeholders, in counter order.
        placeholders: Vec<Uuid>,
    },
    /// It is one that was missing: it takes its placeholder's place.
    Fills(Uuid),
    /// Its counter was seen already: the relay repeated it. Drop it.
    Repeat,
}

/// A problem with the shape of a sender's stream that is not a gap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch;

impl ChatTranscript {
    /// A chat this device joined (or made) in `epoch`.
    pub fn joined_in(epoch: u64) -> Self {
        Self {
            joined: epoch,
            ..Default::default()
        }
    }

    /// The order of the next message this device sends in `epoch`; call
    /// [`ChatTranscript::sent`] with its payload's hash once it is sealed.
    pub fn next_order(&self, epoch: u64) -> SenderOrder {
        match &self.sent {
            Some(s) if s.epoch == epoch => SenderOrder {
                n: s.count + 1,
                prev: s.last.clone(),
                before: None,
            },
            other => SenderOrder {
                n: 1,
                prev: String::new(),
                before: other.as_ref().map(|s| (s.epoch, s.count)),
            },
        }
    }

    /// Records that the message `order` (whose payload hashes to `hash`)
    /// was sent in `epoch`.
    pub fn sent(&mut self, epoch: u64, order: &SenderOrder, hash: String) {
        self.sent = Some(Sent {
            epoch,
            count: order.n,
            last: hash,
        });
    }

    /// Places a message `sender` sent in `epoch`, whose payload hashes to
    /// `hash`. `fresh` makes placeholder ids. Returns where it goes, and a
    /// [`Mismatch`] when its `prev` is not the hash of the message before
    /// it that this device holds (the sender's device showed two histories).
    pub fn receive(
        &mut self,
        sender: DeviceId,
        epoch: u64,
        order: &SenderOrder,
        hash: String,
        mut fresh: impl FnMut() -> Uuid,
    ) -> (Placement, Option<Mismatch>) {
        let epochs = self.received.entry(sender).or_default();
        let stream = epochs.entry(epoch).or_default();
        let placement = if order.n == 0 || order.n <= stream.highest {
            match stream.missing.remove(&order.n) {
                Some(placeholder) => Placement::Fills(placeholder),
                None => Placement::Repeat,
            }
        } else {
            let placeholders: Vec<Uuid> = (stream.highest + 1..order.n)
                .map(|k| {
                    let id = fresh();
                    stream.missing.insert(k, id);
                    id
                })
                .collect();
            let mismatch = order.n == stream.highest + 1
                && stream.highest > 0
                && !stream.last.is_empty()
                && stream.last != order.prev;
            stream.highest = order.n;
            stream.last = hash;
            let placement = if placeholders.is_empty() {
                Placement::Next
            } else {
                Placement::AfterGap { placeholders }
            };
            while epochs.len() > EPOCHS_KEPT {
                epochs.pop_first();
            }
            return (placement, mismatch.then_some(Mismatch));
        };
        (placement, None)
    }

    /// Messages a sender's `before` says it sent in an earlier epoch that
    /// this device, a member then, never received: placeholders for them
    /// (ids from `fresh`), recorded as missing so a late one fills in.
    pub fn missing_before(
        &mut self,
        sender: DeviceId,
        before: (u64, u64),
        mut fresh: impl FnMut() -> Uuid,
    ) -> Vec<Uuid> {
        let (epoch, count) = before;
        if epoch < self.joined {
            return Vec::new();
        }
        let epochs = self.received.entry(sender).or_default();
        // Epochs older than those kept are not judged.
        if epochs.len() >= EPOCHS_KEPT && epochs.keys().next().is_some_and(|e| epoch < *e) {
            return Vec::new();
        }
        let stream = epochs.entry(epoch).or_default();
        let ids: Vec<Uuid> = (stream.highest + 1..=count)
            .map(|k| {
                let id = fresh();
                stream.missing.insert(k, id);
                id
            })
            .collect();
        stream.highest = stream.highest.max(count);
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(n: u64, prev: &str) -> SenderOrder {
        SenderOrder {
            n,
            prev: prev.into(),
            before: None,
        }
    }

    #[test]
    fn a_sender_numbers_its_messages_per_epoch_and_chains_them() {
        let mut t = ChatTranscript::joined_in(1);
        let first = t.next_order(1);
        assert_eq!((first.n, first.prev.as_str(), first.before), (1, "", None));
        t.sent(1, &first, "h1".into());
        let second = t.next_order(1);
        assert_eq!((second.n, second.prev.as_str()), (2, "h1"));
        t.sent(1, &second, "h2".into());
        // A new epoch starts again at 1 and says how many went before.
        let next = t.next_order(3);
        assert_eq!((next.n, next.before), (1, Some((1, 2))));
    }

    #[test]
    fn gaps_are_placed_and_filled_and_repeats_dropped() {
        let mut t = ChatTranscript::joined_in(1);
        let alice = DeviceId::random();
        let mut ids = Vec::new();
        let mut fresh = || {
            let id = Uuid::new_v4();
            ids.push(id);
            id
        };
        assert_eq!(
            t.receive(alice, 1, &order(1, ""), "h1".into(), &mut fresh),
            (Placement::Next, None)
        );
        // 2 and 3 are held back; 4 comes first.
        let (placed, _) = t.receive(alice, 1, &order(4, "h3"), "h4".into(), &mut fresh);
        let Placement::AfterGap { placeholders } = placed else {
            panic!("a gap: {placed:?}")
        };
        assert_eq!(placeholders.len(), 2);
        assert_eq!(
            t.receive(alice, 1, &order(3, "h2"), "h3".into(), &mut fresh)
                .0,
            Placement::Fills(placeholders[1])
        );
        assert_eq!(
            t.receive(alice, 1, &order(3, "h2"), "h3".into(), &mut fresh)
                .0,
            Placement::Repeat
        );
        assert_eq!(
            t.receive(alice, 1, &order(2, "h1"), "h2".into(), &mut fresh)
                .0,
            Placement::Fills(placeholders[0])
        );
        // Another device's stream, and another epoch, are their own.
        let bob = DeviceId::random();
        assert_eq!(
            t.receive(bob, 1, &order(1, ""), "b1".into(), &mut fresh).0,
            Placement::Next
        );
        assert_eq!(
            t.receive(alice, 2, &order(1, ""), "x1".into(), &mut fresh)
                .0,
            Placement::Next
        );
        // A next message whose prev is not the one held: a mismatch.
        assert_eq!(
            t.receive(alice, 2, &order(2, "not-x1"), "x2".into(), &mut fresh)
                .1,
            Some(Mismatch)
        );
    }

    #[test]
    fn the_tail_of_an_epoch_cannot_be_dropped_unseen() {
        let mut t = ChatTranscript::joined_in(2);
        let alice = DeviceId::random();
        let mut fresh = Uuid::new_v4;
        t.receive(alice, 2, &order(1, ""), "h1".into(), &mut fresh);
        // Alice sent 3 in epoch 2; this device got 1.
        assert_eq!(t.missing_before(alice, (2, 3), &mut fresh).len(), 2);
        // Epochs before this device joined are none of its business.
        assert!(t.missing_before(alice, (1, 9), &mut fresh).is_empty());
        // Said again, nothing new is missing.
        assert!(t.missing_before(alice, (2, 3), &mut fresh).is_empty());
    }
}
