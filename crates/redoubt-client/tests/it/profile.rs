//! One profile in several processes, offline use, and resetting a profile:
//! what happens when people use the client the way the README suggests
//! (`redoubt chat` in one terminal, commands in another), or without a
//! network.

use std::time::Duration;

use redoubt_client::model::{Author, Delivery};
use redoubt_client::Client;
use test_support::{fresh_phone, TestServer};

use crate::cli::{redoubt, stderr, stdout};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_profile_keep_every_chat_intact() {
    let server = TestServer::start().await;
    // Alice's long-lived client plays `redoubt chat`; her CLI commands run
    // as other processes on the same profile at the same time.
    let mut alice = register(&server, &fresh_phone()).await;
    let mut bob = register(&server, &fresh_phone()).await;
    let bob_phone = bob.client.phone().e164().to_owned();
    let chat = alice.client.start_direct(bob.client.phone()).await.unwrap();
    alice.client.send_text(&chat, "one").await.unwrap();
    let dir = alice.dir.path().to_owned();

    let sent = tokio::task::spawn_blocking({
        let (dir, bob_phone) = (dir.clone(), bob_phone.clone());
        move || redoubt(&dir, &["send", &bob_phone, "two"])
    })
    .await
    .unwrap();
    assert!(sent.status.success(), "{}", stderr(&sent));
    // The long-lived client's state is now behind the profile's: it must
    // pick up where the other process left the ratchet.
    alice.client.send_text(&chat, "three").await.unwrap();

    // Several processes at once, while the long-lived client sends too.
    let handles: Vec<_> = (0..3)
        .map(|i| {
            let (dir, bob_phone) = (dir.clone(), bob_phone.clone());
            tokio::task::spawn_blocking(move || {
                redoubt(&dir, &["send", &bob_phone, &format!("parallel {i}")])
            })
        })
        .collect();
    alice.client.send_text(&chat, "four").await.unwrap();
    for h in handles {
        let out = h.await.unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }

    let bob_chat = chat_with(&mut bob, &alice).await;
    let mut got = texts(&bob.client, &bob_chat).await;
    got.sort();
    assert_eq!(
        got,
        [
            "four",
            "one",
            "parallel 0",
            "parallel 1",
            "parallel 2",
            "three",
            "two"
        ],
        "every message arrives once and decrypts"
    );
    assert!(
        system_texts(&bob.client, &bob_chat)
            .await
            .iter()
            .all(|t| !t.contains("could not")),
        "{:?}",
        system_texts(&bob.client, &bob_chat).await
    );

    // The replies reach both processes: the long-lived one syncs first,
    // then a command reads what it stored, and the group survives both.
    bob.client
        .send_text(&bob_chat, "got them all")
        .await
        .unwrap();
    alice.client.sync().await.unwrap();
    bob.client.send_text(&bob_chat, "and this").await.unwrap();
    let read = tokio::task::spawn_blocking({
        let (dir, bob_phone) = (dir.clone(), bob_phone.clone());
        move || redoubt(&dir, &["read", &bob_phone])
    })
    .await
    .unwrap();
    assert!(read.status.success(), "{}", stderr(&read));
    assert!(stdout(&read).contains("got them all"), "{}", stdout(&read));
    assert!(stdout(&read).contains("and this"), "{}", stdout(&read));
    assert!(!stdout(&read).contains("could not"), "{}", stdout(&read));
    alice.client.send_text(&chat, "still fine").await.unwrap();
    bob.client.sync().await.unwrap();
    assert_eq!(
        texts(&bob.client, &bob_chat).await.last().unwrap(),
        "still fine"
    );
    // Two processes numbered Alice's messages from one stream: Bob saw
    // no gap and no repeat.
    assert_no_false_alarms(&bob.client, &bob_chat).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_written_offline_wait_in_the_outbox_and_go_once_when_the_relay_returns() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let alice = register(&server, &fresh_phone()).await;
    let mut bob = register(&server, &fresh_phone()).await;
    let bob_phone = bob.client.phone().e164().to_owned();
    let mut alice = alice;
    let chat = alice.client.start_direct(bob.client.phone()).await.unwrap();
    alice.client.send_text(&chat, "online").await.unwrap();
    let dir = alice.dir.path().to_owned();
    let base = server.base_url();

    // The relay goes away.
    let data = server.stop().await;
    let offline = tokio::task::spawn_blocking({
        let (dir, bob_phone) = (dir.clone(), bob_phone.clone());
        move || {
            (
                redoubt(&dir, &["send", &bob_phone, "written offline"]),
                redoubt(&dir, &["--json", "send", &bob_phone, "also offline"]),
                redoubt(&dir, &["read", &bob_phone]),
                redoubt(&dir, &["chats"]),
            )
        }
    })
    .await
    .unwrap();
    let (send, send_json, read, chats) = offline;
    assert!(send.status.success(), "{}", stderr(&send));
    assert!(
        stderr(&send).contains("Queued") && stderr(&send).contains(&base),
        "{}",
        stderr(&send)
    );
    let value: serde_json::Value = serde_json::from_slice(&send_json.stdout).unwrap();
    assert_eq!(value["delivery"], "queued");
    assert!(read.status.success(), "{}", stderr(&read));
    assert!(stderr(&read).contains(&format!("cannot reach the relay at {base}")));
    let shown = stdout(&read);
    assert!(shown.contains("online"), "{shown}");
    assert!(
        shown.contains("written offline  (queued: not sent yet)"),
        "{shown}"
    );
    assert!(chats.status.success(), "{}", stderr(&chats));
    // The long-lived client queues as well.
    let queued = alice
        .client
        .send_text(&chat, "from the screen")
        .await
        .unwrap();
    assert_eq!(queued.delivery, Delivery::Queued);

    // The relay comes back where it was; the next sync sends the outbox in
    // order, each message exactly once.
    let server = TestServer::builder()
        .addr(addr)
        .data_dir(data)
        .start()
        .await;
    let report = alice.client.sync().await.unwrap();
    assert_eq!((report.sent, report.queued), (3, 0), "{report:?}");
    alice.client.sync().await.unwrap();
    let synced = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || redoubt(&dir, &["sync"])
    })
    .await
    .unwrap();
    assert!(synced.status.success(), "{}", stderr(&synced));
    let bob_chat = chat_with(&mut bob, &alice).await;
    assert_eq!(
        texts(&bob.client, &bob_chat).await,
        [
            "online",
            "written offline",
            "also offline",
            "from the screen"
        ]
    );
    // Written offline, sent after a restart of the relay: no gap, repeat
    // or split is shown for it.
    assert_no_false_alarms(&bob.client, &bob_chat).await;
    let mine: Vec<Delivery> = alice
        .client
        .messages(&chat, 10)
        .await
        .unwrap()
        .into_iter()
        .filter(|m| matches!(m.author, Author::Member { .. }))
        .map(|m| m.delivery)
        .collect();
    assert!(mine.iter().all(|d| *d == Delivery::Sent), "{mine:?}");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_profile_can_be_reset_and_registered_again() {
    let server = TestServer::start().await;
    let phone = fresh_phone();
    let old = register(&server, &phone).await;
    let mut other = register(&server, &phone).await;
    let old_device = old.client.device_id();
    let dir = old.dir;
    old.client.close().await;
    other.client.api().revoke_device(old_device).await.unwrap();
    other.client.sync().await.unwrap();

    let (revoked, refused, reset) = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || {
            (
                redoubt(&dir, &["devices"]),
                redoubt(&dir, &["reset"]),
                redoubt(&dir, &["reset", "--yes"]),
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(revoked.status.code(), Some(1));
    assert!(
        stderr(&revoked).contains("redoubt reset"),
        "{}",
        stderr(&revoked)
    );
    assert_eq!(refused.status.code(), Some(1), "no confirmation, no reset");
    assert!(stderr(&refused).contains("--yes"), "{}", stderr(&refused));
    assert!(reset.status.success(), "{}", stderr(&reset));
    assert!(!redoubt_client::store::ProfileStore::exists(dir.path()));

    // The same directory registers again and works.
    let again: Client = register_in(&server, &phone, dir.path()).await;
    assert_ne!(again.device_id(), old_device);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let devices = other.client.api().own_devices().await.unwrap().devices;
    assert!(devices.iter().any(|d| d.device_id == again.device_id()));
}
