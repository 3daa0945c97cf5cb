//! One profile, several processes.
//!
//! People run `redoubt chat` in one terminal and `redoubt send` in another,
//! on the same profile. MLS state must never be used from two copies at
//! once: two processes encrypting from the same ratchet position reuse a
//! key (the second message cannot be decrypted), and a process writing
//! back a stale snapshot rolls a group back by epochs (it is lost for
//! good). So every operation that reads or changes MLS state holds this
//! exclusive lock on `profile.lock` for its duration only, and reloads the
//! state when another process wrote since (see `Client::hold`). A long-lived
//! `chat` screen therefore blocks a `send` for at most one sync, never for
//! its whole life.
//!
//! The lock is an advisory `flock` on an open file: the kernel drops it
//! when the process exits or crashes, so a killed process never leaves the
//! profile locked.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{ClientError, Result};

pub(crate) const LOCK_FILE: &str = "profile.lock";

/// How often a waiting process tries again.
const POLL: Duration = Duration::from_millis(20);

/// The profile's lock file, shared by the operations of one client. It is
/// re-entrant within the process: an operation that calls another (a send
/// that first reconciles the chat's devices) does not wait for itself.
#[derive(Clone)]
pub struct ProfileLock {
    inner: Arc<Inner>,
}

struct Inner {
    file: File,
    path: PathBuf,
    /// How many guards are alive; the file is locked while this is above 0.
    depth: Mutex<u32>,
}

/// Holds the lock until dropped, on every path out of an operation,
/// cancellation included.
pub struct LockGuard {
    inner: Arc<Inner>,
}

impl ProfileLock {
    /// Opens (creating if needed) the lock file of the profile in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        Ok(Self {
            inner: Arc::new(Inner {
                file,
                path,
                depth: Mutex::new(0),
            }),
        })
    }

    /// Takes the lock, waiting up to `wait` for another process to finish
    /// its operation. Returns the guard and whether this is the outermost
    /// hold (the one that must reload state another process may have
    /// changed).
    pub async fn hold(&self, wait: Duration) -> Result<(LockGuard, bool)> {
        let first = {
            let depth = self.depth();
            *depth == 0
        };
        if first {
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                match self.inner.file.try_lock() {
                    Ok(()) => break,
                    Err(TryLockError::WouldBlock) => {
                        if tokio::time::Instant::now() >= deadline {
                            return Err(ClientError::ProfileBusy(
                                self.inner
                                    .path
                                    .parent()
                                    .unwrap_or(Path::new("."))
                                    .to_owned(),
                            ));
                        }
                        tokio::time::sleep(POLL).await;
                    }
                    Err(TryLockError::Error(e)) => return Err(e.into()),
                }
            }
        }
        *self.depth() += 1;
        Ok((
            LockGuard {
                inner: self.inner.clone(),
            },
            first,
        ))
    }

    fn depth(&self) -> std::sync::MutexGuard<'_, u32> {
        // The counter is only ever incremented or decremented; a panic
        // elsewhere cannot leave it half-written.
        self.inner
            .depth
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let mut depth = self
            .inner
            .depth
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *depth = depth.saturating_sub(1);
        if *depth == 0 {
            // Unlocking an flock we hold cannot fail in a way we could act
            // on; closing the file at exit releases it regardless.
            let _ = self.inner.file.unlock();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_lock_is_reentrant_in_a_process_and_exclusive_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = ProfileLock::open(dir.path()).unwrap();
        // A second open file description stands for another process: flock
        // locks belong to the open file, not the process.
        let b = ProfileLock::open(dir.path()).unwrap();
        let (outer, first) = a.hold(Duration::ZERO).await.unwrap();
        assert!(first);
        let (inner, again) = a.hold(Duration::ZERO).await.unwrap();
        assert!(!again, "a nested hold does not reload");
        assert!(matches!(
            b.hold(Duration::from_millis(50)).await,
            Err(ClientError::ProfileBusy(_))
        ));
        drop(inner);
        assert!(
            b.hold(Duration::ZERO).await.is_err(),
            "still held by the outer operation"
        );
        drop(outer);
        let (_g, first) = b.hold(Duration::ZERO).await.unwrap();
        assert!(first);
    }
}
