//! A device that loses its state registers again (a new identity, which
//! its contacts must accept) and is brought back in through a fresh
//! Welcome; removed members are added back.

use redoubt_client::ClientError;
use test_support::{fresh_phone, TestServer};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_lost_its_state_rejoins_and_the_key_change_is_loud() {
    let server = TestServer::start().await;
    let mut alice = register(&server, &fresh_phone()).await;
    let bob_phone = fresh_phone();
    let mut bob = register(&server, &bob_phone).await;
    let chat = alice.client.start_direct(bob.client.phone()).await.unwrap();
    alice.client.send_text(&chat, "before").await.unwrap();
    bob.client.sync().await.unwrap();

    let (alice_view, n) = alice
        .client
        .safety_number(bob.client.phone())
        .await
        .unwrap();
    let (bob_view, _) = bob
        .client
        .safety_number(alice.client.phone())
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(alice_view, bob_view, "both sides compare the same number");
    assert_eq!(alice_view.split(' ').count(), 12);

    // Bob loses his phone: a new profile, the same number, and the lost
    // device revoked from the new one.
    let old_device = bob.client.device_id();
    drop(bob);
    let mut bob = register(&server, &bob_phone).await;
    bob.client.api().revoke_device(old_device).await.unwrap();

    // The new registration is a new identity: Alice's client refuses to
    // send until she accepts it, naming Bob.
    match alice.client.send_text(&chat, "are you there?").await {
        Err(ClientError::IdentityChanged(phones)) => assert_eq!(phones, vec![bob_phone.clone()]),
        other => panic!("an identity change must hold the message: {other:?}"),
    }
    alice
        .client
        .accept_changes(std::slice::from_ref(&bob_phone))
        .await
        .unwrap();
    alice
        .client
        .send_text(&chat, "are you there?")
        .await
        .unwrap();
    let bob_chat = chat_with(&mut bob, &alice).await;
    assert_eq!(
        texts(&bob.client, &bob_chat).await,
        vec!["are you there?"],
        "history before the rejoin stays lost"
    );

    let notices = system_texts(&alice.client, &chat).await;
    assert!(
        notices
            .iter()
            .any(|t| t.contains("SAFETY NUMBER CHANGED") && t.contains(&bob_phone)),
        "{notices:?}"
    );
    let members = alice.client.members(&chat).unwrap();
    assert_eq!(members.len(), 2);
    assert!(
        members.iter().all(|m| m.device != old_device),
        "the lost device was removed"
    );

    let (after, _) = alice
        .client
        .safety_number(bob.client.phone())
        .await
        .unwrap();
    assert_ne!(after, alice_view, "a new key means a new safety number");

    bob.client
        .send_text(&bob_chat, "new phone, who dis")
        .await
        .unwrap();
    alice.client.sync().await.unwrap();
    assert_eq!(
        texts(&alice.client, &chat).await,
        vec!["before", "are you there?", "new phone, who dis"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_wait_for_an_offline_device_and_a_reopened_profile() {
    let server = TestServer::start().await;
    let mut alice = register(&server, &fresh_phone()).await;
    let bob = register(&server, &fresh_phone()).await;
    let bob_dir = bob.dir;
    bob.client.close().await;
    // Bob is offline (his profile closed) while Alice writes.
    let chat = alice
        .client
        .start_direct(&redoubt_proto::PhoneNumber::parse(&fresh_phone()).unwrap())
        .await;
    assert!(chat.is_err(), "an unknown number is refused");
    let bob_phone = {
        let reopened = redoubt_client::Client::open(bob_dir.path(), PASSPHRASE, config())
            .await
            .unwrap();
        let phone = reopened.phone().clone();
        reopened.close().await;
        phone
    };
    let chat = alice.client.start_direct(&bob_phone).await.unwrap();
    for i in 0..5 {
        alice
            .client
            .send_text(&chat, &format!("offline {i}"))
            .await
            .unwrap();
    }
    // A wrong passphrase is refused and changes nothing.
    assert!(matches!(
        redoubt_client::Client::open(bob_dir.path(), "wrong", config()).await,
        Err(redoubt_client::ClientError::WrongPassphrase)
    ));
    let mut bob = redoubt_client::Client::open(bob_dir.path(), PASSPHRASE, config())
        .await
        .unwrap();
    bob.sync().await.unwrap();
    let bob_chat = bob.find_chat(alice.client.phone().e164()).await.unwrap();
    let expected: Vec<String> = (0..5).map(|i| format!("offline {i}")).collect();
    assert_eq!(texts(&bob, &bob_chat).await, expected);
    // Reopening shows the same history; syncing again adds nothing.
    bob.close().await;
    let mut bob = redoubt_client::Client::open(bob_dir.path(), PASSPHRASE, config())
        .await
        .unwrap();
    assert_eq!(bob.sync().await.unwrap().processed, 0);
    assert_eq!(texts(&bob, &bob_chat).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_can_be_added_back_and_reads_again() {
    let server = TestServer::start().await;
    let mut alice = register(&server, &fresh_phone()).await;
    let mut bob = register(&server, &fresh_phone()).await;
    let mut carol = register(&server, &fresh_phone()).await;
    let carol_phone = carol.client.phone().clone();
    let group = alice
        .client
        .create_group(
            "book club",
            &[bob.client.phone().clone(), carol_phone.clone()],
        )
        .await
        .unwrap();
    alice.client.send_text(&group, "chapter one").await.unwrap();
    carol.client.sync().await.unwrap();
    let carol_chat = carol.client.find_chat("book club").await.unwrap();

    alice
        .client
        .remove_member(&group, &carol_phone)
        .await
        .unwrap();
    alice
        .client
        .send_text(&group, "not for carol")
        .await
        .unwrap();
    carol.client.sync().await.unwrap();
    let removed = carol.client.find_chat("book club").await.unwrap();
    assert_eq!(removed.state, redoubt_client::model::ChatState::Removed);

    // Added back: Carol's device joins afresh, the same chat is active
    // again with its history, and she reads and writes.
    alice.client.add_member(&group, &carol_phone).await.unwrap();
    alice
        .client
        .send_text(&group, "welcome back")
        .await
        .unwrap();
    carol.client.sync().await.unwrap();
    let back = carol.client.find_chat("book club").await.unwrap();
    assert_eq!(back.group_id, carol_chat.group_id);
    assert_eq!(back.state, redoubt_client::model::ChatState::Active);
    assert_eq!(
        texts(&carol.client, &back).await,
        vec!["chapter one", "welcome back"],
        "what was said while she was out stays unreadable to her"
    );
    assert!(system_texts(&carol.client, &back)
        .await
        .iter()
        .any(|t| t.contains("added you back")));
    assert_eq!(carol.client.members(&back).unwrap().len(), 3);
    carol
        .client
        .send_text(&back, "glad to be back")
        .await
        .unwrap();
    for p in [&mut alice, &mut bob] {
        p.client.sync().await.unwrap();
        let chat = p.client.find_chat("book club").await.unwrap();
        assert_eq!(
            texts(&p.client, &chat).await.last().unwrap(),
            "glad to be back"
        );
    }
    // Nobody was told of a message they could not decrypt.
    for p in [&alice, &bob, &carol] {
        let chat = p.client.find_chat("book club").await.unwrap();
        assert!(
            !system_texts(&p.client, &chat)
                .await
                .iter()
                .any(|t| t.contains("could not")),
            "{:?}",
            system_texts(&p.client, &chat).await
        );
    }

    // Leaving and being added back works the same way.
    carol.client.leave(&back).await.unwrap();
    alice.client.sync().await.unwrap();
    bob.client.sync().await.unwrap();
    assert_eq!(alice.client.members(&group).unwrap().len(), 2);
    alice.client.add_member(&group, &carol_phone).await.unwrap();
    alice.client.send_text(&group, "again").await.unwrap();
    carol.client.sync().await.unwrap();
    let again = carol.client.find_chat("book club").await.unwrap();
    assert_eq!(again.state, redoubt_client::model::ChatState::Active);
    assert_eq!(texts(&carol.client, &again).await.last().unwrap(), "again");
    // Removed and added back, Carol's device starts a new stream in a new
    // epoch: nobody sees a gap for what she could not read.
    for p in [&alice, &bob, &carol] {
        let chat = p.client.find_chat("book club").await.unwrap();
        assert_no_false_alarms(&p.client, &chat).await;
    }
}
