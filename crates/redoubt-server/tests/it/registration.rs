//! Registration by phone number, with codes read from the dev sender's log.

use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey};
use redoubt_proto::api::*;
use redoubt_proto::{ErrorCode, PhoneNumber, VerificationSession};
use reqwest::StatusCode;
use test_support::{api_error, fresh_phone, logs, TestServer};

async fn request_code(server: &TestServer, phone: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(server.url("/v1/registration/code"))
        .json(&serde_json::json!({ "phone": phone }))
        .send()
        .await
        .unwrap()
}

/// Asks for a code and returns the request's session.
async fn ask(server: &TestServer, phone: &str) -> VerificationSession {
    let response = request_code(server, phone).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    response
        .json::<RequestCodeResponse>()
        .await
        .unwrap()
        .session
}

fn verify_body(
    session: &VerificationSession,
    phone: &str,
    code: &str,
    key: &SigningKey,
) -> VerifyCodeRequest {
    let phone = PhoneNumber::parse(phone).unwrap();
    let challenge = VerifyCodeRequest::registration_challenge(&phone, code);
    VerifyCodeRequest {
        session: session.clone(),
        phone,
        code: code.into(),
        device_name: "laptop".into(),
        signature_key: key.verifying_key().to_bytes().to_vec().into(),
        proof: key.sign(&challenge).to_bytes().to_vec().into(),
    }
}

async fn verify(server: &TestServer, body: &VerifyCodeRequest) -> reqwest::Response {
    reqwest::Client::new()
        .post(server.url("/v1/registration/verify"))
        .json(body)
        .send()
        .await
        .unwrap()
}

fn logged_code(phone: &str) -> String {
    logs::dev_code_for(&logs::captured(), phone).expect("the dev sender logged a code")
}

