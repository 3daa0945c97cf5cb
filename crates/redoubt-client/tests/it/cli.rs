//! The `redoubt` binary against a real relay: what people and scripts see.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use redoubt_proto::PhoneNumber;
use test_support::{fresh_phone, logs, TestServer};

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_redoubt");

fn redoubt(profile: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--profile")
        .arg(profile)
        .args(args)
        .env("REDOUBT_PASSPHRASE", PASSPHRASE)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `redoubt register` with the code typed on stdin once the relay sent it.
async fn cli_register(server: &TestServer, phone: &str, profile: &Path) {
    let e164 = PhoneNumber::parse(phone).unwrap().e164().to_owned();
    let before = logs::dev_code_for(&logs::captured(), &e164);
    let mut child = Command::new(BIN)
        .arg("--profile")
        .arg(profile)
        .args([
            "register",
            "--phone",
            phone,
            "--server",
            &server.base_url(),
            "--device-name",
            "cli test",
        ])
        .env("REDOUBT_PASSPHRASE", PASSPHRASE)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut code = None;
    for _ in 0..500 {
        code = logs::dev_code_for(&logs::captured(), &e164).filter(|c| Some(c) != before.as_ref());
        if code.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{}", code.expect("the relay sent a code")).unwrap();
    drop(stdin);
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("Registered"),
        "{}",
        stdout(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_profiles_talk_through_the_cli() {
    let server = TestServer::start().await;
    let (alice_dir, bob_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice_phone, bob_phone) = (fresh_phone(), fresh_phone());
    cli_register(&server, &alice_phone, alice_dir.path()).await;
    cli_register(&server, &bob_phone, bob_dir.path()).await;
    let (a, b) = (alice_dir.path().to_owned(), bob_dir.path().to_owned());
    let (ap, bp) = (alice_phone.clone(), bob_phone.clone());

    tokio::task::spawn_blocking(move || {
        let sent = redoubt(&a, &["send", &bp, "hello from the cli"]);
        assert!(sent.status.success(), "{}", stderr(&sent));
        let read = redoubt(&b, &["read", &ap]);
        assert!(read.status.success(), "{}", stderr(&read));
        assert!(
            stdout(&read).contains(&format!("{ap}: hello from the cli")),
            "{}",
            stdout(&read)
        );

        let chats = redoubt(&b, &["--json", "chats"]);
        let listed: serde_json::Value = serde_json::from_slice(&chats.stdout).unwrap();
        assert_eq!(listed[0]["name"], ap.as_str());
        assert_eq!(listed[0]["kind"], "direct");

        let group = redoubt(&a, &["group", "create", "book club", &bp]);
        assert!(group.status.success(), "{}", stderr(&group));
        assert!(redoubt(&a, &["send", "book club", "chapter one"])
            .status
            .success());
        let members = redoubt(&b, &["--json", "group", "members", "book club"]);
        let members: serde_json::Value = serde_json::from_slice(&members.stdout).unwrap();
        assert_eq!(members.as_array().unwrap().len(), 2);
        let read = redoubt(&b, &["--json", "read", "book club"]);
        let messages: serde_json::Value = serde_json::from_slice(&read.stdout).unwrap();
        assert!(messages
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["text"] == "chapter one"));

        let verify_a = redoubt(&a, &["--json", "verify", &bp]);
        let verify_b = redoubt(&b, &["--json", "verify", &ap]);
        let (va, vb): (serde_json::Value, serde_json::Value) = (
            serde_json::from_slice(&verify_a.stdout).unwrap(),
            serde_json::from_slice(&verify_b.stdout).unwrap(),
        );
        assert_eq!(va["safety_number"], vb["safety_number"]);

        let devices = redoubt(&a, &["devices"]);
        assert!(stdout(&devices).contains("(this device)"));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_errors_are_clear_and_exit_non_zero() {
    let server = TestServer::start().await;
    let alice = register(&server, &fresh_phone()).await;
    let dir = alice.dir.path().to_owned();
    alice.client.close().await;
    let stranger = fresh_phone();
    let base = server.base_url();
    let server_dir = server.data_dir().to_owned();
    let result = tokio::task::spawn_blocking(move || {
        let wrong = Command::new(BIN)
            .args(["--profile"])
            .arg(&dir)
            .arg("chats")
            .env("REDOUBT_PASSPHRASE", "not it")
            .output()
            .unwrap();
        assert_eq!(wrong.status.code(), Some(1));
        assert!(
            stderr(&wrong).contains("wrong passphrase"),
            "{}",
            stderr(&wrong)
        );

        let unknown = redoubt(&dir, &["read", "no such chat"]);
        assert_eq!(unknown.status.code(), Some(1));
        assert!(
            stderr(&unknown).contains("no chat matches"),
            "{}",
            stderr(&unknown)
        );

        let nobody = redoubt(&dir, &["send", &stranger, "hi"]);
        assert_eq!(nobody.status.code(), Some(1));
        assert!(
            stderr(&nobody).contains("is not on Redoubt"),
            "{}",
            stderr(&nobody)
        );

        let too_long = redoubt(&dir, &["send", "x", &"y".repeat(20_000)]);
        assert_eq!(too_long.status.code(), Some(1));

        let missing = redoubt(&dir.join("nope"), &["chats"]);
        assert_eq!(missing.status.code(), Some(1));
        assert!(
            stderr(&missing).contains("no profile"),
            "{}",
            stderr(&missing)
        );

        let usage = Command::new(BIN).arg("frobnicate").output().unwrap();
        assert_eq!(usage.status.code(), Some(2));
        (dir, base, server_dir)
    })
    .await
    .unwrap();
    // With the relay gone, commands say so.
    drop(server);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (dir, _base, _server_dir) = result;
    let down = tokio::task::spawn_blocking(move || redoubt(&dir, &["chats"]))
        .await
        .unwrap();
    assert_eq!(down.status.code(), Some(1));
    assert!(
        stderr(&down).contains("cannot reach the server"),
        "{}",
        stderr(&down)
    );
}
