//! The hash-chained audit log: every intake, rejection, approval, disclosure
//! and market change, one JSON object per line. Each entry commits to the
//! previous entry's hash, so an edited, removed or reordered entry breaks
//! the chain at a place `verify` names.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::order::canonical_json;
use crate::LegalError;

/// The `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// Position in the log, from 1.
    pub seq: u64,
    /// When it was written.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// What happened: `intake`, `rejection`, `approval`, `disclosure`, `market`, ...
    pub event: String,
    /// Who did it (an operator name).
    pub actor: String,
    /// The order concerned, if any.
    #[serde(default)]
    pub order_id: Option<String>,
    /// Details (never personal data beyond what the event itself concerns).
    pub detail: serde_json::Value,
    /// The previous entry's hash (hex), or [`GENESIS`].
    pub prev: String,
    /// SHA-256 (hex) of this entry's canonical encoding without `hash`.
    pub hash: String,
}

#[derive(Serialize)]
struct Unhashed<'a> {
    seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    event: &'a str,
    actor: &'a str,
    order_id: &'a Option<String>,
    detail: &'a serde_json::Value,
    prev: &'a str,
}

fn hash_of(e: &AuditEntry) -> String {
    let unhashed = Unhashed {
        seq: e.seq,
        at: e.at,
        event: &e.event,
        actor: &e.actor,
        order_id: &e.order_id,
        detail: &e.detail,
        prev: &e.prev,
    };
    Sha256::digest(canonical_json(&unhashed))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where and how the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    /// A line is not an entry.
    #[error("line {line}: not an audit entry")]
    Unreadable {
        /// 1-based line number.
        line: usize,
    },
    /// The file exists but cannot be read as text (damaged, not UTF-8, no
    /// permission). It is never taken for an empty log.
    #[error("the audit log cannot be read: {0}")]
    Io(String),
    /// The entry's content does not match its hash: it was edited.
    #[error("entry {seq} (line {line}) was edited: its content does not match its hash")]
    Edited {
        /// 1-based line number.
        line: usize,
        /// The entry's sequence number.
        seq: u64,
    },
    /// The entry does not follow the one before it: an entry before it was
    /// removed, or entries were reordered.
    #[error("entry {seq} (line {line}) does not follow the entry before it: entries were removed or reordered")]
    Broken {
        /// 1-based line number.
        line: usize,
        /// The entry's sequence number.
        seq: u64,
    },
}

/// A signed report's statement of the audit log at one moment: how many
/// entries it had and the hash of the last one. Each entry commits to all
/// before it, so a log that still holds entry `size` with hash `head`
/// holds exactly the history the checkpoint saw. Anyone keeping an old
/// report can tell if entries up to it were since rewritten, dropped or
/// forked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Entries in the log.
    pub size: u64,
    /// The hash of entry `size` ([`GENESIS`] when empty).
    pub head: String,
}

/// How a log fails a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The chain itself is broken.
    #[error(transparent)]
    Broken(#[from] ChainBreak),
    /// Fewer entries than the checkpoint counted: history was dropped.
    #[error("the log has {found} entries, fewer than the {size} the checkpoint counted: entries were removed")]
    Truncated {
        /// Entries the checkpoint counted.
        size: u64,
        /// Entries found.
        found: u64,
    },
    /// Entry `size` is not the one the checkpoint saw: history up to it
    /// was rewritten (and the chain recomputed), or the log forked.
    #[error("entry {size} is not the one the checkpoint saw: the history before it was rewritten")]
    Rewritten {
        /// The checkpoint's size.
        size: u64,
    },
}

/// The audit log file.
pub struct AuditLog {
    path: PathBuf,
}

