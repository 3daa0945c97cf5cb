//! The real `redoubtd` binary: zero-config start, crash safety with SIGKILL,
//! graceful SIGTERM, the help text, and its log output.

use std::collections::HashSet;
use std::process::Command;

use redoubt_proto::{EnvelopeId, PhoneNumber};
use test_support::{logs, ServerProcess, TestDevice};

const BIN: &str = env!("CARGO_BIN_EXE_redoubtd");

async fn register(server: &ServerProcess, phone: &str) -> TestDevice {
    let e164 = PhoneNumber::parse(phone).unwrap().e164().to_owned();
    TestDevice::register_with(&server.base_url(), phone, "proc", || {
        logs::dev_code_for(&server.logs(), &e164)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_messages_survive_sigkill_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(BIN.as_ref(), dir.path(), &[], &[]);
    let alice = register(&server, &test_support::fresh_phone()).await;
    let bob = register(&server, &test_support::fresh_phone()).await;
    let mut sent = Vec::new();
    for i in 0..25u8 {
        sent.push(alice.send_ok(&[bob.device_id], &[i; 8]).await);
    }
    let first: Vec<EnvelopeId> = bob
        .fetch()
        .await
        .envelopes
        .iter()
        .take(5)
        .map(|e| e.id)
        .collect();
    assert_eq!(bob.ack(&first).await, 5);
    // Crash: no shutdown code runs.
    server.kill();

    let server = ServerProcess::spawn(BIN.as_ref(), dir.path(), &[], &[]);
    let mut bob = bob.clone();
    bob.base = server.base_url();
    let mut alice = alice.clone();
    alice.base = server.base_url();
    // A retry of an envelope accepted before the crash is recognised.
    let retry = alice
        .send_with_id(sent[24], &[bob.device_id], &[24u8; 8])
        .await;
    assert_eq!(retry.status(), reqwest::StatusCode::OK);
    let mut socket = bob.ws().await;
    let rest: Vec<EnvelopeId> = socket.until_drained().await.iter().map(|e| e.id).collect();
    assert_eq!(
        rest,
        sent[5..].to_vec(),
        "every accepted envelope, once, in order"
    );
    let all: HashSet<EnvelopeId> = first.iter().chain(&rest).copied().collect();
    assert_eq!(all.len(), 25);
    socket.close().await;
    let status = server.terminate();
    assert!(status.success(), "SIGTERM shuts down cleanly: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_logs_no_user_data() {
    let dir = tempfile::tempdir().unwrap();
    // Debug level for everything: more than any production setting shows.
    let server = ServerProcess::spawn(
        BIN.as_ref(),
        dir.path(),
        &[],
        &[("RUST_LOG", "debug,redoubt_server=trace")],
    );
    let alice = register(&server, &test_support::fresh_phone()).await;
    let bob = register(&server, &test_support::fresh_phone()).await;
    let payload = b"PROCESS-LOG-MARKER-77d2".to_vec();
    let mut socket = bob.ws().await;
    socket.until_drained().await;
    let id = alice.send_ok(&[bob.device_id], &payload).await;
    socket.envelope().await;
    socket.ack(&[id]).await;
    bob.fetch().await;
    socket.close().await;
    let logs_text = {
        let text = server.logs();
        server.terminate();
        text
    };
    let outside = logs::lines_outside_dev_sender(&logs_text);
    assert!(
        outside.iter().any(|l| l.contains("request finished")),
        "debug lines were captured"
    );
    for device in [&alice, &bob] {
        for secret in [
            device.phone.e164(),
            &device.phone.e164()[3..],
            device.token.expose(),
        ] {
            for line in &outside {
                assert!(!line.contains(secret), "user data leaked: {line}");
            }
        }
    }
    for line in &outside {
        assert!(
            !line.contains("PROCESS-LOG-MARKER"),
            "message bytes leaked: {line}"
        );
    }
}

#[test]
fn help_explains_every_subcommand() {
    let output = Command::new(BIN).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for expected in [
        "serve",
        "config",
        "migrate",
        "--config",
        "--listen",
        "--data-dir",
    ] {
        assert!(
            help.contains(expected),
            "--help does not mention {expected}:\n{help}"
        );
    }
    let config_help = Command::new(BIN)
        .args(["config", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8(config_help.stdout).unwrap();
    assert!(text.contains("example") && text.contains("check"), "{text}");
}

#[test]
fn config_example_is_valid_and_bad_config_fails_clearly() {
    let example = Command::new(BIN)
        .args(["config", "example"])
        .output()
        .unwrap();
    assert!(example.status.success());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("redoubtd.toml");
    std::fs::write(&path, &example.stdout).unwrap();
    let check = Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    std::fs::write(&path, "listen = 5\n").unwrap();
    let check = Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(stderr.contains("invalid configuration"), "{stderr}");

    let missing = Command::new(BIN)
        .args(["--config", "/nonexistent/redoubtd.toml", "config", "check"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read configuration file"));
}

#[test]
fn an_ip_table_that_does_not_parse_stops_the_server_before_it_serves() {
    let dir = tempfile::tempdir().unwrap();
    let good = test_support::write_ip_table(dir.path());
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "127.0.0.2,127.0.0.2,FR\n127.0.0.5,banana,DE\n").unwrap();
    let config = dir.path().join("redoubtd.toml");
    let data = dir.path().join("data");
    let write = |table: &std::path::Path| {
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[markets]\nip_table = {:?}\nprecedence = \"phone\"\n",
                data.display().to_string(),
                table.display().to_string()
            ),
        )
        .unwrap();
    };
    write(&good);
    let check = Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    write(&bad);
    for args in [&["config", "check"][..], &["serve"][..]] {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("markets.ip_table") && stderr.contains("line 2"),
            "{args:?}: {stderr}"
        );
    }
    assert!(!data.join("redoubt.db").exists(), "nothing was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legal_commands_take_an_order_through_four_eyes_to_a_package() {
    use base64::Engine as _;
    use ed25519_dalek::Signer;
    use redoubt_legal::order::*;

    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(BIN.as_ref(), dir.path(), &[], &[]);
    let suspect = register(&server, &test_support::fresh_phone()).await;
    suspect.get("/v1/devices").await;
    let data = dir.path().to_owned();
    let legal = move |args: &[&str]| {
        Command::new(BIN)
            .arg("--data-dir")
            .arg(&data)
            .arg("legal")
            .args(args)
            .env_remove("REDOUBT_OPERATOR")
            .output()
            .unwrap()
    };
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };

    // Each operator makes a key file on their own machine; the first two
    // register together.
    let olga = dir.path().join("olga.key");
    let pierre = dir.path().join("pierre.key");
    for (name, path) in [("olga", &olga), ("pierre", &pierre)] {
        let made = legal(&[
            "operator",
            "keygen",
            "--name",
            name,
            "--out",
            path.to_str().unwrap(),
        ]);
        assert!(made.status.success(), "{}", text(&made));
    }
    let (olga, pierre) = (olga.to_str().unwrap(), pierre.to_str().unwrap());
    let again = legal(&["operator", "keygen", "--name", "olga", "--out", olga]);
    assert_eq!(
        again.status.code(),
        Some(1),
        "a key file is never overwritten"
    );
    let boot = legal(&["operator", "bootstrap", "--key", olga, "--key", pierre]);
    assert!(boot.status.success(), "{}", text(&boot));
    let twice = legal(&["operator", "bootstrap", "--key", olga, "--key", pierre]);
    assert_eq!(twice.status.code(), Some(1));
    assert!(
        text(&twice).contains("has operators already"),
        "{}",
        text(&twice)
    );

    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let public = base64::engine::general_purpose::STANDARD.encode(key.verifying_key().as_bytes());
    let added = legal(&[
        "authority",
        "add",
        "--id",
        "fr-tj-paris",
        "--name",
        "Tribunal judiciaire de Paris",
        "--jurisdiction",
        "FR",
        "--kind",
        "court",
        "--key-id",
        "fr-tj-paris#1",
        "--public-key",
        &public,
        "--valid-from",
        "2026-01-01T00:00:00Z",
        "--valid-until",
        "2099-01-01T00:00:00Z",
        "--operator-key",
        olga,
    ]);
    assert!(added.status.success(), "{}", text(&added));
    assert!(
        text(&added).contains("redoubtd legal confirm 2"),
        "{}",
        text(&added)
    );
    assert!(
        !text(&legal(&["authority", "list"])).contains("fr-tj-paris"),
        "not before a second operator confirms"
    );
    let own = legal(&["confirm", "2", "--operator-key", olga]);
    assert_eq!(own.status.code(), Some(1));
    assert!(text(&own).contains("four-eyes"), "{}", text(&own));
    let confirmed = legal(&["confirm", "2", "--operator-key", pierre]);
    assert!(confirmed.status.success(), "{}", text(&confirmed));
    assert!(text(&legal(&["authority", "list"])).contains("fr-tj-paris"));

    let now = time::OffsetDateTime::now_utc();
    let order = CourtOrder {
        order_id: "FR-CLI-1".into(),
        issuing_authority: "fr-tj-paris".into(),
        validating_authority: None,
        jurisdiction: "FR".into(),
        legal_instrument: "national".into(),
        legal_basis: "CPP art. 60-1".into(),
        case_reference: "CASE-9".into(),
        offence: "Fraud".into(),
        target: Target::Phone(suspect.phone.e164().into()),
        categories: vec![
            DataCategory::Subscriber,
            DataCategory::IpIdentification,
            DataCategory::Content,
        ],
        window: TimeWindow {
            from: now - time::Duration::days(1),
            to: now,
        },
        issued_at: now - time::Duration::minutes(1),
        deadline: now + time::Duration::days(7),
        emergency: false,
        notify_user_after: None,
        reasons: "Needed.".into(),
    };
    let signature = base64::engine::general_purpose::STANDARD
        .encode(key.sign(&canonical_json(&order)).to_bytes());
    let signed = SignedOrder {
        order,
        signature: OrderSignature {
            alg: "Ed25519".into(),
            key_id: "fr-tj-paris#1".into(),
            value: signature,
        },
        validation: None,
    };
    let order_file = dir.path().join("order.json");
    std::fs::write(&order_file, serde_json::to_vec_pretty(&signed).unwrap()).unwrap();
    let order_path = order_file.to_str().unwrap().to_owned();

    let intake = legal(&["intake", &order_path, "--operator-key", olga]);
    assert!(intake.status.success(), "{}", text(&intake));
    assert!(text(&intake).contains("pending approval"));
    let same = legal(&["approve", "FR-CLI-1", "--operator-key", olga]);
    assert_eq!(same.status.code(), Some(1));
    assert!(text(&same).contains("four-eyes"), "{}", text(&same));
    let package_file = dir.path().join("package.json");
    let approved = legal(&[
        "approve",
        "FR-CLI-1",
        "--operator-key",
        pierre,
        "--out",
        package_file.to_str().unwrap(),
    ]);
    assert!(approved.status.success(), "{}", text(&approved));
    let package = std::fs::read_to_string(&package_file).unwrap();
    assert!(package.contains(suspect.phone.e164()) && package.contains("127.0.0.1"));
    assert!(package.contains("not held: end-to-end encrypted"));
    let verified = legal(&["verify-package", package_file.to_str().unwrap()]);
    assert!(verified.status.success(), "{}", text(&verified));
    std::fs::write(&package_file, package.replacen("127.0.0.1", "127.0.0.9", 1)).unwrap();
    assert_eq!(
        legal(&["verify-package", package_file.to_str().unwrap()])
            .status
            .code(),
        Some(1)
    );

    let replay = legal(&["intake", &order_path, "--operator-key", olga]);
    assert_eq!(replay.status.code(), Some(1));
    assert!(
        text(&replay).contains("rejected (duplicate)"),
        "{}",
        text(&replay)
    );
    std::fs::write(&order_file, b"{\"order\": 42").unwrap();
    let broken = legal(&["intake", &order_path, "--operator-key", olga]);
    assert!(
        text(&broken).contains("rejected (malformed)"),
        "{}",
        text(&broken)
    );
    assert!(text(&legal(&["orders"])).contains("fulfilled (approved by pierre)"));

    let audit = legal(&["audit", "verify"]);
    assert!(audit.status.success(), "{}", text(&audit));
    assert!(
        text(&audit).contains("intact: 10 entries"),
        "{}",
        text(&audit)
    );
    // A transparency report carries the log's checkpoint; the log is later
    // checked against it.
    let out = dir.path().join("reports");
    let report = legal(&[
        "report",
        "--period",
        "2026",
        "--out-dir",
        out.to_str().unwrap(),
    ]);
    assert!(report.status.success(), "{}", text(&report));
    let report_file = out.join("transparency-2026.json");
    assert!(
        std::fs::read_to_string(&report_file)
            .unwrap()
            .contains("\"key_directory\""),
        "the report carries the key directory's root"
    );
    let report_path = report_file.to_str().unwrap().to_owned();
    let checked = legal(&["audit", "verify", "--checkpoint", &report_path]);
    assert!(checked.status.success(), "{}", text(&checked));
    assert!(
        text(&checked).contains("extending the checkpoint's 10 entries"),
        "{}",
        text(&checked)
    );
    // The package is kept with its approval.
    let stored = legal(&["package", "FR-CLI-1"]);
    assert!(
        text(&stored).contains(suspect.phone.e164()),
        "{}",
        text(&stored)
    );

    // An auditor checks an export away from the relay, with the service key
    // and the report; a cut export fails the report's checkpoint, and bytes
    // that are not text are an error, never an empty log.
    let export = dir.path().join("audit.jsonl");
    let exported = legal(&["audit", "export", "--out", export.to_str().unwrap()]);
    assert!(exported.status.success(), "{}", text(&exported));
    let service_key = String::from_utf8(legal(&["service-key"]).stdout).unwrap();
    let auditor = |log: &std::path::Path| {
        Command::new(BIN)
            .args(["legal", "audit", "verify", "--log"])
            .arg(log)
            .args([
                "--service-key",
                service_key.trim(),
                "--checkpoint",
                &report_path,
            ])
            .env("REDOUBTD_DATA_DIR", "/nonexistent/never-created")
            .output()
            .unwrap()
    };
    let ok = auditor(&export);
    assert!(ok.status.success(), "{}", text(&ok));
    let lines: Vec<String> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let cut = dir.path().join("cut.jsonl");
    std::fs::write(&cut, lines[..5].join("\n") + "\n").unwrap();
    let truncated = auditor(&cut);
    assert_eq!(truncated.status.code(), Some(1));
    assert!(
        text(&truncated).contains("entries were removed"),
        "{}",
        text(&truncated)
    );
    std::fs::write(&cut, [lines[0].clone(), lines[2].clone()].join("\n") + "\n").unwrap();
    let gap = auditor(&cut);
    assert_eq!(gap.status.code(), Some(1));
    assert!(
        text(&gap).contains("entry 3 does not follow"),
        "{}",
        text(&gap)
    );
    std::fs::write(&cut, [0xFF]).unwrap();
    let junk = auditor(&cut);
    assert_eq!(junk.status.code(), Some(1));
    assert!(text(&junk).contains("cannot be read"), "{}", text(&junk));
    assert!(!std::path::Path::new("/nonexistent/never-created").exists());
    server.terminate();
}

#[test]
fn market_commands_announce_list_and_cancel_exits_and_refuse_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("--data-dir")
            .arg(dir.path())
            .arg("market")
            .args(args)
            .env_remove("REDOUBT_OPERATOR")
            .output()
            .unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    // Market decisions are signed by an operator of the desk.
    let legal = |args: &[&str]| {
        Command::new(BIN)
            .arg("--data-dir")
            .arg(dir.path())
            .arg("legal")
            .args(args)
            .output()
            .unwrap()
    };
    let olga = dir.path().join("olga.key");
    let pierre = dir.path().join("pierre.key");
    let (olga, pierre) = (olga.to_str().unwrap(), pierre.to_str().unwrap());
    assert!(
        legal(&["operator", "keygen", "--name", "olga", "--out", olga])
            .status
            .success()
    );
    assert!(
        legal(&["operator", "keygen", "--name", "pierre", "--out", pierre])
            .status
            .success()
    );
    assert!(
        legal(&["operator", "bootstrap", "--key", olga, "--key", pierre])
            .status
            .success()
    );
    let notice = dir.path().join("notice.txt");
    std::fs::write(
        &notice,
        "Redoubt will stop serving France on 15 January 2099 rather than weaken its encryption.",
    )
    .unwrap();
    let notice = notice.to_str().unwrap();
    let (code, text) = run(&[
        "announce-exit",
        "FR",
        "--effective",
        "2099-01-15",
        "--notice",
        notice,
        "--operator-key",
        olga,
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("effective 2099-01-15") && text.contains("purge 2099-02-14"),
        "{text}"
    );
    assert!(run(&["status", "fr"]).1.contains("FR: exit announced"));
    assert!(run(&["status", "DE"]).1.contains("DE: active"));
    assert!(run(&["list"]).1.contains("FR  announced"));

    for (args, needle) in [
        (
            vec![
                "announce-exit",
                "FR",
                "--effective",
                "2099-01-15",
                "--notice",
                notice,
                "--operator-key",
                olga,
            ],
            "already announced",
        ),
        (
            vec![
                "announce-exit",
                "XX",
                "--effective",
                "2099-01-15",
                "--notice",
                notice,
                "--operator-key",
                olga,
            ],
            "not a known",
        ),
        (
            vec![
                "announce-exit",
                "DE",
                "--effective",
                "2001-01-01",
                "--notice",
                notice,
                "--operator-key",
                olga,
            ],
            "in the future",
        ),
        (
            vec![
                "announce-exit",
                "DE",
                "--effective",
                "soon",
                "--notice",
                notice,
                "--operator-key",
                olga,
            ],
            "RFC 3339",
        ),
        (
            vec!["cancel-exit", "DE", "--operator-key", olga],
            "no exit from DE",
        ),
    ] {
        let (code, text) = run(&args);
        assert_eq!(code, Some(1), "{args:?}: {text}");
        assert!(text.contains(needle), "{args:?}: {text}");
    }
    assert_eq!(
        run(&["list"]).1.lines().count(),
        1,
        "failed commands changed nothing"
    );

    let (code, text) = run(&["cancel-exit", "FR", "--operator-key", olga]);
    assert_eq!(code, Some(0), "{text}");
    assert!(run(&["status", "FR"]).1.contains("FR: active"));
    let audit = String::from_utf8(legal(&["audit", "export"]).stdout).unwrap();
    assert_eq!(
        audit
            .lines()
            .filter(|l| l.contains("\"event\":\"market\"") && l.contains("\"actor\":\"olga\""))
            .count(),
        2
    );
    // A key the desk does not know decides nothing.
    let stranger = dir.path().join("stranger.key");
    assert!(legal(&[
        "operator",
        "keygen",
        "--name",
        "mallory",
        "--out",
        stranger.to_str().unwrap()
    ])
    .status
    .success());
    let (code, text) = run(&[
        "announce-exit",
        "DE",
        "--effective",
        "2099-01-15",
        "--notice",
        notice,
        "--operator-key",
        stranger.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("not signed by an active operator"), "{text}");
    assert!(run(&["status", "DE"]).1.contains("DE: active"));
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["legal", "audit", "verify"])
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn a_file_based_desk_from_before_is_not_silently_replaced() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("legal/orders")).unwrap();
    std::fs::write(dir.path().join("legal/audit.jsonl"), "").unwrap();
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["legal", "orders"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("file-based legal desk") && text.contains("audit.jsonl, orders"),
        "{text}"
    );
}

/// Issue 16: even at `RUST_LOG=trace` the log carries no message bytes and
/// no token. tungstenite logs whole frames at `trace`; the relay's log has
/// a ceiling for such libraries that `RUST_LOG` cannot lift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logging_carries_no_frame_bytes_or_tokens() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(BIN.as_ref(), dir.path(), &[], &[("RUST_LOG", "trace")]);
    let alice = register(&server, &test_support::fresh_phone()).await;
    let bob = register(&server, &test_support::fresh_phone()).await;
    let payload = b"TRACE-LEAK-MARKER-5e0c ciphertext stand-in".to_vec();
    let mut socket = bob.ws().await;
    socket.until_drained().await;
    let id = alice.send_ok(&[bob.device_id], &payload).await;
    assert_eq!(socket.envelope().await.id, id);
    socket.ack(&[id]).await;
    let mut binary = alice.ws_binary().await;
    binary
        .send(redoubt_proto::ws::binary::Send {
            id: EnvelopeId::time_ordered(),
            recipients: vec![bob.device_id],
            commit: None,
            payload: payload.clone(),
        })
        .await;
    socket.envelope().await;
    socket.close().await;

    let log = server.logs();
    assert!(
        log.lines()
            .filter(|l| l.contains(" TRACE ") || l.contains(" DEBUG "))
            .count()
            > 10,
        "the relay logged below info"
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut forms = vec![
        String::from_utf8(payload.clone()).unwrap(),
        b64.encode(&payload),
        payload
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        format!("{:?}", &payload[..16]),
    ];
    for device in [&alice, &bob] {
        forms.push(device.token.expose().to_owned());
    }
    for form in &forms {
        if let Some(line) = log.lines().find(|l| l.contains(form.as_str())) {
            panic!("{form:?} leaked into the trace log: {line}");
        }
    }
}

/// Runs `redoubtd` with `args`, returning its exit code, stdout and stderr.
fn redoubtd(args: &[&std::ffi::OsStr]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("REDOUBTD_CONFIG")
        .env_remove("REDOUBT_OPERATOR")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Issue 16, item 15: operator commands on a machine where the relay has
/// never run failed raw ("unable to open database file", three times over).
/// They now create the data directory (0700) and the database, and errors
/// name each cause once.
#[test]
fn operator_commands_work_on_a_fresh_data_directory() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("new").join("redoubtd");
    for command in [
        &["legal", "operator", "list"][..],
        &["legal", "orders"],
        &["market", "list"],
    ] {
        let mut args: Vec<&std::ffi::OsStr> = vec!["--data-dir".as_ref(), data.as_os_str()];
        args.extend(command.iter().map(std::ffi::OsStr::new));
        let (code, stdout, stderr) = redoubtd(&args);
        assert_eq!(code, Some(0), "{command:?}: {stdout}{stderr}");
        assert!(!stderr.contains("unable to open"), "{stderr}");
        assert!(!stdout.trim().is_empty(), "{command:?} says what it found");
    }
    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);

    // A database path that cannot be opened: one clear line, each cause once.
    let blocked = parent.path().join("file");
    std::fs::write(&blocked, b"not a directory").unwrap();
    let (code, _, stderr) = redoubtd(&[
        "--data-dir".as_ref(),
        blocked.join("redoubtd").as_os_str(),
        "legal".as_ref(),
        "orders".as_ref(),
    ]);
    assert_eq!(code, Some(1));
    let line = stderr.lines().last().unwrap_or_default();
    assert!(line.starts_with("redoubtd: error: "), "{stderr}");
    for part in line.split(": ").filter(|p| p.len() > 12) {
        assert_eq!(line.matches(part).count(), 1, "{part:?} repeated in {line}");
    }
}

/// Issue 16, item 15: `config check` names every setting unsafe for real
/// users, and says when there is none.
#[test]
fn config_check_warns_of_production_unsafe_settings() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let unsafe_config = dir.path().join("unsafe.toml");
    std::fs::write(
        &unsafe_config,
        format!(
            "data_dir = {:?}\n[storage]\nbackend = \"sqlite\"\nsynchronous = \"normal\"\n\
             [admin]\nlisten = \"203.0.113.5:8081\"\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let (code, _, stderr) = redoubtd(&[
        "--config".as_ref(),
        unsafe_config.as_os_str(),
        "config".as_ref(),
        "check".as_ref(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    for expected in [
        "code_sender = \"log\"",
        "synchronous = \"normal\"",
        "admin.listen = 203.0.113.5:8081",
        "data directory",
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with("warning: ") && l.contains(expected)),
            "no warning about {expected}: {stderr}"
        );
    }

    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let safe_config = dir.path().join("safe.toml");
    std::fs::write(
        &safe_config,
        format!(
            "data_dir = {:?}\n[registration.code_sender]\nkind = \"command\"\n\
             program = \"/bin/true\"\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let (code, _, stderr) = redoubtd(&[
        "--config".as_ref(),
        safe_config.as_os_str(),
        "config".as_ref(),
        "check".as_ref(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("warning:"), "{stderr}");
    assert!(stderr.contains("nothing unsafe"), "{stderr}");
}
