//! One-to-one and group chats end to end.

use redoubt_client::model::ChatKind;
use test_support::{fresh_phone, TestServer};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_chat_works_both_ways() {
    let server = TestServer::start().await;
    let mut alice = register(&server, &fresh_phone()).await;
    let mut bob = register(&server, &fresh_phone()).await;
    let bob_phone = bob.client.phone().clone();
    let chat = alice.client.start_direct(&bob_phone).await.unwrap();
    alice.client.send_text(&chat, "hello bob").await.unwrap();

    let report = bob.client.sync().await.unwrap();
    assert!(report.processed >= 3, "welcome, chat info, text");
    let bob_chats = bob.client.chats().await.unwrap();
    assert_eq!(bob_chats.len(), 1);
    assert_eq!(bob_chats[0].kind, ChatKind::Direct);
    assert_eq!(bob_chats[0].name, alice.client.phone().e164());
    assert_eq!(texts(&bob.client, &bob_chats[0]).await, vec!["hello bob"]);

    bob.client
        .send_text(&bob_chats[0], "hi alice")
        .await
        .unwrap();
    alice.client.sync().await.unwrap();
    assert_eq!(
        texts(&alice.client, &chat).await,
        vec!["hello bob", "hi alice"]
    );
    // Each message carried its sender's directory epoch (the relay
    // publishes every 100 ms here, so they differ): no false alarm.
    for who in [&alice, &bob] {
        let notices = who.client.notices(20).await.unwrap();
        assert!(
            !notices.iter().any(|m| m.text.contains("KEY DIRECTORY")),
            "{notices:?}"
        );
    }
    // Starting the chat again returns the same one.
    assert_eq!(
        alice
            .client
            .start_direct(&bob_phone)
            .await
            .unwrap()
            .group_id,
        chat.group_id
    );
}
