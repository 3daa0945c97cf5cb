//! The malicious-relay suite: the relay, or whoever runs or compels it,
//! lies to clients, and each test shows the attack prevented or shown to
//! every affected user. See `docs/threat-model.md` for the table of
//! attacks, defences and these tests.

use test_support::{fresh_phone, TestServer};

use crate::support::*;

/// The relay (or anyone with an account) claims every one-time key package
/// a contact uploaded, so that only the last-resort one is left. The
/// contact must stay reachable through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_key_packages_leave_the_contact_reachable() {
    let server = TestServer::start().await;
    let mut alice = register(&server, &fresh_phone()).await;
    let mut bob = register(&server, &fresh_phone()).await;
    let mallory = register(&server, &fresh_phone()).await;
    let bob_device = bob.client.device_id();
    // Claim until only the last-resort package answers (it is never used up).
    let mut seen = std::collections::HashSet::new();
    loop {
        let claimed = mallory.client.api().claim(vec![bob_device]).await.unwrap();
        if !seen.insert(claimed.key_packages[0].data.as_slice().to_vec()) {
            break;
        }
    }
    let chat = alice.client.start_direct(bob.client.phone()).await.unwrap();
    alice
        .client
        .send_text(&chat, "still reachable")
        .await
        .unwrap();
    let bob_chat = chat_with(&mut bob, &alice).await;
    assert_eq!(texts(&bob.client, &bob_chat).await, ["still reachable"]);
}

use redoubt_client::model::ChatRecord;
use redoubt_client::{Client, ClientError};
use test_support::hostile;

/// Every device in a chat, as `(account, device)`.
fn devices_in(client: &Client, chat: &ChatRecord) -> Vec<redoubt_proto::DeviceId> {
    let mut out: Vec<_> = client
        .members(chat)
        .unwrap()
        .into_iter()
        .map(|m| m.device)
        .collect();
    out.sort();
    out
}

