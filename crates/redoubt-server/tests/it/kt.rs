//! The key-transparency directory against a real relay: device lists
//! published through the API land in signed epochs, and every proof the
//! relay serves verifies with akd's client and auditor code, as a client
//! or an outside auditor would run it.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use protobuf::Message as _;
use redoubt_proto::api::PublishDeviceListRequest;
use redoubt_proto::identity::DEVICE_LIST_CONTEXT;
use redoubt_proto::kt::{
    epoch_leaf, DirectoryValue, KtAuditResponse, KtConsistencyResponse, KtKeysResponse,
    KtProofResponse, SignedEpoch,
};
use redoubt_proto::merkle;
use redoubt_proto::{DeviceList, ListedDevice, SignedDocument};
use test_support::{TestDevice, TestServer};

type Config = akd::WhatsAppV1Configuration;

/// Publishes a device list for `device` under `identity`; returns its body.
async fn publish_list(device: &TestDevice, identity: &SigningKey, version: u64) -> String {
    let list = DeviceList {
        account: device.account_id,
        phone: device.phone.clone(),
        identity_key: STANDARD.encode(identity.verifying_key().as_bytes()),
        version,
        previous: String::new(),
        devices: vec![ListedDevice {
            device: device.device_id,
            signature_key: STANDARD.encode([7u8; 32]),
        }],
        issued_at: 1_800_000_000 + version as i64,
    };
    let body = serde_json::to_string(&list).unwrap();
    let signature = identity.sign(&SignedDocument::signing_input(DEVICE_LIST_CONTEXT, &body));
    let response = device
        .request(reqwest::Method::PUT, "/v1/device-list")
        .json(&PublishDeviceListRequest {
            list: SignedDocument {
                body: body.clone(),
                signature: STANDARD.encode(signature.to_bytes()),
            },
        })
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    body
}

