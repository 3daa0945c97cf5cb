//! Bad input of every kind gets a specific status and the JSON error body,
//! and loses nothing already stored.

use redoubt_proto::{DeviceId, EnvelopeId, ErrorCode};
use reqwest::StatusCode;
use test_support::{api_error, TestServer};

#[tokio::test]
async fn malformed_bodies_get_clear_errors_and_lose_nothing() {
    let server = TestServer::builder()
        .configure(|c| {
            c.http.max_body_bytes = 64 * 1024;
            c.mailbox.max_envelope_bytes = 32 * 1024;
            c.mailbox.max_recipients = 3;
        })
        .start()
        .await;
    let alice = server.register_fresh().await;
    let bob = server.register_fresh().await;
    let kept = alice.send_ok(&[bob.device_id], b"already stored").await;
    let post_raw = |path: &str, body: &'static str| {
        alice
            .request(reqwest::Method::POST, path)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let cases: Vec<(reqwest::Response, StatusCode, ErrorCode)> = vec![
        (
            post_raw("/v1/messages", "{\"id\": ").await.unwrap(),
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidJson,
        ),
        (
            post_raw("/v1/messages", "[1, 2, 3]").await.unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidRequest,
        ),
        (
            post_raw(
                "/v1/messages",
                "{\"id\": 5, \"recipients\": [], \"payload\": \"\"}",
            )
            .await
            .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidRequest,
        ),
        (
            post_raw("/v1/messages/ack", "{\"ids\": [\"not-a-uuid\"]}")
                .await
                .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidRequest,
        ),
        (
            post_raw("/v1/messages/ack", "{\"ids\": [], \"extra\": true}")
                .await
                .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidRequest,
        ),
        (
            alice
                .request(reqwest::Method::POST, "/v1/messages")
                .body("{}")
                .send()
                .await
                .unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
        ),
        (
            alice
                .request(reqwest::Method::POST, "/v1/messages")
                .header("content-type", "application/json")
                .body(vec![b' '; 100 * 1024])
                .send()
                .await
                .unwrap(),
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
        ),
        // Within the body limit but over the envelope limit.
        (
            alice.send(&[bob.device_id], &[0u8; 40 * 1024]).await,
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
        ),
        (
            alice.send(&[bob.device_id], b"").await,
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidRequest,
        ),
        (
            alice.send(&[], b"x").await,
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidRequest,
        ),
        (
            alice
                .send(
                    &[
                        DeviceId::random(),
                        DeviceId::random(),
                        DeviceId::random(),
                        DeviceId::random(),
                    ],
                    b"x",
                )
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::TooManyRecipients,
        ),
        (
            alice.send(&[bob.device_id, DeviceId::random()], b"x").await,
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::UnknownRecipients,
        ),
        (
            alice
                .post(
                    "/v1/keypackages/claim",
                    &serde_json::json!({ "devices": [DeviceId::random()] }),
                )
                .await,
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownDevice,
        ),
        (
            alice
                .post(
                    "/v1/keypackages/claim",
                    &serde_json::json!({ "devices": [bob.device_id] }),
                )
                .await,
            StatusCode::CONFLICT,
            ErrorCode::KeyPackagesExhausted,
        ),
        (
            alice
                .request(reqwest::Method::DELETE, "/v1/devices/not-a-uuid")
                .send()
                .await
                .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidRequest,
        ),
        (
            alice
                .request(
                    reqwest::Method::DELETE,
                    &format!("/v1/devices/{}", DeviceId::random()),
                )
                .send()
                .await
                .unwrap(),
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownDevice,
        ),
        (
            alice.get("/v1/accounts/zzz/devices").await,
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidRequest,
        ),
        (
            alice
                .get(&format!(
                    "/v1/accounts/{}/devices",
                    redoubt_proto::AccountId::random()
                ))
                .await,
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownAccount,
        ),
        (
            alice.get("/v1/messages?limit=many").await,
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidRequest,
        ),
        (
            alice.get("/v1/nothing-here").await,
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
        ),
        (
            alice
                .request(reqwest::Method::PUT, "/v1/messages")
                .send()
                .await
                .unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::MethodNotAllowed,
        ),
        (
            alice
                .request(reqwest::Method::POST, "/v1/messages/ack")
                .json(&serde_json::json!({ "ids": vec![EnvelopeId::random(); 1001] }))
                .send()
                .await
                .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidRequest,
        ),
    ];
    for (i, (response, status, code)) in cases.into_iter().enumerate() {
        let (got_status, body) = api_error(response).await;
        assert_eq!(
            (got_status, body.error.code),
            (status, code),
            "case {i}: {}",
            body.error.message
        );
        assert!(!body.error.message.is_empty());
    }

    // Nothing stored before was lost, and the server still works.
    let page = bob.fetch().await;
    assert_eq!(
        page.envelopes.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![kept]
    );
    assert_eq!(
        reqwest::get(server.url("/healthz")).await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn registration_rejects_malformed_bodies() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let post = |path: &str, body: &'static str| {
        http.post(server.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases = [
        (post("/v1/registration/code", "{").await.unwrap(), StatusCode::BAD_REQUEST, ErrorCode::InvalidJson),
        (post("/v1/registration/code", "{}").await.unwrap(), StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidRequest),
        (post("/v1/registration/code", "{\"phone\": 33612345678}").await.unwrap(), StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidRequest),
        (
            post("/v1/registration/code", "{\"phone\": \"+33612345678\", \"admin\": true}").await.unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidRequest,
        ),
        (
            post("/v1/registration/verify", "{\"phone\": \"+33612345678\", \"code\": \"123456\"}").await.unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidRequest,
        ),
        (
            post(
                "/v1/registration/verify",
                "{\"phone\": \"+33612345678\", \"code\": \"123456\", \"device_name\": \"x\", \"signature_key\": \"%%%\", \"proof\": \"\"}",
            )
            .await
            .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidRequest,
        ),
    ];
    for (i, (response, status, code)) in cases.into_iter().enumerate() {
        let (got_status, body) = api_error(response).await;
        assert_eq!(
            (got_status, body.error.code),
            (status, code),
            "case {i}: {}",
            body.error.message
        );
    }
}

/// Sends raw bytes on a fresh connection and reads the whole answer.
async fn raw_exchange(server: &TestServer, request: &[u8]) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    // hyper closes the connection after an answer to what it cannot parse.
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tcp.read_to_end(&mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head[9..12].parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

#[tokio::test]
async fn requests_hyper_cannot_parse_get_the_json_error_body() {
    let server = TestServer::start().await;
    let alice = server.register_fresh().await;
    let bob = server.register_fresh().await;
    let kept = alice.send_ok(&[bob.device_id], b"already stored").await;

    let mut many_headers = b"GET /healthz HTTP/1.1\r\nhost: x\r\n".to_vec();
    for i in 0..200 {
        many_headers.extend(format!("x-h{i}: v\r\n").as_bytes());
    }
    many_headers.extend(b"\r\n");
    let cases: Vec<(&[u8], u16, ErrorCode)> = vec![
        (b"GARBAGE\r\n\r\n", 400, ErrorCode::InvalidRequest),
        (
            b"GET /healthz HTTP/1.1\r\nbad header\r\n\r\n",
            400,
            ErrorCode::InvalidRequest,
        ),
        (&many_headers, 431, ErrorCode::HeadersTooLarge),
    ];
    for (request, status, code) in cases {
        let (got, head, body) = raw_exchange(&server, request).await;
        assert_eq!(got, status, "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let parsed: redoubt_proto::ErrorBody = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed.error.code, code);
    }
    // Nothing stored was lost, and the relay serves on.
    assert_eq!(bob.fetch().await.envelopes[0].id, kept);
}
