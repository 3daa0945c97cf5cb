//! The audit log: every intake, rejection, approval, disclosure, trust
//! change and market decision, in order. Three things make it
//! tamper-evident:
//!
//! - each entry commits to the previous entry's hash, so an edited,
//!   removed or reordered entry breaks the chain at a place `verify` names;
//! - each entry carries the signed action of the operator (or, for the
//!   relay's own chores, the service) that caused it, so an insider who
//!   can write the table cannot invent an approval;
//! - the desk signs checkpoints, the size and Merkle root (RFC 6962) of
//!   the log, and every transparency report carries one, so a log rewritten
//!   from some point on, truncated or forked no longer matches a checkpoint
//!   anyone kept.
//!
//! The log lives in the relay's database (see [`crate::store`]); an append
//! is one transaction, so a crash leaves the log as it was, never a torn
//! entry. An export is the same entries, one JSON object per line.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey};
use redoubt_proto::merkle;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::operators::SignedAction;
use crate::order::canonical_json;

/// The `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// Position in the log, from 1.
    pub seq: u64,
    /// When it was written (the desk's time).
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// What happened: `intake`, `rejection`, `approval`, `disclosure`,
    /// `approval_refused`, `proposal`, `proposal_refused`, `trust_change`,
    /// `operator_change`, `confirmation_refused`, `bootstrap`,
    /// `user_notice`, `market`.
    pub event: String,
    /// Who did it: the operator's name, or `redoubtd` for the relay.
    pub actor: String,
    /// The issuing authority of the order concerned, if any.
    #[serde(default)]
    pub issuer: Option<String>,
    /// The order concerned, if any (unique per issuer).
    #[serde(default)]
    pub order_id: Option<String>,
    /// Details (never personal data beyond what the event itself concerns).
    pub detail: serde_json::Value,
    /// The signed action that caused the entry.
    pub action: SignedAction,
    /// The previous entry's hash (hex), or [`GENESIS`].
    pub prev: String,
    /// SHA-256 (hex) of this entry's canonical encoding without `hash`.
    pub hash: String,
}

/// An entry before it is placed in the log (sequence number, time, chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// The event.
    pub event: &'static str,
    /// The actor's name.
    pub actor: String,
    /// The issuer of the order concerned.
    pub issuer: Option<String>,
    /// The order concerned.
    pub order_id: Option<String>,
    /// Details.
    pub detail: serde_json::Value,
    /// The action that caused it.
    pub action: SignedAction,
}

#[derive(Serialize)]
struct Unhashed<'a> {
    seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    event: &'a str,
    actor: &'a str,
    issuer: &'a Option<String>,
    order_id: &'a Option<String>,
    detail: &'a serde_json::Value,
    action: &'a SignedAction,
    prev: &'a str,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash an entry must carry.
pub fn hash_of(e: &AuditEntry) -> String {
    let unhashed = Unhashed {
        seq: e.seq,
        at: e.at,
        event: &e.event,
        actor: &e.actor,
        issuer: &e.issuer,
        order_id: &e.order_id,
        detail: &e.detail,
        action: &e.action,
        prev: &e.prev,
    };
    hex(&Sha256::digest(canonical_json(&unhashed)))
}

impl NewEntry {
    /// Places the entry after `prev` (hash of entry `seq - 1`).
    pub fn seal(self, seq: u64, prev: &str, at: OffsetDateTime) -> AuditEntry {
        let mut entry = AuditEntry {
            seq,
            at,
            event: self.event.into(),
            actor: self.actor,
            issuer: self.issuer,
            order_id: self.order_id,
            detail: self.detail,
            action: self.action,
            prev: prev.into(),
            hash: String::new(),
        };
        entry.hash = hash_of(&entry);
        entry
    }
}

