//! The OpenAPI document against the running relay, by schemathesis
//! (issue 16): every operation, fed generated valid and invalid input,
//! answers only with statuses and bodies its document names, never a 5xx,
//! with a token and without one. All four phases run (examples, coverage,
//! fuzzing, stateful); `.ci/run` installs schemathesis on Python 3.12 or
//! newer, as under 3.11 a CPython bug crashes it now and then.

use std::time::Duration;

use test_support::TestServer;

async fn run(st: &std::path::Path, server: &TestServer, token: Option<&str>) {
    let mut command = tokio::process::Command::new(st);
    command
        .arg("run")
        .arg(server.url("/openapi.json"))
        .args(["--checks", "all", "--max-examples", "25", "--seed", "16"])
        // Not `positive_data_acceptance`: it expects every request its schema
        // allows to succeed, and no schema can say that a number must exist
        // in its numbering plan, that a proof must verify or that `from`
        // must come before `to`. Every other check runs.
        .args(["--exclude-checks", "positive_data_acceptance"])
        // A debug build on a loaded two-core machine (the rest of the
        // suite runs beside it) can take seconds to answer: a timeout is
        // not what this test is about.
        .args(["--workers", "2", "--request-timeout", "30"])
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    if let Some(token) = token {
        command.args(["--header", &format!("Authorization: Bearer {token}")]);
    }
    let out = tokio::time::timeout(Duration::from_secs(600), command.output())
        .await
        .expect("schemathesis finishes within ten minutes")
        .expect("schemathesis runs");
    assert!(
        out.status.success(),
        "schemathesis found failures ({}):\n{}\n{}",
        if token.is_some() {
            "with a token"
        } else {
            "without a token"
        },
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_answers_as_its_openapi_document_says() {
    let Some(st) = test_support::services::schemathesis() else {
        return;
    };
    let server = TestServer::start().await;
    run(&st, &server, None).await;
    let device = server.register_fresh().await;
    run(&st, &server, Some(device.token.expose())).await;
}
