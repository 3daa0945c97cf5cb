//! Several real `redoubtd` processes as one service: PostgreSQL (a schema of
//! their own in this machine's database) for durable state and NATS for
//! live delivery between them. Skipped with a printed reason when either
//! service is unreachable, unless `CI` is set, where that is a failure.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use redoubt_proto::api::{ClaimKeyPackagesRequest, ClaimKeyPackagesResponse, Envelope};
use redoubt_proto::{EnvelopeId, PhoneNumber};
use redoubt_server::config::{FanoutConfig, RateLimit, StorageConfig};
use reqwest::StatusCode;
use test_support::device::WsClient;
use test_support::process::ServerProcess;
use test_support::services::{nats_available, nats_url, pg_schema, PgSchema};
use test_support::{logs, TestDevice};

const BIN: &str = env!("CARGO_BIN_EXE_redoubtd");

/// N nodes sharing one schema and one NATS subject prefix.
struct Cluster {
    nodes: Vec<Option<ServerProcess>>,
    config: PathBuf,
    dir: tempfile::TempDir,
    _schema: PgSchema,
}

impl Cluster {
    async fn start(n: usize) -> Option<Self> {
        let schema = pg_schema().await?;
        if !nats_available().await {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("redoubtd.toml");
        let name = schema.config.schema.clone().unwrap();
        let mut settings = redoubt_server::Config {
            storage: StorageConfig::Postgres(schema.config.clone()),
            fanout: FanoutConfig::Nats {
                url: nats_url(),
                subject_prefix: format!("rdt_{name}"),
            },
            ..Default::default()
        };
        settings.registration.per_ip = RateLimit {
            max: 10_000,
            window: Duration::from_secs(3600),
        };
        settings.registration.per_number_block = settings.registration.per_ip;
        settings.registration.per_country = settings.registration.per_ip;
        settings.registration.sms_budget = settings.registration.per_ip;
        settings.limits.sends_per_recipient = settings.registration.per_ip;
        std::fs::write(&config, settings.to_toml()).unwrap();
        let mut cluster = Self {
            nodes: Vec::new(),
            config,
            dir,
            _schema: schema,
        };
        for i in 0..n {
            let node = cluster.spawn(i);
            cluster.nodes.push(Some(node));
        }
        Some(cluster)
    }

    fn spawn(&self, i: usize) -> ServerProcess {
        let data = self.dir.path().join(format!("node{i}"));
        ServerProcess::spawn(
            BIN.as_ref(),
            &data,
            &["--config", self.config.to_str().unwrap()],
            &[],
        )
    }

    fn node(&self, i: usize) -> &ServerProcess {
        self.nodes[i].as_ref().expect("node is running")
    }

    fn kill(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            node.kill();
        }
    }

    /// Registers through node `i`, reading the code from that node's log.
    async fn register(&self, i: usize) -> TestDevice {
        let phone = test_support::fresh_phone();
        let e164 = PhoneNumber::parse(&phone).unwrap().e164().to_owned();
        let node = self.node(i);
        TestDevice::register_with(&node.base_url(), &phone, "node", || {
            logs::dev_code_for(&node.logs(), &e164)
        })
        .await
    }
}

/// The same device, talking to another node.
fn via(device: &TestDevice, node: &ServerProcess) -> TestDevice {
    let mut d = device.clone();
    d.base = node.base_url();
    d
}

