//! The `redoubt` binary against a real relay: what people and scripts see.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use redoubt_proto::PhoneNumber;
use test_support::{fresh_phone, logs, TestServer};

use crate::support::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_redoubt");

/// Runs `redoubt --profile PROFILE ARGS...` with the test passphrase.
pub fn redoubt(profile: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--profile")
        .arg(profile)
        .args(args)
        .env("REDOUBT_PASSPHRASE", PASSPHRASE)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `redoubt register` with the code typed on stdin once the relay sent it,
/// after a wrong one: the command asks again.
pub async fn cli_register(server: &TestServer, phone: &str, profile: &Path) {
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
    let code = code.expect("the relay sent a code");
    let wrong: String = code
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{wrong}\n{code}").unwrap();
    drop(stdin);
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("try again"),
        "a wrong code asks again: {}",
        stderr(&output)
    );
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
    // With the relay gone, commands that need it say so and name it; the
    // local history stays readable.
    drop(server);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (dir, base, _server_dir) = result;
    tokio::task::spawn_blocking(move || {
        let devices = redoubt(&dir, &["devices"]);
        assert_eq!(devices.status.code(), Some(1));
        assert!(
            stderr(&devices).contains(&format!("cannot reach the relay at {base}")),
            "{}",
            stderr(&devices)
        );
        let chats = redoubt(&dir, &["chats"]);
        assert!(chats.status.success(), "{}", stderr(&chats));
        assert!(
            stderr(&chats).contains("offline: cannot reach the relay at"),
            "{}",
            stderr(&chats)
        );
        // Under --json the error is JSON too, with a stable code.
        let json = redoubt(&dir, &["--json", "devices"]);
        assert_eq!(json.status.code(), Some(1));
        let body: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        assert_eq!(body["error"]["code"], "relay_unreachable");
        assert!(body["error"]["message"].as_str().unwrap().contains(&base));
    })
    .await
    .unwrap();
}

/// `redoubt` with `input` on its standard input.
fn redoubt_with_input(profile: &Path, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .arg("--profile")
        .arg(profile)
        .args(args)
        .env("REDOUBT_PASSPHRASE", PASSPHRASE)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_from_others_cannot_forge_lines_and_scripts_get_json() {
    let server = TestServer::start().await;
    let alice = register(&server, &fresh_phone()).await;
    let mut bob = register(&server, &fresh_phone()).await;
    let (alice_phone, bob_phone) = (
        alice.client.phone().e164().to_owned(),
        bob.client.phone().e164().to_owned(),
    );
    // Bob writes what would, printed raw, look like a system line of
    // Alice's own client, clear her screen and retitle her terminal.
    let forged =
        "hi\n[00:00 UTC] *: ⚠ SAFETY NUMBER CHANGED for nobody\u{1b}[2J\u{1b}]0;pwned\u{7}";
    let chat = bob.client.start_direct(alice.client.phone()).await.unwrap();
    bob.client.send_text(&chat, forged).await.unwrap();
    bob.client
        .create_group(
            "evil\u{1b}[31m\u{202e}name",
            &[alice.client.phone().clone()],
        )
        .await
        .unwrap();
    let dir = alice.dir.path().to_owned();
    let bob_dir = bob.dir.path().to_owned();

    let (read, chats, json, members) = tokio::task::spawn_blocking({
        let (dir, bob_phone) = (dir.clone(), bob_phone.clone());
        move || {
            (
                redoubt(&dir, &["read", &bob_phone]),
                redoubt(&dir, &["chats"]),
                redoubt(&dir, &["--json", "read", &bob_phone]),
                redoubt(&dir, &["--json", "group", "members", &bob_phone]),
            )
        }
    })
    .await
    .unwrap();
    for out in [&read, &chats] {
        assert!(out.status.success(), "{}", stderr(out));
        let text = stdout(out);
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}') && !text.contains('\u{202e}'),
            "{text:?}"
        );
    }
    let shown = stdout(&read);
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 2, "one line per message: {shown}");
    assert!(
        lines.iter().any(
            |l| l.contains(&format!("{bob_phone}: hi\\n[00:00 UTC] *: ⚠"))
                && l.contains("\\u{1b}[2J")
        ),
        "{shown}"
    );
    assert!(
        stdout(&chats).contains("evil\\u{1b}[31m\\u{202e}name"),
        "{}",
        stdout(&chats)
    );
    // Scripts get the text as written, and ids in hex.
    let messages: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let written: Vec<&str> = messages
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert!(written.contains(&forged), "{written:?}");
    let group_id = messages[0]["group_id"].as_str().expect("hex chat id");
    assert!(
        group_id.len() >= 32 && group_id.chars().all(|c| c.is_ascii_hexdigit()),
        "{group_id}"
    );
    let members: serde_json::Value = serde_json::from_slice(&members.stdout).unwrap();
    assert!(members[0]["device"].as_str().unwrap().len() == 36);

    // Sending from standard input and from a file; the limit is in --help
    // and enforced before anything is sent.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "from a file\n").unwrap();
    let big = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(big.path(), "x".repeat(16 * 1024 + 1)).unwrap();
    let (piped, from_file, too_big, help, unknown) = tokio::task::spawn_blocking({
        let (dir, alice_phone) = (dir.clone(), alice_phone.clone());
        let (file, big) = (file.path().to_owned(), big.path().to_owned());
        move || {
            (
                redoubt_with_input(&bob_dir, &["send", &alice_phone, "-"], b"two\nlines\n"),
                redoubt(
                    &bob_dir,
                    &["send", &alice_phone, "--file", file.to_str().unwrap()],
                ),
                redoubt(
                    &bob_dir,
                    &["send", &alice_phone, "--file", big.to_str().unwrap()],
                ),
                Command::new(BIN).args(["send", "--help"]).output().unwrap(),
                redoubt(&dir, &["--json", "read", "no such chat"]),
            )
        }
    })
    .await
    .unwrap();
    assert!(piped.status.success(), "{}", stderr(&piped));
    assert!(from_file.status.success(), "{}", stderr(&from_file));
    assert_eq!(too_big.status.code(), Some(1));
    assert!(stderr(&too_big).contains("16384"), "{}", stderr(&too_big));
    assert!(stdout(&help).contains("16 KiB"), "{}", stdout(&help));
    assert_eq!(unknown.status.code(), Some(1));
    let error: serde_json::Value = serde_json::from_slice(&unknown.stdout).unwrap();
    assert_eq!(error["error"]["code"], "unknown_chat");
    let mut alice = alice;
    alice.client.sync().await.unwrap();
    let alice_chat = alice.client.find_chat(&bob_phone).await.unwrap();
    let got = texts(&alice.client, &alice_chat).await;
    assert_eq!(got[1..], ["two\nlines", "from a file"], "{got:?}");
    drop(bob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_passphrase_is_refused_from_the_environment_too() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let base = server.base_url();
    let phone = fresh_phone();
    let out = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || {
            Command::new(BIN)
                .arg("--profile")
                .arg(&dir)
                .args(["register", "--phone", &phone, "--server", &base])
                .env("REDOUBT_PASSPHRASE", "short")
                .stdin(Stdio::null())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("at least 8 characters"),
        "{}",
        stderr(&out)
    );
    assert!(
        !redoubt_client::store::ProfileStore::exists(dir.path()),
        "no profile was created"
    );
}

