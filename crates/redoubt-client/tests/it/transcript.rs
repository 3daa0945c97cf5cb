//! The shape of a conversation, against a relay that drops, withholds,
//! reorders and replays messages: each sender's messages are shown in the
//! order they were written, a message that has not arrived leaves a
//! visible gap (filled if it comes later), and a replay is dropped and
//! said. Part of the malicious-relay suite (docs/threat-model.md).

use redoubt_client::model::{Author, ChatRecord};
use redoubt_proto::api::EnvelopeKind;
use redoubt_proto::DeviceId;
use test_support::hostile::{db, inject};
use test_support::{fresh_phone, TestServer};

use crate::support::*;

/// Alice and Bob in a direct chat, Bob joined.
async fn pair(server: &TestServer) -> (Profile, Profile, ChatRecord, ChatRecord) {
    direct_pair(server, None).await
}

/// A device's queue at the relay, in delivery order: (seq, envelope id).
async fn queue(pool: &sqlx::SqlitePool, device: DeviceId) -> Vec<(i64, Vec<u8>)> {
    sqlx::query_as("SELECT seq, envelope_id FROM mailbox WHERE device_id = ? ORDER BY seq")
        .bind(device.as_bytes().to_vec())
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Puts an envelope (back) at the end of a device's queue.
async fn enqueue_again(pool: &sqlx::SqlitePool, device: DeviceId, envelope: &[u8]) {
    sqlx::query(
        "INSERT INTO mailbox (device_id, seq, envelope_id)
         VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM mailbox), ?)",
    )
    .bind(device.as_bytes().to_vec())
    .bind(envelope.to_vec())
    .execute(pool)
    .await
    .unwrap();
}

async fn take_out(pool: &sqlx::SqlitePool, seq: i64) {
    sqlx::query("DELETE FROM mailbox WHERE seq = ?")
        .bind(seq)
        .execute(pool)
        .await
        .unwrap();
}