/// Where and how the log breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    /// An entry does not parse.
    #[error("entry at position {position}: not an audit entry")]
    Unreadable {
        /// 1-based position in the log.
        position: usize,
    },
    /// The log cannot be read at all (damaged, not UTF-8, no permission).
    /// It is never taken for an empty log.
    #[error("the audit log cannot be read: {0}")]
    Io(String),
    /// The entry's content does not match its hash: it was edited.
    #[error("entry {seq} was edited: its content does not match its hash")]
    Edited {
        /// The entry's sequence number.
        seq: u64,
    },
    /// The entry does not follow the one before it: an entry before it was
    /// removed, or entries were reordered.
    #[error("entry {seq} does not follow the entry before it: entries were removed or reordered")]
    Broken {
        /// The entry's sequence number.
        seq: u64,
    },
    /// The entry is well formed but nobody entitled to cause it signed it
    /// (a forged or replayed entry, or one that breaks the desk's rules).
    #[error("entry {seq} is not authorised: {why}")]
    Unauthorised {
        /// The entry's sequence number.
        seq: u64,
        /// Why.
        why: String,
    },
}

/// Reads the entry stored at `position` (from 1) and checks that it
/// carries its own hash and follows the entry whose hash is `prev`: the one
/// chain check, for a whole log and for entries appended to a replay.
pub fn next_entry(line: &str, position: usize, prev: &str) -> Result<AuditEntry, ChainBreak> {
    let entry: AuditEntry =
        serde_json::from_str(line).map_err(|_| ChainBreak::Unreadable { position })?;
    if hash_of(&entry) != entry.hash {
        return Err(ChainBreak::Edited { seq: entry.seq });
    }
    if entry.prev != prev || entry.seq != position as u64 {
        return Err(ChainBreak::Broken { seq: entry.seq });
    }
    Ok(entry)
}

/// Parses the log's entries (stored JSON, in order) and checks the hash
/// chain. The signatures and the desk's rules are checked by the replay
/// ([`crate::state::DeskState::replay`]).
pub fn parse_chain(lines: &[String]) -> Result<Vec<AuditEntry>, ChainBreak> {
    let mut entries: Vec<AuditEntry> = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let prev = entries.last().map_or(GENESIS, |e| e.hash.as_str());
        let entry = next_entry(line, i + 1, prev)?;
        entries.push(entry);
    }
    Ok(entries)
}

/// Reads an exported log (one entry per line). Unreadable bytes are an
/// error, never an empty log.
pub fn read_export(bytes: &[u8]) -> Result<Vec<String>, ChainBreak> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ChainBreak::Io("the export is not UTF-8 text".into()))?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect())
}

/// The RFC 6962 Merkle tree hash over the first `size` entries, whose
/// leaves are the entries' hashes. Hashes are domain-separated (0x00 for
/// leaves, 0x01 for nodes), so no leaf can pass for a node.
pub fn merkle_root(entries: &[AuditEntry]) -> [u8; 32] {
    let leaves: Vec<merkle::Hash> = entries
        .iter()
        .map(|e| merkle::leaf_hash(e.hash.as_bytes()))
        .collect();
    merkle::tree_hash(&leaves)
}

/// A signed statement of the log at one moment: its size and Merkle root,
/// in the C2SP `tlog-checkpoint` form and signed by the service key as a
/// C2SP signed note. Every transparency report carries one; the desk
/// prints the current one with `redoubtd legal audit checkpoint` for
/// anyone to keep. A log that still yields this root over its first
/// `size` entries holds exactly the history the checkpoint saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The log's name: `redoubt-legal-audit/` and the service key's
    /// fingerprint.
    pub origin: String,
    /// Entries in the log.
    pub size: u64,
    /// The Merkle root over them, standard base64.
    pub root: String,
    /// The signed note, as published: the checkpoint body and the
    /// service key's signature line.
    pub note: String,
}

const KEY_NAME: &str = "redoubt-legal";

