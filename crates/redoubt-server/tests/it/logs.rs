//! Invariant 3: logs carry no user data. A full registration, send, push and
//! fetch is run against the in-process server with everything down to
//! `trace` captured, and the log is scanned for every secret involved.

use base64::Engine as _;
use test_support::{logs, TestServer};

/// Every form in which a secret could leak into a log line.
fn forms_of(secret: &[u8]) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut forms = vec![b64.encode(secret)];
    if let Ok(text) = std::str::from_utf8(secret) {
        forms.push(text.to_owned());
    }
    forms.push(secret.iter().map(|b| format!("{b:02x}")).collect());
    forms
}

#[tokio::test]
async fn no_phone_number_code_token_or_envelope_byte_reaches_the_log() {
    let server = TestServer::start().await;
    let alice = server.register_fresh().await;
    let bob = server.register_fresh().await;
    let payload = b"LOG-LEAK-MARKER-a81f3c opaque ciphertext stand-in".to_vec();
    let mut socket = bob.ws().await;
    socket.until_drained().await;
    let id = alice.send_ok(&[bob.device_id], &payload).await;
    assert_eq!(socket.envelope().await.id, id);
    socket.ack(&[id]).await;
    alice.send_ok(&[bob.device_id], &payload[..20]).await;
    bob.fetch().await;
    alice.upload_key_packages(2, true).await;
    alice
        .post(
            "/v1/accounts/lookup",
            &serde_json::json!({ "phone": bob.phone.e164() }),
        )
        .await;
    socket.close().await;

    let captured = logs::captured();
    let mut secrets: Vec<(String, Vec<u8>)> = vec![("payload".into(), payload.clone())];
    for device in [&alice, &bob] {
        secrets.push(("token".into(), device.token.expose().as_bytes().to_vec()));
        let e164 = device.phone.e164();
        secrets.push(("phone".into(), e164.as_bytes().to_vec()));
        // The national digits alone, without the +33 prefix.
        secrets.push(("phone digits".into(), e164.as_bytes()[3..].to_vec()));
        let code = logs::dev_code_for(&captured, e164).expect("dev sender line present");
        secrets.push(("code".into(), format!("code={code}").into_bytes()));
    }
    let outside = logs::lines_outside_dev_sender(&captured);
    assert!(outside.len() > 20, "the scan must see real log output");
    for (what, secret) in &secrets {
        for form in forms_of(secret) {
            for line in &outside {
                assert!(
                    !line.contains(&form),
                    "{what} leaked into a log line: {line}"
                );
            }
        }
    }
}

#[tokio::test]
async fn the_database_holds_no_token_and_no_code() {
    let server = TestServer::start().await;
    let device = server.register_fresh().await;
    // A second code stays pending, so there is a stored code to inspect.
    let response = reqwest::Client::new()
        .post(server.url("/v1/registration/code"))
        .json(&serde_json::json!({ "phone": device.phone.e164() }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    let pending = logs::dev_code_for(&logs::captured(), device.phone.e164()).unwrap();

    let mut bytes = Vec::new();
    for suffix in ["", "-wal"] {
        if let Ok(b) = std::fs::read(format!("{}{suffix}", server.db_path().display())) {
            bytes.extend(b);
        }
    }
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(
        contains(device.phone.e164().as_bytes()),
        "sanity: the scan sees stored data"
    );
    assert!(
        !contains(device.token.expose().as_bytes()),
        "only a hash of the token is stored"
    );

    let db = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", server.db_path().display()))
        .await
        .unwrap();
    let rows: Vec<(Vec<u8>, Vec<u8>)> =
        sqlx::query_as("SELECT phone_key, code_hash FROM verification_codes")
            .fetch_all(&db)
            .await
            .unwrap();
    assert!(!rows.is_empty());
    for (phone_key, code_hash) in rows {
        assert_eq!(
            (phone_key.len(), code_hash.len()),
            (32, 32),
            "numbers and codes are stored as hashes"
        );
        assert!(!code_hash.windows(6).any(|w| w == pending.as_bytes()));
        assert!(!phone_key
            .windows(8)
            .any(|w| w == &device.phone.e164().as_bytes()[4..]));
    }
    db.close().await;
}
