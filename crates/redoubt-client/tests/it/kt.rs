//! Key transparency, against a hostile relay: keys the directory does not
//! list are refused at first contact, a key put behind a number is seen by
//! the number's owner, and an older directory is refused. Each check, off,
//! lets its attack through (these are part of the malicious-relay suite;
//! see docs/threat-model.md).

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
    for table in ["kt_nodes", "kt_values", "kt_epochs"] {
        sqlx::query(&format!(
            "CREATE TABLE snap_{table} AS SELECT * FROM {table}"
        ))
        .execute(&pool)
        .await
        .unwrap();
    }
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
    for table in ["kt_nodes", "kt_values", "kt_epochs"] {
        sqlx::query(&format!("DELETE FROM {table}"))
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query(&format!("INSERT INTO {table} SELECT * FROM snap_{table}"))
            .execute(&pool)
            .await
            .unwrap();
    }
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
    // The relay rewrites epoch 2's root, and signs the new one with its own
    // directory key: the signatures hold, the append-only proofs do not.
    let pool = db(&server).await;
    let secret: Vec<u8> = sqlx::query_scalar("SELECT secret FROM kt_keys WHERE name = 'directory'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&secret.try_into().unwrap());
    let published_at: i64 =
        sqlx::query_scalar("SELECT published_at FROM kt_epochs WHERE epoch = 2")
            .fetch_one(&pool)
            .await
            .unwrap();
    let forged = [9u8; 32];
    let signature = key.sign(&redoubt_proto::kt::SignedEpoch::signing_input(
        2,
        &forged,
        published_at,
    ));
    sqlx::query("UPDATE kt_epochs SET root = ?, signature = ? WHERE epoch = 2")
        .bind(forged.to_vec())
        .bind(signature.to_bytes().to_vec())
        .execute(&pool)
        .await
        .unwrap();
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