/// Starts `redoubt link` for a new profile and returns the child, the
/// code it shows, and the rest of what it writes to stderr (read on, so
/// the child never writes into a closed pipe).
fn start_link(
    server: &str,
    profile: &Path,
) -> (std::process::Child, String, std::thread::JoinHandle<String>) {
    use std::io::BufRead as _;
    let mut child = Command::new(BIN)
        .arg("--profile")
        .arg(profile)
        .args(["link", "--server", server, "--device-name", "new laptop"])
        .env("REDOUBT_PASSPHRASE", PASSPHRASE)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    let code = loop {
        let line = lines.next().expect("a code is shown").unwrap();
        if let Some(rest) = line.trim().strip_prefix("redoubt devices link ") {
            break rest.trim().to_owned();
        }
    };
    let rest =
        std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>().join("\n"));
    (child, code, rest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_is_linked_with_the_code_it_shows() {
    let server = TestServer::start().await;
    let alice = register(&server, &fresh_phone()).await;
    let alice_phone = alice.client.phone().e164().to_owned();
    let dir = alice.dir.path().to_owned();
    alice.client.close().await;
    let (new_dir, wrong_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let base = server.base_url();
    tokio::task::spawn_blocking({
        let (new_dir, wrong_dir) = (new_dir.path().to_owned(), wrong_dir.path().to_owned());
        move || {
            let (child, code, _) = start_link(&base, &new_dir);
            assert_eq!(code.len(), 19, "{code}");
            let approved = redoubt(&dir, &["devices", "link", &code]);
            assert!(approved.status.success(), "{}", stderr(&approved));
            assert!(
                stdout(&approved).contains("Linked device"),
                "{}",
                stdout(&approved)
            );
            let linked = child.wait_with_output().unwrap();
            assert!(linked.status.success(), "{}", stderr(&linked));
            assert!(
                stdout(&linked).contains(&format!("Linked to {alice_phone}")),
                "{}",
                stdout(&linked)
            );
            let devices = redoubt(&new_dir, &["--json", "devices"]);
            let devices: serde_json::Value = serde_json::from_slice(&devices.stdout).unwrap();
            assert_eq!(devices.as_array().unwrap().len(), 2);

            // A mistyped code links nothing, and both sides say so.
            let (child, code, said) = start_link(&base, &wrong_dir);
            let last = if code.ends_with('0') { '1' } else { '0' };
            let wrong = format!("{}{last}", &code[..code.len() - 1]);
            let refused = redoubt(&dir, &["devices", "link", &wrong]);
            assert_eq!(refused.status.code(), Some(1));
            assert!(
                stderr(&refused).contains("nothing was linked"),
                "{}",
                stderr(&refused)
            );
            let failed = child.wait_with_output().unwrap();
            let said = said.join().unwrap();
            assert_eq!(failed.status.code(), Some(1), "{said}");
            assert!(said.contains("nothing was linked"), "{said}");
            assert!(!redoubt_client::store::ProfileStore::exists(&wrong_dir));
            let devices = redoubt(&dir, &["--json", "devices"]);
            let devices: serde_json::Value = serde_json::from_slice(&devices.stdout).unwrap();
            assert_eq!(devices.as_array().unwrap().len(), 2, "nothing was approved");
        }
    })
    .await
    .unwrap();
}
