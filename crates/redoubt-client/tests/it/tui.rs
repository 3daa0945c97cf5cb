//! The interactive screen, driven as a person would: two `redoubt chat`
//! sessions under tmux, a message typed in one appearing in the other, and
//! a command run in another terminal on a profile whose screen is open.

use std::process::Command;
use std::time::Duration;

use test_support::{fresh_phone, TestServer};

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_redoubt");

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux").args(args).output().expect("tmux runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until the pane shows `text`, returning the screen.
async fn screen_shows(session: &str, text: &str) -> String {
    let mut screen = String::new();
    for _ in 0..300 {
        screen = tmux(&["capture-pane", "-p", "-t", session]);
        if screen.contains(text) {
            return screen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{session} never showed {text:?}; screen:\n{screen}");
}

struct Session(String);

impl Drop for Session {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_typed_in_one_screen_appears_in_the_other() {
    if Command::new("tmux").arg("-V").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "tmux is required in CI (.ci/run installs it)"
        );
        eprintln!("skipping: tmux is not installed");
        return;
    }
    let server = TestServer::start().await;
    let mut alice = register(&server, &fresh_phone()).await;
    let bob = register(&server, &fresh_phone()).await;
    let bob_phone = bob.client.phone().e164().to_owned();
    let chat = alice.client.start_direct(bob.client.phone()).await.unwrap();
    alice.client.send_text(&chat, "setting up").await.unwrap();
    let (alice_dir, bob_dir) = (alice.dir.path().to_owned(), bob.dir.path().to_owned());
    alice.client.close().await;
    bob.client.close().await;

    let suffix = std::process::id();
    let sessions: Vec<Session> = [("alice", &alice_dir), ("bob", &bob_dir)]
        .into_iter()
        .map(|(who, dir)| {
            let name = format!("redoubt-{who}-{suffix}");
            let command = format!(
                "REDOUBT_PASSPHRASE='{PASSPHRASE}' {BIN} --profile '{}' chat",
                dir.display()
            );
            tmux(&[
                "new-session",
                "-d",
                "-s",
                &name,
                "-x",
                "120",
                "-y",
                "30",
                &command,
            ]);
            Session(name)
        })
        .collect();
    let (alice_s, bob_s) = (&sessions[0].0, &sessions[1].0);
    screen_shows(bob_s, "setting up").await;
    screen_shows(alice_s, "live").await;
    screen_shows(bob_s, "live").await;

    tmux(&["send-keys", "-t", alice_s, "-l", "typed in a terminal"]);
    tmux(&["send-keys", "-t", alice_s, "Enter"]);
    let bob_screen = screen_shows(bob_s, "typed in a terminal").await;
    assert!(bob_screen.contains("Chats"), "{bob_screen}");
    screen_shows(alice_s, "you: typed in a terminal").await;

    // And back the other way.
    tmux(&["send-keys", "-t", bob_s, "-l", "and a reply"]);
    tmux(&["send-keys", "-t", bob_s, "Enter"]);
    screen_shows(alice_s, "and a reply").await;

    // Another terminal, the same profile as Alice's open screen: both keep
    // working, and nothing Bob receives fails to decrypt.
    let sent = tokio::task::spawn_blocking({
        let dir = alice_dir.clone();
        move || {
            Command::new(BIN)
                .arg("--profile")
                .arg(&dir)
                .args(["send", &bob_phone, "from another terminal"])
                .env("REDOUBT_PASSPHRASE", PASSPHRASE)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    screen_shows(bob_s, "from another terminal").await;
    screen_shows(alice_s, "you: from another terminal").await;

    // A message over two lines (Alt+Enter) keeps its line break on screen,
    // the second line indented under the first.
    tmux(&["send-keys", "-t", alice_s, "-l", "line one"]);
    tmux(&["send-keys", "-t", alice_s, "M-Enter"]);
    tmux(&["send-keys", "-t", alice_s, "-l", "line two"]);
    tmux(&["send-keys", "-t", alice_s, "Enter"]);
    let screen = screen_shows(bob_s, "line two").await;
    assert!(
        screen
            .lines()
            .any(|l| l.contains(": line one") && !l.contains("line two")),
        "{screen}"
    );
    assert!(
        screen.lines().any(|l| l.contains("    line two")),
        "{screen}"
    );
    assert!(!screen.contains("\\n"), "{screen}");
    assert!(!screen.contains("could not"), "{screen}");
    tmux(&["send-keys", "-t", alice_s, "Escape"]);
    tmux(&["send-keys", "-t", bob_s, "Escape"]);
}
