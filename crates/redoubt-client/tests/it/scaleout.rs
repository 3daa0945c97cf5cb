//! Real client profiles on two relay nodes that share PostgreSQL and NATS:
//! Alice's profile talks to node 1, Bob's and Carol's to node 2, and their
//! MLS chats work as on one node, with delivery pushed live across nodes.

use redoubt_server::config::{FanoutConfig, StorageConfig};
use test_support::services::{nats_available, nats_url, pg_schema};
use test_support::{fresh_phone, TestServer};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_on_different_nodes_chat_one_to_one_and_in_groups() {
    let Some(schema) = pg_schema().await else {
        return;
    };
    if !nats_available().await {
        return;
    }
    let prefix = format!("rdt_{}", schema.config.schema.clone().unwrap());
    let node = || {
        let (pg, prefix) = (schema.config.clone(), prefix.clone());
        TestServer::builder().configure(move |c| {
            c.storage = StorageConfig::Postgres(pg);
            c.fanout = FanoutConfig::Nats {
                url: nats_url(),
                subject_prefix: prefix,
            };
        })
    };
    let node1 = node().start().await;
    let node2 = node().start().await;
    let mut alice = register(&node1, &fresh_phone()).await;
    let mut bob = register(&node2, &fresh_phone()).await;
    let mut carol = register(&node2, &fresh_phone()).await;

    // Bob listens live on node 2 while Alice, on node 1, starts a chat.
    let (_, token) = bob.client.ws_endpoint();
    let mut bob_ws = test_support::device::WsClient::connect(&node2.base_url(), token).await;
    bob_ws.until_drained().await;
    let chat = alice.client.start_direct(bob.client.phone()).await.unwrap();
    alice.client.send_text(&chat, "across nodes").await.unwrap();
    bob_ws.envelope().await;
    let bob_chat = chat_with(&mut bob, &alice).await;
    assert_eq!(texts(&bob.client, &bob_chat).await, vec!["across nodes"]);
    bob.client.send_text(&bob_chat, "and back").await.unwrap();
    alice.client.sync().await.unwrap();
    assert_eq!(
        texts(&alice.client, &chat).await,
        vec!["across nodes", "and back"]
    );

    // A group spanning both nodes.
    let group = alice
        .client
        .create_group(
            "two nodes",
            &[bob.client.phone().clone(), carol.client.phone().clone()],
        )
        .await
        .unwrap();
    alice.client.send_text(&group, "hello all").await.unwrap();
    for p in [&mut bob, &mut carol] {
        p.client.sync().await.unwrap();
        let g = p.client.find_chat("two nodes").await.unwrap();
        assert_eq!(texts(&p.client, &g).await, vec!["hello all"]);
    }
    let carol_group = carol.client.find_chat("two nodes").await.unwrap();
    carol
        .client
        .send_text(&carol_group, "from node 2")
        .await
        .unwrap();
    alice.client.sync().await.unwrap();
    assert_eq!(
        texts(&alice.client, &group).await,
        vec!["hello all", "from node 2"]
    );
    // Two nodes, one directory and one order of messages: no false alarm.
    assert_no_false_alarms(&alice.client, &group).await;
    for p in [&bob, &carol] {
        let g = p.client.find_chat("two nodes").await.unwrap();
        assert_no_false_alarms(&p.client, &g).await;
    }
    drop(bob_ws);
}