/// Everything the chat shows, members' messages and notices, in order.
async fn shown(client: &redoubt_client::Client, chat: &ChatRecord) -> Vec<(bool, String)> {
    client
        .messages(chat, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.author == Author::System, m.text))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withheld_message_leaves_a_gap_that_fills_in_when_it_comes() {
    let server = TestServer::start().await;
    let (mut alice, mut bob, chat, bob_chat) = pair(&server).await;
    let alice_phone = alice.client.phone().e164().to_owned();
    for text in ["1. the price is 40", "2. do not sell", "3. call me"] {
        alice.client.send_text(&chat, text).await.unwrap();
    }
    // The relay keeps the second message back.
    let pool = db(&server).await;
    let bob_device = bob.client.device_id();
    let waiting = queue(&pool, bob_device).await;
    assert_eq!(waiting.len(), 3);
    take_out(&pool, waiting[1].0).await;
    bob.client.sync().await.unwrap();
    assert_eq!(
        texts(&bob.client, &bob_chat).await,
        vec!["1. the price is 40", "3. call me"]
    );
    let gap = format!("⚠ A message from {alice_phone} is missing: the relay has not delivered it.");
    let before = shown(&bob.client, &bob_chat).await;
    let at = |list: &[(bool, String)], text: &str| list.iter().position(|(_, t)| t == text);
    assert!(
        at(&before, &gap).unwrap() > at(&before, "1. the price is 40").unwrap()
            && at(&before, &gap).unwrap() < at(&before, "3. call me").unwrap(),
        "the gap shows where the message belongs: {before:?}"
    );
    // It turns up after all: it takes its place, and the gap is gone.
    enqueue_again(&pool, bob_device, &waiting[1].1).await;
    bob.client.sync().await.unwrap();
    assert_eq!(
        texts(&bob.client, &bob_chat).await,
        vec!["1. the price is 40", "2. do not sell", "3. call me"]
    );
    assert!(!shown(&bob.client, &bob_chat)
        .await
        .iter()
        .any(|(_, t)| t.contains("is missing")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_messages_are_shown_in_their_senders_order() {
    let server = TestServer::start().await;
    let (mut alice, mut bob, chat, bob_chat) = pair(&server).await;
    for text in ["1. sell", "2. do not sell", "3. wait"] {
        alice.client.send_text(&chat, text).await.unwrap();
    }
    // The relay delivers them as 2, 3, 1.
    let pool = db(&server).await;
    let bob_device = bob.client.device_id();
    let waiting = queue(&pool, bob_device).await;
    for (seq, _) in &waiting {
        take_out(&pool, *seq).await;
    }
    for i in [1, 2, 0] {
        enqueue_again(&pool, bob_device, &waiting[i].1).await;
    }
    bob.client.sync().await.unwrap();
    assert_eq!(
        texts(&bob.client, &bob_chat).await,
        vec!["1. sell", "2. do not sell", "3. wait"]
    );
    assert!(!shown(&bob.client, &bob_chat)
        .await
        .iter()
        .any(|(_, t)| t.contains("is missing")));
    // The same across two fetches: 3 now, 1 and 2 later.
    for text in ["4. buy", "5. hold", "6. done"] {
        alice.client.send_text(&chat, text).await.unwrap();
    }
    let waiting = queue(&pool, bob_device).await;
    take_out(&pool, waiting[0].0).await;
    take_out(&pool, waiting[1].0).await;
    bob.client.sync().await.unwrap();
    enqueue_again(&pool, bob_device, &waiting[1].1).await;
    enqueue_again(&pool, bob_device, &waiting[0].1).await;
    bob.client.sync().await.unwrap();
    assert_eq!(
        texts(&bob.client, &bob_chat).await[3..],
        ["4. buy", "5. hold", "6. done"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_replayed_under_a_new_envelope_id_is_shown_once() {
    let server = TestServer::start().await;
    let (mut alice, mut bob, chat, bob_chat) = pair(&server).await;
    alice.client.send_text(&chat, "pay 100").await.unwrap();
    let pool = db(&server).await;
    let bob_device = bob.client.device_id();
    let waiting = queue(&pool, bob_device).await;
    let payload: Vec<u8> = sqlx::query_scalar("SELECT payload FROM envelopes WHERE id = ?")
        .bind(&waiting[0].1)
        .fetch_one(&pool)
        .await
        .unwrap();
    bob.client.sync().await.unwrap();
    // The relay delivers the same ciphertext again, as a new envelope.
    inject(&server, bob_device, EnvelopeKind::Mls, payload).await;
    bob.client.sync().await.unwrap();
    assert_eq!(texts(&bob.client, &bob_chat).await, vec!["pay 100"]);
    assert!(
        shown(&bob.client, &bob_chat)
            .await
            .iter()
            .any(|(system, t)| *system && t.contains("replayed")),
        "the replay is said"
    );
}

/// Alice, Bob and Carol in a group, all joined; then Alice adds Dave
/// (the commit opens a new epoch) and writes.
async fn team(server: &TestServer) -> (Profile, Profile, Profile, ChatRecord) {
    let (people, chat) = group_of(server, "team", 3).await;
    let [mut alice, bob, carol]: [Profile; 3] = people.try_into().ok().unwrap();
    let dave = register(server, &fresh_phone()).await;
    alice
        .client
        .add_member(&chat, dave.client.phone())
        .await
        .unwrap();
    alice.client.send_text(&chat, "welcome dave").await.unwrap();
    (alice, bob, carol, chat)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_delivered_before_the_commit_it_follows_waits_for_it() {
    let server = TestServer::start().await;
    let (_alice, mut bob, mut carol, _chat) = team(&server).await;
    // The relay hands Bob the commit last, after the messages of the epoch
    // it opens.
    let pool = db(&server).await;
    let bob_device = bob.client.device_id();
    let waiting = queue(&pool, bob_device).await;
    assert_eq!(waiting.len(), 3, "commit, chat info, text");
    take_out(&pool, waiting[0].0).await;
    enqueue_again(&pool, bob_device, &waiting[0].1).await;
    bob.client.sync().await.unwrap();
    carol.client.sync().await.unwrap();
    for p in [&bob, &carol] {
        let chat = p.client.find_chat("team").await.unwrap();
        assert_eq!(p.client.members(&chat).unwrap().len(), 4);
        assert_eq!(texts(&p.client, &chat).await, vec!["welcome dave"]);
        let notices = system_texts(&p.client, &chat).await;
        assert!(
            !notices
                .iter()
                .any(|t| t.contains("could not") || t.contains("missing")),
            "{notices:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_commit_never_comes_is_reported_lost_after_the_wait() {
    let server = TestServer::start().await;
    let (_alice, bob, _carol, _chat) = team(&server).await;
    // The relay withholds the commit from Bob for good.
    let pool = db(&server).await;
    let bob_device = bob.client.device_id();
    let waiting = queue(&pool, bob_device).await;
    take_out(&pool, waiting[0].0).await;
    let Profile { client, dir } = bob;
    client.close().await;
    let mut bob = redoubt_client::Client::open(
        dir.path(),
        PASSPHRASE,
        redoubt_client::ClientConfig {
            future_epoch_wait: std::time::Duration::ZERO,
            ..config()
        },
    )
    .await
    .unwrap();
    bob.sync().await.unwrap();
    let chat = bob.find_chat("team").await.unwrap();
    assert!(texts(&bob, &chat).await.is_empty());
    let notices = system_texts(&bob, &chat).await;
    assert_eq!(
        notices
            .iter()
            .filter(|t| t.contains("could not be read: the change to the chat"))
            .count(),
        2,
        "the chat info and the text: {notices:?}"
    );
}

/// Alice, Bob and Eve in a group, all joined; then Alice removes Eve.
async fn removal(server: &TestServer) -> (Profile, Profile, Profile, ChatRecord) {
    let (people, chat) = group_of(server, "plans", 3).await;
    let [mut alice, bob, eve]: [Profile; 3] = people.try_into().ok().unwrap();
    alice
        .client
        .remove_member(&chat, eve.client.phone())
        .await
        .unwrap();
    (alice, bob, eve, chat)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_members_message_from_before_the_removal_is_not_shown_as_normal() {
    let server = TestServer::start().await;
    let (_alice, mut bob, mut eve, _chat) = removal(&server).await;
    bob.client.sync().await.unwrap();
    // Eve has not taken in her removal (or pretends not to) and writes in
    // the chat's old state, which Bob can still decrypt.
    let eves_chat = eve.client.find_chat("plans").await.unwrap();
    eve.client
        .send_text(&eves_chat, "I am still here")
        .await
        .unwrap();
    bob.client.sync().await.unwrap();
    let chat = bob.client.find_chat("plans").await.unwrap();
    assert!(texts(&bob.client, &chat).await.is_empty());
    let notices = system_texts(&bob.client, &chat).await;
    assert!(
        notices.iter().any(|t| t.contains(eve.client.phone().e164())
            && t.contains("no longer in it: it is not shown")),
        "{notices:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withheld_removal_holds_sending_until_it_arrives() {
    let server = TestServer::start().await;
    let (mut alice, mut bob, mut eve, chat) = removal(&server).await;
    // The relay keeps the commit removing Eve from Bob and from Eve, so
    // that Eve could go on reading what Bob writes; Alice's next message,
    // in the new state of the chat, reaches Bob.
    let pool = db(&server).await;
    let mut withheld = Vec::new();
    for device in [bob.client.device_id(), eve.client.device_id()] {
        let waiting = queue(&pool, device).await;
        take_out(&pool, waiting[0].0).await;
        withheld.push((device, waiting[0].1.clone()));
    }
    alice.client.send_text(&chat, "eve is out").await.unwrap();
    bob.client.sync().await.unwrap();
    let bobs_chat = bob.client.find_chat("plans").await.unwrap();
    match bob.client.send_text(&bobs_chat, "the plan").await {
        Err(redoubt_client::ClientError::ChatBehind) => {}
        other => panic!("Bob must not write to the chat's old state: {other:?}"),
    }
    eve.client.sync().await.unwrap();
    let eves_chat = eve.client.find_chat("plans").await.unwrap();
    assert!(!texts(&eve.client, &eves_chat)
        .await
        .contains(&"the plan".to_owned()));
    // The commit arrives: Bob catches up, reads Alice, and writes again.
    let (device, envelope) = &withheld[0];
    enqueue_again(&pool, *device, envelope).await;
    bob.client.sync().await.unwrap();
    assert_eq!(texts(&bob.client, &bobs_chat).await, vec!["eve is out"]);
    bob.client.send_text(&bobs_chat, "the plan").await.unwrap();
    eve.client.sync().await.unwrap();
    assert!(!texts(&eve.client, &eves_chat)
        .await
        .contains(&"the plan".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_given_to_only_some_members_shows_who_received_it() {
    let server = TestServer::start().await;
    let (people, chat) = group_of(&server, "board", 3).await;
    let [mut alice, mut bob, mut carol]: [Profile; 3] = people.try_into().ok().unwrap();
    // Alice's message reaches Bob; the relay keeps it from Carol, and
    // Alice says nothing more.
    alice.client.send_text(&chat, "vote no").await.unwrap();
    let pool = db(&server).await;
    let carols = queue(&pool, carol.client.device_id()).await;
    take_out(&pool, carols[carols.len() - 1].0).await;
    bob.client.sync().await.unwrap();
    carol.client.sync().await.unwrap();
    // Then Bob writes: his message says what he holds of the chat's
    // current state once every DIGEST_EVERY messages, or of the last state
    // when the chat has changed since. Here the chat changes (Dave joins).
    let dave = register(&server, &fresh_phone()).await;
    bob.client.sync().await.unwrap();
    let bobs_chat = bob.client.find_chat("board").await.unwrap();
    bob.client
        .add_member(&bobs_chat, dave.client.phone())
        .await
        .unwrap();
    bob.client.send_text(&bobs_chat, "welcome").await.unwrap();
    carol.client.sync().await.unwrap();
    let carols_chat = carol.client.find_chat("board").await.unwrap();
    assert_eq!(texts(&carol.client, &carols_chat).await, vec!["welcome"]);
    let notices = system_texts(&carol.client, &carols_chat).await;
    let bob_phone = bob.client.phone().e164().to_owned();
    let alice_phone = alice.client.phone().e164().to_owned();
    assert!(
        notices.iter().any(|t| t
            == &format!(
                "⚠ A message from {alice_phone} is missing: {bob_phone}'s device received it, \
                 this one has not."
            )),
        "{notices:?}"
    );
    // Bob, who got everything, sees no gap.
    bob.client.sync().await.unwrap();
    assert!(!system_texts(&bob.client, &bobs_chat)
        .await
        .iter()
        .any(|t| t.contains("is missing")));
}

/// A relay front that passes every request on, but answers as many sends
/// as it is armed for with a 503 after the relay behind it took the
/// envelope: answers lost on the way back.
struct LossyFront {
    url: String,
    lose: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

async fn lossy_front(server: &TestServer) -> LossyFront {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use std::sync::atomic::Ordering;
    let lose = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (target, flag) = (server.base_url(), lose.clone());
    let http = reqwest::Client::new();
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let (target, flag, http) = (target.clone(), flag.clone(), http.clone());
            async move {
                let path = uri.path_and_query().map_or("/", |p| p.as_str());
                let mut request = http.request(method.clone(), format!("{target}{path}"));
                for (name, value) in &headers {
                    if name != "host" {
                        request = request.header(name, value);
                    }
                }
                let response = request.body(body).send().await.unwrap();
                let status = response.status();
                let content_type = response.headers().get("content-type").cloned();
                let bytes = response.bytes().await.unwrap();
                if method == Method::POST
                    && uri.path() == "/v1/messages"
                    && status.is_success()
                    && flag
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok()
                {
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        HeaderMap::new(),
                        Bytes::new(),
                    );
                }
                let mut out = HeaderMap::new();
                if let Some(ct) = content_type {
                    out.insert("content-type", ct);
                }
                (StatusCode::from_u16(status.as_u16()).unwrap(), out, bytes)
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    LossyFront { url, lose }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_was_lost_is_sent_again_under_its_id() {
    let server = TestServer::start().await;
    let front = lossy_front(&server).await;
    // Alice reaches the relay through a front that will lose one answer.
    let dir = tempfile::tempdir().unwrap();
    let mut alice = register_at(&front.url, &fresh_phone(), dir.path()).await;
    let mut bob = register(&server, &fresh_phone()).await;
    let carol = register(&server, &fresh_phone()).await;
    let chat = alice
        .create_group("lossy", &[bob.client.phone().clone()])
        .await
        .unwrap();
    bob.client.sync().await.unwrap();
    // The relay takes the commit adding Carol; its answer is lost.
    front.lose.store(1, std::sync::atomic::Ordering::SeqCst);
    alice.add_member(&chat, carol.client.phone()).await.unwrap();
    assert_eq!(
        front.lose.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "an answer was lost"
    );
    assert_eq!(alice.members(&chat).unwrap().len(), 3);
    // Everyone moved on together: Bob writes in the new state, Alice reads.
    bob.client.sync().await.unwrap();
    let bobs_chat = bob.client.find_chat("lossy").await.unwrap();
    assert_eq!(bob.client.members(&bobs_chat).unwrap().len(), 3);
    bob.client.send_text(&bobs_chat, "hi carol").await.unwrap();
    alice.sync().await.unwrap();
    assert_eq!(texts(&alice, &chat).await, vec!["hi carol"]);
    assert_no_false_alarms(&alice, &chat).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_fate_is_unknown_is_kept_and_sent_again_after_a_restart() {
    let server = TestServer::start().await;
    let front = lossy_front(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let mut alice = register_at(&front.url, &fresh_phone(), dir.path()).await;
    let mut bob = register(&server, &fresh_phone()).await;
    let mut carol = register(&server, &fresh_phone()).await;
    let chat = alice
        .create_group("outage", &[bob.client.phone().clone()])
        .await
        .unwrap();
    bob.client.sync().await.unwrap();
    // The relay takes the commit adding Carol, then every answer is lost
    // for longer than Alice's retries: she cannot know it was taken.
    front.lose.store(100, std::sync::atomic::Ordering::SeqCst);
    let err = alice
        .add_member(&chat, carol.client.phone())
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    // Bob moved on to the state the commit leads to, and writes there.
    bob.client.sync().await.unwrap();
    let bobs_chat = bob.client.find_chat("outage").await.unwrap();
    assert_eq!(bob.client.members(&bobs_chat).unwrap().len(), 3);
    // Alice's device goes off and on again; the relay answers once more.
    alice.close().await;
    front.lose.store(0, std::sync::atomic::Ordering::SeqCst);
    let mut alice = redoubt_client::Client::open(dir.path(), PASSPHRASE, config())
        .await
        .unwrap();
    // Her next operation sends the kept commit under its id first: the
    // relay recognises it, she takes it in, and Carol gets her Welcome.
    alice.sync().await.unwrap();
    assert_eq!(alice.members(&chat).unwrap().len(), 3);
    carol.client.sync().await.unwrap();
    let carols_chat = carol.client.find_chat("outage").await.unwrap();
    bob.client
        .send_text(&bobs_chat, "all three now")
        .await
        .unwrap();
    alice.sync().await.unwrap();
    alice.send_text(&chat, "welcome carol").await.unwrap();
    carol.client.sync().await.unwrap();
    bob.client.sync().await.unwrap();
    assert_eq!(
        texts(&alice, &chat).await,
        vec!["all three now", "welcome carol"]
    );
    assert_eq!(
        texts(&carol.client, &carols_chat).await,
        vec!["all three now", "welcome carol"]
    );
    assert_eq!(
        texts(&bob.client, &bobs_chat).await,
        vec!["all three now", "welcome carol"]
    );
    for (client, chat) in [
        (&alice, &chat),
        (&bob.client, &bobs_chat),
        (&carol.client, &carols_chat),
    ] {
        assert_no_false_alarms(client, chat).await;
    }
}

/// Alice and Bob each add someone to a group at the same moment, Bob
/// before he has seen Alice's change. Returns the group's profiles (Alice,
/// Bob, Carol), the two added, and Alice's view of the chat.
async fn concurrent_adds(
    server: &TestServer,
    name: &str,
    relay_takes_both: bool,
) -> (Vec<Profile>, Vec<Profile>, ChatRecord) {
    let (mut people, chat) = group_of(server, name, 3).await;
    let mut added = vec![
        register(server, &fresh_phone()).await,
        register(server, &fresh_phone()).await,
    ];
    let bobs_chat = people[1].client.find_chat(name).await.unwrap();
    people[0]
        .client
        .add_member(&chat, added[0].client.phone())
        .await
        .unwrap();
    if relay_takes_both {
        // A relay that ignores which commit came first.
        sqlx::query("DELETE FROM commit_positions")
            .execute(&db(server).await)
            .await
            .unwrap();
    }
    people[1]
        .client
        .add_member(&bobs_chat, added[1].client.phone())
        .await
        .unwrap();
    for p in people.iter_mut().chain(added.iter_mut()) {
        p.client.sync().await.unwrap();
    }
    (people, added, chat)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_changing_a_group_at_once_do_not_split_it() {
    let server = TestServer::start().await;
    let (mut people, mut added, _) = concurrent_adds(&server, "race", false).await;
    // Bob's commit was refused as stale; his device took Alice's in and
    // made its change again on top of it. Everyone is in one state.
    let chats: Vec<ChatRecord> = {
        let mut out = Vec::new();
        for p in people.iter().chain(added.iter()) {
            out.push(p.client.find_chat("race").await.unwrap());
        }
        out
    };
    for (p, chat) in people.iter().chain(added.iter()).zip(&chats) {
        assert_eq!(p.client.members(chat).unwrap().len(), 5);
    }
    people[2]
        .client
        .send_text(&chats[2], "carol to all")
        .await
        .unwrap();
    for p in people.iter_mut().chain(added.iter_mut()) {
        p.client.sync().await.unwrap();
    }
    for (i, (p, chat)) in people.iter().chain(added.iter()).zip(&chats).enumerate() {
        if i != 2 {
            assert_eq!(
                texts(&p.client, chat).await,
                vec!["carol to all"],
                "member {i}"
            );
        }
        assert_no_false_alarms(&p.client, chat).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_takes_two_commits_from_one_state_splits_the_chat_visibly() {
    let server = TestServer::start().await;
    let (mut people, _added, chat) = concurrent_adds(&server, "fork", true).await;
    // Each of Alice, Bob and Carol took in one commit and then got the
    // other from a state they had left: each is told the chat split.
    let mut chats = vec![chat];
    for p in &people[1..] {
        chats.push(p.client.find_chat("fork").await.unwrap());
    }
    for (p, chat) in people.iter().zip(&chats) {
        let notices = system_texts(&p.client, chat).await;
        assert_eq!(
            notices
                .iter()
                .filter(|t| t.contains("THIS CHAT MAY HAVE SPLIT"))
                .count(),
            1,
            "{notices:?}"
        );
    }
    // Bob is in his own history: what he writes is not readable by Carol,
    // who took in Alice's change, and she is told a message did not read.
    people[1]
        .client
        .send_text(&chats[1], "from the other side")
        .await
        .unwrap();
    people[2].client.sync().await.unwrap();
    assert!(texts(&people[2].client, &chats[2]).await.is_empty());
    assert!(system_texts(&people[2].client, &chats[2])
        .await
        .iter()
        .any(|t| t.contains("could not be decrypted") && t.contains("another history")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_position_taken_by_a_forged_commit_does_not_block_changes() {
    let server = TestServer::start().await;
    let (mut people, chat) = group_of(&server, "jammed", 2).await;
    let carol = register(&server, &fresh_phone()).await;
    // Something no member made (a former member's junk commit with a far
    // epoch, say) took the group's position at the relay.
    people[0]
        .client
        .add_member(&chat, carol.client.phone())
        .await
        .unwrap();
    sqlx::query("UPDATE commit_positions SET next_epoch = next_epoch + 1000")
        .execute(&db(&server).await)
        .await
        .unwrap();
    let dave = register(&server, &fresh_phone()).await;
    // Refused as stale, a sync brings no commit: the tag is left off and
    // the change goes through.
    people[0]
        .client
        .add_member(&chat, dave.client.phone())
        .await
        .unwrap();
    assert_eq!(people[0].client.members(&chat).unwrap().len(), 4);
    people[1].client.sync().await.unwrap();
    let bobs_chat = people[1].client.find_chat("jammed").await.unwrap();
    assert_eq!(people[1].client.members(&bobs_chat).unwrap().len(), 4);
    assert_no_false_alarms(&people[1].client, &bobs_chat).await;
}
