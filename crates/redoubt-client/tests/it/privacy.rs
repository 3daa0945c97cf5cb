//! What the server sees: only ciphertext. And what the client does with
//! ciphertext that was tampered with or replayed.

use redoubt_proto::EnvelopeId;
use test_support::{fresh_phone, logs, TestServer, WsClient};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_never_sees_the_plaintext() {
    let server = TestServer::start().await;
    let mut alice = register(&server, &fresh_phone()).await;
    let mut bob = register(&server, &fresh_phone()).await;
    let marker = "PLAINTEXT-MARKER-4c1d9e7a";
    // A raw socket with Bob's token records every frame the server pushes.
    let (base, token) = (server.base_url(), bob.client.api().token().unwrap().clone());
    let mut tap = WsClient::connect(&base, &token).await;
    tap.until_drained().await;

    let chat = alice.client.start_direct(bob.client.phone()).await.unwrap();
    alice
        .client
        .send_text(&chat, &format!("{marker} one"))
        .await
        .unwrap();
    let group = alice
        .client
        .create_group("marker group", &[bob.client.phone().clone()])
        .await
        .unwrap();
    alice
        .client
        .send_text(&group, &format!("{marker} two"))
        .await
        .unwrap();
    // Welcome, info, text, welcome, info, text: six pushes.
    for _ in 0..6 {
        tap.envelope().await;
    }
    // Scan the server's database before Bob acks anything.
    let mut db = Vec::new();
    for suffix in ["", "-wal"] {
        if let Ok(b) = std::fs::read(format!("{}{suffix}", server.db_path().display())) {
            db.extend(b);
        }
    }
    let needle = marker.as_bytes();
    assert!(db.len() > 10_000, "the scan sees the database");
    assert!(
        !db.windows(needle.len()).any(|w| w == needle),
        "plaintext in the server database"
    );
    assert!(
        !logs::captured().contains(marker),
        "plaintext in the server log"
    );
    assert!(tap.raw.len() >= 6);
    for frame in &tap.raw {
        assert!(!frame.contains(marker), "plaintext on the wire");
    }
    tap.close().await;

    bob.client.sync().await.unwrap();
    let all: Vec<String> = [
        texts(
            &bob.client,
            &bob.client
                .find_chat(alice.client.phone().e164())
                .await
                .unwrap(),
        )
        .await,
        texts(
            &bob.client,
            &bob.client.find_chat("marker group").await.unwrap(),
        )
        .await,
    ]
    .concat();
    assert_eq!(all, vec![format!("{marker} one"), format!("{marker} two")]);
    // The profile database seals message bodies too.
    let profile =
        std::fs::read(redoubt_client::store::ProfileStore::db_path(bob.dir.path())).unwrap();
    assert!(
        !profile.windows(needle.len()).any(|w| w == needle),
        "plaintext at rest on the device"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_and_replayed_ciphertext_is_rejected_visibly() {
    let server = TestServer::start().await;
    let mut alice = register(&server, &fresh_phone()).await;
    let mut bob = register(&server, &fresh_phone()).await;
    let chat = alice.client.start_direct(bob.client.phone()).await.unwrap();
    bob.client.sync().await.unwrap();
    alice.client.send_text(&chat, "genuine").await.unwrap();

    // Take the genuine ciphertext from Bob's mailbox as the server holds it.
    let page = bob.client.api().fetch().await.unwrap();
    let genuine = page.envelopes.last().unwrap().payload.as_slice().to_vec();
    let mut tampered = genuine.clone();
    let at = tampered.len() - 20;
    tampered[at] ^= 0x01;
    let bob_device = bob.client.device_id();
    alice
        .client
        .api()
        .send(EnvelopeId::random(), vec![bob_device], tampered, None)
        .await
        .unwrap();
    // The same bytes again under a new envelope id: an MLS replay.
    alice
        .client
        .api()
        .send(EnvelopeId::random(), vec![bob_device], genuine, None)
        .await
        .unwrap();
    alice
        .client
        .api()
        .send(
            EnvelopeId::random(),
            vec![bob_device],
            b"not mls at all".to_vec(),
            None,
        )
        .await
        .unwrap();

    let bob_chat = chat_with(&mut bob, &alice).await;
    assert_eq!(
        texts(&bob.client, &bob_chat).await,
        vec!["genuine"],
        "accepted exactly once"
    );
    let notices: Vec<String> = system_texts(&bob.client, &bob_chat)
        .await
        .into_iter()
        .filter(|t| t.contains("could not be decrypted"))
        .collect();
    assert_eq!(
        notices.len(),
        2,
        "the tampered copy and the replay each get a notice"
    );
    assert_eq!(
        bob.client.notices(10).await.unwrap().len(),
        1,
        "the non-MLS blob gets a notice"
    );
    // The chat still works afterwards.
    alice.client.send_text(&chat, "after").await.unwrap();
    bob.client.sync().await.unwrap();
    assert_eq!(
        texts(&bob.client, &bob_chat).await,
        vec!["genuine", "after"]
    );
}

/// Issue 16, item 9: a message to Bob went in one envelope to Bob's
/// devices and to Alice's other device, so the relay's own mailbox tied the
/// two accounts together. Copies for the sender's own devices now travel
/// apart: no envelope is queued for devices of two accounts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_queued_envelope_ties_two_accounts_together() {
    let server = TestServer::start().await;
    let mut alice = register(&server, &fresh_phone()).await;
    let mut alice2 = link(&server, &mut alice.client).await;
    let mut bob = register(&server, &fresh_phone()).await;
    let chat = alice.client.start_direct(bob.client.phone()).await.unwrap();
    for text in ["one", "two", "three"] {
        alice.client.send_text(&chat, text).await.unwrap();
    }
    let alices: Vec<Vec<u8>> = [alice.client.device_id(), alice2.client.device_id()]
        .iter()
        .map(|d| d.as_bytes().to_vec())
        .collect();
    let bobs = bob.client.device_id().as_bytes().to_vec();
    let pool = test_support::hostile::db(&server).await;
    let rows: Vec<(Vec<u8>, Vec<u8>)> =
        sqlx::query_as("SELECT envelope_id, device_id FROM mailbox")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut by_envelope: std::collections::HashMap<Vec<u8>, (bool, bool)> = Default::default();
    for (envelope, device) in &rows {
        let seen = by_envelope.entry(envelope.clone()).or_default();
        seen.0 |= alices.contains(device);
        seen.1 |= *device == bobs;
    }
    assert!(
        by_envelope.values().any(|(a, _)| *a) && by_envelope.values().any(|(_, b)| *b),
        "the check saw queued copies for both accounts: {rows:?}"
    );
    assert!(
        by_envelope.values().all(|(a, b)| !(*a && *b)),
        "an envelope is queued for both Alice's and Bob's devices"
    );
    // Bob gets everything, and so does Alice's other device, each once.
    for p in [&mut bob, &mut alice2] {
        p.client.sync().await.unwrap();
        let chats = p.client.chats().await.unwrap();
        let mut all = Vec::new();
        for chat in &chats {
            all.extend(texts(&p.client, chat).await);
        }
        assert_eq!(all, ["one", "two", "three"], "{chats:?}");
    }
}
