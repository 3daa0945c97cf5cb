//! Token authentication and device revocation.

use redoubt_proto::api::OwnDevicesResponse;
use redoubt_proto::{AuthToken, ErrorCode};
use reqwest::StatusCode;
use test_support::{api_error, TestServer};

#[tokio::test]
async fn calls_need_a_valid_token() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let (status, body) = api_error(http.get(server.url("/v1/devices")).send().await.unwrap()).await;
    assert_eq!(
        (status, body.error.code),
        (StatusCode::UNAUTHORIZED, ErrorCode::MissingToken)
    );

    let (status, body) = api_error(
        http.get(server.url("/v1/devices"))
            .bearer_auth("rdt_nonsense")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body.error.code),
        (StatusCode::UNAUTHORIZED, ErrorCode::InvalidToken)
    );

    // Well-formed but never issued.
    let forged = AuthToken::from_random_bytes(&[42; 32]);
    let (status, body) = api_error(
        http.get(server.url("/v1/devices"))
            .bearer_auth(forged.expose())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body.error.code),
        (StatusCode::UNAUTHORIZED, ErrorCode::InvalidToken)
    );

    let device = server.register_fresh().await;
    assert_eq!(device.get("/v1/devices").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_revoked_device_is_locked_out_and_disconnected() {
    let server = TestServer::start().await;
    let phone = test_support::fresh_phone();
    let laptop = server.register(&phone).await;
    let phone_device = server.register(&phone).await;
    let friend = server.register_fresh().await;
    let mut socket = phone_device.ws().await;
    assert!(socket.until_drained().await.is_empty());
    friend
        .send_ok(
            &[phone_device.device_id, laptop.device_id],
            b"queued before revocation",
        )
        .await;

    // Issue 16, item 8: revoking another device takes the identity key.
    // Without a signed list that leaves the phone out, the laptop cannot.
    let revoke = || {
        laptop
            .request(
                reqwest::Method::DELETE,
                &format!("/v1/devices/{}", phone_device.device_id),
            )
            .send()
    };
    let (status, body) = api_error(revoke().await.unwrap()).await;
    assert_eq!(
        (status, body.error.code),
        (StatusCode::FORBIDDEN, ErrorCode::Forbidden)
    );
    let identity = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let both = [laptop.device_id, phone_device.device_id];
    assert!(laptop
        .publish_device_list(&identity, 1, &both)
        .await
        .status()
        .is_success());
    assert_eq!(
        revoke().await.unwrap().status(),
        StatusCode::FORBIDDEN,
        "the list still names the phone"
    );
    // Once the identity key has signed a list without it, it can go.
    let without = laptop
        .publish_device_list(&identity, 2, &[laptop.device_id])
        .await;
    assert!(without.status().is_success());
    assert_eq!(revoke().await.unwrap().status(), StatusCode::NO_CONTENT);

    let close = socket.closed().await;
    assert_eq!(close.map(|c| c.0), Some(redoubt_proto::ws::close::REVOKED));
    let (status, body) = api_error(phone_device.get("/v1/devices").await).await;
    assert_eq!(
        (status, body.error.code),
        (StatusCode::UNAUTHORIZED, ErrorCode::TokenRevoked)
    );

    let devices: OwnDevicesResponse = laptop.get("/v1/devices").await.json().await.unwrap();
    assert_eq!(devices.devices.len(), 1);
    // The revoked device can no longer be addressed; the laptop's copy stays.
    let (status, body) = api_error(friend.send(&[phone_device.device_id], b"after").await).await;
    assert_eq!(
        (status, body.error.code),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::UnknownRecipients
        )
    );
    assert_eq!(body.error.devices, vec![phone_device.device_id]);
    assert_eq!(laptop.fetch().await.envelopes.len(), 1);
}

#[tokio::test]
async fn nobody_can_revoke_another_accounts_device() {
    let server = TestServer::start().await;
    let mallory = server.register_fresh().await;
    let victim = server.register_fresh().await;
    let response = mallory
        .request(
            reqwest::Method::DELETE,
            &format!("/v1/devices/{}", victim.device_id),
        )
        .send()
        .await
        .unwrap();
    let (status, body) = api_error(response).await;
    assert_eq!(
        (status, body.error.code),
        (StatusCode::NOT_FOUND, ErrorCode::UnknownDevice)
    );
    assert_eq!(victim.get("/v1/devices").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn devices_can_be_looked_up_by_phone_and_account() {
    let server = TestServer::start().await;
    let alice = server.register_fresh().await;
    let bob = server.register_fresh().await;
    let response = alice
        .post(
            "/v1/accounts/lookup",
            &serde_json::json!({ "phone": bob.phone.e164() }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let found: redoubt_proto::api::AccountDevicesResponse = response.json().await.unwrap();
    assert_eq!(found.account_id, bob.account_id);
    assert_eq!(found.devices.len(), 1);
    assert_eq!(found.devices[0].device_id, bob.device_id);
    assert_eq!(
        found.devices[0].signature_key.as_slice(),
        bob.signing_key.verifying_key().as_bytes()
    );

    let by_id = alice
        .get(&format!("/v1/accounts/{}/devices", bob.account_id))
        .await;
    assert_eq!(by_id.status(), StatusCode::OK);

    let nobody = test_support::fresh_phone();
    let (status, body) = api_error(
        alice
            .post(
                "/v1/accounts/lookup",
                &serde_json::json!({ "phone": nobody }),
            )
            .await,
    )
    .await;
    assert_eq!(
        (status, body.error.code),
        (StatusCode::NOT_FOUND, ErrorCode::UnknownAccount)
    );
}