fn key_id(public: &[u8; 32]) -> [u8; 4] {
    // C2SP signed-note key id: SHA-256(name || "\n" || 0x01 || key)[:4].
    let digest = Sha256::new()
        .chain_update(KEY_NAME.as_bytes())
        .chain_update(b"\n")
        .chain_update([1u8])
        .chain_update(public)
        .finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// The log's origin line for a service key.
pub fn origin(public: &[u8; 32]) -> String {
    format!(
        "redoubt-legal-audit/{}",
        &hex(&Sha256::digest(public))[..16]
    )
}

impl Checkpoint {
    /// The checkpoint of `entries`, signed with the service key.
    pub(crate) fn sign(entries: &[AuditEntry], key: &SigningKey) -> Self {
        let public = key.verifying_key().to_bytes();
        let origin = origin(&public);
        let root = STANDARD.encode(merkle_root(entries));
        let size = entries.len() as u64;
        let body = format!("{origin}\n{size}\n{root}\n");
        let signature = key.sign(body.as_bytes());
        let mut blob = key_id(&public).to_vec();
        blob.extend_from_slice(&signature.to_bytes());
        let note = format!("{body}\n\u{2014} {KEY_NAME} {}\n", STANDARD.encode(blob));
        Self {
            origin,
            size,
            root,
            note,
        }
    }

    /// Checks the note's signature against the service key (standard
    /// base64) and that it states this checkpoint's origin, size and root.
    pub fn verify_signature(&self, public_key: &str) -> Result<(), CheckpointError> {
        let bad = || CheckpointError::BadSignature;
        let key = crate::verify::decode_key(public_key).ok_or_else(bad)?;
        let public = key.to_bytes();
        let body = format!("{}\n{}\n{}\n", self.origin, self.size, self.root);
        if self.origin != origin(&public) {
            return Err(bad());
        }
        let rest = self.note.strip_prefix(&body).ok_or_else(bad)?;
        let line = rest
            .strip_prefix(&format!("\n\u{2014} {KEY_NAME} "))
            .and_then(|l| l.strip_suffix('\n'))
            .ok_or_else(bad)?;
        let blob = STANDARD.decode(line).map_err(|_| bad())?;
        if blob.len() != 68 || blob[..4] != key_id(&public) {
            return Err(bad());
        }
        let signature = Signature::from_slice(&blob[4..]).map_err(|_| bad())?;
        key.verify_strict(body.as_bytes(), &signature)
            .map_err(|_| bad())
    }

    /// Checks that `entries` extend this checkpoint: the first `size` of
    /// them still give its root (nothing up to it rewritten, nothing
    /// removed, no fork).
    pub fn check_log(&self, entries: &[AuditEntry]) -> Result<(), CheckpointError> {
        let size = usize::try_from(self.size).unwrap_or(usize::MAX);
        if entries.len() < size {
            return Err(CheckpointError::Truncated {
                size: self.size,
                found: entries.len() as u64,
            });
        }
        if STANDARD.encode(merkle_root(&entries[..size])) != self.root {
            return Err(CheckpointError::Rewritten { size: self.size });
        }
        Ok(())
    }
}

/// How a log fails a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The log itself is broken.
    #[error(transparent)]
    Broken(#[from] ChainBreak),
    /// The checkpoint was not signed by this service key.
    #[error("the checkpoint's signature does not verify under the service key")]
    BadSignature,
    /// Fewer entries than the checkpoint counted: history was dropped.
    #[error("the log has {found} entries, fewer than the {size} the checkpoint counted: entries were removed")]
    Truncated {
        /// Entries the checkpoint counted.
        size: u64,
        /// Entries found.
        found: u64,
    },
    /// The first `size` entries are not the ones the checkpoint saw:
    /// history up to it was rewritten (and the chain recomputed), or the
    /// log forked.
    #[error("the first {size} entries are not the ones the checkpoint saw: the history before it was rewritten")]
    Rewritten {
        /// The checkpoint's size.
        size: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::{ActionKind, OperatorKey};
    use serde_json::json;

    fn log_with(n: usize) -> Vec<AuditEntry> {
        let olga = OperatorKey::generate("olga").unwrap();
        let mut out: Vec<AuditEntry> = Vec::new();
        for i in 0..n {
            let prev = out.last().map_or(GENESIS.to_owned(), |e| e.hash.clone());
            out.push(
                NewEntry {
                    event: "market",
                    actor: "olga".into(),
                    issuer: None,
                    order_id: None,
                    detail: json!({ "i": i }),
                    action: olga.sign(
                        ActionKind::Market {
                            decision: json!({ "i": i }),
                        },
                        OffsetDateTime::UNIX_EPOCH,
                    ),
                }
                .seal(i as u64 + 1, &prev, OffsetDateTime::UNIX_EPOCH),
            );
        }
        out
    }

    fn lines(entries: &[AuditEntry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect()
    }

    #[test]
    fn the_merkle_root_matches_rfc_6962() {
        // RFC 6962 over no leaves is the hash of the empty string; over one
        // leaf it is that leaf's hash; over three, h(h(l0,l1), l2).
        assert_eq!(hex(&merkle_root(&[])), hex(&Sha256::digest([])));
        let e = log_with(3);
        let leaf = |e: &AuditEntry| -> [u8; 32] {
            Sha256::new()
                .chain_update([0u8])
                .chain_update(e.hash.as_bytes())
                .finalize()
                .into()
        };
        let node = |a: [u8; 32], b: [u8; 32]| -> [u8; 32] {
            Sha256::new()
                .chain_update([1u8])
                .chain_update(a)
                .chain_update(b)
                .finalize()
                .into()
        };
        assert_eq!(merkle_root(&e[..1]), leaf(&e[0]));
        assert_eq!(
            merkle_root(&e),
            node(node(leaf(&e[0]), leaf(&e[1])), leaf(&e[2]))
        );
    }

    #[test]
    fn a_checkpoint_shows_rewriting_truncation_and_forks() {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let public = STANDARD.encode(key.verifying_key().as_bytes());
        let mut entries = log_with(6);
        let checkpoint = Checkpoint::sign(&entries[..5], &key);
        assert_eq!(checkpoint.size, 5);
        assert_eq!(checkpoint.verify_signature(&public), Ok(()));
        assert!(checkpoint.note.starts_with("redoubt-legal-audit/"));
        assert_eq!(checkpoint.check_log(&entries), Ok(()), "growing is fine");
        let other = STANDARD.encode(
            SigningKey::generate(&mut rand::rngs::OsRng)
                .verifying_key()
                .as_bytes(),
        );
        assert_eq!(
            checkpoint.verify_signature(&other),
            Err(CheckpointError::BadSignature)
        );
        let mut forged = checkpoint.clone();
        forged.size = 4;
        assert_eq!(
            forged.verify_signature(&public),
            Err(CheckpointError::BadSignature)
        );
        // Rewrite entry 2 and recompute the whole chain after it: the chain
        // parses, the checkpoint does not match.
        entries[1].actor = "mallory".into();
        let mut prev = GENESIS.to_owned();
        for e in &mut entries {
            e.prev = prev.clone();
            e.hash = hash_of(e);
            prev = e.hash.clone();
        }
        assert_eq!(parse_chain(&lines(&entries)).map(|e| e.len()), Ok(6));
        assert_eq!(
            checkpoint.check_log(&entries),
            Err(CheckpointError::Rewritten { size: 5 })
        );
        // Dropping the tail, or emptying the log, is caught too.
        let original = log_with(5);
        let checkpoint = Checkpoint::sign(&original, &key);
        assert_eq!(
            checkpoint.check_log(&original[..3]),
            Err(CheckpointError::Truncated { size: 5, found: 3 })
        );
        assert!(checkpoint.check_log(&[]).is_err());
    }

    #[test]
    fn edited_removed_and_reordered_entries_are_located() {
        let e = lines(&log_with(5));
        let mut edited = e.clone();
        edited[2] = edited[2].replace("\"i\":2", "\"i\":9");
        assert_eq!(parse_chain(&edited), Err(ChainBreak::Edited { seq: 3 }));
        let mut removed = e.clone();
        removed.remove(1);
        assert_eq!(parse_chain(&removed), Err(ChainBreak::Broken { seq: 3 }));
        let mut swapped = e.clone();
        swapped.swap(3, 4);
        assert_eq!(parse_chain(&swapped), Err(ChainBreak::Broken { seq: 5 }));
        let mut junk = e;
        junk[1] = "{\"not\": \"an entry\"}".into();
        assert_eq!(
            parse_chain(&junk),
            Err(ChainBreak::Unreadable { position: 2 })
        );
    }

    #[test]
    fn an_unreadable_export_is_an_error_not_an_empty_log() {
        assert!(matches!(read_export(&[0xFF]), Err(ChainBreak::Io(_))));
        assert_eq!(read_export(b"").unwrap().len(), 0);
    }
}
