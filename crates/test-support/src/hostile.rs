//! A hostile relay, for the malicious-relay tests.
//!
//! The threat model assumes the relay is run by someone who wants to read,
//! forge or suppress: the operator, or whoever compels it. These helpers
//! play that relay by writing to its storage directly, as such an operator
//! could, so each test shows what a client does when the relay lies.

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use redoubt_proto::api::EnvelopeKind;
use redoubt_proto::{DeviceId, EnvelopeId, ServiceNotice, SignedNotice};
use redoubt_server::storage::{EnqueueOutcome, NewEnvelope};

use crate::TestServer;

/// Puts an envelope the relay made up into a device's mailbox.
pub async fn inject(server: &TestServer, device: DeviceId, kind: EnvelopeKind, payload: Vec<u8>) {
    let now = server.clock.now();
    let outcome = server
        .state
        .store()
        .enqueue(NewEnvelope {
            id: EnvelopeId::random(),
            kind,
            payload,
            recipients: vec![device],
            now,
            expires_at: now.plus(std::time::Duration::from_secs(3600)),
            max_queued: u64::MAX,
            commit: None,
        })
        .await
        .expect("the store takes the injected envelope");
    assert_eq!(outcome, EnqueueOutcome::Queued);
}

/// A notice signed with a key the relay made up, not the operator's.
pub fn notice_signed_by(key: &SigningKey, notice: &ServiceNotice) -> Vec<u8> {
    let text = serde_json::to_string(notice).expect("notice encodes");
    let signature = key.sign(&SignedNotice::signing_input(&text));
    serde_json::to_vec(&SignedNotice {
        notice: text,
        signature: base64::engine::general_purpose::STANDARD.encode(signature.to_bytes()),
    })
    .expect("notice encodes")
}

/// A notice genuinely signed with the operator's service key, as the relay
/// holds it: for replays (to another account, or after it was superseded).
pub fn notice_signed_by_service(server: &TestServer, notice: &ServiceNotice) -> Vec<u8> {
    serde_json::to_vec(&server.state.service_key().sign_notice(notice)).expect("notice encodes")
}

/// The relay's own database, as its operator could open it.
pub async fn db(server: &TestServer) -> sqlx::SqlitePool {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(server.db_path())
        .busy_timeout(std::time::Duration::from_secs(10));
    sqlx::SqlitePool::connect_with(options)
        .await
        .expect("the relay's database opens")
}

/// Adds a device of the relay's making to an account, with its own key and
/// key packages copied from nowhere: what an operator registering a ghost
/// would do without touching any signed list.
pub async fn add_ghost_device(
    server: &TestServer,
    account: redoubt_proto::AccountId,
    signature_key: &[u8],
) -> DeviceId {
    let ghost = DeviceId::random();
    sqlx::query(
        "INSERT INTO devices (id, account_id, name, signature_key, token_hash, created_at)
         VALUES (?, ?, 'ghost', ?, ?, 0)",
    )
    .bind(ghost.as_bytes().to_vec())
    .bind(account.as_bytes().to_vec())
    .bind(signature_key)
    .bind(EnvelopeId::random().as_bytes().repeat(2))
    .execute(&db(server).await)
    .await
    .expect("ghost device inserted");
    ghost
}

/// Stops listing a device (as if revoked), or lists it again.
pub async fn hide_device(server: &TestServer, device: DeviceId, hidden: bool) {
    sqlx::query("UPDATE devices SET revoked_at = ? WHERE id = ?")
        .bind(hidden.then_some(1i64))
        .bind(device.as_bytes().to_vec())
        .execute(&db(server).await)
        .await
        .expect("device row updated");
}

/// Moves a phone number to another account, as a relay re-homing it
/// would: the number's account now answers lookups for it.
pub async fn move_number(
    server: &TestServer,
    phone: &redoubt_proto::PhoneNumber,
    to: redoubt_proto::AccountId,
) {
    let pool = db(server).await;
    let mut tx = pool.begin().await.expect("transaction");
    sqlx::query("UPDATE accounts SET phone = '+moved' || hex(id) WHERE phone = ?")
        .bind(phone.e164())
        .execute(&mut *tx)
        .await
        .expect("number freed");
    sqlx::query("UPDATE accounts SET phone = ? WHERE id = ?")
        .bind(phone.e164())
        .bind(to.as_bytes().to_vec())
        .execute(&mut *tx)
        .await
        .expect("number moved");
    tx.commit().await.expect("commit");
}

/// Serves an account's older device list `version` again as its newest.
pub async fn replay_list(server: &TestServer, account: redoubt_proto::AccountId, version: i64) {
    let pool = db(server).await;
    sqlx::query(
        "INSERT INTO device_lists (account_id, version, list, stored_at)
         SELECT account_id, (SELECT MAX(version) + 1 FROM device_lists WHERE account_id = ?1), list, 0
         FROM device_lists WHERE account_id = ?1 AND version = ?2",
    )
    .bind(account.as_bytes().to_vec())
    .bind(version)
    .execute(&pool)
    .await
    .expect("old list replayed");
}

/// Replaces a device's key packages with another device's: key
/// substitution, for a contact already known.
pub async fn swap_key_packages(server: &TestServer, victim: DeviceId, attacker: DeviceId) {
    let pool = db(server).await;
    let mut tx = pool.begin().await.expect("transaction");
    sqlx::query("DELETE FROM key_packages WHERE device_id = ?")
        .bind(victim.as_bytes().to_vec())
        .execute(&mut *tx)
        .await
        .expect("victim's packages deleted");
    sqlx::query("UPDATE key_packages SET device_id = ? WHERE device_id = ?")
        .bind(victim.as_bytes().to_vec())
        .bind(attacker.as_bytes().to_vec())
        .execute(&mut *tx)
        .await
        .expect("packages moved");
    sqlx::query(
        "UPDATE devices SET signature_key = (SELECT signature_key FROM devices WHERE id = ?)
         WHERE id = ?",
    )
    .bind(attacker.as_bytes().to_vec())
    .bind(victim.as_bytes().to_vec())
    .execute(&mut *tx)
    .await
    .expect("listed key swapped");
    tx.commit().await.expect("commit");
}