/// Alice and Bob with a direct chat that works both ways.
async fn pair(server: &TestServer) -> (Profile, Profile, ChatRecord, ChatRecord) {
    direct_pair(server, Some("hello")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ghost_device_on_a_contacts_account_never_joins_the_chat() {
    let server = TestServer::start().await;
    let (mut alice, mut bob, chat, bob_chat) = pair(&server).await;
    let before = devices_in(&alice.client, &chat);
    // The relay lists a device of its own under Bob's account.
    let mallory = register(&server, &fresh_phone()).await;
    hostile::add_ghost_device(&server, bob.client.account_id(), &[42; 32]).await;
    hostile::swap_key_packages(
        &server,
        hostile::add_ghost_device(&server, bob.client.account_id(), &[43; 32]).await,
        mallory.client.device_id(),
    )
    .await;
    alice.client.send_text(&chat, "for bob only").await.unwrap();
    assert_eq!(devices_in(&alice.client, &chat), before, "no device joined");
    bob.client.sync().await.unwrap();
    assert_eq!(
        texts(&bob.client, &bob_chat).await,
        ["hello", "for bob only"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ghost_registered_by_sms_is_an_identity_change_everyone_sees() {
    let server = TestServer::start().await;
    let (mut alice, mut bob, chat, _) = pair(&server).await;
    let bob_phone = bob.client.phone().to_string();
    // The relay sends the SMS codes, so it can complete a registration on
    // Bob's number: a new identity key, a device list of its own.
    let ghost = register(&server, &bob_phone).await;
    let before = devices_in(&alice.client, &chat);
    match alice.client.send_text(&chat, "secret").await {
        Err(ClientError::IdentityChanged(phones)) => assert_eq!(phones, vec![bob_phone.clone()]),
        other => panic!("the message must be held: {other:?}"),
    }
    assert_eq!(devices_in(&alice.client, &chat), before);
    assert!(system_texts(&alice.client, &chat)
        .await
        .iter()
        .any(|t| t.contains("SAFETY NUMBER CHANGED") && t.contains(&bob_phone)));
    // Bob's own device is told, without anyone comparing numbers.
    bob.client.sync().await.unwrap();
    let warned = bob.client.notices(10).await.unwrap();
    assert!(
        warned
            .iter()
            .any(|m| m.text.contains("YOUR ACCOUNT WAS RESET")),
        "{warned:?}"
    );
    drop(ghost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ghost_on_the_senders_own_account_never_joins() {
    let server = TestServer::start().await;
    let (mut alice, _bob, chat, _) = pair(&server).await;
    let before = devices_in(&alice.client, &chat);
    let mallory = register(&server, &fresh_phone()).await;
    let ghost = hostile::add_ghost_device(&server, alice.client.account_id(), &[44; 32]).await;
    hostile::swap_key_packages(&server, ghost, mallory.client.device_id()).await;
    alice
        .client
        .send_text(&chat, "still private")
        .await
        .unwrap();
    assert_eq!(devices_in(&alice.client, &chat), before);
    // A new chat does not take it in either.
    let third = register(&server, &fresh_phone()).await;
    let group = alice
        .client
        .create_group("no ghosts", &[third.client.phone().clone()])
        .await
        .unwrap();
    assert!(!devices_in(&alice.client, &group).contains(&ghost));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hiding_or_dropping_a_device_does_not_remove_it_from_chats() {
    let server = TestServer::start().await;
    let (mut alice, mut bob, chat, _) = pair(&server).await;
    let mut bob2 = link(&server, &mut bob.client).await;
    alice.client.send_text(&chat, "to both").await.unwrap();
    let both = devices_in(&alice.client, &chat);
    assert_eq!(both.len(), 3);
    // The relay stops listing Bob's second device: the chat keeps it.
    hostile::hide_device(&server, bob2.client.device_id(), true).await;
    alice.client.take_announcements();
    alice.client.send_text(&chat, "while hidden").await.unwrap();
    assert_eq!(devices_in(&alice.client, &chat), both);
    // It would not carry the message there, and Alice is told.
    assert!(
        alice
            .client
            .take_announcements()
            .iter()
            .any(|t| t.contains("refused to deliver to 1 device")),
        "the withheld delivery is shown"
    );
    // Listed again: nothing to re-add, it never left, and it reads on.
    hostile::hide_device(&server, bob2.client.device_id(), false).await;
    alice.client.send_text(&chat, "shown again").await.unwrap();
    assert_eq!(devices_in(&alice.client, &chat), both);
    let chat2 = chat_with(&mut bob2, &alice).await;
    assert_eq!(
        texts(&bob2.client, &chat2).await.last().unwrap(),
        "shown again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_leaves_through_the_signed_list() {
    let server = TestServer::start().await;
    let (mut alice, mut bob, chat, _) = pair(&server).await;
    let bob2 = link(&server, &mut bob.client).await;
    alice.client.send_text(&chat, "to both").await.unwrap();
    assert_eq!(devices_in(&alice.client, &chat).len(), 3);
    bob.client
        .revoke_device(bob2.client.device_id())
        .await
        .unwrap();
    alice.client.send_text(&chat, "to one").await.unwrap();
    assert!(!devices_in(&alice.client, &chat).contains(&bob2.client.device_id()));
    assert_eq!(devices_in(&alice.client, &chat).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn substituted_key_packages_for_a_known_contact_are_refused() {
    let server = TestServer::start().await;
    let (mut alice, bob, _chat, _) = pair(&server).await;
    let mallory = register(&server, &fresh_phone()).await;
    // The relay serves, for Bob's device, a key of its own in a key package
    // that names Bob's account, device and number, and lists that key for
    // the device: full substitution of a known contact's keys.
    forge_key_package(&server, &mallory, &bob).await;
    let carol = register(&server, &fresh_phone()).await;
    let err = alice
        .client
        .create_group(
            "swapped",
            &[bob.client.phone().clone(), carol.client.phone().clone()],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Untrusted(_)), "{err}");
    assert!(err.to_string().contains(bob.client.phone().e164()), "{err}");
}

/// What a relay substituting a contact's keys serves: a key package with
/// the victim's account, device and number and a signature key of its
/// own, certified by an identity key it made up, stored as the victim
/// device's only package, with that key listed for the device.
async fn forge_key_package(server: &TestServer, relay: &Profile, victim: &Profile) {
    use openmls::prelude::SignatureScheme;
    use openmls_basic_credential::SignatureKeyPair;
    use redoubt_client::mls;
    let signer = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
    let certificate = redoubt_client::identity::IdentityKey::generate().certify(
        victim.client.account_id(),
        victim.client.device_id(),
        victim.client.phone(),
        signer.public(),
        0,
    );
    let provider = mls::Provider::default();
    let forged = mls::key_package(
        &provider,
        &signer,
        mls::credential(&certificate, &signer).unwrap(),
        false,
    )
    .unwrap();
    let db = hostile::db(server).await;
    for device in [victim.client.device_id(), relay.client.device_id()] {
        sqlx::query("DELETE FROM key_packages WHERE device_id = ?")
            .bind(device.as_bytes().to_vec())
            .execute(&db)
            .await
            .unwrap();
    }
    relay
        .client
        .api()
        .upload_key_packages(vec![redoubt_proto::api::KeyPackageUpload {
            id: redoubt_proto::KeyPackageRef::new(forged.reference).unwrap(),
            data: forged.bytes.into(),
            last_resort: false,
        }])
        .await
        .unwrap();
    sqlx::query("UPDATE key_packages SET device_id = ? WHERE device_id = ?")
        .bind(victim.client.device_id().as_bytes().to_vec())
        .bind(relay.client.device_id().as_bytes().to_vec())
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("UPDATE devices SET signature_key = ? WHERE id = ?")
        .bind(signer.public().to_vec())
        .bind(victim.client.device_id().as_bytes().to_vec())
        .execute(&db)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_moved_to_another_account_is_refused_and_shown() {
    let server = TestServer::start().await;
    let (mut alice, mut bob, chat, bob_chat) = pair(&server).await;
    let mallory = register(&server, &fresh_phone()).await;
    // The relay answers lookups of Bob's number with Mallory's account,
    // whose identity key never claimed that number.
    hostile::move_number(&server, bob.client.phone(), mallory.client.account_id()).await;
    let before = devices_in(&alice.client, &chat);
    alice.client.send_text(&chat, "still to bob").await.unwrap();
    assert_eq!(devices_in(&alice.client, &chat), before, "no device moved");
    assert!(
        system_texts(&alice.client, &chat)
            .await
            .iter()
            .any(|t| t.contains("was refused") && t.contains(bob.client.phone().e164())),
        "{:?}",
        system_texts(&alice.client, &chat).await
    );
    assert!(alice
        .client
        .take_announcements()
        .iter()
        .any(|t| t.contains("was refused")));
    bob.client.sync().await.unwrap();
    assert_eq!(
        texts(&bob.client, &bob_chat).await.last().unwrap(),
        "still to bob"
    );
    // At first contact the same lie is refused outright.
    let mut carol = register(&server, &fresh_phone()).await;
    let err = carol
        .client
        .start_direct(bob.client.phone())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Untrusted(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_device_list_is_refused() {
    let server = TestServer::start().await;
    let (mut alice, mut bob, chat, _) = pair(&server).await;
    let bob2 = link(&server, &mut bob.client).await;
    alice.client.send_text(&chat, "to both").await.unwrap();
    let both = devices_in(&alice.client, &chat);
    assert!(both.contains(&bob2.client.device_id()));
    // The relay serves Bob's first list (one device) as if it were newer.
    hostile::replay_list(&server, bob.client.account_id(), 1).await;
    alice.client.send_text(&chat, "still both").await.unwrap();
    assert_eq!(devices_in(&alice.client, &chat), both);
    assert!(
        system_texts(&alice.client, &chat)
            .await
            .iter()
            .any(|t| t.contains("was refused")),
        "{:?}",
        system_texts(&alice.client, &chat).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_first_contact_a_substituted_identity_shows_in_the_safety_numbers() {
    let server = TestServer::start().await;
    let mut alice = register(&server, &fresh_phone()).await;
    let mut bob = register(&server, &fresh_phone()).await;
    let bob_phone = bob.client.phone().clone();
    // Before Alice's first message, the relay puts an identity of its own
    // (its own key, a ghost device) behind Bob's number: it sends the SMS
    // codes, so it can register the number again.
    let _ghost = register(&server, bob_phone.e164()).await;
    alice.client.start_direct(&bob_phone).await.unwrap();
    let (alices_view, _) = alice.client.safety_number(&bob_phone).await.unwrap();
    // Bob's number comes from his own identity key: the numbers differ,
    // and his device is also told its account was reset.
    let (bobs_view, _) = bob
        .client
        .safety_number(alice.client.phone())
        .await
        .unwrap();
    assert_ne!(
        alices_view, bobs_view,
        "comparing numbers reveals the ghost"
    );
    bob.client.sync().await.unwrap();
    let notices = bob.client.notices(10).await.unwrap();
    assert!(notices
        .iter()
        .any(|m| m.text.contains("YOUR ACCOUNT WAS RESET")));
    // And, with nobody comparing anything, the key directory: the ghost's
    // key is listed for Bob's number, which Bob's device did not make.
    assert!(
        notices
            .iter()
            .any(|m| m.text.contains("KEY DIRECTORY") && m.text.contains("did not make")),
        "{notices:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safety_numbers_match_and_stay_put_when_devices_come_and_go() {
    let server = TestServer::start().await;
    let (mut alice, mut bob, chat, _) = pair(&server).await;
    let (a1, _) = alice
        .client
        .safety_number(bob.client.phone())
        .await
        .unwrap();
    let (b1, _) = bob
        .client
        .safety_number(alice.client.phone())
        .await
        .unwrap();
    assert_eq!(a1, b1);
    let _bob2 = link(&server, &mut bob.client).await;
    alice
        .client
        .send_text(&chat, "after linking")
        .await
        .unwrap();
    let (a2, devices) = alice
        .client
        .safety_number(bob.client.phone())
        .await
        .unwrap();
    assert_eq!(a2, a1, "a linked device does not change the number");
    assert_eq!(devices, 2);
    // Verified, then an identity change: held until accepted.
    alice
        .client
        .mark_verified(bob.client.phone())
        .await
        .unwrap();
    assert!(
        alice
            .client
            .pinned(bob.client.phone())
            .await
            .unwrap()
            .unwrap()
            .verified
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_is_shown_to_the_sender_and_the_send_goes_on() {
    let server = TestServer::builder()
        .configure(|c| c.mailbox.max_queued_per_device = 6)
        .start()
        .await;
    let mut alice = register(&server, &fresh_phone()).await;
    let bob = register(&server, &fresh_phone()).await;
    let mut carol = register(&server, &fresh_phone()).await;
    let chat = alice
        .client
        .create_group(
            "three",
            &[bob.client.phone().clone(), carol.client.phone().clone()],
        )
        .await
        .unwrap();
    alice.client.take_announcements();
    // Bob is offline and his mailbox fills (or the relay says it does,
    // which the sender cannot tell apart: either way the user is told);
    // Carol reads along.
    let mut told = None;
    for i in 0..10 {
        alice
            .client
            .send_text(&chat, &format!("message {i}"))
            .await
            .expect("a full mailbox does not fail the send");
        carol.client.sync().await.unwrap();
        if let Some(t) = alice
            .client
            .take_announcements()
            .into_iter()
            .find(|t| t.contains("did not get this message"))
        {
            told = Some(t);
            break;
        }
    }
    let told = told.expect("the sender is told who did not get it");
    assert!(told.contains("1 device of this chat"), "{told}");
    assert!(
        told.contains("the relay says its mailbox is full"),
        "{told}"
    );
    let carols = carol.client.chats().await.unwrap();
    let texts = texts(&carol.client, &carols[0]).await;
    assert!(
        texts.iter().any(|t| t.contains("message")),
        "the others still got it: {texts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_device_tells_its_user() {
    let server = TestServer::builder()
        .configure(|c| {
            // A thief with many accounts, or many hours: the per-caller
            // limits only slow draining down.
            c.limits.claims_per_device.max = 1000;
        })
        .start()
        .await;
    let mut bob = register(&server, &fresh_phone()).await;
    bob.client.sync().await.unwrap();
    assert!(!bob
        .client
        .take_announcements()
        .iter()
        .any(|t| t.contains("key packages were claimed")));
    let thief = server.register_fresh().await;
    let claim = redoubt_proto::api::ClaimKeyPackagesRequest {
        devices: vec![bob.client.device_id()],
    };
    // All 20 one-time packages (the test profile publishes 20), then the
    // last-resort one, over and over.
    for _ in 0..30 {
        assert!(thief
            .post("/v1/keypackages/claim", &claim)
            .await
            .status()
            .is_success());
    }
    bob.client.sync().await.unwrap();
    let told = bob.client.take_announcements();
    assert!(
        told.iter()
            .any(|t| t
                .contains("20 of this device's key packages were claimed since it last checked.")),
        "{told:?}"
    );
    // Told once: the next look counts from the refill.
    bob.client.sync().await.unwrap();
    assert!(!bob
        .client
        .take_announcements()
        .iter()
        .any(|t| t.contains("key packages were claimed")));
}
