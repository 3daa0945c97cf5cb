//! Groups: five users, one with two devices; adds, removes, leaves.

use redoubt_client::model::{ChatKind, ChatState};
use redoubt_client::ClientError;
use redoubt_proto::PhoneNumber;
use test_support::{fresh_phone, TestServer};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_five_with_adds_and_removes() {
    let server = TestServer::start().await;
    let mut alice = register(&server, &fresh_phone()).await;
    let bob_phone = fresh_phone();
    let mut bob_laptop = register(&server, &bob_phone).await;
    let mut bob_phone_device = link(&server, &mut bob_laptop.client).await;
    let mut carol = register(&server, &fresh_phone()).await;
    let mut dave = register(&server, &fresh_phone()).await;
    let mut erin = register(&server, &fresh_phone()).await;
    let phone = |p: &Profile| p.client.phone().clone();

    let group = alice
        .client
        .create_group("climbing", &[phone(&bob_laptop), phone(&carol)])
        .await
        .unwrap();
    // Bob's two devices and Carol's, plus Alice: four leaves.
    assert_eq!(alice.client.members(&group).unwrap().len(), 4);
    alice.client.send_text(&group, "first").await.unwrap();
    for p in [&mut bob_laptop, &mut bob_phone_device, &mut carol] {
        p.client.sync().await.unwrap();
        let chat = p.client.find_chat("climbing").await.unwrap();
        assert_eq!(chat.kind, ChatKind::Group);
        assert_eq!(texts(&p.client, &chat).await, vec!["first"]);
        assert_eq!(p.client.members(&chat).unwrap().len(), 4);
    }

    // Carol adds Dave and Erin; everyone converges on the same membership.
    let carol_chat = carol.client.find_chat("climbing").await.unwrap();
    carol
        .client
        .add_member(&carol_chat, &phone(&dave))
        .await
        .unwrap();
    carol
        .client
        .add_member(&carol_chat, &phone(&erin))
        .await
        .unwrap();
    carol
        .client
        .send_text(&carol_chat, "welcome dave and erin")
        .await
        .unwrap();
    for p in [
        &mut alice,
        &mut bob_laptop,
        &mut bob_phone_device,
        &mut dave,
        &mut erin,
    ] {
        p.client.sync().await.unwrap();
        let chat = p.client.find_chat("climbing").await.unwrap();
        let members = p.client.members(&chat).unwrap();
        assert_eq!(members.len(), 6, "five users, Bob with two devices");
        assert_eq!(members.iter().filter(|m| m.this_device).count(), 1);
        assert!(texts(&p.client, &chat)
            .await
            .contains(&"welcome dave and erin".to_owned()));
    }
    // The newcomers do not see what was said before they joined.
    let dave_chat = dave.client.find_chat("climbing").await.unwrap();
    assert_eq!(
        texts(&dave.client, &dave_chat).await,
        vec!["welcome dave and erin"]
    );

    // Alice removes Bob: both his devices go, and he cannot read what follows.
    alice
        .client
        .remove_member(&group, &phone(&bob_laptop))
        .await
        .unwrap();
    alice.client.send_text(&group, "bob is gone").await.unwrap();
    for p in [&mut bob_laptop, &mut bob_phone_device] {
        p.client.sync().await.unwrap();
        let chat = p.client.find_chat("climbing").await.unwrap();
        assert_eq!(chat.state, ChatState::Removed);
        assert!(!texts(&p.client, &chat)
            .await
            .contains(&"bob is gone".to_owned()));
        assert!(matches!(
            p.client.send_text(&chat, "let me back").await,
            Err(ClientError::NotAMember)
        ));
    }
    for p in [&mut carol, &mut dave, &mut erin] {
        p.client.sync().await.unwrap();
        let chat = p.client.find_chat("climbing").await.unwrap();
        assert_eq!(p.client.members(&chat).unwrap().len(), 4);
        assert!(texts(&p.client, &chat)
            .await
            .contains(&"bob is gone".to_owned()));
    }

    // Erin leaves; the remaining member with the lowest leaf commits it.
    let erin_chat = erin.client.find_chat("climbing").await.unwrap();
    erin.client.leave(&erin_chat).await.unwrap();
    for p in [&mut alice, &mut carol, &mut dave] {
        p.client.sync().await.unwrap();
    }
    for p in [&mut alice, &mut carol, &mut dave] {
        p.client.sync().await.unwrap();
        let chat = p.client.find_chat("climbing").await.unwrap();
        let members = p.client.members(&chat).unwrap();
        assert_eq!(members.len(), 3, "{:?}", members);
    }
    dave.client
        .send_text(&dave_chat, "three of us")
        .await
        .unwrap();
    for p in [&mut alice, &mut carol] {
        p.client.sync().await.unwrap();
        let chat = p.client.find_chat("climbing").await.unwrap();
        assert_eq!(
            texts(&p.client, &chat).await.last().map(String::as_str),
            Some("three of us")
        );
    }
    erin.client.sync().await.unwrap();
    let erin_chat = erin.client.find_chat("climbing").await.unwrap();
    assert!(!texts(&erin.client, &erin_chat)
        .await
        .contains(&"three of us".to_owned()));
    // Through five epochs of adds, removals and a leave, every member saw
    // every sender's messages in order: no gap, repeat or fork was shown.
    for p in [&alice, &carol, &dave, &erin] {
        let chat = p.client.find_chat("climbing").await.unwrap();
        assert_no_false_alarms(&p.client, &chat).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() {
    let server = TestServer::start().await;
    let mut alice = register(&server, &fresh_phone()).await;
    let stranger = PhoneNumber::parse(&fresh_phone()).unwrap();
    assert!(matches!(
        alice.client.start_direct(&stranger).await,
        Err(ClientError::UnknownContact(_))
    ));
    let own = alice.client.phone().clone();
    assert!(matches!(
        alice.client.start_direct(&own).await,
        Err(ClientError::Invalid(_))
    ));
    assert!(matches!(
        alice.client.find_chat("nothing").await,
        Err(ClientError::UnknownChat(_))
    ));
    let bob = register(&server, &fresh_phone()).await;
    let chat = alice.client.start_direct(bob.client.phone()).await.unwrap();
    let huge = "x".repeat(redoubt_client::client::MAX_TEXT_BYTES + 1);
    assert!(matches!(
        alice.client.send_text(&chat, &huge).await,
        Err(ClientError::TooLarge { .. })
    ));
    assert!(matches!(
        alice.client.add_member(&chat, &stranger).await,
        Err(ClientError::Invalid(_))
    ));
    // None of that disturbed the chat.
    alice.client.send_text(&chat, "still fine").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_from_a_removed_member_is_rejected_visibly() {
    let server = TestServer::start().await;
    let mut alice = register(&server, &fresh_phone()).await;
    let mut bob = register(&server, &fresh_phone()).await;
    let mut carol = register(&server, &fresh_phone()).await;
    let carol_phone = carol.client.phone().clone();
    let group = alice
        .client
        .create_group("stale", &[bob.client.phone().clone(), carol_phone.clone()])
        .await
        .unwrap();
    bob.client.sync().await.unwrap();
    carol.client.sync().await.unwrap();

    alice
        .client
        .remove_member(&group, bob.client.phone())
        .await
        .unwrap();
    // Bob has not seen his removal and commits from his old state: he is no
    // longer a member of the epoch everyone else is in. An honest relay
    // refuses a second commit from that epoch; this one takes it anyway.
    let bob_chat = bob.client.find_chat("stale").await.unwrap();
    sqlx::query("DELETE FROM commit_positions")
        .execute(&test_support::hostile::db(&server).await)
        .await
        .unwrap();
    bob.client
        .remove_member(&bob_chat, &carol_phone)
        .await
        .unwrap();

    for p in [&mut alice, &mut carol] {
        p.client.sync().await.unwrap();
        let chat = p.client.find_chat("stale").await.unwrap();
        let members = p.client.members(&chat).unwrap();
        assert_eq!(members.len(), 2, "Bob's commit changed nothing");
        let rejected = system_texts(&p.client, &chat)
            .await
            .iter()
            .any(|t| t.contains("THIS CHAT MAY HAVE SPLIT"));
        assert!(rejected, "the rejection is visible in the chat");
    }
    alice.client.send_text(&group, "still here").await.unwrap();
    carol.client.sync().await.unwrap();
    let carol_chat = carol.client.find_chat("stale").await.unwrap();
    assert_eq!(
        texts(&carol.client, &carol_chat)
            .await
            .last()
            .map(String::as_str),
        Some("still here")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_follows_signed_lists_and_holds_messages_for_identity_changes() {
    let server = TestServer::start().await;
    let mut alice = register(&server, &fresh_phone()).await;
    let mut bob = register(&server, &fresh_phone()).await;
    let mut carol = register(&server, &fresh_phone()).await;
    let group = alice
        .client
        .create_group(
            "signed",
            &[bob.client.phone().clone(), carol.client.phone().clone()],
        )
        .await
        .unwrap();
    assert_eq!(alice.client.members(&group).unwrap().len(), 3);

    // Bob links a device: Alice (the member with the lowest leaf) adds it
    // on her next send, and it reads from there.
    let mut bob2 = link(&server, &mut bob.client).await;
    alice.client.send_text(&group, "to all four").await.unwrap();
    assert_eq!(alice.client.members(&group).unwrap().len(), 4);
    bob2.client.sync().await.unwrap();
    let bob2_group = bob2.client.find_chat("signed").await.unwrap();
    assert_eq!(texts(&bob2.client, &bob2_group).await, ["to all four"]);
    // Carol is not designated: she sends without committing anything.
    carol.client.sync().await.unwrap();
    let carol_group = carol.client.find_chat("signed").await.unwrap();
    carol
        .client
        .send_text(&carol_group, "hi all")
        .await
        .unwrap();
    // A linked device joins in an epoch of its own: it expects every
    // stream from there, and sees no gap for what came before it.
    bob2.client.sync().await.unwrap();
    assert_eq!(
        texts(&bob2.client, &bob2_group).await,
        ["to all four", "hi all"]
    );
    assert_no_false_alarms(&bob2.client, &bob2_group).await;

    // Carol's number is registered again by SMS: a new identity. Alice's
    // next group message is held, naming Carol, until she accepts.
    let carol_phone = carol.client.phone().to_string();
    let _new_carol = register(&server, &carol_phone).await;
    alice.client.sync().await.unwrap();
    match alice.client.send_text(&group, "secret").await {
        Err(ClientError::IdentityChanged(phones)) => assert_eq!(phones, vec![carol_phone.clone()]),
        other => panic!("the group message must be held: {other:?}"),
    }
    alice
        .client
        .accept_changes(std::slice::from_ref(&carol_phone))
        .await
        .unwrap();
    alice.client.send_text(&group, "accepted").await.unwrap();
    let members = alice.client.members(&group).unwrap();
    assert!(!members.iter().any(|m| m.device == carol.client.device_id()));
    assert_eq!(
        members.len(),
        4,
        "Carol's old device left, her new one joined"
    );
}
