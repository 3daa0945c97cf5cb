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
//! nothing from before it joined.
//!
//! Members also tell each other what they received ([`Digest`]): the first
//! message a device sends in a new epoch carries, for the epoch before,
//! the highest counter it holds from every device that wrote there (its
//! own included), and every [`DIGEST_EVERY`]th message in an epoch does the
//! same for the current one. A receiver missing something another member
//! received shows a gap naming who received it, so the tail of an epoch,
//! or a message the relay gave only some members, cannot vanish unseen.
//! The digest lists only counts that grew since the device's last digest
//! (at most [`DIGEST_MAX_DEVICES`], the rest in the next one), and rides
//! on messages already being sent: no extra messages, in a group of 1,000
//! as in a direct chat. It also carries the epoch's authenticator (RFC
//! 9420 §8.7): a member with another one is in another history of the
//! chat.

use std::collections::{BTreeMap, BTreeSet};

use redoubt_proto::DeviceId;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How many epochs of each sender's counters a device keeps per chat.
const EPOCHS_KEPT: usize = 16;

/// Every how many messages in an epoch a device's message carries a digest
/// of that epoch (besides its first message in a new epoch).
pub const DIGEST_EVERY: u64 = 20;

/// What a device holds of one epoch: the highest counter from each device
/// that wrote in it, its own included, and the epoch's authenticator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// The MLS epoch.
    pub epoch: u64,
    /// Highest counter held (or sent) per device.
    pub counts: BTreeMap<DeviceId, u64>,
    /// The start of the epoch's authenticator (RFC 9420 §8.7), hex, as the
    /// sender's device has it; empty if it did not note it. Two devices
    /// with different ones are in different histories of the chat.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub auth: String,
}

/// At most how many other devices' counts one digest tells (about 42
/// bytes each). Counts left out go in the next digest.
pub const DIGEST_MAX_DEVICES: usize = 64;

/// How many bytes of an epoch authenticator a digest carries: 128 bits, as
/// collision-resistant as a safety number needs, in half the bytes.
pub const AUTH_BYTES: usize = 16;

/// The part of an epoch authenticator a digest carries.
pub fn auth_of(authenticator: &[u8]) -> String {
    crate::client::hex(&authenticator[..authenticator.len().min(AUTH_BYTES)])
}

/// What a commit from an epoch this device has already left is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldCommit {
    /// The very commit this device took in from that epoch, again.
    Replay,
    /// Another commit from the same epoch: the relay accepted two, and the
    /// chat has split into two histories. `first` is true the first time
    /// this epoch's split is seen, so it is said once.
    Split {
        /// First time for this epoch.
        first: bool,
    },
}

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
    /// On `n` = 1, what the device holds of the epoch before; on every
    /// [`DIGEST_EVERY`]th, of this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
}