async fn next_envelope(ws: &mut WsClient) -> Envelope {
    ws.envelope().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_deliver_live_across_nodes_in_order_through_a_reconnect() {
    let Some(cluster) = Cluster::start(2).await else {
        return;
    };
    let alice = cluster.register(0).await;
    let bob = cluster.register(1).await;
    let carol = cluster.register(1).await;
    let dave = cluster.register(0).await;

    let mut bob_ws = bob.ws().await;
    let mut carol_ws = carol.ws().await;
    let mut dave_ws = dave.ws().await;
    for ws in [&mut bob_ws, &mut carol_ws, &mut dave_ws] {
        assert!(ws.until_drained().await.is_empty());
    }

    // One to one: sent through node 0, pushed live by node 1.
    let id = alice.send_ok(&[bob.device_id], b"hello bob").await;
    let got = next_envelope(&mut bob_ws).await;
    assert_eq!((got.id, got.payload.as_slice()), (id, &b"hello bob"[..]));
    bob_ws.ack(&[id]).await;

    // A group fan-out: one envelope, recipients on both nodes.
    let id = alice
        .send_ok(&[bob.device_id, carol.device_id, dave.device_id], b"group")
        .await;
    for ws in [&mut bob_ws, &mut carol_ws, &mut dave_ws] {
        let got = next_envelope(ws).await;
        assert_eq!(got.id, id);
        ws.ack(&[id]).await;
    }

    // A stream of 30, and bob moves from node 1 to node 0 in the middle
    // without acknowledging the last ones he saw.
    let mut sent = Vec::new();
    for i in 0..30u8 {
        sent.push(alice.send_ok(&[bob.device_id], &[i]).await);
    }
    let mut seen = Vec::new();
    while seen.len() < 12 {
        seen.push(next_envelope(&mut bob_ws).await.id);
    }
    // Acknowledged over HTTP, as the client does once it has stored them:
    // a socket ack is asynchronous and could still be in flight.
    assert_eq!(bob.ack(&seen[..8]).await, 8);
    bob_ws.close().await;
    let moved = via(&bob, cluster.node(0));
    let mut bob_ws = moved.ws().await;
    let rest: Vec<EnvelopeId> = bob_ws.until_drained().await.iter().map(|e| e.id).collect();
    assert_eq!(
        rest,
        sent[8..].to_vec(),
        "the unacknowledged ones come again, then the rest, in order"
    );
    // Deduplicated by id, as the client does: each exactly once, in order.
    let mut delivered = seen.clone();
    for id in rest {
        if !delivered.contains(&id) {
            delivered.push(id);
        }
    }
    assert_eq!(delivered, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_load_loses_nothing_and_duplicates_nothing() {
    let Some(mut cluster) = Cluster::start(3).await else {
        return;
    };
    // Both on node 1, the one that dies.
    let alice = cluster.register(1).await;
    let bob = cluster.register(1).await;
    let mut bob_ws = bob.ws().await;
    bob_ws.until_drained().await;

    let total = 150usize;
    let ids: Vec<EnvelopeId> = (0..total).map(|_| EnvelopeId::random()).collect();
    // Alice sends in the background through whichever node `base` names,
    // retrying a send that failed in flight with the same id (the relay
    // recognises the retry), as the client does.
    let base = std::sync::Arc::new(std::sync::Mutex::new(cluster.node(1).base_url()));
    let sender = {
        let (alice, base, ids, bob_device) =
            (alice.clone(), base.clone(), ids.clone(), bob.device_id);
        tokio::spawn(async move {
            let mut accepted = 0usize;
            for (i, id) in ids.iter().enumerate() {
                loop {
                    let mut via_now = alice.clone();
                    via_now.base = base.lock().unwrap().clone();
                    let sent = via_now
                        .request(reqwest::Method::POST, "/v1/messages")
                        .json(&redoubt_proto::api::SendRequest {
                            id: *id,
                            recipients: vec![bob_device],
                            payload: vec![i as u8; 16].into(),
                            commit: None,
                        })
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().is_success() => {
                            accepted += 1;
                            break;
                        }
                        Ok(r) => panic!("send refused: {}", r.status()),
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }
            accepted
        })
    };
    // Bob reads (without acknowledging) until a third has arrived, then
    // node 1 dies under load: SIGKILL, no shutdown code runs.
    let mut received: Vec<EnvelopeId> = Vec::new();
    while received.len() < total / 3 {
        received.push(next_envelope(&mut bob_ws).await.id);
    }
    cluster.kill(1);
    *base.lock().unwrap() = cluster.node(0).base_url();
    // Bob's socket died with the node; he reconnects to node 2 and drains,
    // acknowledging as he goes, and dropping ids he has seen, as the
    // client does.
    let mut bob_ws = via(&bob, cluster.node(2)).ws().await;
    let mut unique = received.clone();
    while unique.len() < total {
        let e = next_envelope(&mut bob_ws).await;
        bob_ws.ack(&[e.id]).await;
        if !unique.contains(&e.id) {
            unique.push(e.id);
        }
    }
    assert_eq!(sender.await.unwrap(), total, "every send was accepted");
    assert_eq!(unique, ids, "every accepted message once, in order");
    // Socket acks are asynchronous: wait for the last to land.
    let bob_on_0 = via(&bob, cluster.node(0));
    test_support::eventually("every envelope acknowledged, nothing left over", || {
        let bob = bob_on_0.clone();
        async move { bob.fetch().await.envelopes.is_empty() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_on_different_nodes_never_share_a_package() {
    let Some(cluster) = Cluster::start(2).await else {
        return;
    };
    let owner = cluster.register(0).await;
    assert_eq!(owner.upload_key_packages(30, true).await.remaining, 30);
    let mut claimers = Vec::new();
    for i in 0..6 {
        let c = cluster.register(i % 2).await;
        claimers.push(via(&c, cluster.node(i % 2)));
    }
    // 6 claimers on two nodes race 8 claims each for 30 one-time packages.
    let tasks = claimers
        .iter()
        .flat_map(|c| (0..8).map(move |_| c.clone()))
        .map(|c| {
            let target = owner.device_id;
            tokio::spawn(async move {
                let r = c
                    .post(
                        "/v1/keypackages/claim",
                        &ClaimKeyPackagesRequest {
                            devices: vec![target],
                        },
                    )
                    .await;
                assert_eq!(r.status(), StatusCode::OK);
                r.json::<ClaimKeyPackagesResponse>().await.unwrap()
            })
        });
    let mut one_time = HashSet::new();
    let mut last_resort = 0;
    for body in futures::future::join_all(tasks).await {
        let package = &body.unwrap().key_packages[0];
        if package.last_resort {
            last_resort += 1;
        } else {
            assert!(
                one_time.insert(package.id.clone()),
                "a package was handed out twice"
            );
        }
    }
    assert_eq!(one_time.len(), 30, "every one-time package handed out once");
    assert_eq!(last_resort, 48 - 30, "then the last-resort package");
}
