//! Where the desk keeps its state: the audit log's entries and the blobs
//! they commit to by hash (order documents as received, disclosure
//! packages). Everything else (orders, decisions, the trust store, the
//! operators) is the replay of the log, so there is one thing to store and
//! one thing to protect.
//!
//! The relay implements this trait on its own database, on each backend
//! (`redoubt-server`'s `storage::desk_store`), with the tables `legal_audit`
//! and `legal_blobs` and nothing else: the desk gets no handle on the
//! relay's other tables through it.

use std::future::Future;

use crate::LegalError;

/// The desk's storage.
pub trait DeskStore: Send + Sync {
    /// Every entry, as stored (JSON), in sequence order.
    fn entries(&self) -> impl Future<Output = Result<Vec<String>, LegalError>> + Send;

    /// The entries numbered above `seq`, as stored, in sequence order: how
    /// a desk that replayed the log before catches up.
    fn entries_after(
        &self,
        seq: u64,
    ) -> impl Future<Output = Result<Vec<String>, LegalError>> + Send;

    /// The blob with this SHA-256 (hex), if stored.
    fn blob(
        &self,
        sha256: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, LegalError>> + Send;

    /// Appends `entries` (JSON, numbered `after + 1` on) and stores
    /// `blobs` (keyed by their SHA-256, hex), in one transaction, if the
    /// log still has exactly `after` entries. Returns false, having written
    /// nothing, when another writer went first: the caller reads the log
    /// again and decides again. So two writers, on any node, can never
    /// chain onto the same entry, and a package is stored only with the
    /// entries that record its release.
    fn append(
        &self,
        after: u64,
        entries: Vec<String>,
        blobs: Vec<(String, Vec<u8>)>,
    ) -> impl Future<Output = Result<bool, LegalError>> + Send;
}

/// The behaviour every backend must show, run by each backend's tests
/// (`redoubt-server`'s storage suite runs it on SQLite and PostgreSQL).
pub mod conformance {
    use super::DeskStore;

    /// Appends in order, refuses a stale `after`, keeps blobs by hash, and
    /// lets exactly one of several racing writers win each position.
    pub async fn check<S: DeskStore + Clone + 'static>(store: &S) {
        assert!(store.entries().await.unwrap().is_empty());
        assert!(store
            .append(0, vec!["{\"a\":1}".into()], vec![])
            .await
            .unwrap());
        // A writer that read the log before that append loses, and
        // nothing of its attempt is kept (not even its blob).
        let blob = b"document".to_vec();
        let sha = crate::sha256_hex(&blob);
        assert!(!store
            .append(
                0,
                vec!["{\"b\":2}".into()],
                vec![(sha.clone(), blob.clone())]
            )
            .await
            .unwrap());
        assert_eq!(store.blob(&sha).await.unwrap(), None);
        assert!(!store.append(5, vec!["{}".into()], vec![]).await.unwrap());
        assert!(store
            .append(
                1,
                vec!["{\"b\":2}".into(), "{\"c\":3}".into()],
                vec![(sha.clone(), blob.clone())],
            )
            .await
            .unwrap());
        assert_eq!(
            store.entries().await.unwrap(),
            vec!["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"],
            "entries come back verbatim, in order"
        );
        assert_eq!(store.blob(&sha).await.unwrap(), Some(blob.clone()));
        assert_eq!(
            store.entries_after(1).await.unwrap(),
            vec!["{\"b\":2}", "{\"c\":3}"]
        );
        assert!(store.entries_after(3).await.unwrap().is_empty());
        // The same blob again (a package re-sent) is no error.
        assert!(store
            .append(3, vec!["{\"d\":4}".into()], vec![(sha, blob)])
            .await
            .unwrap());
        // Eight writers race for position 5: exactly one wins.
        let racers: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .append(4, vec![format!("{{\"racer\":{i}}}")], vec![])
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut won = 0;
        for r in racers {
            won += usize::from(r.await.unwrap());
        }
        assert_eq!(won, 1);
        assert_eq!(store.entries().await.unwrap().len(), 5);
    }
}