/// The hash a message is chained by.
pub fn message_hash(payload: &[u8]) -> String {
    crate::identity::sha256_hex(payload)
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
    /// The authenticator of each epoch this device was in ([`auth_of`]).
    #[serde(default)]
    auths: BTreeMap<u64, String>,
    /// The hash of the commit this device took in (or made) from each
    /// epoch, to tell a replayed commit from a second one.
    #[serde(default)]
    commits: BTreeMap<u64, String>,
    /// Epochs where a split was seen and said.
    #[serde(default)]
    splits: BTreeSet<u64>,
    /// Per epoch, the count this device's digests last told for each
    /// device: a digest tells only what changed since.
    #[serde(default)]
    reported: BTreeMap<u64, BTreeMap<DeviceId, u64>>,
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

    /// The order of the next message device `me` sends in `epoch`; call
    /// [`ChatTranscript::sent`] with its payload's hash once it is sealed.
    pub fn next_order(&self, me: DeviceId, epoch: u64) -> SenderOrder {
        match &self.sent {
            Some(s) if s.epoch == epoch => SenderOrder {
                n: s.count + 1,
                prev: s.last.clone(),
                digest: ((s.count + 1) % DIGEST_EVERY == 0).then(|| self.digest(me, epoch, true)),
            },
            _ => SenderOrder {
                n: 1,
                prev: String::new(),
                // The epoch before, told whole (up to the bound): the digest
                // that last told a count may itself have been withheld.
                digest: self.epoch_before(epoch).map(|e| self.digest(me, e, false)),
            },
        }
    }

    /// Notes the authenticator of `epoch`, where this device is.
    pub fn note_epoch(&mut self, epoch: u64, auth: String) {
        self.auths.insert(epoch, auth);
        trim(&mut self.auths);
    }

    /// Notes the commit (by hash) this device took in or made from `epoch`.
    pub fn note_commit(&mut self, epoch: u64, hash: String) {
        self.commits.insert(epoch, hash);
        trim(&mut self.commits);
    }

    /// Judges a commit from `epoch`, an epoch this device already left.
    pub fn old_commit(&mut self, epoch: u64, hash: &str) -> OldCommit {
        if self.commits.get(&epoch).is_some_and(|h| h == hash) {
            return OldCommit::Replay;
        }
        let first = self.splits.insert(epoch);
        while self.splits.len() > EPOCHS_KEPT {
            self.splits.pop_first();
        }
        OldCommit::Split { first }
    }

    /// Whether another member's digest shows it in another history of the
    /// chat: its authenticator for an epoch differs from this device's.
    pub fn other_history(&self, digest: &Digest) -> bool {
        !digest.auth.is_empty()
            && self
                .auths
                .get(&digest.epoch)
                .is_some_and(|mine| *mine != digest.auth)
    }

    /// The latest epoch before `epoch` this device wrote or read in.
    fn epoch_before(&self, epoch: u64) -> Option<u64> {
        let sent = self.sent.as_ref().map(|s| s.epoch).filter(|e| *e < epoch);
        let read = self
            .received
            .values()
            .filter_map(|epochs| epochs.range(..epoch).next_back().map(|(e, _)| *e))
            .max();
        sent.max(read)
    }

    /// What this device (`me`) holds of `epoch`. With `delta`, only counts
    /// that grew since this device last told them go in; without, every
    /// count held. Either way at most the [`DIGEST_MAX_DEVICES`] that grew
    /// most, so a digest stays small in a group of 1,000 where everyone
    /// writes; its own count always goes.
    fn digest(&self, me: DeviceId, epoch: u64, delta: bool) -> Digest {
        let told = self.reported.get(&epoch).filter(|_| delta);
        let mut grown: Vec<(u64, DeviceId, u64)> = self
            .received
            .iter()
            .filter_map(|(device, epochs)| {
                let held = epochs.get(&epoch)?.highest;
                let before = told.and_then(|t| t.get(device)).copied().unwrap_or(0);
                (held > before).then_some((held - before, *device, held))
            })
            .collect();
        grown.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut counts: BTreeMap<DeviceId, u64> = grown
            .into_iter()
            .take(DIGEST_MAX_DEVICES)
            .map(|(_, device, held)| (device, held))
            .collect();
        if let Some(s) = self.sent.as_ref().filter(|s| s.epoch == epoch) {
            counts.insert(me, s.count);
        }
        Digest {
            epoch,
            counts,
            auth: self.auths.get(&epoch).cloned().unwrap_or_default(),
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
        if let Some(digest) = &order.digest {
            self.reported
                .entry(digest.epoch)
                .or_default()
                .extend(digest.counts.iter().map(|(d, n)| (*d, *n)));
            trim(&mut self.reported);
        }
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
            trim(epochs);
            return (placement, mismatch.then_some(Mismatch));
        };
        (placement, None)
    }

    /// Messages another member's digest says it holds that this device
    /// (`me`), a member in that epoch, never received: per device, ids for
    /// placeholders (from `fresh`), recorded as missing so a late one
    /// fills in.
    pub fn missing_per(
        &mut self,
        me: DeviceId,
        digest: &Digest,
        mut fresh: impl FnMut() -> Uuid,
    ) -> Vec<(DeviceId, Vec<Uuid>)> {
        if digest.epoch < self.joined {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (device, count) in &digest.counts {
            if *device == me {
                continue;
            }
            let epochs = self.received.entry(*device).or_default();
            // Epochs older than those kept are not judged.
            if epochs.len() >= EPOCHS_KEPT
                && epochs.keys().next().is_some_and(|e| digest.epoch < *e)
            {
                continue;
            }
            let stream = epochs.entry(digest.epoch).or_default();
            let ids: Vec<Uuid> = (stream.highest + 1..=*count)
                .map(|k| {
                    let id = fresh();
                    stream.missing.insert(k, id);
                    id
                })
                .collect();
            stream.highest = stream.highest.max(*count);
            if !ids.is_empty() {
                out.push((*device, ids));
            }
        }
        out
    }
}

/// Keeps the newest [`EPOCHS_KEPT`] epochs of a per-epoch record.
fn trim<V>(map: &mut BTreeMap<u64, V>) {
    while map.len() > EPOCHS_KEPT {
        map.pop_first();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(n: u64, prev: &str) -> SenderOrder {
        SenderOrder {
            n,
            prev: prev.into(),
            digest: None,
        }
    }

    #[test]
    fn a_sender_numbers_its_messages_per_epoch_and_chains_them() {
        let me = DeviceId::random();
        let mut t = ChatTranscript::joined_in(1);
        let first = t.next_order(me, 1);
        assert_eq!(
            (first.n, first.prev.as_str(), &first.digest),
            (1, "", &None)
        );
        t.sent(1, &first, "h1".into());
        let second = t.next_order(me, 1);
        assert_eq!((second.n, second.prev.as_str()), (2, "h1"));
        t.sent(1, &second, "h2".into());
        let other = DeviceId::random();
        t.receive(other, 1, &order(1, ""), "o1".into(), Uuid::new_v4);
        // A new epoch starts again at 1 and tells what this device holds
        // of the last one: its own two, and the other's one.
        let next = t.next_order(me, 3);
        assert_eq!(next.n, 1);
        let digest = next.digest.clone().unwrap();
        assert_eq!(digest.epoch, 1);
        assert_eq!(digest.counts, BTreeMap::from([(me, 2), (other, 1)]));
        // And every DIGEST_EVERYth message in an epoch, of that epoch.
        t.sent(3, &next, "n1".into());
        for k in 2..=DIGEST_EVERY {
            let o = t.next_order(me, 3);
            assert_eq!(o.digest.is_some(), k == DIGEST_EVERY, "message {k}");
            t.sent(3, &o, format!("n{k}"));
        }
    }

    #[test]
    fn digests_carry_the_epoch_authenticator_and_another_one_is_another_history() {
        let me = DeviceId::random();
        let mut t = ChatTranscript::joined_in(1);
        t.note_epoch(1, "aa".into());
        let first = t.next_order(me, 1);
        t.sent(1, &first, "h1".into());
        // The first message of epoch 2 tells epoch 1, with its authenticator.
        t.note_epoch(2, "bb".into());
        let digest = t.next_order(me, 2).digest.unwrap();
        assert_eq!((digest.epoch, digest.auth.as_str()), (1, "aa"));
        assert!(!t.other_history(&digest));
        let theirs = Digest {
            auth: "cc".into(),
            ..digest.clone()
        };
        assert!(t.other_history(&theirs));
        // Nothing to compare with: not judged.
        assert!(!t.other_history(&Digest {
            epoch: 7,
            ..theirs.clone()
        }));
        assert!(!t.other_history(&Digest {
            auth: String::new(),
            ..digest
        }));
    }

    #[test]
    fn a_digest_tells_what_grew_since_the_last_one_and_stays_bounded() {
        let me = DeviceId::random();
        let mut t = ChatTranscript::joined_in(1);
        let others: Vec<DeviceId> = (0..100).map(|_| DeviceId::random()).collect();
        for (i, d) in others.iter().enumerate() {
            // Device i wrote i + 1 messages.
            for n in 1..=i as u64 + 1 {
                t.receive(*d, 1, &order(n, ""), format!("{i}-{n}"), Uuid::new_v4);
            }
        }
        let mut told = BTreeMap::new();
        for k in 1..=DIGEST_EVERY * 2 {
            let o = t.next_order(me, 1);
            if let Some(d) = &o.digest {
                assert!(d.counts.len() <= DIGEST_MAX_DEVICES + 1);
                for (dev, n) in &d.counts {
                    let before = told.insert(*dev, *n);
                    assert!(before.is_none_or(|b| b < *n || *dev == me), "told again");
                }
            }
            t.sent(1, &o, format!("mine-{k}"));
        }
        // Two digests told every device's count once, those that wrote
        // most first.
        for (i, d) in others.iter().enumerate() {
            assert_eq!(told.get(d), Some(&(i as u64 + 1)), "device {i}");
        }
        // Nothing grew: the next digest tells only this device's own count.
        for _ in 0..DIGEST_EVERY {
            let o = t.next_order(me, 1);
            if let Some(d) = &o.digest {
                assert_eq!(d.counts.keys().collect::<Vec<_>>(), vec![&me]);
            }
            t.sent(1, &o, "x".into());
        }
    }

    #[test]
    fn an_old_commit_is_a_replay_or_a_split_said_once() {
        let mut t = ChatTranscript::joined_in(1);
        t.note_commit(1, "c1".into());
        assert_eq!(t.old_commit(1, "c1"), OldCommit::Replay);
        assert_eq!(t.old_commit(1, "c2"), OldCommit::Split { first: true });
        assert_eq!(t.old_commit(1, "c3"), OldCommit::Split { first: false });
        assert_eq!(t.old_commit(2, "c4"), OldCommit::Split { first: true });
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
    fn what_another_member_received_and_this_device_did_not_shows() {
        let me = DeviceId::random();
        let mut t = ChatTranscript::joined_in(2);
        let alice = DeviceId::random();
        let mut fresh = Uuid::new_v4;
        t.receive(alice, 2, &order(1, ""), "h1".into(), &mut fresh);
        // Bob holds 3 of Alice's messages of epoch 2, and one of this
        // device's own; this device got 1 of Alice's.
        let digest = |epoch, a| Digest {
            epoch,
            counts: BTreeMap::from([(alice, a), (me, 1)]),
            auth: String::new(),
        };
        let missing = t.missing_per(me, &digest(2, 3), &mut fresh);
        assert_eq!(missing.len(), 1);
        assert_eq!((missing[0].0, missing[0].1.len()), (alice, 2));
        // A late one fills its place.
        assert_eq!(
            t.receive(alice, 2, &order(2, "h1"), "h2".into(), &mut fresh)
                .0,
            Placement::Fills(missing[0].1[0])
        );
        // Epochs before this device joined are none of its business.
        assert!(t.missing_per(me, &digest(1, 9), &mut fresh).is_empty());
        // Said again, nothing new is missing.
        assert!(t.missing_per(me, &digest(2, 3), &mut fresh).is_empty());
    }
}
