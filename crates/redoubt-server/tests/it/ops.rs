//! Health, metrics, the OpenAPI document and configuration.

use redoubt_proto::ErrorCode;
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
    let metrics = server.metrics().await;
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

/// Issue 16: the method label comes from a bounded set. Requests with
/// invented methods (any token up to the header limit) each made a new
/// time series, and 200 of them grew `/metrics` from 43 KB to 20 MB.
#[tokio::test]
async fn invented_methods_do_not_grow_the_metrics() {
    let server = TestServer::start().await;
    let before = server.metrics().await.text().await.unwrap().len();
    let client = reqwest::Client::new();
    let mut names = Vec::new();
    for i in 0..50 {
        let name = format!("INVENTED{i}{}", "X".repeat(20_000));
        let method = reqwest::Method::from_bytes(name.as_bytes()).unwrap();
        let response = client
            .request(method, server.url("/v1/messages"))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_client_error());
        names.push(name);
    }
    let text = server.metrics().await.text().await.unwrap();
    assert!(
        text.len() < before + 4_096,
        "metrics grew from {before} to {} bytes",
        text.len()
    );
    assert!(
        !text.contains("INVENTED"),
        "an invented method became a label"
    );
    assert!(text.contains("method=\"other\""), "{text}");
}

/// Issue 16: `/metrics` is not public. On the user listener it needs the
/// configured token (and without one configured it is not there at all);
/// the admin listener, bound to a private interface, serves it.
#[tokio::test]
async fn metrics_need_the_token_on_the_public_listener_and_are_on_the_admin_one() {
    let server = TestServer::start().await;
    let (status, body) =
        test_support::api_error(reqwest::get(server.url("/metrics")).await.unwrap()).await;
    assert_eq!(
        (status.as_u16(), body.error.code),
        (401, ErrorCode::MissingToken)
    );
    let wrong = reqwest::Client::new()
        .get(server.url("/metrics"))
        .bearer_auth("test-metrics-token-0123456789abcdeX")
        .send()
        .await
        .unwrap();
    let (status, body) = test_support::api_error(wrong).await;
    assert_eq!(
        (status.as_u16(), body.error.code),
        (401, ErrorCode::InvalidToken)
    );
    assert_eq!(server.metrics().await.status(), 200);

    let server = TestServer::builder()
        .configure(|c| {
            c.metrics.token = None;
            c.admin.listen = Some("127.0.0.1:0".parse().unwrap());
        })
        .start()
        .await;
    let (status, body) =
        test_support::api_error(reqwest::get(server.url("/metrics")).await.unwrap()).await;
    assert_eq!(
        (status.as_u16(), body.error.code),
        (404, ErrorCode::NotFound)
    );
    let admin = server.state.admin_addr().expect("admin listener");
    let scraped = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap();
    assert_eq!(scraped.status(), 200);
    assert!(scraped
        .text()
        .await
        .unwrap()
        .contains("redoubt_connected_devices"));
}

/// Issue 16, item 14: the OpenAPI document names the error answers each
/// operation can give, and describes `GET /v1/messages`' `limit` as the
/// optional query parameter it is.
#[tokio::test]
async fn the_openapi_document_names_every_error_answer() {
    let server = TestServer::start().await;
    let doc: serde_json::Value = reqwest::get(server.url("/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut with_body = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            if op.get("requestBody").is_some() {
                with_body += 1;
                for status in ["400", "413", "415", "422"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path} does not document {status}"
                    );
                }
            }
            if op
                .get("security")
                .is_some_and(|s| !s.as_array().unwrap().is_empty())
            {
                assert!(responses.contains_key("401"), "{method} {path} lacks 401");
            }
        }
    }
    assert!(with_body >= 10, "the check saw the operations with bodies");
    let params = doc["paths"]["/v1/messages"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let limit = params.iter().find(|p| p["name"] == "limit").unwrap();
    assert_eq!(limit["in"], "query");
    assert_eq!(limit["required"], false);
    let ws = &doc["paths"]["/v1/ws"]["get"]["responses"];
    assert!(ws.get("426").is_some());
}