async fn directory_keys(server: &TestServer) -> KtKeysResponse {
    reqwest::get(server.url("/v1/kt/keys"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn latest(server: &TestServer) -> SignedEpoch {
    reqwest::get(server.url("/v1/kt/epochs/latest"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits (on the real clock: the publisher runs on tokio's timer) for an
/// epoch at least `epoch`.
async fn epoch_at_least(server: &TestServer, epoch: u64) -> SignedEpoch {
    for _ in 0..400 {
        let e = latest(server).await;
        if e.epoch >= epoch {
            return e;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("no epoch {epoch} was published");
}

fn root(e: &SignedEpoch) -> [u8; 32] {
    STANDARD.decode(&e.root).unwrap().try_into().unwrap()
}

fn log_root(e: &SignedEpoch) -> [u8; 32] {
    STANDARD.decode(&e.log_root).unwrap().try_into().unwrap()
}

fn proof_hashes(list: &[String]) -> Vec<[u8; 32]> {
    list.iter()
        .map(|h| STANDARD.decode(h).unwrap().try_into().unwrap())
        .collect()
}

fn check_signature(e: &SignedEpoch, directory_key: &str) {
    let key: [u8; 32] = STANDARD.decode(directory_key).unwrap().try_into().unwrap();
    let signature: [u8; 64] = STANDARD.decode(&e.signature).unwrap().try_into().unwrap();
    ed25519_dalek::VerifyingKey::from_bytes(&key)
        .unwrap()
        .verify_strict(
            &SignedEpoch::signing_input(e.epoch, &root(e), e.published_at, &log_root(e)),
            &ed25519_dalek::Signature::from_bytes(&signature),
        )
        .expect("the epoch is signed by the directory key");
}

fn sha256_hex(text: &str) -> String {
    redoubt_legal::sha256_hex(text.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_lists_land_in_signed_epochs_and_every_proof_verifies() {
    let server = TestServer::builder()
        .configure(|c| c.kt.epoch_interval = std::time::Duration::from_millis(100))
        .start()
        .await;
    let keys = directory_keys(&server).await;
    let vrf = STANDARD.decode(&keys.vrf_public_key).unwrap();
    // Epoch 0, the empty directory, is signed from the start.
    let zero = latest(&server).await;
    assert_eq!(zero.epoch, 0);
    check_signature(&zero, &keys.directory_key);

    let alice = TestDevice::register(&server.base_url(), &test_support::fresh_phone(), "a").await;
    let bob = TestDevice::register(&server.base_url(), &test_support::fresh_phone(), "b").await;
    let identity = SigningKey::generate(&mut rand::rngs::OsRng);
    let first = publish_list(&alice, &identity, 1).await;
    let one = epoch_at_least(&server, 1).await;
    check_signature(&one, &keys.directory_key);

    // Bob looks Alice up: the proof verifies against the signed root and
    // carries exactly her account, identity key and list.
    let path = format!("/v1/kt/lookup/{}", alice.phone.e164());
    let answer: KtProofResponse = bob.get(&path).await.json().await.unwrap();
    check_signature(&answer.epoch, &keys.directory_key);
    let proof = akd::proto::specs::types::LookupProof::parse_from_bytes(
        &STANDARD.decode(&answer.proof).unwrap(),
    )
    .unwrap();
    let label = akd::AkdLabel(alice.phone.e164().as_bytes().to_vec());
    let found = akd::client::lookup_verify::<Config>(
        &vrf,
        root(&answer.epoch),
        answer.epoch.epoch,
        label.clone(),
        akd::LookupProof::try_from(&proof).unwrap(),
    )
    .unwrap();
    let value = DirectoryValue::from_bytes(&found.value.0).unwrap();
    assert_eq!(value.account, alice.account_id);
    assert_eq!(
        value.identity_key,
        STANDARD.encode(identity.verifying_key().as_bytes())
    );
    assert_eq!(
        (value.list_version, value.list_sha256),
        (1, sha256_hex(&first))
    );
    // The same proof is worthless for another number.
    let bob_label = akd::AkdLabel(bob.phone.e164().as_bytes().to_vec());
    assert!(akd::client::lookup_verify::<Config>(
        &vrf,
        root(&answer.epoch),
        answer.epoch.epoch,
        bob_label,
        akd::LookupProof::try_from(&proof).unwrap(),
    )
    .is_err());

    // A second list: Alice's own history shows both, newest first.
    let second = publish_list(&alice, &identity, 2).await;
    let two = epoch_at_least(&server, one.epoch + 1).await;
    let history: KtProofResponse = alice
        .get(&format!("/v1/kt/history/{}", alice.phone.e164()))
        .await
        .json()
        .await
        .unwrap();
    let proof = akd::proto::specs::types::HistoryProof::parse_from_bytes(
        &STANDARD.decode(&history.proof).unwrap(),
    )
    .unwrap();
    let versions = akd::client::key_history_verify::<Config>(
        &vrf,
        root(&history.epoch),
        history.epoch.epoch,
        label,
        akd::HistoryProof::try_from(&proof).unwrap(),
        akd::HistoryVerificationParams::Default {
            history_params: akd::HistoryParams::Complete,
        },
    )
    .unwrap();
    let hashes: Vec<String> = versions
        .iter()
        .map(|v| DirectoryValue::from_bytes(&v.value.0).unwrap().list_sha256)
        .collect();
    assert_eq!(hashes, vec![sha256_hex(&second), sha256_hex(&first)]);
    // Someone else's history is not served.
    let theirs = bob
        .get(&format!("/v1/kt/history/{}", alice.phone.e164()))
        .await;
    assert_eq!(theirs.status(), reqwest::StatusCode::NOT_FOUND);

    // An auditor with no account checks that epoch 0 to now only grew.
    let audit: KtAuditResponse =
        reqwest::get(server.url(&format!("/v1/kt/audit?from=0&to={}", two.epoch)))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    for e in &audit.epochs {
        check_signature(e, &keys.directory_key);
    }
    let proof = akd::proto::specs::types::AppendOnlyProof::parse_from_bytes(
        &STANDARD.decode(&audit.proof).unwrap(),
    )
    .unwrap();
    akd::auditor::audit_verify::<Config>(
        audit.epochs.iter().map(root).collect(),
        akd::AppendOnlyProof::try_from(&proof).unwrap(),
    )
    .await
    .unwrap();

    // A device at epoch 1 checks that epoch two's log of roots extends
    // epoch one's, and where each sits in its log.
    let link: KtConsistencyResponse = reqwest::get(server.url(&format!(
        "/v1/kt/consistency?from={}&to={}",
        one.epoch, two.epoch
    )))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(link.to, two);
    assert_eq!(
        reqwest::get(server.url(&format!("/v1/kt/epochs/{}", one.epoch)))
            .await
            .unwrap()
            .json::<SignedEpoch>()
            .await
            .unwrap(),
        one
    );
    for (e, proof) in [(&one, &link.from_inclusion), (&two, &link.to_inclusion)] {
        assert!(merkle::verify_inclusion(
            e.epoch,
            e.epoch + 1,
            &epoch_leaf(e.epoch, &root(e)),
            &proof_hashes(proof),
            &log_root(e)
        ));
    }
    assert!(merkle::verify_consistency(
        one.epoch + 1,
        two.epoch + 1,
        &log_root(&one),
        &log_root(&two),
        &proof_hashes(&link.consistency)
    ));
    // And the log is the log of every signed root from epoch 0.
    let leaves: Vec<[u8; 32]> = audit
        .epochs
        .iter()
        .map(|e| epoch_leaf(e.epoch, &root(e)))
        .collect();
    assert_eq!(
        merkle::tree_hash(&leaves),
        log_root(&audit.epochs[audit.epochs.len() - 1])
    );

    // Bad input: a number not in the directory, no account, a list naming
    // another account's number, an audit range that does not exist.
    let unknown = bob
        .get(&format!("/v1/kt/lookup/{}", test_support::fresh_phone()))
        .await;
    assert_eq!(unknown.status(), reqwest::StatusCode::NOT_FOUND);
    let anonymous = reqwest::get(server.url(&path)).await.unwrap();
    assert_eq!(anonymous.status(), reqwest::StatusCode::UNAUTHORIZED);
    let list = DeviceList {
        account: alice.account_id,
        phone: bob.phone.clone(),
        identity_key: STANDARD.encode(identity.verifying_key().as_bytes()),
        version: 3,
        previous: String::new(),
        devices: vec![],
        issued_at: 0,
    };
    let response = alice
        .request(reqwest::Method::PUT, "/v1/device-list")
        .json(&PublishDeviceListRequest {
            list: SignedDocument {
                body: serde_json::to_string(&list).unwrap(),
                signature: String::new(),
            },
        })
        .send()
        .await
        .unwrap();
    assert_eq!(
        test_support::api_error(response).await.1.error.code,
        redoubt_proto::ErrorCode::InvalidRequest
    );
    for (path, status) in [
        (
            "/v1/kt/audit?from=5&to=2",
            reqwest::StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/v1/kt/consistency?from=2&to=1",
            reqwest::StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/v1/kt/consistency?from=0&to=99999",
            reqwest::StatusCode::NOT_FOUND,
        ),
        (
            "/v1/kt/consistency?from=x&to=1",
            reqwest::StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("/v1/kt/epochs/99999", reqwest::StatusCode::NOT_FOUND),
    ] {
        let bad = reqwest::get(server.url(path)).await.unwrap();
        assert_eq!(bad.status(), status, "{path}");
        let body: redoubt_proto::ErrorBody = bad.json().await.unwrap();
        assert!(!body.error.message.is_empty());
    }

    // Operators see the directory's epoch, size and publication times.
    let metrics = server.metrics().await.text().await.unwrap();
    let value = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<u64>().ok())
    };
    assert!(
        value("redoubt_kt_epoch").is_some_and(|e| e >= two.epoch),
        "{metrics}"
    );
    assert_eq!(value("redoubt_kt_directory_size"), Some(1), "{metrics}");
    assert!(
        metrics.contains("redoubt_kt_publish_seconds_count"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epochs_signed_before_the_log_of_roots_are_given_theirs_at_start() {
    let server = TestServer::builder()
        .configure(|c| c.kt.epoch_interval = std::time::Duration::from_millis(100))
        .start()
        .await;
    let keys = directory_keys(&server).await;
    let alice = TestDevice::register(&server.base_url(), &test_support::fresh_phone(), "a").await;
    let identity = SigningKey::generate(&mut rand::rngs::OsRng);
    publish_list(&alice, &identity, 1).await;
    publish_list(&alice, &identity, 2).await;
    let before = epoch_at_least(&server, 1).await;
    let db_path = server.db_path();
    let dir = server.stop().await;
    // As a relay from before the log stored them: no log root, and a
    // signature that does not cover one.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db_path.display()))
        .await
        .unwrap();
    sqlx::query("UPDATE kt_epochs SET log_root = NULL, signature = x'00'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let server = TestServer::builder().data_dir(dir).start().await;
    let audit: KtAuditResponse =
        reqwest::get(server.url(&format!("/v1/kt/audit?from=0&to={}", before.epoch)))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let mut leaves = Vec::new();
    for e in &audit.epochs {
        check_signature(e, &keys.directory_key);
        leaves.push(epoch_leaf(e.epoch, &root(e)));
        assert_eq!(merkle::tree_hash(&leaves), log_root(e));
    }
    assert_eq!(audit.epochs.last().unwrap().root, before.root);
}
