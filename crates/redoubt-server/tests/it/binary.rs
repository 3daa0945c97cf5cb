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
