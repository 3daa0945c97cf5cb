//! Profiles registered against a test server.

use redoubt_client::seal::KdfParams;
use redoubt_client::{Client, ClientConfig};
use redoubt_proto::PhoneNumber;
use tempfile::TempDir;
use test_support::{logs, TestServer};

/// Cheap key derivation: tests open many profiles.
pub fn config() -> ClientConfig {
    ClientConfig {
        kdf: KdfParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        },
        key_packages: 10,
        // Every sync watches the account's own keys in the directory.
        kt_monitor_interval: std::time::Duration::ZERO,
        ..ClientConfig::default()
    }
}

pub const PASSPHRASE: &str = "correct horse battery staple";

/// A registered profile and the directory that holds it.
pub struct Profile {
    pub client: Client,
    pub dir: TempDir,
}

/// Registers a new device for `phone` in a fresh profile directory.
pub async fn register(server: &TestServer, phone: &str) -> Profile {
    let dir = tempfile::tempdir().unwrap();
    let client = register_in(server, phone, dir.path()).await;
    Profile { client, dir }
}

pub async fn register_in(server: &TestServer, phone: &str, dir: &std::path::Path) -> Client {
    register_at(&server.base_url(), phone, dir).await
}

/// Registers through `base_url` (the relay, or something in front of it).
pub async fn register_at(base_url: &str, phone: &str, dir: &std::path::Path) -> Client {
    let phone = PhoneNumber::parse(phone).unwrap();
    let before = logs::dev_code_for(&logs::captured(), phone.e164());
    let request = Client::request_code(base_url, &phone, &config())
        .await
        .unwrap();
    let code = logs::dev_code_for(&logs::captured(), phone.e164()).unwrap();
    assert_ne!(Some(&code), before.as_ref(), "a fresh code was logged");
    Client::register(dir, PASSPHRASE, &request, &code, "test", config())
        .await
        .unwrap()
}

/// Texts of a chat's messages from members (not system notices).
pub async fn texts(client: &Client, chat: &redoubt_client::model::ChatRecord) -> Vec<String> {
    client
        .messages(chat, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|m| matches!(m.author, redoubt_client::model::Author::Member { .. }))
        .map(|m| m.text)
        .collect()
}

/// Texts of a chat's system notices (key changes, rejected input).
pub async fn system_texts(
    client: &Client,
    chat: &redoubt_client::model::ChatRecord,
) -> Vec<String> {
    client
        .messages(chat, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.author == redoubt_client::model::Author::System)
        .map(|m| m.text)
        .collect()
}

/// Links a new device to `existing`'s account the way people do: the new
/// device shows a code, the existing one types it.
pub async fn link(server: &TestServer, existing: &mut Client) -> Profile {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<String>();
    let base = server.base_url();
    let new = Client::link_new(dir.path(), PASSPHRASE, &base, "linked", config(), |code| {
        let _ = tx.send(code.to_owned());
    });
    let approve = async {
        let code = rx.await.unwrap();
        existing.approve_link(&code).await.unwrap()
    };
    let (client, device) = tokio::join!(new, approve);
    let client = client.unwrap();
    assert_eq!(client.device_id(), device);
    Profile { client, dir }
}

/// `count` registered profiles and a group named `name` made by the first
/// with all the others in it, every member joined. Returns the profiles
/// and the maker's view of the chat.
pub async fn group_of(
    server: &TestServer,
    name: &str,
    count: usize,
) -> (Vec<Profile>, redoubt_client::model::ChatRecord) {
    let mut people = Vec::with_capacity(count);
    for _ in 0..count {
        people.push(register(server, &test_support::fresh_phone()).await);
    }
    let others: Vec<PhoneNumber> = people[1..]
        .iter()
        .map(|p| p.client.phone().clone())
        .collect();
    let chat = people[0].client.create_group(name, &others).await.unwrap();
    for p in &mut people[1..] {
        p.client.sync().await.unwrap();
    }
    (people, chat)
}

/// That a chat shows none of the notices a hostile relay's tampering with
/// the conversation would bring (a gap, a repeat, a forked sender, a key
/// directory conflict): an honest relay must never cause one.
pub async fn assert_no_false_alarms(client: &Client, chat: &redoubt_client::model::ChatRecord) {
    let notices = system_texts(client, chat).await;
    assert!(
        !notices.iter().any(|t| t.contains("is missing")
            || t.contains("again; the repeat")
            || t.contains("do not follow on")
            || t.contains("KEY DIRECTORY")
            || t.contains("SPLIT")
            || t.contains("another history")
            || t.contains("could not")),
        "{notices:?}"
    );
}

/// `me` after a sync: its direct chat with `other`, found by `other`'s
/// number.
pub async fn chat_with(me: &mut Profile, other: &Profile) -> redoubt_client::model::ChatRecord {
    me.client.sync().await.unwrap();
    me.client
        .find_chat(other.client.phone().e164())
        .await
        .unwrap()
}

/// Alice and Bob in a direct chat, Bob joined; Alice first writes
/// `greeting`, if given (so the chat is known to work both ways).
pub async fn direct_pair(
    server: &TestServer,
    greeting: Option<&str>,
) -> (
    Profile,
    Profile,
    redoubt_client::model::ChatRecord,
    redoubt_client::model::ChatRecord,
) {
    let mut alice = register(server, &test_support::fresh_phone()).await;
    let mut bob = register(server, &test_support::fresh_phone()).await;
    let chat = alice.client.start_direct(bob.client.phone()).await.unwrap();
    if let Some(text) = greeting {
        alice.client.send_text(&chat, text).await.unwrap();
    }
    let bob_chat = chat_with(&mut bob, &alice).await;
    (alice, bob, chat, bob_chat)
}
