//! Key packages over the API.

use std::collections::HashSet;

use redoubt_proto::api::{
    ClaimKeyPackagesRequest, ClaimKeyPackagesResponse, KeyPackageCountResponse,
};
use redoubt_proto::ErrorCode;
use reqwest::StatusCode;
use test_support::{api_error, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_hand_each_package_out_exactly_once() {
    let server = TestServer::start().await;
    let owner = server.register_fresh().await;
    let count = owner.upload_key_packages(30, false).await;
    assert_eq!(count.remaining, 30);

    let mut claimers = Vec::new();
    for _ in 0..8 {
        claimers.push(server.register_fresh().await);
    }
    // 8 claimers race 10 claims each for 30 packages.
    let tasks = claimers
        .iter()
        .flat_map(|c| (0..10).map(move |_| c.clone()))
        .map(|c| {
            let target = owner.device_id;
            tokio::spawn(async move {
                c.post(
                    "/v1/keypackages/claim",
                    &ClaimKeyPackagesRequest {
                        devices: vec![target],
                    },
                )
                .await
            })
        });
    let mut handed_out = HashSet::new();
    let mut exhausted = 0;
    for response in futures::future::join_all(tasks).await {
        let response = response.unwrap();
        match response.status() {
            StatusCode::OK => {
                let body: ClaimKeyPackagesResponse = response.json().await.unwrap();
                assert_eq!(body.key_packages.len(), 1);
                assert!(
                    handed_out.insert(body.key_packages[0].id.clone()),
                    "a package was handed out twice"
                );
            }
            _ => {
                let (status, body) = api_error(response).await;
                assert_eq!(
                    (status, body.error.code),
                    (StatusCode::CONFLICT, ErrorCode::KeyPackagesExhausted)
                );
                assert_eq!(body.error.devices, vec![owner.device_id]);
                exhausted += 1;
            }
        }
    }
    assert_eq!(handed_out.len(), 30);
    assert_eq!(exhausted, 50);
    let count: KeyPackageCountResponse = owner
        .get("/v1/keypackages/count")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(count.remaining, 0);
}

#[tokio::test]
async fn the_last_resort_package_is_reused_and_counts_guide_top_up() {
    let server = TestServer::start().await;
    let owner = server.register_fresh().await;
    let peer = server.register_fresh().await;
    let count = owner.upload_key_packages(1, true).await;
    assert!(count.last_resort);
    assert_eq!(count.remaining, 1);
    assert!(
        count.remaining < count.low_watermark,
        "the server tells the device to top up"
    );
    let claim = ClaimKeyPackagesRequest {
        devices: vec![owner.device_id, owner.device_id],
    };
    // Repeated ids are claimed once.
    let body: ClaimKeyPackagesResponse = peer
        .post("/v1/keypackages/claim", &claim)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body.key_packages.len(), 1);
    assert!(!body.key_packages[0].last_resort);
    for _ in 0..3 {
        let body: ClaimKeyPackagesResponse = peer
            .post("/v1/keypackages/claim", &claim)
            .await
            .json()
            .await
            .unwrap();
        assert!(body.key_packages[0].last_resort);
    }
}

#[tokio::test]
async fn uploads_are_bounded() {
    let server = TestServer::builder()
        .configure(|c| c.key_packages.max_per_device = 5)
        .start()
        .await;
    let owner = server.register_fresh().await;
    owner.upload_key_packages(5, false).await;
    let big = serde_json::json!({ "key_packages": [
        { "id": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "data": "AQID" }
    ]});
    let (status, body) = api_error(owner.post("/v1/keypackages", &big).await).await;
    assert_eq!(
        (status, body.error.code),
        (StatusCode::CONFLICT, ErrorCode::KeyPackageLimit)
    );

    let two_last_resort = serde_json::json!({ "key_packages": [
        { "id": "AQ==", "data": "AQID", "last_resort": true },
        { "id": "Ag==", "data": "AQID", "last_resort": true }
    ]});
    let (status, body) = api_error(owner.post("/v1/keypackages", &two_last_resort).await).await;
    assert_eq!(
        (status, body.error.code),
        (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidRequest)
    );
    let empty = serde_json::json!({ "key_packages": [] });
    let (status, _) = api_error(owner.post("/v1/keypackages", &empty).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let count: KeyPackageCountResponse = owner
        .get("/v1/keypackages/count")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        count.remaining, 5,
        "failed uploads stored nothing and lost nothing"
    );
}

fn limit(max: u32) -> redoubt_server::config::RateLimit {
    redoubt_server::config::RateLimit {
        max,
        window: std::time::Duration::from_secs(3600),
    }
}

/// Issue 16, item 2: one device drained two victims' one-time key packages
/// in a quarter of a second. A caller now gets `claims_per_device` from
/// any one device per window, then 429, and the victim keeps the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_caller_cannot_drain_a_devices_key_packages() {
    let server = TestServer::builder()
        .configure(|c| c.limits.claims_per_device = limit(3))
        .start()
        .await;
    let victim = server.register_fresh().await;
    let thief = server.register_fresh().await;
    let friend = server.register_fresh().await;
    victim.upload_key_packages(20, true).await;
    let claim = ClaimKeyPackagesRequest {
        devices: vec![victim.device_id],
    };
    for _ in 0..3 {
        assert_eq!(
            thief.post("/v1/keypackages/claim", &claim).await.status(),
            StatusCode::OK
        );
    }
    let refused = thief.post("/v1/keypackages/claim", &claim).await;
    assert!(refused.headers().contains_key("retry-after"));
    let (status, body) = api_error(refused).await;
    assert_eq!(
        (status, body.error.code),
        (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited)
    );
    // Someone else can still start a chat with the victim.
    assert_eq!(
        friend.post("/v1/keypackages/claim", &claim).await.status(),
        StatusCode::OK
    );
    let count: KeyPackageCountResponse = victim
        .get("/v1/keypackages/count")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(count.remaining, 20 - 4, "only what was allowed was taken");
}

/// Issue 16, item 3: 300 lookups by one device took 0.3 s, a national
/// number range in about a day. Lookups are limited per account and per
/// client address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_number_lookups_are_limited_per_account_and_per_address() {
    let server = TestServer::builder()
        .configure(|c| {
            c.limits.lookups_per_account = limit(3);
            c.limits.lookups_per_address = limit(5);
        })
        .start()
        .await;
    let target = server.register_fresh().await;
    let first = server.register_fresh().await;
    let second = server.register_fresh().await;
    let lookup = |who: &test_support::TestDevice| {
        let who = who.clone();
        let phone = target.phone.e164().to_owned();
        async move {
            who.post(
                "/v1/accounts/lookup",
                &serde_json::json!({ "phone": phone }),
            )
            .await
            .status()
        }
    };
    for _ in 0..3 {
        assert_eq!(lookup(&first).await, StatusCode::OK);
    }
    assert_eq!(lookup(&first).await, StatusCode::TOO_MANY_REQUESTS);
    // Another account from the same address gets the address's remaining
    // two, then the address is at its limit too.
    assert_eq!(lookup(&second).await, StatusCode::OK);
    assert_eq!(lookup(&second).await, StatusCode::OK);
    assert_eq!(lookup(&second).await, StatusCode::TOO_MANY_REQUESTS);
}
