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
