//! The legal desk against a real relay: real accounts, IP-log rows made by
//! real requests from several loopback addresses, and the desk's answer
//! holding exactly the target's phone number and addresses.

use std::net::IpAddr;

use ed25519_dalek::SigningKey;
use redoubt_legal::desk::{DeskError, Intake};
use redoubt_legal::disclosure::{verify_package, PackageError};
use redoubt_legal::operators::{ActionKind, Change};
use redoubt_legal::order::*;
use redoubt_legal::verify::{MarketPolicy, Rejection};
use redoubt_proto::PhoneNumber;
use redoubt_server::storage::sqlite::SqliteStore;
use test_support::legal::{court, order, signed_order, Staff};
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

type TestDesk = redoubt_legal::desk::Desk<SqliteStore, SqliteStore>;

/// A desk over its own connection to the relay's database, as the
/// operator's commands open it, with the relay's service key.
async fn open_desk(server: &TestServer, markets: MarketPolicy) -> TestDesk {
    let store = SqliteStore::open(&server.db_path(), &Default::default())
        .await
        .unwrap();
    redoubt_legal::desk::Desk::new(
        store.clone(),
        store,
        server.state.service_key().clone(),
        markets,
        Duration::days(30),
    )
}

/// Such a desk, with olga and pierre its operators, trusting the Paris
/// court (olga proposed it, pierre confirmed).
async fn desk_for(server: &TestServer, key: &SigningKey, now: OffsetDateTime) -> (TestDesk, Staff) {
    let desk = open_desk(server, MarketPolicy::default()).await;
    let staff = Staff::new();
    staff
        .open_with(&desk, court("Tribunal judiciaire de Paris", key, now), now)
        .await;
    (desk, staff)
}