impl AuditLog {
    /// The log at `path` (created on first append).
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
        }
    }

    /// Every entry, without checking the chain.
    pub fn entries(&self) -> Result<Vec<AuditEntry>, LegalError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).map_err(|e| LegalError::Malformed {
                    what: "the audit log",
                    detail: e.to_string(),
                })
            })
            .collect()
    }

    /// Appends an entry chained to the last one. Refuses to extend a log
    /// whose chain is already broken.
    pub fn append(
        &self,
        event: &str,
        actor: &str,
        order_id: Option<&str>,
        detail: serde_json::Value,
        at: OffsetDateTime,
    ) -> Result<AuditEntry, LegalError> {
        // Every writer (parallel CLI runs, the relay's own notice writer,
        // the admin API) takes this lock for read-verify-append, so two can
        // never chain onto the same last entry and fork the log. It is an
        // flock: released when the file closes, crash included.
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path.with_extension("lock"))?;
        lock.lock()?;
        let count = self.verify().map_err(|e| LegalError::Malformed {
            what: "the audit log",
            detail: e.to_string(),
        })?;
        let last = self.entries()?.pop();
        let mut entry = AuditEntry {
            seq: count as u64 + 1,
            at,
            event: event.into(),
            actor: actor.into(),
            order_id: order_id.map(str::to_owned),
            detail,
            prev: last.map(|e| e.hash).unwrap_or_else(|| GENESIS.into()),
            hash: String::new(),
        };
        entry.hash = hash_of(&entry);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let mut line = serde_json::to_vec(&entry).map_err(|e| LegalError::Malformed {
            what: "an audit entry",
            detail: e.to_string(),
        })?;
        line.push(b'\n');
        file.write_all(&line)?;
        file.sync_all()?;
        Ok(entry)
    }

    /// The log's current checkpoint. Fails on a broken chain: nothing is
    /// ever vouched for over one.
    pub fn checkpoint(&self) -> Result<Checkpoint, LegalError> {
        self.verify().map_err(|e| LegalError::Malformed {
            what: "the audit log",
            detail: e.to_string(),
        })?;
        let last = self.entries()?.pop();
        Ok(Checkpoint {
            size: last.as_ref().map_or(0, |e| e.seq),
            head: last.map_or_else(|| GENESIS.to_owned(), |e| e.hash),
        })
    }

    /// Checks the chain and that it extends `checkpoint`: the history a
    /// report vouched for is still there, unchanged. Returns the number of
    /// entries.
    pub fn verify_against(&self, checkpoint: &Checkpoint) -> Result<usize, CheckpointError> {
        let count = self.verify()?;
        if (count as u64) < checkpoint.size {
            return Err(CheckpointError::Truncated {
                size: checkpoint.size,
                found: count as u64,
            });
        }
        let head = match checkpoint.size {
            0 => GENESIS.to_owned(),
            n => self
                .entries()
                .map_err(|e| ChainBreak::Io(e.to_string()))?
                .get(n as usize - 1)
                .map(|e| e.hash.clone())
                .unwrap_or_default(),
        };
        if head != checkpoint.head {
            return Err(CheckpointError::Rewritten {
                size: checkpoint.size,
            });
        }
        Ok(count)
    }

    /// Recovers from a crash in the middle of an append: when the only
    /// fault is a last line cut short (no newline, does not parse), its
    /// bytes are dropped and an `audit_repaired` entry records how many and
    /// their SHA-256. Any other break is refused: that is not a crash, and
    /// repairing it would hide tampering. Returns the bytes dropped, or
    /// `None` when the log needed nothing.
    pub fn repair_torn_tail(
        &self,
        actor: &str,
        at: OffsetDateTime,
    ) -> Result<Option<usize>, LegalError> {
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path.with_extension("lock"))?;
        lock.lock()?;
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if self.verify().is_ok() {
            return Ok(None);
        }
        let refuse = |detail: &str| LegalError::Malformed {
            what: "the audit log",
            detail: format!("{detail}; not a torn last line, so it is not repaired"),
        };
        if bytes.ends_with(b"\n") {
            return Err(refuse("the log is broken but its last line is complete"));
        }
        let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let torn = &bytes[keep..];
        // The rest must be a sound chain on its own.
        let rest = self.path.with_extension("repair");
        std::fs::write(&rest, &bytes[..keep])?;
        let sound = AuditLog::new(&rest).verify();
        let _ = std::fs::remove_file(&rest);
        sound.map_err(|e| refuse(&e.to_string()))?;
        let file = std::fs::OpenOptions::new().write(true).open(&self.path)?;
        file.set_len(keep as u64)?;
        file.sync_all()?;
        drop(lock);
        let digest: String = Sha256::digest(torn)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.append(
            "audit_repaired",
            actor,
            None,
            serde_json::json!({ "dropped_bytes": torn.len(), "dropped_sha256": digest }),
            at,
        )?;
        Ok(Some(torn.len()))
    }

    /// Checks the whole chain; returns the number of entries.
    pub fn verify(&self) -> Result<usize, ChainBreak> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(ChainBreak::Io(e.to_string())),
        };
        let mut prev = GENESIS.to_owned();
        let mut count = 0;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let line_no = i + 1;
            let entry: AuditEntry =
                serde_json::from_str(line).map_err(|_| ChainBreak::Unreadable { line: line_no })?;
            if hash_of(&entry) != entry.hash {
                return Err(ChainBreak::Edited {
                    line: line_no,
                    seq: entry.seq,
                });
            }
            if entry.prev != prev || entry.seq != count as u64 + 1 {
                return Err(ChainBreak::Broken {
                    line: line_no,
                    seq: entry.seq,
                });
            }
            prev = entry.hash;
            count += 1;
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_checkpoint_shows_rewriting_truncation_and_forks() {
        let (_dir, log) = log_with(5);
        let checkpoint = log.checkpoint().unwrap();
        assert_eq!(checkpoint.size, 5);
        log.append("intake", "op", None, json!({}), OffsetDateTime::UNIX_EPOCH)
            .unwrap();
        assert_eq!(log.verify_against(&checkpoint), Ok(6), "growing is fine");
        let lines: Vec<String> = std::fs::read_to_string(&log.path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        // Rewrite entry 2 and recompute the whole chain after it: the chain
        // verifies, the checkpoint does not.
        let mut entries: Vec<AuditEntry> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        entries[1].actor = "mallory".into();
        let mut prev = GENESIS.to_owned();
        for e in &mut entries {
            e.prev = prev.clone();
            e.hash = hash_of(e);
            prev = e.hash.clone();
        }
        let text: String = entries
            .iter()
            .map(|e| serde_json::to_string(e).unwrap() + "\n")
            .collect();
        std::fs::write(&log.path, &text).unwrap();
        assert_eq!(log.verify(), Ok(6));
        assert_eq!(
            log.verify_against(&checkpoint),
            Err(CheckpointError::Rewritten { size: 5 })
        );
        // Dropping the tail, or emptying the log, is caught too.
        std::fs::write(&log.path, lines[..3].join("\n") + "\n").unwrap();
        assert_eq!(
            log.verify_against(&checkpoint),
            Err(CheckpointError::Truncated { size: 5, found: 3 })
        );
        std::fs::write(&log.path, "").unwrap();
        assert!(log.verify_against(&checkpoint).is_err());
    }

    #[test]
    fn a_torn_last_line_is_repaired_and_recorded_but_tampering_is_not() {
        let (_dir, log) = log_with(3);
        let whole = std::fs::read(&log.path).unwrap();
        let mut torn = whole.clone();
        torn.extend_from_slice(b"{\"seq\":4,\"at\":\"2026");
        std::fs::write(&log.path, &torn).unwrap();
        assert!(log.verify().is_err());
        let dropped = log
            .repair_torn_tail("olga", OffsetDateTime::UNIX_EPOCH)
            .unwrap();
        assert_eq!(dropped, Some(torn.len() - whole.len()));
        assert_eq!(log.verify(), Ok(4));
        assert_eq!(log.entries().unwrap()[3].event, "audit_repaired");
        assert_eq!(
            log.repair_torn_tail("olga", OffsetDateTime::UNIX_EPOCH)
                .unwrap(),
            None
        );
        // An edited entry is not a crash: refused, left as it is.
        let edited = String::from_utf8(whole)
            .unwrap()
            .replacen("\"op\"", "\"mallory\"", 1);
        std::fs::write(&log.path, &edited).unwrap();
        assert!(log
            .repair_torn_tail("olga", OffsetDateTime::UNIX_EPOCH)
            .is_err());
        assert_eq!(std::fs::read_to_string(&log.path).unwrap(), edited);
    }

    #[test]
    fn parallel_writers_never_fork_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let path = path.clone();
                std::thread::spawn(move || {
                    // Each writer opens the log itself, as separate
                    // processes would.
                    let log = AuditLog::new(&path);
                    for i in 0..20 {
                        log.append(
                            "intake",
                            &format!("op{w}"),
                            None,
                            json!({ "i": i }),
                            OffsetDateTime::UNIX_EPOCH,
                        )
                        .unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(AuditLog::new(&path).verify(), Ok(160));
    }

    #[test]
    fn an_unreadable_log_is_an_error_not_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, [0xFF]).unwrap();
        assert!(matches!(
            AuditLog::new(&path).verify(),
            Err(ChainBreak::Io(_))
        ));
    }

    fn log_with(n: usize) -> (tempfile::TempDir, AuditLog) {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(&dir.path().join("audit.jsonl"));
        for i in 0..n {
            log.append(
                "intake",
                "op",
                Some(&format!("order-{i}")),
                json!({ "i": i }),
                OffsetDateTime::UNIX_EPOCH,
            )
            .unwrap();
        }
        (dir, log)
    }

    fn rewrite(log: &AuditLog, f: impl FnOnce(&mut Vec<String>)) {
        let mut lines: Vec<String> = std::fs::read_to_string(&log.path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        f(&mut lines);
        std::fs::write(&log.path, lines.join("\n") + "\n").unwrap();
    }

    #[test]
    fn an_intact_chain_verifies() {
        let (_d, log) = log_with(5);
        assert_eq!(log.verify(), Ok(5));
        assert_eq!(log.entries().unwrap()[0].prev, GENESIS);
    }

    #[test]
    fn an_edited_entry_is_located() {
        let (_d, log) = log_with(5);
        rewrite(&log, |l| l[2] = l[2].replace("order-2", "order-X"));
        assert_eq!(log.verify(), Err(ChainBreak::Edited { line: 3, seq: 3 }));
        assert!(
            log.append("intake", "op", None, json!({}), OffsetDateTime::UNIX_EPOCH)
                .is_err(),
            "no appending to a broken chain"
        );
    }

    #[test]
    fn removed_and_reordered_entries_are_located() {
        let (_d, log) = log_with(5);
        rewrite(&log, |l| {
            l.remove(1);
        });
        assert_eq!(log.verify(), Err(ChainBreak::Broken { line: 2, seq: 3 }));
        let (_d, log) = log_with(5);
        rewrite(&log, |l| l.swap(3, 4));
        assert_eq!(log.verify(), Err(ChainBreak::Broken { line: 4, seq: 5 }));
        let (_d, log) = log_with(3);
        rewrite(&log, |l| l[1] = "{\"not\": \"an entry\"}".into());
        assert_eq!(log.verify(), Err(ChainBreak::Unreadable { line: 2 }));
    }
}
