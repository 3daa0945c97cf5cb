//! Key transparency, against a hostile relay: keys the directory does not
//! list are refused at first contact, a key put behind a number is seen by
//! the number's owner, an older directory is refused, so is a newer one
//! that does not extend the one seen, and two people shown two directories
//! find out from each other's messages. Each check, off, lets its attack
//! through (these are part of the malicious-relay suite; see
//! docs/threat-model.md).

use redoubt_client::ClientError;
use test_support::hostile::db;
use test_support::{fresh_phone, TestServer};

use crate::support::*;

/// A relay that publishes epochs only when the test says so.
async fn manual_server() -> TestServer {
    TestServer::builder()
        .configure(|c| c.kt.epoch_interval = std::time::Duration::from_secs(3600))
        .start()
        .await
}

/// The directory's tables, which a forking relay keeps two versions of.
const DIRECTORY_TABLES: [&str; 4] = ["kt_nodes", "kt_values", "kt_epochs", "kt_pending"];

/// Keeps a copy of the directory as it is now, under `name`.
async fn save_directory(pool: &sqlx::SqlitePool, name: &str) {
    for table in DIRECTORY_TABLES {
        sqlx::query(&format!("DROP TABLE IF EXISTS {name}_{table}"))
            .execute(pool)
            .await
            .unwrap();
        sqlx::query(&format!(
            "CREATE TABLE {name}_{table} AS SELECT * FROM {table}"
        ))
        .execute(pool)
        .await
        .unwrap();
    }
}

/// Serves the copy kept under `name` from now on.
async fn serve_directory(pool: &sqlx::SqlitePool, name: &str) {
    for table in DIRECTORY_TABLES {
        sqlx::query(&format!("DELETE FROM {table}"))
            .execute(pool)
            .await
            .unwrap();
        sqlx::query(&format!("INSERT INTO {table} SELECT * FROM {name}_{table}"))
            .execute(pool)
            .await
            .unwrap();
    }
}

