//! Health, metrics, the OpenAPI document and configuration.

use reqwest::StatusCode;
use test_support::TestServer;

#[tokio::test]
async fn health_metrics_and_openapi_are_served() {
    let server = TestServer::start().await;
    let health = reqwest::get(server.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let body: redoubt_proto::api::HealthResponse = health.json().await.unwrap();
    assert_eq!(body.status, "ok");

    // The service key clients pin is the one the relay signs notices with.
    let key: redoubt_proto::api::ServiceKeyResponse = reqwest::get(server.url("/v1/service-key"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(key.public_key, server.state.service_key().public_key());

    let device = server.register_fresh().await;
    let mut socket = device.ws().await;
    socket.until_drained().await;
    let metrics = reqwest::get(server.url("/metrics")).await.unwrap();
    assert!(metrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = metrics.text().await.unwrap();
    assert!(text.contains("redoubt_connected_devices 1"), "{text}");
    assert!(
        text.contains("redoubt_device_registrations_total 1"),
        "{text}"
    );
    assert!(text.contains("route=\"/v1/registration/verify\""), "{text}");
    assert!(
        !text.contains(&device.device_id.to_string()),
        "metrics never name devices"
    );

    let doc: serde_json::Value = reqwest::get(server.url("/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for route in [
        "/v1/registration/code",
        "/v1/registration/verify",
        "/v1/devices",
        "/v1/devices/{device_id}",
        "/v1/accounts/lookup",
        "/v1/accounts/{account_id}/devices",
        "/v1/keypackages",
        "/v1/keypackages/count",
        "/v1/keypackages/claim",
        "/v1/messages",
        "/v1/messages/ack",
        "/v1/ws",
        "/v1/service-key",
        "/v1/kt/keys",
        "/v1/kt/epochs/latest",
        "/v1/kt/audit",
        "/v1/kt/lookup/{phone}",
        "/v1/kt/history/{phone}",
        "/v1/device-list",
        "/v1/accounts/{account_id}/device-lists",
        "/v1/device-lists/query",
        "/v1/links",
        "/v1/links/{link_id}/{slot}",
        "/v1/links/{link_id}/approve",
        "/v1/links/{link_id}/claim",
        "/healthz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(
            paths.contains_key(route),
            "{route} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}
