//! The IP-address log and its retention purge.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use redoubt_proto::{AccountId, PhoneNumber};
use redoubt_server::storage::{sqlite::SqliteStore, IpObservation, Store};
use redoubt_server::{Clock, Config};
use test_support::{TestDevice, TestServer};

const DAY: Duration = Duration::from_secs(86_400);

/// Moves tokio's clock (and with it every `Clock::tokio()`) forward by `by`
/// in one step, firing the timers that fall due.
///
/// Time stays frozen only for the jump. While it is frozen, tokio moves the
/// clock to the next timer whenever the runtime idles, and SQLite work runs
/// on a thread of its own, so the pool's acquire timeout would fire while a
/// query is merely in progress. Resuming right after the jump lets storage
/// run on real time while the retention logic sees the jumped clock.
async fn jump(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

/// The purge loop itself, on tokio's clock: time jumps 31 days without
/// sleeping, and only rows past retention disappear.
#[tokio::test]
async fn the_purge_loop_deletes_rows_past_retention_on_tokio_time() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&dir.path().join("r.db"), &Default::default())
            .await
            .unwrap(),
    );
    let clock = Clock::tokio();
    let old_account = AccountId::random();
    let recent_account = AccountId::random();
    let ip: IpAddr = "127.0.0.2".parse().unwrap();
    store
        .record_ip(IpObservation {
            account_id: old_account,
            ip,
            port: 40000,
            at: clock.now(),
        })
        .await
        .unwrap();
    jump(20 * DAY).await;
    store
        .record_ip(IpObservation {
            account_id: recent_account,
            ip,
            port: 40001,
            at: clock.now(),
        })
        .await
        .unwrap();

    let mut config = Config::default();
    config.ip_log.retention = 30 * DAY;
    config.maintenance.purge_interval = Duration::from_secs(3600);
    let purger = redoubt_server::maintenance::Purger::new(
        store.clone(),
        clock.clone(),
        config,
        Default::default(),
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (tx, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(purger.run(shutdown.clone(), Some(tx)));

    // The first pass runs at once: at day 20 nothing is 30 days old yet.
    let first = reports.recv().await.unwrap();
    assert_eq!(first.ip_log, 0);
    assert_eq!(store.ip_log(old_account).await.unwrap().len(), 1);

    // Eleven days later the old row is past retention; the recent one is
    // not. The jump fires the hourly timer, and the pass it runs (or the
    // next) deletes exactly the old row.
    jump(11 * DAY).await;
    let mut deleted = 0;
    while deleted == 0 {
        deleted += reports.recv().await.unwrap().ip_log;
    }
    assert_eq!(deleted, 1);
    assert!(store.ip_log(old_account).await.unwrap().is_empty());
    assert_eq!(store.ip_log(recent_account).await.unwrap().len(), 1);
    shutdown.cancel();
    task.await.unwrap();
}

fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// The running server logs each account's addresses with ports and times,
/// and its background purge removes them after retention.
#[tokio::test]
async fn the_server_logs_addresses_and_purges_them_after_retention() {
    let server = TestServer::builder()
        .configure(|c| {
            c.maintenance.purge_interval = Duration::from_millis(50);
            c.ip_log.retention = 30 * DAY;
        })
        .start()
        .await;
    let phone = test_support::fresh_phone();
    let alice = TestDevice::register_from(
        client_from("127.0.0.2"),
        &server.base_url(),
        &phone,
        "a",
        || {
            test_support::logs::dev_code_for(
                &test_support::logs::captured(),
                PhoneNumber::parse(&phone).unwrap().e164(),
            )
        },
    )
    .await;
    let bob = server.register_fresh().await;
    alice.get("/v1/devices").await;
    let mut from_three = alice.clone();
    from_three.http = client_from("127.0.0.3");
    from_three.send_ok(&[bob.device_id], b"hello").await;

    let log = server.state.store().ip_log(alice.account_id).await.unwrap();
    let ips: Vec<String> = log.iter().map(|e| e.ip.to_string()).collect();
    assert!(
        ips.contains(&"127.0.0.2".to_owned()) && ips.contains(&"127.0.0.3".to_owned()),
        "{ips:?}"
    );
    assert!(log
        .iter()
        .all(|e| e.port != 0 && e.first_seen <= e.last_seen));
    // Registration itself is not an authenticated call, and Bob's rows are his own.
    let bob_log = server.state.store().ip_log(bob.account_id).await.unwrap();
    assert!(bob_log.iter().all(|e| e.ip.to_string() == "127.0.0.1"));

    server.clock.advance(31 * DAY);
    test_support::eventually("the background purge removes the rows", || async {
        server
            .state
            .store()
            .ip_log(alice.account_id)
            .await
            .unwrap()
            .is_empty()
    })
    .await;
}

/// Whether `needle` occurs anywhere in the database file or its WAL.
fn on_disk(db: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for suffix in ["", "-wal"] {
        let path = std::path::PathBuf::from(format!("{}{suffix}", db.display()));
        if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

/// Issue 16: acknowledged ciphertext must not stay in `redoubt.db` or its
/// WAL. Deleted rows are overwritten (`secure_delete`), and the purge pass
/// empties the WAL, so after one pass the bytes are nowhere in the files.
#[tokio::test]
async fn acknowledged_ciphertext_is_gone_from_the_database_and_wal_after_a_purge() {
    let server = TestServer::start().await;
    let alice = server.register_fresh().await;
    let bob = server.register_fresh().await;
    // Long enough to be stored in place and recognisable.
    let marker: Vec<u8> = b"ACKED-CIPHERTEXT-MARKER-"
        .iter()
        .copied()
        .cycle()
        .take(600)
        .collect();
    let kept: Vec<u8> = b"STILL-QUEUED-MARKER-"
        .iter()
        .copied()
        .cycle()
        .take(600)
        .collect();
    let gone = alice.send_ok(&[bob.device_id], &marker).await;
    alice.send_ok(&[bob.device_id], &kept).await;
    assert_eq!(bob.ack(&[gone]).await, 1);

    let purger = redoubt_server::maintenance::Purger::new(
        server.state.store().clone(),
        server.clock.clone(),
        server.state.config().clone(),
        Default::default(),
    );
    purger.once().await.unwrap();
    let db = server.db_path();
    assert_eq!(
        on_disk(&db, &kept[..64]).len(),
        1,
        "the check finds what is still queued"
    );
    assert_eq!(
        on_disk(&db, &marker[..64]),
        Vec::<String>::new(),
        "acknowledged ciphertext is still on disk"
    );
}

/// Issue 16: the data directory is its owner's alone, and so are the
/// database and its WAL.
#[cfg(unix)]
#[tokio::test]
async fn the_data_directory_and_database_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: parent.path().join("fresh").join("redoubtd"),
        ..Config::default()
    };
    let _state = redoubt_server::AppState::open(config.clone(), Clock::system())
        .await
        .unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&config.data_dir), 0o700);
    let db = config.sqlite_path();
    assert_eq!(mode(&db), 0o600);
    let wal = std::path::PathBuf::from(format!("{}-wal", db.display()));
    assert_eq!(mode(&wal), 0o600);
}
