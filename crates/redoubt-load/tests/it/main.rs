//! Short runs of the load tool against a real relay (in process, on
//! `127.0.0.1:0`) and a real Mosquitto, asserting only that every accepted
//! message was delivered exactly once. Timings are never asserted.

use std::sync::Arc;
use std::time::Duration;

use redoubt_load::cluster::CodeSource;
use redoubt_load::relay::Target;
use redoubt_load::report::Report;
use redoubt_load::workload::{Pattern, Workload};
use redoubt_proto::PhoneNumber;
use test_support::{logs, TestServer};

fn target(server: &TestServer) -> Target {
    Target {
        urls: vec![server.base_url()],
        pids: vec![std::process::id()],
        codes: CodeSource::Lookup(Arc::new(|phone: &str| {
            let e164 = PhoneNumber::parse(phone).ok()?.e164().to_owned();
            logs::dev_code_for(&logs::captured(), &e164)
        })),
        setup: "in-process test relay".into(),
    }
}

fn small() -> Workload {
    Workload {
        devices: 6,
        duration: Duration::from_secs(2),
        source_addresses: 3,
        register_concurrency: 4,
        ..Workload::default()
    }
}

fn exactly_once(r: &Report) {
    assert!(r.messages_sent > 0, "{}", r.summary());
    assert!(r.deliveries_expected > 0, "{}", r.summary());
    assert_eq!(r.deliveries, r.deliveries_expected, "{}", r.summary());
    assert_eq!(r.missing, 0, "{}", r.summary());
    assert_eq!(r.errors, 0, "{:?}", r.error_samples);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_mode_delivers_every_message_exactly_once_with_offline_devices() {
    let server = TestServer::start().await;
    let w = Workload {
        offline: 0.5,
        ..small()
    };
    let report = redoubt_load::relay::run(&target(&server), &w, false)
        .await
        .unwrap();
    exactly_once(&report);
    assert!(report.latency.count > 0);
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["latency"]["p99_ms"].is_number());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_fan_out_and_fixed_rate_deliver_exactly_once() {
    let server = TestServer::start().await;
    let w = Workload {
        pattern: Pattern::Group { size: 3 },
        rate: Some(40.0),
        ..small()
    };
    let report = redoubt_load::relay::run(&target(&server), &w, false)
        .await
        .unwrap();
    exactly_once(&report);
    assert_eq!(
        report.deliveries,
        report.messages_sent * 2,
        "two recipients each"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_backlog_drains_completely() {
    let server = TestServer::start().await;
    let w = Workload {
        devices: 2,
        backlog: Some(300),
        ..small()
    };
    let report = redoubt_load::relay::run(&target(&server), &w, false)
        .await
        .unwrap();
    exactly_once(&report);
    assert_eq!(report.deliveries, 300);
    assert!(report.drain_per_second.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_mode_encrypts_and_decrypts_every_message_once() {
    let server = TestServer::start().await;
    let w = Workload {
        devices: 4,
        messages: Some(12),
        duration: Duration::from_secs(20),
        ..small()
    };
    let report = redoubt_load::e2e::run(&target(&server), &w, false)
        .await
        .unwrap();
    exactly_once(&report);
    assert_eq!(report.messages_sent, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_workload_runs_against_mosquitto() {
    let binary = redoubt_load::mqtt::Broker::default_binary();
    if !binary.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "mosquitto is required under CI"
        );
        eprintln!("skipping: {} is not installed", binary.display());
        return;
    }
    let broker = redoubt_load::mqtt::Broker::start(&binary).unwrap();
    for w in [
        Workload {
            offline: 0.5,
            ..small()
        },
        Workload {
            pattern: Pattern::Group { size: 3 },
            ..small()
        },
    ] {
        let report = redoubt_load::mqtt::run(broker.port, Some(broker.pid()), &w, false)
            .await
            .unwrap();
        exactly_once(&report);
    }
}
