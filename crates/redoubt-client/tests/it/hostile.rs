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
    bob.client.sync().await.unwrap();
    let bob_chat = bob
        .client
        .find_chat(alice.client.phone().e164())
        .await
        .unwrap();
    assert_eq!(texts(&bob.client, &bob_chat).await, ["still reachable"]);
}