async fn publish(server: &TestServer) -> u64 {
    let now = server.clock.now_offset().unix_timestamp();
    server.state.kt().publish(now).await.unwrap();
    server.state.kt().latest().await.unwrap().epoch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_first_contact_keys_the_directory_does_not_list_are_refused() {
    let server = manual_server().await;
    let mut alice = register(&server, &fresh_phone()).await;
    let bob = register(&server, &fresh_phone()).await;
    let bob_phone = bob.client.phone().clone();
    publish(&server).await;
    // The relay registers a ghost on Bob's number (it sends the SMS codes)
    // and serves the ghost's keys, but keeps them out of the directory,
    // where Bob would see them.
    let _ghost = register(&server, bob_phone.e164()).await;
    sqlx::query("DELETE FROM kt_pending")
        .execute(&db(&server).await)
        .await
        .unwrap();
    match alice.client.start_direct(&bob_phone).await {
        Err(ClientError::Untrusted(why)) => {
            assert!(why.contains("key-transparency directory"), "{why}")
        }
        other => panic!("the ghost's keys must be refused: {other:?}"),
    }
    assert!(alice.client.pinned(&bob_phone).await.unwrap().is_none());
    assert!(alice
        .client
        .take_announcements()
        .iter()
        .any(|t| t.contains("KEY DIRECTORY") && t.contains(bob_phone.e164())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_put_behind_a_number_is_seen_by_its_owner() {
    let server = TestServer::start().await;
    let mut bob = register(&server, &fresh_phone()).await;
    bob.client.sync().await.unwrap();
    assert!(!bob
        .client
        .notices(10)
        .await
        .unwrap()
        .iter()
        .any(|m| m.text.contains("KEY DIRECTORY")));
    // The relay publishes an identity key of its own for Bob's number,
    // without touching any device list Bob could see.
    let forged = redoubt_proto::kt::DirectoryValue {
        account: bob.client.account_id(),
        identity_key: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
        list_sha256: "00".repeat(32),
        list_version: 99,
    };
    server
        .state
        .kt()
        .queue(
            bob.client.phone(),
            &forged,
            server.clock.now_offset().unix_timestamp(),
        )
        .await
        .unwrap();
    let before = server.state.kt().latest().await.unwrap().epoch;
    for _ in 0..200 {
        if server.state.kt().latest().await.unwrap().epoch > before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    bob.client.sync().await.unwrap();
    let notices = bob.client.notices(10).await.unwrap();
    assert!(
        notices
            .iter()
            .any(|m| m.text.contains("KEY DIRECTORY") && m.text.contains("did not make")),
        "{notices:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_directory_is_refused() {
    let server = manual_server().await;
    let mut alice = register(&server, &fresh_phone()).await;
    let bob = register(&server, &fresh_phone()).await;
    let carol = register(&server, &fresh_phone()).await;
    publish(&server).await;
    // The relay keeps a copy of its directory as it is now.
    let pool = db(&server).await;
    save_directory(&pool, "old").await;
    alice.client.start_direct(bob.client.phone()).await.unwrap();
    let dave = register(&server, &fresh_phone()).await;
    publish(&server).await;
    alice
        .client
        .start_direct(dave.client.phone())
        .await
        .unwrap();
    // Then it serves the old directory again (where Carol's keys are the
    // same, so only the epoch gives it away).
    serve_directory(&pool, "old").await;
    match alice.client.start_direct(carol.client.phone()).await {
        Err(ClientError::Untrusted(why)) => assert!(why.contains("rollback"), "{why}"),
        other => panic!("an older directory must be refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auditor_verifies_the_directory_and_finds_a_rewritten_epoch() {
    use ed25519_dalek::Signer as _;
    let server = manual_server().await;
    for _ in 0..3 {
        let _someone = register(&server, &fresh_phone()).await;
        publish(&server).await;
    }
    let audited = redoubt_client::kt_audit::audit(&server.base_url(), None, 0)
        .await
        .unwrap();
    assert_eq!((audited.from, audited.to), (0, 3));
    // From the command line too, as anyone would run it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_redoubt"))
        .args(["kt", "audit", "--server", &server.base_url()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("verified from epoch 0 to 3"));
    // The relay rewrites epoch 2's root, rebuilds the log of epoch roots
    // to match, and signs epochs 2 and 3 again with its own directory key:
    // every signature and log root holds; akd's append-only proofs do not.
    let pool = db(&server).await;
    let secret: Vec<u8> = sqlx::query_scalar("SELECT secret FROM kt_keys WHERE name = 'directory'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&secret.try_into().unwrap());
    let rows: Vec<(i64, Vec<u8>, i64)> =
        sqlx::query_as("SELECT epoch, root, published_at FROM kt_epochs ORDER BY epoch")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut log = redoubt_proto::merkle::MerkleLog::new();
    for (epoch, root, published_at) in rows {
        let epoch = epoch as u64;
        let root: [u8; 32] = if epoch == 2 {
            [9u8; 32]
        } else {
            root.try_into().unwrap()
        };
        log.push(redoubt_proto::kt::epoch_leaf(epoch, &root));
        let log_root = log.root(epoch + 1).unwrap();
        let signature = key.sign(&redoubt_proto::kt::SignedEpoch::signing_input(
            epoch,
            &root,
            published_at,
            &log_root,
        ));
        sqlx::query("UPDATE kt_epochs SET root = ?, log_root = ?, signature = ? WHERE epoch = ?")
            .bind(root.to_vec())
            .bind(log_root.to_vec())
            .bind(signature.to_bytes().to_vec())
            .bind(epoch as i64)
            .execute(&pool)
            .await
            .unwrap();
    }
    match redoubt_client::kt_audit::audit(&server.base_url(), None, 0).await {
        Err(ClientError::Untrusted(why)) => {
            assert!(why.contains("between epochs 0 and 3"), "{why}")
        }
        other => panic!("a rewritten epoch must fail the audit: {other:?}"),
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_redoubt"))
        .args(["kt", "audit", "--server", &server.base_url()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_directory_that_does_not_extend_the_one_seen_is_refused() {
    let server = manual_server().await;
    let mut alice = register(&server, &fresh_phone()).await;
    let bob = register(&server, &fresh_phone()).await;
    assert_eq!(publish(&server).await, 1);
    alice.client.start_direct(bob.client.phone()).await.unwrap();
    let pool = db(&server).await;
    save_directory(&pool, "base").await;
    // Alice is shown epoch 2 with Carol in it.
    let _carol = register(&server, &fresh_phone()).await;
    assert_eq!(publish(&server).await, 2);
    alice.client.sync().await.unwrap();
    let (epoch_2_root, epoch_2_signature, epoch_2_at): (Vec<u8>, Vec<u8>, i64) =
        sqlx::query_as("SELECT root, signature, published_at FROM kt_epochs WHERE epoch = 2")
            .fetch_one(&pool)
            .await
            .unwrap();
    // Then the relay builds another history from epoch 1 (Dave at 2, Erin
    // at 3) and, to hide the fork, puts Alice's epoch 2 back in its list:
    // every epoch is signed and the one Alice saw is where she saw it, but
    // epoch 3 does not grow out of it.
    serve_directory(&pool, "base").await;
    let dave = register(&server, &fresh_phone()).await;
    assert_eq!(publish(&server).await, 2);
    let _erin = register(&server, &fresh_phone()).await;
    assert_eq!(publish(&server).await, 3);
    sqlx::query("UPDATE kt_epochs SET root = ?, signature = ?, published_at = ? WHERE epoch = 2")
        .bind(epoch_2_root)
        .bind(epoch_2_signature)
        .bind(epoch_2_at)
        .execute(&pool)
        .await
        .unwrap();
    match alice.client.start_direct(dave.client.phone()).await {
        Err(ClientError::Untrusted(why)) => {
            assert!(why.contains("do not extend"), "{why}")
        }
        other => panic!("a directory that does not extend the one seen must be refused: {other:?}"),
    }
    assert!(alice
        .client
        .pinned(dave.client.phone())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_shown_two_directories_find_out_from_each_others_messages() {
    let server = manual_server().await;
    let mut alice = register(&server, &fresh_phone()).await;
    let mut bob = register(&server, &fresh_phone()).await;
    let (alice_phone, bob_phone) = (alice.client.phone().clone(), bob.client.phone().clone());
    assert_eq!(publish(&server).await, 1);
    let chat = alice.client.start_direct(&bob_phone).await.unwrap();
    bob.client.sync().await.unwrap();
    let pool = db(&server).await;
    save_directory(&pool, "base").await;
    // The relay forks its directory after epoch 1: Alice is shown one
    // history (Carol joins at 2), Bob another (Dave at 2, Erin at 3), each
    // consistent in itself, every epoch signed with the directory key.
    let _carol = register(&server, &fresh_phone()).await;
    assert_eq!(publish(&server).await, 2);
    alice.client.sync().await.unwrap();
    save_directory(&pool, "alices").await;
    serve_directory(&pool, "base").await;
    let _dave = register(&server, &fresh_phone()).await;
    assert_eq!(publish(&server).await, 2);
    let _erin = register(&server, &fresh_phone()).await;
    assert_eq!(publish(&server).await, 3);
    bob.client.sync().await.unwrap();
    save_directory(&pool, "bobs").await;
    for who in [&alice, &bob] {
        assert!(
            !who.client
                .notices(20)
                .await
                .unwrap()
                .iter()
                .any(|m| m.text.contains("KEY DIRECTORY")),
            "each fork holds up on its own"
        );
    }
    // Each is only ever shown their own fork; they talk.
    serve_directory(&pool, "alices").await;
    alice.client.send_text(&chat, "hello").await.unwrap();
    serve_directory(&pool, "bobs").await;
    bob.client.sync().await.unwrap();
    let bobs_chat = bob
        .client
        .chats()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.group_id == chat.group_id)
        .unwrap();
    assert!(texts(&bob.client, &bobs_chat)
        .await
        .contains(&"hello".to_string()));
    // Alice's message carried her epoch 2; Bob has another root for it.
    let warned = system_texts(&bob.client, &bobs_chat).await;
    assert!(
        warned
            .iter()
            .any(|t| t.contains("KEY DIRECTORY") && t.contains(alice_phone.e164())),
        "{warned:?}"
    );
    assert!(bob
        .client
        .take_announcements()
        .iter()
        .any(|t| t.contains("KEY DIRECTORY")));
    // Alice learns it too: from Bob's report (two signed roots for epoch
    // 2 are proof), and from the epoch 3 in his message, which her
    // directory cannot link to.
    serve_directory(&pool, "alices").await;
    alice.client.sync().await.unwrap();
    let warned = system_texts(&alice.client, &chat).await;
    assert!(
        warned
            .iter()
            .any(|t| t.contains("proof that the relay shows people different keys")),
        "{warned:?}"
    );
    assert!(
        warned.iter().any(|t| t.contains("KEY DIRECTORY")
            && t.contains(bob_phone.e164())
            && t.contains("shown another key directory")),
        "{warned:?}"
    );
    assert!(alice
        .client
        .notices(20)
        .await
        .unwrap()
        .iter()
        .any(|m| m.text.contains("KEY DIRECTORY")));
}
