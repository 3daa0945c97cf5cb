//! The legal desk against a real relay: real accounts, IP-log rows made by
//! real requests from several loopback addresses, and the desk's answer
//! holding exactly the target's phone number and addresses.

use std::net::IpAddr;

use ed25519_dalek::SigningKey;
use redoubt_legal::desk::{DeskError, Intake};
use redoubt_legal::disclosure::{verify_package, PackageError};
use redoubt_legal::order::*;
use redoubt_legal::verify::{MarketPolicy, Rejection};
use redoubt_proto::PhoneNumber;
use redoubt_server::storage::sqlite::SqliteStore;
use test_support::legal::{court, order, signed_order};
use test_support::{logs, TestDevice, TestServer};
use time::{Duration, OffsetDateTime};

fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn register_from(server: &TestServer, ip: &str) -> TestDevice {
    let phone = test_support::fresh_phone();
    let e164 = PhoneNumber::parse(&phone).unwrap().e164().to_owned();
    TestDevice::register_from(client_from(ip), &server.base_url(), &phone, "legal", || {
        logs::dev_code_for(&logs::captured(), &e164)
    })
    .await
}

/// A desk in `dir` over its own connection to the relay's database, as the
/// operator's commands open it, trusting the Paris court.
async fn desk_for(
    server: &TestServer,
    dir: &std::path::Path,
    key: &SigningKey,
    now: OffsetDateTime,
) -> redoubt_legal::desk::Desk<SqliteStore> {
    let store = SqliteStore::open(&server.db_path(), &Default::default())
        .await
        .unwrap();
    let mut desk =
        redoubt_legal::desk::Desk::open(dir, store, MarketPolicy::default(), Duration::days(30))
            .unwrap();
    desk.trust
        .add(court("Tribunal judiciaire de Paris", key, now))
        .unwrap();
    desk
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_order_yields_exactly_the_targets_number_and_addresses() {
    let server = TestServer::start().await;
    let suspect = register_from(&server, "127.0.0.2").await;
    suspect.get("/v1/devices").await;
    let mut elsewhere = suspect.clone();
    elsewhere.http = client_from("127.0.0.3");
    elsewhere.get("/v1/devices").await;
    let bystander = register_from(&server, "127.0.0.4").await;
    bystander.get("/v1/devices").await;
    bystander.send_ok(&[suspect.device_id], b"opaque").await;

    // The desk runs as the operator's commands do: its own connection to the
    // relay's database, read-only queries only.
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let now = OffsetDateTime::now_utc();
    let desk = desk_for(&server, dir.path(), &key, now).await;

    let phone = suspect.phone.e164().to_owned();
    let all = vec![
        DataCategory::Subscriber,
        DataCategory::IpIdentification,
        DataCategory::Traffic,
        DataCategory::Content,
    ];
    let document = signed_order(&key, order("FR-1", &phone, all, now));
    assert_eq!(
        desk.intake(&document, "olga", now).await.unwrap(),
        Intake::Pending {
            order_id: "FR-1".into()
        }
    );
    assert!(matches!(
        desk.approve("FR-1", "olga", now).await,
        Err(DeskError::FourEyes)
    ));
    let package = desk.approve("FR-1", "pierre", now).await.unwrap();
    assert!(matches!(
        desk.approve("FR-1", "pierre", now).await,
        Err(DeskError::NotPending(_))
    ));

    let produced = &package.package.produced;
    assert_eq!(produced.subscriber.as_ref().unwrap().phone.e164(), phone);
    let ips: Vec<String> = produced
        .ip_identification
        .as_ref()
        .unwrap()
        .iter()
        .map(|r| r.ip.to_string())
        .collect();
    assert!(
        ips.contains(&"127.0.0.2".to_owned()) && ips.contains(&"127.0.0.3".to_owned()),
        "{ips:?}"
    );
    assert!(
        !ips.contains(&"127.0.0.4".to_owned()),
        "no other account's data"
    );
    let text = serde_json::to_string(&package).unwrap();
    assert!(
        !text.contains(bystander.phone.e164()),
        "no other account's data"
    );
    assert!(!text.contains("opaque"), "no message bytes");
    let not_produced: Vec<(DataCategory, &str)> = package
        .package
        .not_produced
        .iter()
        .map(|n| (n.category, n.reason.as_str()))
        .collect();
    assert_eq!(not_produced.len(), 2);
    assert!(not_produced
        .iter()
        .all(|(_, reason)| reason.starts_with("not held")));
    assert!(not_produced
        .iter()
        .any(|(c, r)| *c == DataCategory::Content && r.contains("end-to-end encrypted")));
    assert!(not_produced
        .iter()
        .any(|(c, r)| *c == DataCategory::Traffic && r.contains("not collected")));
    assert_eq!(package.package.message_content_bytes_disclosed, 0);

    // The authority can check the package, and any one-byte change fails.
    let bytes = serde_json::to_vec(&package).unwrap();
    assert!(verify_package(&bytes, &desk.public_key()).is_ok());
    let mut altered = String::from_utf8(bytes.clone()).unwrap();
    altered = altered.replacen("127.0.0.2", "127.0.0.9", 1);
    assert_eq!(
        verify_package(altered.as_bytes(), &desk.public_key()),
        Err(PackageError::BadSignature)
    );
    // A time rewritten with the same meaning is a change too.
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let produced_at = value["package"]["produced_at"].as_str().unwrap().to_owned();
    assert!(produced_at.ends_with('Z'), "{produced_at}");
    let same_meaning = String::from_utf8(bytes.clone()).unwrap().replacen(
        &produced_at,
        &produced_at.replace('Z', "+00:00"),
        1,
    );
    assert_eq!(
        verify_package(same_meaning.as_bytes(), &desk.public_key()),
        Err(PackageError::BadSignature)
    );
    // The package names the exact order it answers.
    assert_eq!(package.package.signed_order.as_bytes(), &document[..]);

    // The desk-level rejections.
    let replay = desk.intake(&document, "olga", now).await.unwrap();
    assert!(matches!(
        replay,
        Intake::Rejected {
            rejection: Rejection::Duplicate,
            ..
        }
    ));
    let nobody = signed_order(
        &key,
        order(
            "FR-2",
            &test_support::fresh_phone(),
            vec![DataCategory::Subscriber],
            now,
        ),
    );
    let outcome = desk.intake(&nobody, "olga", now).await.unwrap();
    assert!(matches!(
        outcome,
        Intake::Rejected {
            rejection: Rejection::TargetNotFound,
            ..
        }
    ));
    let mut old = order("FR-3", &phone, vec![DataCategory::IpIdentification], now);
    old.window = TimeWindow {
        from: now - Duration::days(90),
        to: now - Duration::days(60),
    };
    let outcome = desk
        .intake(&signed_order(&key, old), "olga", now)
        .await
        .unwrap();
    assert!(matches!(
        outcome,
        Intake::Rejected {
            rejection: Rejection::NoDataHeld,
            ..
        }
    ));
    let outcome = desk.intake(b"{\"order\": {", "olga", now).await.unwrap();
    assert!(matches!(
        outcome,
        Intake::Rejected {
            rejection: Rejection::Malformed(_),
            order_id: None
        }
    ));

    // The transparency report counts all of it, verifies with the service
    // key, and fails after a one-byte change.
    let half = if u8::from(now.month()) <= 6 { 1 } else { 2 };
    let period = format!("{}-H{half}", now.year());
    let report = desk.report(&period, Vec::new(), now).unwrap();
    let total = &report.report.total;
    assert_eq!(total.received, 5, "{total:?}");
    assert_eq!(total.fulfilled, 1);
    assert_eq!(total.users_affected, 1);
    for code in ["duplicate", "target_not_found", "no_data_held", "malformed"] {
        assert_eq!(total.rejected.get(code), Some(&1), "{code}: {total:?}");
    }
    assert_eq!(total.categories_disclosed.get("subscriber"), Some(&1));
    assert_eq!(
        total.categories_disclosed.get("ip_identification"),
        Some(&1)
    );
    assert_eq!(report.report.message_content_disclosed_bytes, 0);
    let fr = report
        .report
        .rows
        .iter()
        .find(|r| r.jurisdiction == "FR" && r.legal_instrument == "national")
        .unwrap();
    assert_eq!(fr.received, 4);
    let report_bytes = serde_json::to_vec(&report).unwrap();
    assert!(redoubt_legal::report::verify(&report_bytes, &desk.public_key()).is_ok());
    let forged =
        String::from_utf8(report_bytes)
            .unwrap()
            .replacen("\"fulfilled\":1", "\"fulfilled\":0", 1);
    assert!(redoubt_legal::report::verify(forged.as_bytes(), &desk.public_key()).is_err());
    let page = redoubt_legal::report::html(&report);
    assert!(page.contains("Message content disclosed: 0 bytes"));
    assert!(!page.contains(&phone), "the report names no one");

    // Every step is in the audit chain, which verifies; an edit is located.
    let entries = desk.audit().entries().unwrap();
    let events: Vec<&str> = entries.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        events,
        vec![
            "intake",
            // Refused approvals are audited too: the four-eyes violation
            // before, the second answer after.
            "approval_refused",
            "approval",
            "disclosure",
            "approval_refused",
            "rejection",
            "rejection",
            "rejection",
            "rejection"
        ]
    );
    assert_eq!(desk.audit().verify(), Ok(9));
    let path = dir.path().join("audit.jsonl");
    let edited = std::fs::read_to_string(&path)
        .unwrap()
        .replacen("\"pierre\"", "\"mallory\"", 1);
    std::fs::write(&path, edited).unwrap();
    assert!(matches!(
        desk.audit().verify(),
        Err(redoubt_legal::audit::ChainBreak::Edited { seq: 3, .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_orders_are_rejected_with_a_reason_and_the_chain_stays_valid() {
    use rand::{Rng, SeedableRng};

    let server = TestServer::start().await;
    let suspect = register_from(&server, "127.0.0.2").await;
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let now = OffsetDateTime::now_utc();
    let desk = desk_for(&server, dir.path(), &key, now).await;
    let original = signed_order(
        &key,
        order(
            "FR-FUZZ",
            suspect.phone.e164(),
            vec![DataCategory::Subscriber],
            now,
        ),
    );
    let canonical = |doc: &[u8]| {
        serde_json::from_slice::<SignedOrder>(doc)
            .ok()
            .map(|s| canonical_json(&s.order))
    };
    let original_canonical = canonical(&original);

    // A fixed seed keeps failures reproducible.
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut accepted = 0;
    let rounds = 300;
    for _ in 0..rounds {
        let mut doc = original.clone();
        for _ in 0..rng.gen_range(1..4) {
            let at = rng.gen_range(0..doc.len());
            match rng.gen_range(0..4) {
                0 => doc[at] ^= 1 << rng.gen_range(0..8),
                1 => doc.truncate(at),
                2 => doc.insert(at, rng.gen()),
                _ => {
                    doc.remove(at);
                }
            }
            if doc.is_empty() {
                break;
            }
        }
        match desk.intake(&doc, "olga", now).await.unwrap() {
            Intake::Rejected { rejection, .. } => assert!(!rejection.code().is_empty()),
            Intake::Pending { .. } => {
                // Only a change the signature does not cover (whitespace
                // between tokens) may pass, and only once.
                assert_eq!(
                    canonical(&doc),
                    original_canonical,
                    "a mutated order was accepted"
                );
                accepted += 1;
            }
        }
    }
    assert!(accepted <= 1);
    assert_eq!(desk.audit().verify(), Ok(rounds));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_told_once_the_gag_period_ends() {
    let server = TestServer::start().await;
    let suspect = register_from(&server, "127.0.0.2").await;
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let now = OffsetDateTime::now_utc();
    // The desk lives where the relay looks for it: <data_dir>/legal.
    let desk = desk_for(&server, &server.data_dir().join("legal"), &key, now).await;
    desk.save_trust("olga", serde_json::json!({ "added": "fr-tj-paris" }), now)
        .unwrap();
    let phone = suspect.phone.e164().to_owned();
    let open_order = order("FR-N1", &phone, vec![DataCategory::Subscriber], now);
    let mut gagged = order("FR-N2", &phone, vec![DataCategory::IpIdentification], now);
    gagged.notify_user_after = Some(now + Duration::days(2));
    for o in [open_order, gagged] {
        let id = o.order_id.clone();
        desk.intake(&signed_order(&key, o), "olga", now)
            .await
            .unwrap();
        desk.approve(&id, "pierre", now).await.unwrap();
    }

    // The ungagged order's notice goes out at once, exactly once.
    assert_eq!(
        redoubt_server::legal_notices::deliver_due(&server.state)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        redoubt_server::legal_notices::deliver_due(&server.state)
            .await
            .unwrap(),
        0
    );
    let page = suspect.fetch().await;
    assert_eq!(page.envelopes.len(), 1);
    let notice = &page.envelopes[0];
    assert_eq!(notice.kind, redoubt_proto::api::EnvelopeKind::ServerNotice);
    let body = signed_notice(&server, notice.payload.as_slice());
    assert_eq!(body.account, suspect.account_id);
    assert!(matches!(
        body.kind,
        redoubt_proto::NoticeKind::DisclosureNotice { ref order_id } if order_id == "FR-N1"
    ));
    let text = body.text.as_str();
    assert!(
        text.contains("Tribunal judiciaire de Paris") && text.contains("FR-N1"),
        "{text}"
    );
    assert!(
        text.contains("phone number") && text.contains("No message content"),
        "{text}"
    );
    suspect.ack(&[notice.id]).await;

    // The gagged one waits for the gag to end.
    server
        .clock
        .advance(std::time::Duration::from_secs(3 * 86_400));
    assert_eq!(
        redoubt_server::legal_notices::deliver_due(&server.state)
            .await
            .unwrap(),
        1
    );
    let page = suspect.fetch().await;
    let body = signed_notice(&server, page.envelopes[0].payload.as_slice());
    assert!(body.text.contains("FR-N2"));
    let events: Vec<String> = desk
        .audit()
        .entries()
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(events.iter().filter(|e| *e == "user_notice").count(), 2);
    assert!(desk.audit().verify().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_runs_the_desk_with_operator_tokens() {
    let server = TestServer::builder()
        .configure(|c| c.admin.listen = Some("127.0.0.1:0".parse().unwrap()))
        .start()
        .await;
    let suspect = register_from(&server, "127.0.0.2").await;
    suspect.get("/v1/devices").await;
    let legal_dir = server.data_dir().join("legal");
    let now = OffsetDateTime::now_utc();
    let olga = redoubt_legal::operators::Operators::issue(&legal_dir, "olga", now).unwrap();
    let pierre = redoubt_legal::operators::Operators::issue(&legal_dir, "pierre", now).unwrap();
    let mut admin = None;
    for _ in 0..100 {
        admin = server.state.admin_addr();
        if admin.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let base = format!("http://{}", admin.expect("admin API listening"));
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, token: &str| {
        http.request(method, format!("{base}{path}"))
            .bearer_auth(token)
    };

    // No token, a wrong token, and the public port: all refused.
    let missing = http
        .get(format!("{base}/admin/v1/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        test_support::api_error(missing).await.1.error.code,
        redoubt_proto::ErrorCode::MissingToken
    );
    let wrong = call(reqwest::Method::GET, "/admin/v1/orders", "rdo_nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), reqwest::StatusCode::UNAUTHORIZED);
    let public = reqwest::get(server.url("/admin/v1/orders")).await.unwrap();
    assert_eq!(
        public.status(),
        reqwest::StatusCode::NOT_FOUND,
        "the admin API is not on the public port"
    );

    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let authority = court("Tribunal", &key, now);
    let added = call(reqwest::Method::POST, "/admin/v1/authorities", &olga)
        .json(&authority)
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), reqwest::StatusCode::CREATED);

    let document = signed_order(
        &key,
        order(
            "FR-API-1",
            suspect.phone.e164(),
            vec![DataCategory::IpIdentification],
            now,
        ),
    );
    let filed = call(reqwest::Method::POST, "/admin/v1/orders", &olga)
        .body(document)
        .send()
        .await
        .unwrap();
    assert_eq!(filed.status(), reqwest::StatusCode::CREATED);
    let junk = call(reqwest::Method::POST, "/admin/v1/orders", &olga)
        .body("{\"order\": 1}")
        .send()
        .await
        .unwrap();
    let (status, body) = test_support::api_error(junk).await;
    assert_eq!(
        (status, body.error.code),
        (
            reqwest::StatusCode::UNPROCESSABLE_ENTITY,
            redoubt_proto::ErrorCode::OrderRejected
        )
    );
    assert!(
        body.error.message.contains("malformed"),
        "{}",
        body.error.message
    );

    let own = call(
        reqwest::Method::POST,
        "/admin/v1/orders/FR-API-1/approve",
        &olga,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(
        test_support::api_error(own).await.0,
        reqwest::StatusCode::FORBIDDEN
    );
    let approved = call(
        reqwest::Method::POST,
        "/admin/v1/orders/FR-API-1/approve",
        &pierre,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(approved.status(), reqwest::StatusCode::OK);
    let package = approved.bytes().await.unwrap();
    let key_body: serde_json::Value = call(reqwest::Method::GET, "/admin/v1/service-key", &pierre)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let verified = verify_package(&package, key_body["public_key"].as_str().unwrap()).unwrap();
    let ips = verified.produced.ip_identification.unwrap();
    assert!(!ips.is_empty() && ips.iter().all(|r| r.ip.to_string() == "127.0.0.2"));
    assert!(
        verified.produced.subscriber.is_none(),
        "only what was asked for"
    );
    let unknown = call(
        reqwest::Method::POST,
        "/admin/v1/orders/NOPE/approve",
        &pierre,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(unknown.status(), reqwest::StatusCode::NOT_FOUND);

    let audit: serde_json::Value = call(reqwest::Method::GET, "/admin/v1/audit/verify", &olga)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(audit["intact"], true);
    let half = if u8::from(now.month()) <= 6 { 1 } else { 2 };
    let report: serde_json::Value = call(
        reqwest::Method::GET,
        &format!("/admin/v1/reports/{}-H{half}", now.year()),
        &olga,
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(report["report"]["total"]["fulfilled"], 1);
    let entries = redoubt_legal::audit::AuditLog::new(&legal_dir.join("audit.jsonl"))
        .entries()
        .unwrap();
    let actors: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e.event.as_str(), e.actor.as_str()))
        .collect();
    assert!(
        actors.contains(&("intake", "olga")) && actors.contains(&("approval", "pierre")),
        "{actors:?}"
    );
}

/// A notice's content, after checking it is signed by the relay's service
/// key (the key clients pin).
fn signed_notice(server: &TestServer, payload: &[u8]) -> redoubt_proto::ServiceNotice {
    use base64::Engine as _;
    let signed: redoubt_proto::SignedNotice = serde_json::from_slice(payload).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let key: [u8; 32] = b64
        .decode(server.state.service_key().public_key())
        .unwrap()
        .try_into()
        .unwrap();
    let signature: [u8; 64] = b64.decode(&signed.signature).unwrap().try_into().unwrap();
    ed25519_dalek::VerifyingKey::from_bytes(&key)
        .unwrap()
        .verify_strict(
            &redoubt_proto::SignedNotice::signing_input(&signed.notice),
            &ed25519_dalek::Signature::from_bytes(&signature),
        )
        .expect("the notice is signed by the service key");
    serde_json::from_str(&signed.notice).unwrap()
}

/// Issue 12's findings against the desk, as a dishonest insider or a
/// changing world would hit them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_desk_rechecks_at_approval_clips_windows_and_audits_before_anything_leaves() {
    let server = TestServer::builder()
        .configure(|c| c.ip_log.touch_interval = std::time::Duration::ZERO)
        .start()
        .await;
    let suspect = register_from(&server, "127.0.0.2").await;
    let phone = suspect.phone.e164().to_owned();
    // One sighting spanning an hour: first seen at t0, last seen at t0+1h.
    let t0 = server.clock.now_offset();
    suspect.get("/v1/devices").await;
    server.clock.advance(std::time::Duration::from_secs(3600));
    suspect.get("/v1/devices").await;
    let now = server.clock.now_offset();
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let mut desk = desk_for(&server, dir.path(), &key, now).await;
    let ip_only = vec![DataCategory::IpIdentification];

    // Finding 5: a name that differs only by padding, invisible characters
    // or case is refused or counts as the same person.
    let mut clipped = order("FR-W1", &phone, ip_only.clone(), now);
    clipped.window = redoubt_legal::order::TimeWindow {
        from: t0 + Duration::minutes(10),
        to: t0 + Duration::minutes(50),
    };
    for bad in ["", "olga ", " olga", "olga\u{200b}", "ol\u{202e}ga"] {
        assert!(
            matches!(
                desk.intake(&signed_order(&key, clipped.clone()), bad, now)
                    .await,
                Err(DeskError::BadOperator)
            ),
            "{bad:?}"
        );
    }
    desk.intake(&signed_order(&key, clipped), "olga", now)
        .await
        .unwrap();
    assert!(matches!(
        desk.approve("FR-W1", "Olga", now).await,
        Err(DeskError::FourEyes)
    ));

    // Finding 6: what leaves is clipped to the window exactly.
    let package = desk.approve("FR-W1", "pierre", now).await.unwrap();
    let records = package.package.produced.ip_identification.unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].first_seen, t0 + Duration::minutes(10));
    assert_eq!(records[0].last_seen, t0 + Duration::minutes(50));
    // A window that ends in the future is collection, not production.
    let mut ahead = order("FR-W2", &phone, ip_only.clone(), now);
    ahead.window.to = now + Duration::hours(1);
    match desk
        .intake(&signed_order(&key, ahead), "olga", now)
        .await
        .unwrap()
    {
        Intake::Rejected { rejection, .. } => assert_eq!(rejection.code(), "window_in_future"),
        other => panic!("{other:?}"),
    }

    // Finding 4: approval checks the world again.
    for id in ["FR-R1", "FR-R2", "FR-R3"] {
        desk.intake(
            &signed_order(&key, order(id, &phone, ip_only.clone(), now)),
            "olga",
            now,
        )
        .await
        .unwrap();
    }
    desk.markets.exited = vec!["FR".into()];
    match desk.approve("FR-R1", "pierre", now).await {
        Err(DeskError::NoLongerValid(r)) => assert_eq!(r.code(), "jurisdiction_exited"),
        other => panic!("an exited market discloses nothing: {other:?}"),
    }
    desk.markets.exited.clear();
    desk.trust.revoke("fr-tj-paris", now).unwrap();
    match desk.approve("FR-R2", "pierre", now).await {
        Err(DeskError::NoLongerValid(r)) => assert_eq!(r.code(), "authority_revoked"),
        other => panic!("a revoked authority gets nothing: {other:?}"),
    }
    desk.trust = redoubt_legal::trust::TrustStore::default();
    desk.trust
        .add(court("Tribunal judiciaire de Paris", &key, now))
        .unwrap();
    // The number is recycled to someone else: the new holder is never
    // disclosed.
    let newcomer = register_from(&server, "127.0.0.3").await;
    test_support::hostile::move_number(&server, &suspect.phone, newcomer.account_id).await;
    assert!(matches!(
        desk.approve("FR-R3", "pierre", now).await,
        Err(DeskError::TargetChanged)
    ));
    assert!(
        std::fs::read_dir(dir.path().join("disclosures"))
            .unwrap()
            .count()
            == 1
    );

    // Finding 1: with the log unextendable, nothing leaves and the order
    // stays pending.
    desk.intake(
        &signed_order(&key, order("FR-A1", &phone, ip_only.clone(), now)),
        "olga",
        now,
    )
    .await
    .unwrap();
    let log = dir.path().join("audit.jsonl");
    let good = std::fs::read(&log).unwrap();
    let mut broken = good.clone();
    let at = broken.len() / 2;
    broken[at] = b'#';
    std::fs::write(&log, &broken).unwrap();
    assert!(desk.approve("FR-A1", "pierre", now).await.is_err());
    assert_eq!(
        std::fs::read_dir(dir.path().join("disclosures"))
            .unwrap()
            .count(),
        1,
        "no package was written"
    );
    assert!(matches!(
        desk.order("FR-A1").unwrap().unwrap().status,
        redoubt_legal::desk::OrderStatus::Pending
    ));
    // Finding 3: a log that cannot be read is never "intact, 0 entries",
    // and no report is signed over a broken log.
    assert!(desk.report("2026", Vec::new(), now).is_err());
    std::fs::write(&log, [0xFF]).unwrap();
    assert!(desk.audit().verify().is_err());
    std::fs::write(&log, &good).unwrap();
    assert!(desk.audit().verify().is_ok());
    // Every refusal above is in the log.
    let refused = desk
        .audit()
        .entries()
        .unwrap()
        .iter()
        .filter(|e| e.event == "approval_refused")
        .count();
    assert_eq!(refused, 4, "four-eyes, market, revocation, recycled number");
}

/// Issue 12, finding 8: the served-markets setting reaches the desk, so
/// `jurisdiction_not_served` can fire; a made-up country cannot be set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_from_markets_not_served_are_refused() {
    assert!(redoubt_server::Config::from_toml("[markets]\nserved = [\"XX\"]").is_err());
    assert!(redoubt_server::Config::from_toml("[markets]\nserved = [\"fr\"]").is_err());
    let server = TestServer::builder()
        .configure(|c| c.markets.served = vec!["DE".into()])
        .start()
        .await;
    let suspect = register_from(&server, "127.0.0.2").await;
    let now = OffsetDateTime::now_utc();
    let store = SqliteStore::open(&server.db_path(), &Default::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = server
        .state
        .config()
        .markets
        .policy(&server.state.markets().book(), now);
    let mut desk =
        redoubt_legal::desk::Desk::open(dir.path(), store, policy, Duration::days(30)).unwrap();
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    desk.trust
        .add(court("Tribunal judiciaire de Paris", &key, now))
        .unwrap();
    let document = signed_order(
        &key,
        order(
            "FR-NS-1",
            suspect.phone.e164(),
            vec![DataCategory::Subscriber],
            now,
        ),
    );
    match desk.intake(&document, "olga", now).await.unwrap() {
        Intake::Rejected { rejection, .. } => {
            assert_eq!(rejection.code(), "jurisdiction_not_served")
        }
        other => panic!("{other:?}"),
    }
}

/// Issue 12, finding 2: parallel intakes of one order (separate desks, as
/// separate `redoubtd legal` processes would open) file it once and leave
/// the audit chain intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_intakes_file_an_order_once_and_keep_the_chain() {
    let server = TestServer::start().await;
    let suspect = register_from(&server, "127.0.0.2").await;
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let now = OffsetDateTime::now_utc();
    // The trust store is saved once, then every desk reads it.
    let first = desk_for(&server, dir.path(), &key, now).await;
    first
        .save_trust("olga", serde_json::json!({ "added": "fr-tj-paris" }), now)
        .unwrap();
    let document = signed_order(
        &key,
        order(
            "FR-PAR-1",
            suspect.phone.e164(),
            vec![DataCategory::Subscriber],
            now,
        ),
    );
    let mut runs = Vec::new();
    for _ in 0..6 {
        let (path, document) = (dir.path().to_owned(), document.clone());
        let db = server.db_path();
        runs.push(tokio::spawn(async move {
            let store = SqliteStore::open(&db, &Default::default()).await.unwrap();
            let desk = redoubt_legal::desk::Desk::open(
                &path,
                store,
                MarketPolicy::default(),
                Duration::days(30),
            )
            .unwrap();
            desk.intake(&document, "olga", now).await.unwrap()
        }));
    }
    let mut pending = 0;
    for run in runs {
        match run.await.unwrap() {
            Intake::Pending { .. } => pending += 1,
            Intake::Rejected { rejection, .. } => assert_eq!(rejection.code(), "duplicate"),
        }
    }
    assert_eq!(pending, 1, "filed once");
    assert_eq!(
        first.audit().verify(),
        Ok(7),
        "one trust entry, six intake decisions"
    );
}
