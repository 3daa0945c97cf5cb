//! Leaving a market, end to end: a real relay with the project's IP table,
//! real client profiles with numbers from France, Germany and the United
//! Kingdom connecting from loopback addresses the table places in those
//! countries, and the relay's clock moved through announcement, effective
//! date and purge.

use std::net::IpAddr;
use std::time::Duration;

use redoubt_client::{Client, ClientError};
use redoubt_legal::desk::Intake;
use redoubt_legal::markets::MarketBook;
use redoubt_legal::order::DataCategory;
use redoubt_proto::ws::close;
use redoubt_proto::{ErrorCode, PhoneNumber};
use redoubt_server::markets::pass;
use redoubt_server::storage::sqlite::SqliteStore;
use sqlx::Row;
use test_support::device::{WsClient, WsEvent};
use test_support::{fresh_phone_with_prefix, logs, TestServer};

use crate::support::*;

const FR_IP: &str = "127.0.0.2";
const DE_IP: &str = "127.0.0.3";
const GB_IP: &str = "127.0.0.4";
const NOTICE: &str = "We will not build a backdoor, so we are leaving.";
const DAY: Duration = Duration::from_secs(86_400);

fn fr_phone() -> String {
    test_support::fresh_phone()
}
fn de_phone() -> String {
    fresh_phone_with_prefix("+49151", 8)
}
fn gb_phone() -> String {
    fresh_phone_with_prefix("+447400", 6)
}

fn from(ip: &str) -> redoubt_client::ClientConfig {
    redoubt_client::ClientConfig {
        local_address: Some(ip.parse().unwrap()),
        ..config()
    }
}

/// Registers `phone` from `ip`; the profile keeps connecting from there.
async fn register_from(server: &TestServer, phone: &str, ip: &str) -> Profile {
    let dir = tempfile::tempdir().unwrap();
    let number = PhoneNumber::parse(phone).unwrap();
    let request = Client::request_code(&server.base_url(), &number, &from(ip))
        .await
        .unwrap();
    let code = logs::dev_code_for(&logs::captured(), number.e164()).unwrap();
    let client = Client::register(dir.path(), PASSPHRASE, &request, &code, "test", from(ip))
        .await
        .unwrap();
    Profile { client, dir }
}

/// The 451 notice of a refused call.
fn refusal(err: ClientError) -> (ErrorCode, redoubt_proto::MarketNotice) {
    match err {
        ClientError::MarketExited { code, notice } => (code, *notice),
        other => panic!("expected a 451 with a market notice, got {other}"),
    }
}

/// Announces an exit from FR, effective in ten days with a purge thirty
/// days later: what `redoubtd market announce-exit` writes.
fn announce_fr_exit(
    server: &TestServer,
) -> (std::path::PathBuf, redoubt_legal::markets::MarketExit) {
    let now = server.clock.now_offset();
    let book_path = server.data_dir().join("legal").join("markets.json");
    std::fs::create_dir_all(book_path.parent().unwrap()).unwrap();
    let mut book = MarketBook::default();
    let exit = book
        .announce_exit(
            "FR",
            now + time::Duration::days(10),
            time::Duration::days(30),
            NOTICE,
            now,
        )
        .unwrap();
    book.save(&book_path).unwrap();
    (book_path, exit)
}