#[tokio::test]
async fn a_code_from_the_dev_sender_registers_an_account_and_device() {
    let server = TestServer::start().await;
    let phone = fresh_phone();
    let response = request_code(&server, &phone).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: RequestCodeResponse = response.json().await.unwrap();
    assert_eq!(body.expires_in_seconds, 600);
    let session = body.session;

    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let response = verify(
        &server,
        &verify_body(&session, &phone, &logged_code(&phone), &key),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let registered: VerifyCodeResponse = response.json().await.unwrap();
    assert!(registered.new_account);

    let devices: OwnDevicesResponse = reqwest::Client::new()
        .get(server.url("/v1/devices"))
        .bearer_auth(registered.token.expose())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(devices.devices.len(), 1);
    assert_eq!(devices.devices[0].device_id, registered.device_id);
    assert!(devices.devices[0].current);
    assert_eq!(devices.devices[0].name, "laptop");
    assert_eq!(
        devices.devices[0].signature_key.as_slice(),
        key.verifying_key().as_bytes()
    );
}

#[tokio::test]
async fn verifying_again_adds_a_device_to_the_same_account() {
    let server = TestServer::start().await;
    let first = server.register_fresh().await;
    let second = server.register(first.phone.e164()).await;
    assert_eq!(first.account_id, second.account_id);
    assert_ne!(first.device_id, second.device_id);
    let devices: OwnDevicesResponse = second.get("/v1/devices").await.json().await.unwrap();
    assert_eq!(devices.devices.len(), 2);
    assert_eq!(devices.devices.iter().filter(|d| d.current).count(), 1);
}

#[tokio::test]
async fn a_code_works_once() {
    let server = TestServer::start().await;
    let phone = fresh_phone();
    let session = ask(&server, &phone).await;
    let code = logged_code(&phone);
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    assert_eq!(
        verify(&server, &verify_body(&session, &phone, &code, &key))
            .await
            .status(),
        StatusCode::CREATED
    );
    let (status, body) =
        api_error(verify(&server, &verify_body(&session, &phone, &code, &key)).await).await;
    assert_eq!(
        (status, body.error.code),
        (StatusCode::BAD_REQUEST, ErrorCode::NoCodePending)
    );
}

#[tokio::test]
async fn wrong_codes_are_counted_and_then_refused() {
    let server = TestServer::start().await;
    let phone = fresh_phone();
    let session = ask(&server, &phone).await;
    let code = logged_code(&phone);
    let wrong = if code == "000000" { "000001" } else { "000000" };
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    for _ in 0..5 {
        let (status, body) =
            api_error(verify(&server, &verify_body(&session, &phone, wrong, &key)).await).await;
        assert_eq!(
            (status, body.error.code),
            (StatusCode::UNAUTHORIZED, ErrorCode::CodeIncorrect)
        );
    }
    let (status, body) =
        api_error(verify(&server, &verify_body(&session, &phone, &code, &key)).await).await;
    assert_eq!(
        (status, body.error.code),
        (
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::CodeAttemptsExceeded
        )
    );
}

#[tokio::test]
async fn codes_expire() {
    let server = TestServer::start().await;
    let phone = fresh_phone();
    let session = ask(&server, &phone).await;
    let code = logged_code(&phone);
    server.clock.advance(Duration::from_secs(601));
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let (status, body) =
        api_error(verify(&server, &verify_body(&session, &phone, &code, &key)).await).await;
    assert_eq!(
        (status, body.error.code),
        (StatusCode::GONE, ErrorCode::CodeExpired)
    );
}

#[tokio::test]
async fn code_requests_are_rate_limited_per_number_and_per_ip() {
    let server = TestServer::builder()
        .configure(|c| {
            c.registration.per_number.max = 2;
            c.registration.per_ip.max = 4;
        })
        .start()
        .await;
    let phone = fresh_phone();
    for _ in 0..2 {
        assert_eq!(
            request_code(&server, &phone).await.status(),
            StatusCode::ACCEPTED
        );
    }
    let response = request_code(&server, &phone).await;
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 0 && retry_after <= 15 * 60);
    let (status, body) = api_error(response).await;
    assert_eq!(
        (status, body.error.code),
        (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited)
    );

    // Two more numbers from the same address use up the per-IP allowance.
    assert_eq!(
        request_code(&server, &fresh_phone()).await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        request_code(&server, &fresh_phone()).await.status(),
        StatusCode::ACCEPTED
    );
    let (status, body) = api_error(request_code(&server, &fresh_phone()).await).await;
    assert_eq!(
        (status, body.error.code),
        (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited)
    );

    // The window slides: later, requests are accepted again.
    server.clock.advance(Duration::from_secs(3601));
    assert_eq!(
        request_code(&server, &phone).await.status(),
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn bad_keys_and_proofs_are_refused_without_using_an_attempt() {
    let server = TestServer::start().await;
    let phone = fresh_phone();
    let session = ask(&server, &phone).await;
    let code = logged_code(&phone);
    let key = SigningKey::generate(&mut rand::rngs::OsRng);

    let mut short_key = verify_body(&session, &phone, &code, &key);
    short_key.signature_key = vec![1; 31].into();
    let (status, body) = api_error(verify(&server, &short_key).await).await;
    assert_eq!(
        (status, body.error.code),
        (StatusCode::BAD_REQUEST, ErrorCode::InvalidSignatureKey)
    );

    // A signature by another key does not prove possession of this one.
    let mut stolen = verify_body(&session, &phone, &code, &key);
    let other = SigningKey::generate(&mut rand::rngs::OsRng);
    stolen.proof = verify_body(&session, &phone, &code, &other).proof;
    let (status, body) = api_error(verify(&server, &stolen).await).await;
    assert_eq!(
        (status, body.error.code),
        (StatusCode::BAD_REQUEST, ErrorCode::InvalidProof)
    );

    let mut bad_name = verify_body(&session, &phone, &code, &key);
    bad_name.device_name = "\u{0007}".into();
    let (status, body) = api_error(verify(&server, &bad_name).await).await;
    assert_eq!(
        (status, body.error.code),
        (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidRequest)
    );

    // Issue 16: names that show as blank or read as something else.
    for name in [
        "\u{200B}",
        "phone\u{200B}",
        "\u{202E}enohp",
        "\u{2066}laptop\u{2069}",
        "\u{FEFF}",
        "\u{3164}",
        "a\u{E0041}",
    ] {
        let mut hidden = verify_body(&session, &phone, &code, &key);
        hidden.device_name = name.into();
        let (status, body) = api_error(verify(&server, &hidden).await).await;
        assert_eq!(
            (status, body.error.code),
            (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidRequest),
            "{name:?}"
        );
    }

    let mut letters = verify_body(&session, &phone, "12ab56", &key);
    letters.code = "12ab56".into();
    let (status, body) = api_error(verify(&server, &letters).await).await;
    assert_eq!(
        (status, body.error.code),
        (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidRequest)
    );

    // None of that used up the code.
    assert_eq!(
        verify(&server, &verify_body(&session, &phone, &code, &key))
            .await
            .status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn bad_phone_numbers_get_400_with_a_clear_code() {
    let server = TestServer::start().await;
    for bad in [
        "0612345678",
        "+33 0 12 34 56 78",
        "hello",
        "+",
        "+999999999999999999",
    ] {
        let (status, body) = api_error(request_code(&server, bad).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body.error.code, ErrorCode::InvalidPhoneNumber, "{bad}");
        assert!(
            !body.error.message.contains(bad.trim_start_matches('+')) || bad == "+",
            "{bad}"
        );
    }
}

/// Every row of every table of the relay's SQLite database, each value as
/// bytes (text as its UTF-8).
fn all_rows(db: &std::path::Path) -> Vec<(String, Vec<Vec<u8>>)> {
    use rusqlite::types::ValueRef;
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut rows = Vec::new();
    for table in tables {
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
        let n = stmt.column_count();
        let mut q = stmt.query([]).unwrap();
        while let Some(row) = q.next().unwrap() {
            let values = (0..n)
                .map(|i| match row.get_ref(i).unwrap() {
                    ValueRef::Text(t) | ValueRef::Blob(t) => t.to_vec(),
                    ValueRef::Integer(v) => v.to_string().into_bytes(),
                    ValueRef::Real(v) => v.to_string().into_bytes(),
                    ValueRef::Null => Vec::new(),
                })
                .collect();
            rows.push((table.clone(), values));
        }
    }
    rows
}

/// Issue 16, item 10: the code-request limits kept an unkeyed hash of the
/// number beside the client's address in one row, so the database alone
/// said who asked for which number. Now no row holds both, and the number's
/// key is an HMAC the database alone cannot recompute.
#[tokio::test]
async fn no_row_ties_a_requested_number_to_the_address_that_asked() {
    use sha2::Digest as _;
    let server = TestServer::start().await;
    let phone = fresh_phone();
    let response = reqwest::Client::builder()
        .local_address("127.0.0.9".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
        .post(server.url("/v1/registration/code"))
        .json(&RequestCodeRequest {
            phone: PhoneNumber::parse(&phone).unwrap(),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let number = PhoneNumber::parse(&phone).unwrap();
    let e164 = number.e164().as_bytes().to_vec();
    // The hash of before: anyone can compute it for every number.
    let unkeyed = sha2::Sha256::new()
        .chain_update(b"redoubt/phone-key/v1\0")
        .chain_update(&e164)
        .finalize()
        .to_vec();
    let keyed = server.state.phone_keyer().key(&number).to_vec();
    assert_ne!(keyed, unkeyed);
    // The limits' buckets: keyed hashes of the number and of the address.
    let number_bucket = server
        .state
        .phone_keyer()
        .bucket("code-number", &[keyed.as_slice(), &[127, 0, 0, 9]].concat())
        .to_vec();
    let address_bucket = server
        .state
        .phone_keyer()
        .bucket("code-address", &[127, 0, 0, 9])
        .to_vec();
    let rows = all_rows(&server.db_path());
    let mut keyed_rows = 0;
    for (table, values) in &rows {
        let from_number = values
            .iter()
            .any(|v| *v == e164 || *v == unkeyed || *v == keyed || *v == number_bucket);
        let from_address = values
            .iter()
            .any(|v| v.as_slice() == b"127.0.0.9" || *v == address_bucket);
        assert!(
            !(from_number && from_address),
            "a row of {table} ties the number to the address"
        );
        assert!(
            !values.contains(&unkeyed),
            "{table} holds the unkeyed hash of the number"
        );
        assert!(
            !values.iter().any(|v| v.as_slice() == b"127.0.0.9"),
            "{table} holds the address in the clear"
        );
        keyed_rows += usize::from(values.contains(&keyed) || values.contains(&number_bucket));
    }
    assert!(
        keyed_rows >= 2,
        "the code and the per-number limit are kept, keyed"
    );
    assert!(
        rows.iter()
            .any(|(_, values)| values.contains(&address_bucket)),
        "the per-address limit is kept, keyed"
    );
}

/// Issue 16, item 4 (number types): codes went to premium-rate, satellite
/// and shared-cost numbers, each SMS paid by the operator (SMS pumping).
/// Only numbers that receive SMS get one; nothing is sent or counted for
/// the others.
#[tokio::test]
async fn codes_go_only_to_numbers_that_receive_sms() {
    let server = TestServer::start().await;
    for number in [
        "+33891234567",
        "+33810123456",
        "+881612345678",
        "+33123456789",
    ] {
        let (status, body) = api_error(request_code(&server, number).await).await;
        assert_eq!(
            (status, body.error.code),
            (StatusCode::BAD_REQUEST, ErrorCode::InvalidPhoneNumber),
            "{number}"
        );
        assert!(
            body.error.message.contains("not a mobile number"),
            "{}",
            body.error.message
        );
        let e164 = PhoneNumber::parse(number).unwrap().e164().to_owned();
        assert!(
            logs::dev_code_for(&logs::captured(), &e164).is_none(),
            "no code went to {number}"
        );
    }
    assert_eq!(
        request_code(&server, &fresh_phone()).await.status(),
        StatusCode::ACCEPTED
    );
}

/// Asks for a code as a client at `from` (through the trusted proxy) and
/// returns the request's session.
async fn session_from(server: &TestServer, phone: &str, from: &str) -> VerificationSession {
    let response = reqwest::Client::new()
        .post(server.url("/v1/registration/code"))
        .header("x-forwarded-for", from)
        .json(&serde_json::json!({ "phone": phone }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    response
        .json::<RequestCodeResponse>()
        .await
        .unwrap()
        .session
}

async fn request_code_from(server: &TestServer, phone: &str, from: &str) -> StatusCode {
    reqwest::Client::new()
        .post(server.url("/v1/registration/code"))
        .header("x-forwarded-for", from)
        .json(&serde_json::json!({ "phone": phone }))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn code_requests_are_counted_per_ipv6_prefix() {
    let server = TestServer::builder()
        .configure(|c| {
            c.http.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
            c.registration.per_ip.max = 3;
        })
        .start()
        .await;
    // Issue 16, item 4: before, each address of a /64 had its own count,
    // and 100 codes went to one prefix from 5 addresses in 0.1 s.
    for host in 1..=3 {
        assert_eq!(
            request_code_from(&server, &fresh_phone(), &format!("2001:db8:7:7::{host}")).await,
            StatusCode::ACCEPTED
        );
    }
    assert_eq!(
        request_code_from(&server, &fresh_phone(), "2001:db8:7:7:ffff::9").await,
        StatusCode::TOO_MANY_REQUESTS,
        "another address of the same /64"
    );
    assert_eq!(
        request_code_from(&server, &fresh_phone(), "2001:db8:7:8::1").await,
        StatusCode::ACCEPTED,
        "the next /64 is someone else"
    );
}

#[tokio::test]
async fn codes_per_number_block_per_country_and_in_all_are_capped() {
    let hour = Duration::from_secs(3600);
    let server = TestServer::builder()
        .configure(|c| {
            c.http.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
            c.registration.per_number_block = redoubt_server::config::RateLimit {
                max: 2,
                window: hour,
            };
            c.registration.per_country = redoubt_server::config::RateLimit {
                max: 4,
                window: hour,
            };
            c.registration.sms_budget = redoubt_server::config::RateLimit {
                max: 5,
                window: hour,
            };
        })
        .start()
        .await;
    // SMS pumping walks a range of numbers from many addresses.
    let mut from = (1..).map(|i| format!("198.51.100.{i}"));
    let block = ["+33612340001", "+33612340002", "+33612340003"];
    assert_eq!(
        request_code_from(&server, block[0], &from.next().unwrap()).await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        request_code_from(&server, block[1], &from.next().unwrap()).await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        request_code_from(&server, block[2], &from.next().unwrap()).await,
        StatusCode::TOO_MANY_REQUESTS,
        "a third number of the block"
    );
    // Other blocks of the country, up to the country's cap.
    for n in ["+33698765432", "+33622334455"] {
        assert_eq!(
            request_code_from(&server, n, &from.next().unwrap()).await,
            StatusCode::ACCEPTED
        );
    }
    assert_eq!(
        request_code_from(&server, "+33655544433", &from.next().unwrap()).await,
        StatusCode::TOO_MANY_REQUESTS,
        "a fifth French number"
    );
    // Another country, until the budget for all is spent.
    assert_eq!(
        request_code_from(&server, "+4915112345678", &from.next().unwrap()).await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        request_code_from(&server, "+4915298765432", &from.next().unwrap()).await,
        StatusCode::TOO_MANY_REQUESTS,
        "the sixth code would pass the SMS budget"
    );
    // The window slides.
    server.clock.advance(hour + Duration::from_secs(1));
    assert_eq!(
        request_code_from(&server, "+4915298765432", &from.next().unwrap()).await,
        StatusCode::ACCEPTED
    );
}

/// A request the SMS budget refuses must leave the code a person is
/// waiting for alone: before, it was refused only after it had stored a
/// new code in place of theirs, and nothing was sent.
#[tokio::test]
async fn a_request_the_budget_refuses_leaves_the_pending_code_alone() {
    let server = TestServer::builder()
        .configure(|c| {
            c.http.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
            c.registration.sms_budget = redoubt_server::config::RateLimit {
                max: 1,
                window: Duration::from_secs(3600),
            };
        })
        .start()
        .await;
    let phone = fresh_phone();
    let session = session_from(&server, &phone, "198.51.100.1").await;
    let code = logged_code(&phone);
    // A stranger asks for the same number once the budget is spent.
    assert_eq!(
        request_code_from(&server, &phone, "203.0.113.5").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let response = verify(&server, &verify_body(&session, &phone, &code, &key)).await;
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "the code sent first still registers"
    );
}

/// Issue 16, item 4: five wrong guesses from strangers voided the owner's
/// code, and two more requests used up the number's quota, so strangers
/// could lock a person out of registering. Codes now belong to the session
/// that asked, and the per-number limit counts each asking address apart.
#[tokio::test]
async fn strangers_cannot_spend_a_numbers_attempts_or_its_owners_requests() {
    let server = TestServer::builder()
        .configure(|c| c.http.trusted_proxies = vec!["127.0.0.1".parse().unwrap()])
        .start()
        .await;
    let phone = fresh_phone();
    let owner = "198.51.100.1";
    let session = session_from(&server, &phone, owner).await;
    let code = logged_code(&phone);
    let wrong = if code == "000000" { "000001" } else { "000000" };
    let key = SigningKey::generate(&mut rand::rngs::OsRng);

    // A stranger asks for codes to the number until refused, and guesses
    // with a session of their own, and with none of theirs.
    let stranger = "203.0.113.9";
    let theirs = session_from(&server, &phone, stranger).await;
    while request_code_from(&server, &phone, stranger).await == StatusCode::ACCEPTED {}
    for _ in 0..6 {
        verify(&server, &verify_body(&theirs, &phone, wrong, &key)).await;
    }
    let made_up = VerificationSession::from_random_bytes(&[7; 32]);
    for _ in 0..6 {
        let (status, body) =
            api_error(verify(&server, &verify_body(&made_up, &phone, wrong, &key)).await).await;
        assert_eq!(
            (status, body.error.code),
            (StatusCode::BAD_REQUEST, ErrorCode::NoCodePending)
        );
    }

    // The owner can still ask (their own count), and the first code still
    // works, with all its attempts.
    assert_eq!(
        request_code_from(&server, &phone, owner).await,
        StatusCode::ACCEPTED
    );
    let response = verify(&server, &verify_body(&session, &phone, &code, &key)).await;
    assert_eq!(response.status(), StatusCode::CREATED);
}