/// The raw `legal_audit` table, as an insider with database access sees it.
async fn raw_log(server: &TestServer) -> sqlx::SqlitePool {
    sqlx::SqlitePool::connect(&format!("sqlite://{}", server.db_path().display()))
        .await
        .unwrap()
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
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let now = OffsetDateTime::now_utc();
    let (desk, staff) = desk_for(&server, &key, now).await;

    let phone = suspect.phone.e164().to_owned();
    let all = vec![
        DataCategory::Subscriber,
        DataCategory::IpIdentification,
        DataCategory::Traffic,
        DataCategory::Content,
    ];
    let document = signed_order(&key, order("FR-1", &phone, all, now));
    assert_eq!(
        staff.intake(&desk, &document, "olga", now).await.unwrap(),
        Intake::Pending {
            order_id: "FR-1".into()
        }
    );
    assert!(matches!(
        staff.approve(&desk, "FR-1", "olga", now).await,
        Err(DeskError::FourEyes)
    ));
    let package = staff.approve(&desk, "FR-1", "pierre", now).await.unwrap();
    assert!(matches!(
        staff.approve(&desk, "FR-1", "pierre", now).await,
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
    let replay = staff.intake(&desk, &document, "olga", now).await.unwrap();
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
    let outcome = staff.intake(&desk, &nobody, "olga", now).await.unwrap();
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
    let outcome = staff
        .intake(&desk, &signed_order(&key, old), "olga", now)
        .await
        .unwrap();
    assert!(matches!(
        outcome,
        Intake::Rejected {
            rejection: Rejection::NoDataHeld,
            ..
        }
    ));
    let outcome = staff
        .intake(&desk, b"{\"order\": {", "olga", now)
        .await
        .unwrap();
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
    let report = desk.report(&period, Vec::new(), None, now).await.unwrap();
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

    // Every step is in the audit log, which replays; an edit is located.
    let entries = desk.state().await.unwrap().entries;
    let events: Vec<&str> = entries.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        events,
        vec![
            "bootstrap",
            "proposal",
            "trust_change",
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
    let db = raw_log(&server).await;
    sqlx::query("UPDATE legal_audit SET entry = replace(entry, '\"actor\":\"pierre\"', '\"actor\":\"mallory\"') WHERE seq = 6")
        .execute(&db)
        .await
        .unwrap();
    assert!(matches!(
        desk.state().await,
        Err(DeskError::Broken(
            redoubt_legal::audit::ChainBreak::Edited { seq: 6 }
        ))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_orders_are_rejected_with_a_reason_and_the_chain_stays_valid() {
    use rand::{Rng, SeedableRng};

    let server = TestServer::start().await;
    let suspect = register_from(&server, "127.0.0.2").await;
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let now = OffsetDateTime::now_utc();
    let (desk, staff) = desk_for(&server, &key, now).await;
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
        match staff.intake(&desk, &doc, "olga", now).await.unwrap() {
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
    let entries = desk.state().await.unwrap().entries.len();
    assert_eq!(entries, rounds + 3, "three entries set the desk up");
}

/// Issue 16: notice ids are derived from values a user can know (the
/// issuer and order id). A user who sends first under the id the relay will
/// use, whether derived as before or as now, must not suppress the notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_cannot_suppress_a_notice_by_sending_under_its_id_first() {
    use sha2::Digest as _;
    let server = TestServer::start().await;
    let suspect = register_from(&server, "127.0.0.2").await;
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let now = OffsetDateTime::now_utc();
    let (desk, staff) = desk_for(&server, &key, now).await;
    let phone = suspect.phone.e164().to_owned();
    let o = order("FR-S1", &phone, vec![DataCategory::Subscriber], now);
    let issuer = o.issuing_authority.clone();

    // The derivation of before this fix: public inputs, any uuid version.
    let digest = sha2::Sha256::new()
        .chain_update(b"redoubt/disclosure-notice/v2\0")
        .chain_update(issuer.as_bytes())
        .chain_update(b"\0")
        .chain_update(b"FR-S1")
        .finalize();
    let old_id = redoubt_proto::EnvelopeId::from_bytes(digest[..16].try_into().unwrap());
    let response = suspect
        .send_with_id(old_id, &[suspect.device_id], b"decoy")
        .await;
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    suspect.ack(&[old_id]).await;
    // The id the relay uses now is refused from any client, on both paths.
    let id = redoubt_server::legal_notices::notice_id(&issuer, "FR-S1");
    let response = suspect
        .send_with_id(id, &[suspect.device_id], b"decoy")
        .await;
    let (status, body) = test_support::api_error(response).await;
    assert_eq!(
        (status, body.error.code),
        (
            reqwest::StatusCode::UNPROCESSABLE_ENTITY,
            redoubt_proto::ErrorCode::InvalidRequest
        )
    );
    let mut ws = suspect.ws_binary().await;
    ws.send(redoubt_proto::ws::binary::Send {
        id,
        recipients: vec![suspect.device_id],
        payload: b"decoy".to_vec(),
        commit: None,
    })
    .await;
    loop {
        use redoubt_proto::ws::binary::ServerMessage;
        match ws.frame().await {
            ServerMessage::Envelopes(_) | ServerMessage::Drained => {}
            ServerMessage::Refused {
                id: refused,
                status,
                ..
            } => {
                assert_eq!((refused, status), (id, 422));
                break;
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    staff
        .intake(&desk, &signed_order(&key, o), "olga", now)
        .await
        .unwrap();
    staff.approve(&desk, "FR-S1", "pierre", now).await.unwrap();
    assert_eq!(
        redoubt_server::legal_notices::deliver_due(&server.state)
            .await
            .unwrap(),
        1
    );
    let page = suspect.fetch().await;
    assert_eq!(page.envelopes.len(), 1, "the notice arrived");
    let notice = &page.envelopes[0];
    assert_eq!(notice.kind, redoubt_proto::api::EnvelopeKind::ServerNotice);
    let body = signed_notice(&server, notice.payload.as_slice());
    assert!(matches!(
        body.kind,
        redoubt_proto::NoticeKind::DisclosureNotice { ref order_id } if order_id == "FR-S1"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_told_once_the_gag_period_ends() {
    let server = TestServer::start().await;
    let suspect = register_from(&server, "127.0.0.2").await;
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let now = OffsetDateTime::now_utc();
    // The desk's state is in the relay's database, where the relay's
    // notice writer finds it.
    let (desk, staff) = desk_for(&server, &key, now).await;
    let phone = suspect.phone.e164().to_owned();
    let open_order = order("FR-N1", &phone, vec![DataCategory::Subscriber], now);
    let mut gagged = order("FR-N2", &phone, vec![DataCategory::IpIdentification], now);
    gagged.notify_user_after = Some(now + Duration::days(2));
    for o in [open_order, gagged] {
        let id = o.order_id.clone();
        staff
            .intake(&desk, &signed_order(&key, o), "olga", now)
            .await
            .unwrap();
        staff.approve(&desk, &id, "pierre", now).await.unwrap();
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
    // Recorded once each, signed by the service, and the log replays.
    let entries = desk.state().await.unwrap().entries;
    let notices: Vec<_> = entries
        .iter()
        .filter(|e| e.event == "user_notice")
        .collect();
    assert_eq!(notices.len(), 2);
    assert!(notices.iter().all(|e| e.actor == "redoubtd"
        && e.action.signatures[0].public_key == server.state.service_key().public_key()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_runs_the_desk_on_operators_signed_actions() {
    let server = TestServer::builder()
        .configure(|c| c.admin.listen = Some("127.0.0.1:0".parse().unwrap()))
        .start()
        .await;
    let suspect = register_from(&server, "127.0.0.2").await;
    suspect.get("/v1/devices").await;
    let now = server.clock.now_offset();
    let staff = Staff::new();
    staff.bootstrap(&server.state.legal_desk(), now).await;
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
    let call = |method: reqwest::Method, path: &str, action: ActionKind, who: &str| {
        let signed = staff.key(who).sign(action, now);
        http.request(method, format!("{base}{path}")).header(
            "authorization",
            format!("Redoubt-Action {}", signed.to_header()),
        )
    };
    let read = |path: &str, who: &str| {
        call(
            reqwest::Method::GET,
            path,
            ActionKind::Read { path: path.into() },
            who,
        )
    };

    // No action, a key the desk does not know, a read signed for another
    // path, and the public port: all refused.
    let missing = http
        .get(format!("{base}/admin/v1/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        test_support::api_error(missing).await.1.error.code,
        redoubt_proto::ErrorCode::MissingToken
    );
    let stranger = read("/admin/v1/orders", "victor").send().await.unwrap();
    assert_eq!(stranger.status(), reqwest::StatusCode::UNAUTHORIZED);
    let elsewhere = call(
        reqwest::Method::GET,
        "/admin/v1/orders",
        ActionKind::Read {
            path: "/admin/v1/service-key".into(),
        },
        "olga",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(elsewhere.status(), reqwest::StatusCode::UNAUTHORIZED);
    let public = reqwest::get(server.url("/admin/v1/orders")).await.unwrap();
    assert_eq!(
        public.status(),
        reqwest::StatusCode::NOT_FOUND,
        "the admin API is not on the public port"
    );

    // A trust change takes two operators: olga proposes, olga cannot
    // confirm, pierre does.
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let authority = court("Tribunal", &key, now);
    let proposed = call(
        reqwest::Method::POST,
        "/admin/v1/proposals",
        ActionKind::Propose {
            change: Change::AddAuthority { authority },
        },
        "olga",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(proposed.status(), reqwest::StatusCode::CREATED);
    let number = proposed.json::<serde_json::Value>().await.unwrap()["proposal"]
        .as_u64()
        .unwrap();
    let own = call(
        reqwest::Method::POST,
        "/admin/v1/proposals/confirm",
        ActionKind::Confirm { proposal: number },
        "olga",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(own.status(), reqwest::StatusCode::FORBIDDEN);
    let confirmed = call(
        reqwest::Method::POST,
        "/admin/v1/proposals/confirm",
        ActionKind::Confirm { proposal: number },
        "pierre",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(confirmed.status(), reqwest::StatusCode::OK);

    let document = signed_order(
        &key,
        order(
            "FR-API-1",
            suspect.phone.e164(),
            vec![DataCategory::IpIdentification],
            now,
        ),
    );
    let intake_of = |doc: &[u8]| ActionKind::Intake {
        document_sha256: redoubt_legal::sha256_hex(doc),
    };
    // An intake action signs the document's hash: another body is refused.
    let swapped = call(
        reqwest::Method::POST,
        "/admin/v1/orders",
        intake_of(b"something else"),
        "olga",
    )
    .body(document.clone())
    .send()
    .await
    .unwrap();
    assert_eq!(
        test_support::api_error(swapped).await.1.error.code,
        redoubt_proto::ErrorCode::InvalidRequest
    );
    let filed = call(
        reqwest::Method::POST,
        "/admin/v1/orders",
        intake_of(&document),
        "olga",
    )
    .body(document.clone())
    .send()
    .await
    .unwrap();
    assert_eq!(filed.status(), reqwest::StatusCode::CREATED);
    let junk = call(
        reqwest::Method::POST,
        "/admin/v1/orders",
        intake_of(b"{\"order\": 1}"),
        "olga",
    )
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

    let approve = |who: &str, id: &str| {
        call(
            reqwest::Method::POST,
            "/admin/v1/orders/approve",
            ActionKind::Approve {
                issuer: "fr-tj-paris".into(),
                order_id: id.into(),
            },
            who,
        )
    };
    let own = approve("olga", "FR-API-1").send().await.unwrap();
    assert_eq!(
        test_support::api_error(own).await.0,
        reqwest::StatusCode::FORBIDDEN
    );
    let signed = staff.key("pierre").approve("fr-tj-paris", "FR-API-1", now);
    let send = |signed: &redoubt_legal::operators::SignedAction| {
        http.post(format!("{base}/admin/v1/orders/approve"))
            .header(
                "authorization",
                format!("Redoubt-Action {}", signed.to_header()),
            )
            .send()
    };
    let approved = send(&signed).await.unwrap();
    assert_eq!(approved.status(), reqwest::StatusCode::OK);
    let package = approved.bytes().await.unwrap();
    // The same signed approval, sent again, is a replay.
    let again = send(&signed).await.unwrap();
    assert_eq!(again.status(), reqwest::StatusCode::UNAUTHORIZED);
    let key_body: serde_json::Value = read("/admin/v1/service-key", "pierre")
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
    let unknown = approve("pierre", "NOPE").send().await.unwrap();
    assert_eq!(unknown.status(), reqwest::StatusCode::NOT_FOUND);

    let audit: serde_json::Value = read("/admin/v1/audit/verify", "olga")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(audit["intact"], true);
    let half = if u8::from(now.month()) <= 6 { 1 } else { 2 };
    let path = format!("/admin/v1/reports/{}-H{half}", now.year());
    let report = read(&path, "olga")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let signed =
        redoubt_legal::report::verify(&report, &server.state.service_key().public_key()).unwrap();
    assert_eq!(signed.total.fulfilled, 1);
    // The report carries the key directory's newest signed root.
    let directory = signed.key_directory.expect("the directory's root");
    assert!(directory.epoch <= server.state.kt().latest().await.unwrap().epoch);
    let checkpoint: redoubt_legal::audit::Checkpoint = read("/admin/v1/audit/checkpoint", "pierre")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        checkpoint.verify_signature(&server.state.service_key().public_key()),
        Ok(())
    );
    let entries = server.state.legal_desk().state().await.unwrap().entries;
    assert_eq!(checkpoint.size as usize, entries.len());
    let actors: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e.event.as_str(), e.actor.as_str()))
        .collect();
    assert!(
        actors.contains(&("intake", "olga"))
            && actors.contains(&("approval", "pierre"))
            && actors.contains(&("trust_change", "pierre")),
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
    // One sighting spanning an hour: first seen at t0, last seen at t0+1h,
    // from one address and port. (Recorded as the relay records a request;
    // two real requests may not share a connection, and so a port, under
    // load, which would make two sightings.)
    let t0 = server.clock.now_offset();
    let sighting = |at| redoubt_server::storage::IpObservation {
        account_id: suspect.account_id,
        ip: "127.0.0.2".parse().unwrap(),
        port: 40_000,
        at,
    };
    server
        .state
        .store()
        .record_ip(sighting(server.clock.now()))
        .await
        .unwrap();
    server.clock.advance(std::time::Duration::from_secs(3600));
    server
        .state
        .store()
        .record_ip(sighting(server.clock.now()))
        .await
        .unwrap();
    let now = server.clock.now_offset();
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let (mut desk, staff) = desk_for(&server, &key, now).await;
    let ip_only = vec![DataCategory::IpIdentification];

    // Finding 5: operators are keys. The one who took an order in cannot
    // approve it under any name, a key the desk does not know approves
    // nothing, and operator names that differ only by padding or invisible
    // characters cannot even be made.
    let mut clipped = order("FR-W1", &phone, ip_only.clone(), now);
    clipped.window = redoubt_legal::order::TimeWindow {
        from: t0 + Duration::minutes(10),
        to: t0 + Duration::minutes(50),
    };
    for bad in ["", "olga ", " olga", "olga\u{200b}", "ol\u{202e}ga"] {
        assert!(
            matches!(
                redoubt_legal::operators::OperatorKey::generate(bad),
                Err(DeskError::BadOperator)
            ),
            "{bad:?}"
        );
    }
    staff
        .intake(&desk, &signed_order(&key, clipped), "olga", now)
        .await
        .unwrap();
    assert!(matches!(
        staff.approve(&desk, "FR-W1", "olga", now).await,
        Err(DeskError::FourEyes)
    ));
    assert!(matches!(
        staff.approve(&desk, "FR-W1", "victor", now).await,
        Err(DeskError::NotAnOperator)
    ));
    // Olga alone cannot add a second key of her own: her proposal needs
    // another operator's confirmation.
    let add_victor = Change::AddOperator {
        name: "victor".into(),
        public_key: staff.key("victor").public_key(),
    };
    assert!(matches!(
        staff
            .change(&desk, add_victor.clone(), "olga", "olga", now)
            .await,
        Err(DeskError::FourEyes)
    ));
    assert!(matches!(
        staff.approve(&desk, "FR-W1", "victor", now).await,
        Err(DeskError::NotAnOperator)
    ));

    // Finding 6: what leaves is clipped to the window exactly.
    let package = staff.approve(&desk, "FR-W1", "pierre", now).await.unwrap();
    let records = package.package.produced.ip_identification.unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].first_seen, t0 + Duration::minutes(10));
    assert_eq!(records[0].last_seen, t0 + Duration::minutes(50));
    // A window that ends in the future is collection, not production.
    let mut ahead = order("FR-W2", &phone, ip_only.clone(), now);
    ahead.window.to = now + Duration::hours(1);
    match staff
        .intake(&desk, &signed_order(&key, ahead), "olga", now)
        .await
        .unwrap()
    {
        Intake::Rejected { rejection, .. } => assert_eq!(rejection.code(), "window_in_future"),
        other => panic!("{other:?}"),
    }

    // Finding 4: approval checks the world again.
    for id in ["FR-R1", "FR-R2", "FR-R3"] {
        staff
            .intake(
                &desk,
                &signed_order(&key, order(id, &phone, ip_only.clone(), now)),
                "olga",
                now,
            )
            .await
            .unwrap();
    }
    desk.markets.exited = vec!["FR".into()];
    match staff.approve(&desk, "FR-R1", "pierre", now).await {
        Err(DeskError::NoLongerValid(r)) => assert_eq!(r.code(), "jurisdiction_exited"),
        other => panic!("an exited market discloses nothing: {other:?}"),
    }
    desk.markets.exited.clear();
    // The number is recycled to someone else: the new holder is never
    // disclosed.
    let newcomer = register_from(&server, "127.0.0.3").await;
    test_support::hostile::move_number(&server, &suspect.phone, newcomer.account_id).await;
    assert!(matches!(
        staff.approve(&desk, "FR-R3", "pierre", now).await,
        Err(DeskError::TargetChanged)
    ));
    // The authority is revoked (by two operators) after intake.
    staff
        .change(
            &desk,
            Change::RevokeAuthority {
                id: "fr-tj-paris".into(),
            },
            "pierre",
            "olga",
            now,
        )
        .await
        .unwrap();
    match staff.approve(&desk, "FR-R2", "pierre", now).await {
        Err(DeskError::NoLongerValid(r)) => assert_eq!(r.code(), "authority_revoked"),
        other => panic!("a revoked authority gets nothing: {other:?}"),
    }

    // Every refusal above is in the log: four-eyes, the unknown key's
    // attempts are not (nobody signed them for this desk), market,
    // recycled number, revocation.
    let state = desk.state().await.unwrap();
    let refused = state
        .entries
        .iter()
        .filter(|e| e.event == "approval_refused")
        .count();
    assert_eq!(refused, 4, "four-eyes, market, recycled number, revocation");
    assert_eq!(
        state
            .entries
            .iter()
            .filter(|e| e.event == "confirmation_refused" && e.actor == "olga")
            .count(),
        1,
        "olga confirming her own proposal"
    );
    let released = state
        .orders
        .iter()
        .filter(|o| matches!(o.status, redoubt_legal::desk::OrderStatus::Fulfilled { .. }))
        .count();
    assert_eq!(released, 1);
}

/// Issue 12, findings 1, 3 and 9: the package is released only in the
/// transaction that records it; nothing proceeds on a broken log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_leaves_unrecorded_and_nothing_proceeds_on_a_broken_log() {
    let server = TestServer::start().await;
    let suspect = register_from(&server, "127.0.0.2").await;
    let phone = suspect.phone.e164().to_owned();
    let now = OffsetDateTime::now_utc();
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let (desk, staff) = desk_for(&server, &key, now).await;
    let subscriber = vec![DataCategory::Subscriber];
    for id in ["FR-A1", "FR-A2"] {
        staff
            .intake(
                &desk,
                &signed_order(&key, order(id, &phone, subscriber.clone(), now)),
                "olga",
                now,
            )
            .await
            .unwrap();
    }
    // The write of the package fails (a full disk, say) after the approval
    // entries were written in the same transaction: the whole transaction
    // is undone, so there is neither a package nor a record of one.
    let db = raw_log(&server).await;
    sqlx::query(
        "CREATE TRIGGER full_disk BEFORE INSERT ON legal_blobs BEGIN SELECT RAISE(ABORT, 'disk full'); END",
    )
    .execute(&db)
    .await
    .unwrap();
    let before = desk.state().await.unwrap().entries.len();
    assert!(staff.approve(&desk, "FR-A1", "pierre", now).await.is_err());
    let state = desk.state().await.unwrap();
    assert_eq!(
        state.entries.len(),
        before,
        "no approval without its package"
    );
    assert_eq!(
        state.order("fr-tj-paris", "FR-A1").unwrap().status,
        redoubt_legal::desk::OrderStatus::Pending
    );
    let blobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM legal_blobs")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(blobs, 2, "the two documents, no package");
    sqlx::query("DROP TRIGGER full_disk")
        .execute(&db)
        .await
        .unwrap();
    staff.approve(&desk, "FR-A1", "pierre", now).await.unwrap();

    // An edited row: intake, approval and reports all refuse; the check
    // names the entry.
    let good: String = sqlx::query_scalar("SELECT entry FROM legal_audit WHERE seq = 2")
        .fetch_one(&db)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE legal_audit SET entry = replace(entry, 'Tribunal', 'Tribunak') WHERE seq = 2",
    )
    .execute(&db)
    .await
    .unwrap();
    assert!(matches!(
        staff.approve(&desk, "FR-A2", "pierre", now).await,
        Err(DeskError::Broken(
            redoubt_legal::audit::ChainBreak::Edited { seq: 2 }
        ))
    ));
    let doc = signed_order(&key, order("FR-A3", &phone, subscriber.clone(), now));
    assert!(matches!(
        staff.intake(&desk, &doc, "olga", now).await,
        Err(DeskError::Broken(_))
    ));
    assert!(matches!(
        desk.report("2026", Vec::new(), None, now).await,
        Err(DeskError::Broken(_))
    ));
    // Bytes that are not text are an error, never an empty log.
    sqlx::query("UPDATE legal_audit SET entry = CAST(X'FF' AS TEXT) WHERE seq = 2")
        .execute(&db)
        .await
        .unwrap();
    assert!(desk.state().await.is_err());
    sqlx::query("UPDATE legal_audit SET entry = ? WHERE seq = 2")
        .bind(&good)
        .execute(&db)
        .await
        .unwrap();
    staff.approve(&desk, "FR-A2", "pierre", now).await.unwrap();
}

/// Issue 12, finding 3: an insider with the database can neither invent an
/// entry (nobody's signature) nor rewrite or cut history that a published
/// checkpoint saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insider_cannot_forge_rewrite_or_truncate_the_log() {
    use redoubt_legal::audit::{AuditEntry, ChainBreak, CheckpointError, NewEntry};
    let server = TestServer::start().await;
    let suspect = register_from(&server, "127.0.0.2").await;
    let phone = suspect.phone.e164().to_owned();
    let now = OffsetDateTime::now_utc();
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let (desk, staff) = desk_for(&server, &key, now).await;
    let document = signed_order(
        &key,
        order("FR-I1", &phone, vec![DataCategory::Subscriber], now),
    );
    staff.intake(&desk, &document, "olga", now).await.unwrap();
    let published = desk.checkpoint().await.unwrap();
    let public = server.state.service_key().public_key();
    let db = raw_log(&server).await;
    let rows = || async {
        sqlx::query_scalar::<_, String>("SELECT entry FROM legal_audit ORDER BY seq")
            .fetch_all(&db)
            .await
            .unwrap()
    };
    let original = rows().await;
    let write_all = |lines: Vec<String>| {
        let db = db.clone();
        async move {
            sqlx::query("DELETE FROM legal_audit")
                .execute(&db)
                .await
                .unwrap();
            for (i, line) in lines.iter().enumerate() {
                sqlx::query("INSERT INTO legal_audit (seq, entry) VALUES (?, ?)")
                    .bind(i as i64 + 1)
                    .bind(line)
                    .execute(&db)
                    .await
                    .unwrap();
            }
        }
    };
    let entries: Vec<AuditEntry> = original
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    // A forged approval and disclosure, chained and hashed correctly, signed
    // by a key of the insider's own: the replay refuses it.
    let mallory = redoubt_legal::operators::OperatorKey::generate("pierre").unwrap();
    let action = mallory.approve("fr-tj-paris", "FR-I1", now);
    let forged = NewEntry {
        event: "approval",
        actor: "pierre".into(),
        issuer: Some("fr-tj-paris".into()),
        order_id: Some("FR-I1".into()),
        detail: serde_json::json!({}),
        action,
    }
    .seal(entries.len() as u64 + 1, &entries.last().unwrap().hash, now);
    let mut with_forgery = original.clone();
    with_forgery.push(serde_json::to_string(&forged).unwrap());
    write_all(with_forgery).await;
    assert!(matches!(
        desk.state().await,
        Err(DeskError::Broken(ChainBreak::Unauthorised { .. }))
    ));
    // Pierre's real signature from an earlier action, replayed into a new
    // entry, is refused as a replay.
    let pierre_confirm = entries.iter().find(|e| e.event == "trust_change").unwrap();
    let replayed = NewEntry {
        event: "approval",
        actor: "pierre".into(),
        issuer: Some("fr-tj-paris".into()),
        order_id: Some("FR-I1".into()),
        detail: serde_json::json!({}),
        action: pierre_confirm.action.clone(),
    }
    .seal(entries.len() as u64 + 1, &entries.last().unwrap().hash, now);
    let mut with_replay = original.clone();
    with_replay.push(serde_json::to_string(&replayed).unwrap());
    write_all(with_replay).await;
    assert!(matches!(
        desk.state().await,
        Err(DeskError::Broken(ChainBreak::Unauthorised { .. }))
    ));

    // Rewriting an entry's detail and recomputing every hash after it
    // passes the chain and the signatures (they cover the action, not the
    // detail), but not the checkpoint the desk published.
    let mut rewritten = entries.clone();
    rewritten[3].detail["jurisdiction"] = serde_json::json!("DE");
    let mut prev = redoubt_legal::audit::GENESIS.to_owned();
    for e in &mut rewritten {
        e.prev = prev.clone();
        e.hash = redoubt_legal::audit::hash_of(e);
        prev = e.hash.clone();
    }
    write_all(
        rewritten
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect(),
    )
    .await;
    let state = desk.state().await.unwrap();
    assert_eq!(
        published.check_log(&state.entries),
        Err(CheckpointError::Rewritten {
            size: published.size
        })
    );
    // Truncating, or emptying the log, is caught too (and an empty log
    // replays: only the checkpoint shows what was lost).
    write_all(original[..2].to_vec()).await;
    let state = desk.state().await.unwrap();
    assert!(matches!(
        published.check_log(&state.entries),
        Err(CheckpointError::Truncated { .. })
    ));
    write_all(vec![]).await;
    assert!(published
        .check_log(&desk.state().await.unwrap().entries)
        .is_err());
    // The honest log passes, and the checkpoint is the service's.
    write_all(original).await;
    assert_eq!(
        published.check_log(&desk.state().await.unwrap().entries),
        Ok(())
    );
    assert_eq!(published.verify_signature(&public), Ok(()));
}

/// Issue 12, finding 8: order ids are unique per issuer, so one authority
/// cannot burn another's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_detected_per_issuer() {
    let server = TestServer::start().await;
    let suspect = register_from(&server, "127.0.0.2").await;
    let now = OffsetDateTime::now_utc();
    let paris_key = SigningKey::generate(&mut rand::rngs::OsRng);
    let (desk, staff) = desk_for(&server, &paris_key, now).await;
    let lyon_key = SigningKey::generate(&mut rand::rngs::OsRng);
    let mut lyon = court("Tribunal judiciaire de Lyon", &lyon_key, now);
    lyon.id = "fr-tj-lyon".into();
    lyon.keys[0].key_id = "fr-tj-lyon#1".into();
    staff
        .change(
            &desk,
            Change::AddAuthority { authority: lyon },
            "pierre",
            "olga",
            now,
        )
        .await
        .unwrap();
    let phone = suspect.phone.e164().to_owned();
    let lyon_order = {
        let mut o = order("ORD-1", &phone, vec![DataCategory::Subscriber], now);
        o.issuing_authority = "fr-tj-lyon".into();
        let signature = {
            use base64::Engine as _;
            use ed25519_dalek::Signer as _;
            base64::engine::general_purpose::STANDARD
                .encode(lyon_key.sign(&canonical_json(&o)).to_bytes())
        };
        serde_json::to_vec(&SignedOrder {
            order: o,
            signature: OrderSignature {
                alg: "Ed25519".into(),
                key_id: "fr-tj-lyon#1".into(),
                value: signature,
            },
            validation: None,
        })
        .unwrap()
    };
    // Lyon files ORD-1 first; Paris's ORD-1 is another order, filed too.
    for doc in [
        lyon_order.clone(),
        signed_order(
            &paris_key,
            order("ORD-1", &phone, vec![DataCategory::Subscriber], now),
        ),
    ] {
        assert!(matches!(
            staff.intake(&desk, &doc, "olga", now).await.unwrap(),
            Intake::Pending { .. }
        ));
    }
    // Lyon sending it again is a replay.
    assert!(matches!(
        staff.intake(&desk, &lyon_order, "olga", now).await.unwrap(),
        Intake::Rejected {
            rejection: Rejection::Duplicate,
            ..
        }
    ));
    let state = desk.state().await.unwrap();
    assert!(matches!(
        TestDesk::resolve(&state, None, "ORD-1"),
        Err(DeskError::AmbiguousOrder(_))
    ));
    assert_eq!(
        TestDesk::resolve(&state, Some("fr-tj-lyon"), "ORD-1")
            .unwrap()
            .issuer,
        "fr-tj-lyon"
    );
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
    let policy = server
        .state
        .config()
        .markets
        .policy(&server.state.markets().book(), now);
    let desk = open_desk(&server, policy).await;
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let staff = Staff::new();
    staff
        .open_with(&desk, court("Tribunal judiciaire de Paris", &key, now), now)
        .await;
    let document = signed_order(
        &key,
        order(
            "FR-NS-1",
            suspect.phone.e164(),
            vec![DataCategory::Subscriber],
            now,
        ),
    );
    match staff.intake(&desk, &document, "olga", now).await.unwrap() {
        Intake::Rejected { rejection, .. } => {
            assert_eq!(rejection.code(), "jurisdiction_not_served")
        }
        other => panic!("{other:?}"),
    }
}

/// Issue 12, finding 2: parallel intakes of one order (separate desks on
/// separate connections, as separate `redoubtd legal` processes or relay
/// nodes would open) file it once and leave the log intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_intakes_file_an_order_once_and_keep_the_chain() {
    let server = TestServer::start().await;
    let suspect = register_from(&server, "127.0.0.2").await;
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let now = OffsetDateTime::now_utc();
    let (first, staff) = desk_for(&server, &key, now).await;
    let staff = std::sync::Arc::new(staff);
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
        let desk = open_desk(&server, MarketPolicy::default()).await;
        let (staff, document) = (staff.clone(), document.clone());
        runs.push(tokio::spawn(async move {
            staff.intake(&desk, &document, "olga", now).await.unwrap()
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
        first.state().await.unwrap().entries.len(),
        9,
        "three entries set the desk up, then six intake decisions"
    );
}

/// The relay keeps its replay of the log between operations and reads only
/// what was appended since; it still sees every new entry, and a tail that
/// was rewritten or cut is replayed in full (and refused if broken).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relays_cached_replay_catches_up_and_never_hides_a_changed_tail() {
    let server = TestServer::start().await;
    let suspect = register_from(&server, "127.0.0.2").await;
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let now = OffsetDateTime::now_utc();
    let (cli, staff) = desk_for(&server, &key, now).await;
    assert_eq!(
        server
            .state
            .legal_desk()
            .state()
            .await
            .unwrap()
            .entries
            .len(),
        3
    );
    let document = signed_order(
        &key,
        order(
            "FR-C1",
            suspect.phone.e164(),
            vec![DataCategory::Subscriber],
            now,
        ),
    );
    staff.intake(&cli, &document, "olga", now).await.unwrap();
    let relay = server.state.legal_desk();
    let state = relay.state().await.unwrap();
    assert_eq!(state.entries.len(), 4);
    assert!(state.order("fr-tj-paris", "FR-C1").is_some());
    let db = raw_log(&server).await;
    sqlx::query("UPDATE legal_audit SET entry = replace(entry, 'olga', 'olgb') WHERE seq = 4")
        .execute(&db)
        .await
        .unwrap();
    assert!(matches!(
        relay.state().await,
        Err(DeskError::Broken(
            redoubt_legal::audit::ChainBreak::Edited { seq: 4 }
        ))
    ));
    sqlx::query("DELETE FROM legal_audit WHERE seq = 4")
        .execute(&db)
        .await
        .unwrap();
    let state = relay.state().await.unwrap();
    assert_eq!(state.entries.len(), 3, "the cut log, replayed in full");
    assert!(state.order("fr-tj-paris", "FR-C1").is_none());
}