async fn rows(db: &sqlx::SqlitePool, sql: &str, key: Vec<u8>) -> i64 {
    sqlx::query(sql)
        .bind(key)
        .fetch_one(db)
        .await
        .unwrap()
        .get::<i64, _>(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_a_market_tells_refuses_closes_and_purges_only_that_market() {
    let tables = tempfile::tempdir().unwrap();
    let table = test_support::write_ip_table(tables.path());
    let server = TestServer::builder()
        .configure(|c| {
            c.markets.ip_table = Some(table.clone());
            c.markets.notice_link = Some("https://redoubt.example/markets".into());
            // Passes are driven by the test, not the timer.
            c.markets.check_interval = Duration::from_secs(3600);
        })
        .start()
        .await;
    let mut fr = register_from(&server, &fr_phone(), FR_IP).await;
    let mut de = register_from(&server, &de_phone(), DE_IP).await;
    let mut gb = register_from(&server, &gb_phone(), GB_IP).await;
    // A German number living in France: its number is German, its address
    // French.
    let mut traveller = register_from(&server, &de_phone(), FR_IP).await;
    let (de_phone_no, gb_phone_no) = (de.client.phone().clone(), gb.client.phone().clone());

    let group = de
        .client
        .create_group("europe", &[fr.client.phone().clone(), gb_phone_no.clone()])
        .await
        .unwrap();
    de.client.send_text(&group, "before").await.unwrap();
    let direct = de.client.start_direct(&gb_phone_no).await.unwrap();
    for p in [&mut fr, &mut gb] {
        p.client.sync().await.unwrap();
    }

    // The operator announces the exit, effective in ten days, purge thirty
    // days later (what `redoubtd market announce-exit` writes).
    let (book_path, exit) = announce_fr_exit(&server);

    // Announcement: the French account and the account seen in France are
    // told at once, through their mailboxes; no one else is.
    let report = pass(&server.state).await.unwrap();
    assert_eq!(report.notices, 2, "{report:?}");
    assert_eq!(pass(&server.state).await.unwrap().notices, 0, "told once");
    for p in [&mut fr, &mut traveller] {
        p.client.sync().await.unwrap();
        let notice = p.client.market_notice().await.unwrap().expect("notice");
        assert_eq!(notice.jurisdiction, "FR");
        assert_eq!(notice.notice, NOTICE);
        assert_eq!(
            notice.link.as_deref(),
            Some("https://redoubt.example/markets")
        );
        let shown = p.client.notices(10).await.unwrap();
        assert!(
            shown
                .iter()
                .any(|m| m.text.starts_with("IMPORTANT:") && m.text.contains(NOTICE)),
            "the notice is in the notices chat: {shown:?}"
        );
    }
    for p in [&mut de, &mut gb] {
        p.client.sync().await.unwrap();
        assert!(p.client.market_notice().await.unwrap().is_none());
    }

    // New accounts from France are refused from the announcement on, by
    // number or by address; existing French accounts may still add devices.
    let config = from("127.0.0.1");
    let err = Client::request_code(
        &server.base_url(),
        &PhoneNumber::parse(&fr_phone()).unwrap(),
        &config,
    )
    .await
    .unwrap_err();
    let (code, notice) = refusal(err);
    assert_eq!(code, ErrorCode::RegistrationClosed);
    assert_eq!(notice.notice, NOTICE);
    let err = Client::request_code(
        &server.base_url(),
        &PhoneNumber::parse(&gb_phone()).unwrap(),
        &from(FR_IP),
    )
    .await
    .unwrap_err();
    assert_eq!(refusal(err).0, ErrorCode::RegistrationClosed);
    Client::request_code(&server.base_url(), fr.client.phone(), &from(FR_IP))
        .await
        .expect("an existing account may add a device before the exit");
    let newcomer = register_from(&server, &de_phone(), DE_IP).await;
    drop(newcomer);

    // Six days before: everyone in the market is told again.
    server.clock.advance(5 * DAY);
    assert_eq!(pass(&server.state).await.unwrap().notices, 2);
    assert_eq!(pass(&server.state).await.unwrap().notices, 0);

    // Live sessions: one French, one German.
    let fr_token = fr.client.ws_endpoint().1.clone();
    let mut fr_ws =
        WsClient::connect_from(&server.base_url(), &fr_token, FR_IP.parse().unwrap()).await;
    let de_token = de.client.ws_endpoint().1.clone();
    let mut de_ws =
        WsClient::connect_from(&server.base_url(), &de_token, DE_IP.parse().unwrap()).await;
    for ws in [&mut fr_ws, &mut de_ws] {
        ws.until_drained().await;
    }

    // The effective date: the French session is closed with the market's
    // close code, every French call gets 451 with the notice.
    server.clock.advance(5 * DAY + Duration::from_secs(60));
    let report = pass(&server.state).await.unwrap();
    assert_eq!(report.closed_sessions, 1, "{report:?}");
    match fr_ws.next().await {
        WsEvent::Closed(Some((code, reason))) => {
            assert_eq!(code, close::MARKET_EXITED);
            assert!(reason.contains("FR"), "{reason}");
        }
        other => panic!("expected the French session to close, got {other:?}"),
    }
    let (code, notice) = refusal(fr.client.sync().await.unwrap_err());
    assert_eq!(code, ErrorCode::MarketExited);
    assert_eq!(notice.jurisdiction, "FR");
    assert_eq!(notice.effective_at, exit_time(exit.effective_at));
    let fr_group = fr.client.find_chat("europe").await.unwrap();
    let (code, _) = refusal(
        fr.client
            .send_text(&fr_group, "still here?")
            .await
            .unwrap_err(),
    );
    assert_eq!(code, ErrorCode::MarketExited);
    let err = Client::request_code(&server.base_url(), fr.client.phone(), &from(FR_IP))
        .await
        .unwrap_err();
    assert_eq!(refusal(err).0, ErrorCode::MarketExited);
    // The traveller is refused while in France, and served from Germany.
    assert_eq!(
        refusal(traveller.client.sync().await.unwrap_err()).0,
        ErrorCode::MarketExited
    );
    let traveller_dir = traveller.dir;
    traveller.client.close().await;
    let mut back_home = Client::open(traveller_dir.path(), PASSPHRASE, from(DE_IP))
        .await
        .unwrap();
    back_home.sync().await.expect("served from Germany");
    // A raw WebSocket from France is refused before the upgrade.
    let raw = reqwest::Client::builder()
        .local_address(FR_IP.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
        .get(server.url("/v1/ws"))
        .bearer_auth(fr_token.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 451);
    assert!(raw.headers()["link"]
        .to_str()
        .unwrap()
        .contains("redoubt.example"));

    // Other markets keep chatting, live and offline, in the same group.
    de.client.send_text(&direct, "still on").await.unwrap();
    gb.client.sync().await.unwrap();
    let gb_direct = gb.client.find_chat(de_phone_no.e164()).await.unwrap();
    assert_eq!(texts(&gb.client, &gb_direct).await, vec!["still on"]);
    gb.client.send_text(&gb_direct, "good").await.unwrap();
    // The German session stayed open and gets the reply pushed live.
    de_ws.envelope().await;
    let gb_group = gb.client.find_chat("europe").await.unwrap();
    gb.client.send_text(&gb_group, "group too").await.unwrap();
    de.client.sync().await.unwrap();
    assert_eq!(texts(&de.client, &direct).await, vec!["still on", "good"]);
    assert_eq!(texts(&de.client, &group).await, vec!["before", "group too"]);

    // Orders from the market the service left are refused with that reason,
    // and the transparency report lists the exit with its dates.
    let now = server.clock.now_offset();
    let store = SqliteStore::open(&server.db_path(), &Default::default())
        .await
        .unwrap();
    let book = MarketBook::load(&book_path).unwrap();
    let desk = redoubt_legal::desk::Desk::new(
        store.clone(),
        store,
        server.state.service_key().clone(),
        book.policy(now),
        time::Duration::days(30),
    );
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let staff = test_support::legal::Staff::new();
    staff
        .open_with(
            &desk,
            test_support::legal::court("Tribunal de Paris", &key, now),
            now,
        )
        .await;
    let document = test_support::legal::signed_order(
        &key,
        test_support::legal::order(
            "FR-EXIT-1",
            fr.client.phone().e164(),
            vec![DataCategory::Subscriber],
            now,
        ),
    );
    match staff.intake(&desk, &document, "olga", now).await.unwrap() {
        Intake::Rejected { rejection, .. } => {
            assert_eq!(rejection.code(), "jurisdiction_exited", "{rejection}")
        }
        other => panic!("an order from an exited market must be refused: {other:?}"),
    }
    let period = format!("{}", now.year());
    let report = desk
        .report(&period, book.report_lines(), None, now)
        .await
        .unwrap();
    let line = &report.report.market_exits[0];
    assert_eq!(line.jurisdiction, "FR");
    assert_eq!(line.effective, exit.effective_at.date().to_string());
    assert_eq!(line.announced, exit.announced_at.date().to_string());

    // After the grace period the French account is deleted everywhere. The
    // traveller's account is German and stays.
    let fr_account = fr.client.account_id().as_bytes().to_vec();
    let fr_device = fr.client.device_id().as_bytes().to_vec();
    let fr_e164 = fr.client.phone().e164().to_owned();
    let db = sqlx::SqlitePool::connect(&format!("sqlite://{}", server.db_path().display()))
        .await
        .unwrap();
    assert!(
        rows(
            &db,
            "SELECT COUNT(*) FROM mailbox WHERE device_id = ?",
            fr_device.clone()
        )
        .await
            > 0
    );
    server.clock.advance(31 * DAY);
    let report = pass(&server.state).await.unwrap();
    assert_eq!(report.purged.len(), 1, "{report:?}");
    assert_eq!(report.purged[0].1.accounts, 1);
    for (sql, key) in [
        (
            "SELECT COUNT(*) FROM accounts WHERE id = ?",
            fr_account.clone(),
        ),
        (
            "SELECT COUNT(*) FROM accounts WHERE phone = ?",
            fr_e164.clone().into_bytes(),
        ),
        (
            "SELECT COUNT(*) FROM devices WHERE account_id = ?",
            fr_account.clone(),
        ),
        (
            "SELECT COUNT(*) FROM devices WHERE id = ?",
            fr_device.clone(),
        ),
        (
            "SELECT COUNT(*) FROM key_packages WHERE device_id = ?",
            fr_device.clone(),
        ),
        (
            "SELECT COUNT(*) FROM mailbox WHERE device_id = ?",
            fr_device.clone(),
        ),
        (
            "SELECT COUNT(*) FROM ip_log WHERE account_id = ?",
            fr_account.clone(),
        ),
        (
            "SELECT COUNT(*) FROM market_notices WHERE account_id = ?",
            fr_account.clone(),
        ),
        (
            "SELECT COUNT(*) FROM verification_codes WHERE phone_key = ?",
            server.state.phone_keyer().key(fr.client.phone()).to_vec(),
        ),
    ] {
        // The phone is stored as text; compare it as text.
        let n = if sql.contains("phone = ?") {
            sqlx::query(sql)
                .bind(&fr_e164)
                .fetch_one(&db)
                .await
                .unwrap()
                .get::<i64, _>(0)
        } else {
            rows(&db, sql, key).await
        };
        assert_eq!(n, 0, "{sql} still finds the purged account");
    }
    assert_eq!(
        rows(
            &db,
            "SELECT COUNT(*) FROM accounts WHERE id = ?",
            back_home.account_id().as_bytes().to_vec()
        )
        .await,
        1
    );
    // The audit log keeps counts, not who, signed by the service.
    let audit = server.state.legal_desk().export().await.unwrap().join("\n");
    assert!(audit.contains("purged_market"), "{audit}");
    assert!(!audit.contains(&fr_e164));
    assert_eq!(pass(&server.state).await.unwrap().purged.len(), 0);

    // The others keep chatting after the purge; a send to the group skips
    // the French devices the relay no longer knows.
    de.client.send_text(&group, "after").await.unwrap();
    gb.client.sync().await.unwrap();
    assert_eq!(
        texts(&gb.client, &gb_group).await,
        vec!["before", "group too", "after"]
    );
    drop(de_ws);
}

fn exit_time(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// The banner a profile shows on every command, as the CLI prints it.
fn cli_banner(profile: &std::path::Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_redoubt"))
        .arg("--profile")
        .arg(profile)
        .arg("chats")
        .env("REDOUBT_PASSPHRASE", PASSPHRASE)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("!!"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_exit_clears_the_banner_and_forged_notices_are_never_trusted() {
    use redoubt_proto::api::EnvelopeKind;
    use redoubt_proto::{NoticeKind, ServiceNotice};
    use test_support::hostile;

    let server = TestServer::builder()
        .configure(|c| c.markets.check_interval = Duration::from_secs(3600))
        .start()
        .await;
    let mut fr = register(&server, &fr_phone()).await;
    let other = register(&server, &fr_phone()).await;
    let fr_device = fr.client.device_id();
    let fr_account = fr.client.account_id();

    // A relay that forges an exit notice, unsigned or under a key of its
    // own, with a phishing link: shown as unverified, never as a banner.
    let forged = |text: &str| ServiceNotice {
        account: fr_account,
        issued_at: 4_000_000_000,
        text: text.into(),
        kind: NoticeKind::MarketExit {
            phase: "announced".into(),
            market: redoubt_proto::MarketNotice {
                jurisdiction: "FR".into(),
                effective_at: "2030-01-01T00:00:00Z".into(),
                purge_at: "2030-02-01T00:00:00Z".into(),
                notice: "Move your account at https://phish.example now".into(),
                link: Some("https://phish.example".into()),
            },
        },
    };
    let unsigned = serde_json::json!({
        "type": "market_exit",
        "text": "Redoubt is leaving. Log in at https://phish.example",
        "market": { "jurisdiction": "FR", "effective_at": "x", "purge_at": "y", "notice": "z" },
    });
    hostile::inject(
        &server,
        fr_device,
        EnvelopeKind::ServerNotice,
        unsigned.to_string().into_bytes(),
    )
    .await;
    let rogue = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    hostile::inject(
        &server,
        fr_device,
        EnvelopeKind::ServerNotice,
        hostile::notice_signed_by(&rogue, &forged("Signed by a key of the relay's own")),
    )
    .await;
    // A genuine notice for another account, replayed into this mailbox.
    let mut elsewhere = forged("Meant for someone else");
    elsewhere.account = other.client.account_id();
    hostile::inject(
        &server,
        fr_device,
        EnvelopeKind::ServerNotice,
        hostile::notice_signed_by_service(&server, &elsewhere),
    )
    .await;
    fr.client.sync().await.unwrap();
    assert_eq!(fr.client.market_notice().await.unwrap(), None);
    let shown: Vec<String> = fr
        .client
        .notices(10)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(shown.len(), 3, "{shown:?}");
    for text in &shown {
        assert!(
            text.starts_with("Unverified message from the relay"),
            "{text}"
        );
        assert!(!text.contains("IMPORTANT"), "{text}");
        assert!(!text.contains("https://"), "links are defanged: {text}");
    }
    assert!(shown[0].contains("not signed"), "{}", shown[0]);
    assert!(
        shown[1].contains("not signed by the service key"),
        "{}",
        shown[1]
    );
    assert!(shown[2].contains("another account"), "{}", shown[2]);

    // The operator announces a real exit: a trusted banner.
    let (book_path, exit) = announce_fr_exit(&server);
    assert_eq!(pass(&server.state).await.unwrap().notices, 2);
    fr.client.sync().await.unwrap();
    assert_eq!(
        fr.client.market_notice().await.unwrap().unwrap().notice,
        NOTICE
    );
    let dir = fr.dir.path().to_owned();
    let banner = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || cli_banner(&dir)
    })
    .await
    .unwrap();
    assert!(banner.contains("Redoubt is leaving FR"), "{banner}");

    // A forged cancellation does not clear it.
    let fake_cancel = ServiceNotice {
        account: fr_account,
        issued_at: 4_000_000_000,
        text: "Never mind, we stay.".into(),
        kind: NoticeKind::MarketExitCancelled {
            jurisdiction: "FR".into(),
        },
    };
    hostile::inject(
        &server,
        fr_device,
        EnvelopeKind::ServerNotice,
        hostile::notice_signed_by(&rogue, &fake_cancel),
    )
    .await;
    fr.client.sync().await.unwrap();
    assert!(fr.client.market_notice().await.unwrap().is_some());

    // The operator calls the exit off (what `redoubtd market cancel-exit`
    // does): everyone who was told gets a signed cancellation, once.
    server.clock.advance(DAY);
    let mut book = MarketBook::load(&book_path).unwrap();
    book.cancel_exit("FR", server.clock.now_offset()).unwrap();
    book.save(&book_path).unwrap();
    assert_eq!(pass(&server.state).await.unwrap().notices, 2);
    assert_eq!(pass(&server.state).await.unwrap().notices, 0, "told once");
    fr.client.sync().await.unwrap();
    assert_eq!(fr.client.market_notice().await.unwrap(), None);
    let last = fr.client.notices(1).await.unwrap().pop().unwrap();
    assert!(last.text.contains("no longer leaving FR"), "{}", last.text);
    let banner = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || cli_banner(&dir)
    })
    .await
    .unwrap();
    assert!(banner.is_empty(), "the banner is gone: {banner}");

    // The relay replays the genuine announcement it once delivered: it is
    // older than the cancellation, so the banner stays away.
    let replay = ServiceNotice {
        account: fr_account,
        issued_at: exit.announced_at.unix_timestamp(),
        text: "Redoubt is leaving FR.".into(),
        kind: NoticeKind::MarketExit {
            phase: "announced".into(),
            market: server.state.markets().notice(&exit),
        },
    };
    hostile::inject(
        &server,
        fr_device,
        EnvelopeKind::ServerNotice,
        hostile::notice_signed_by_service(&server, &replay),
    )
    .await;
    fr.client.sync().await.unwrap();
    assert_eq!(fr.client.market_notice().await.unwrap(), None);
    let last = fr.client.notices(1).await.unwrap().pop().unwrap();
    assert!(last.text.contains("superseded"), "{}", last.text);
}
