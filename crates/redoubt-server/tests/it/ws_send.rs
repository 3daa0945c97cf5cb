//! The binary WebSocket subprotocol: sends on the open socket get the same
//! checks, ids and errors as `POST /v1/messages`; pushes come several
//! envelopes to a frame; JSON clients are unchanged beside it.

use redoubt_proto::api::SendRequest;
use redoubt_proto::ws::binary::{CommitPosition, Send, ServerMessage};
use redoubt_proto::ws::close;
use redoubt_proto::{DeviceId, EnvelopeId, ErrorCode};
use test_support::TestServer;

fn send(id: EnvelopeId, to: &[DeviceId], payload: &[u8]) -> Send {
    Send {
        id,
        recipients: to.to_vec(),
        commit: None,
        payload: payload.to_vec(),
    }
}

/// The answer to a send, skipping pushes.
async fn answer(socket: &mut test_support::BinaryWs) -> ServerMessage {
    loop {
        match socket.frame().await {
            ServerMessage::Envelopes(_) | ServerMessage::Drained => {}
            answer => return answer,
        }
    }
}

/// The code and devices of a refusal, checking its status.
fn refused(answer: ServerMessage, id: EnvelopeId, want: u16) -> (ErrorCode, Vec<DeviceId>) {
    match answer {
        ServerMessage::Refused {
            id: got,
            status,
            error,
        } if got == id => {
            assert_eq!(status, want, "{error:?}");
            (error.error.code, error.error.devices)
        }
        other => panic!("expected a refusal of {id}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_send_on_the_socket_is_stored_once_and_pushed_to_a_binary_and_a_json_client() {
    let server = TestServer::start().await;
    let alice = server.register_fresh().await;
    let bob = server.register_fresh().await;
    let carol = server.register_fresh().await;
    let mut alice_ws = alice.ws_binary().await;
    let mut bob_ws = bob.ws_binary().await;
    let mut carol_ws = carol.ws().await;
    assert!(alice_ws.until_drained().await.is_empty());
    assert!(bob_ws.until_drained().await.is_empty());
    assert!(carol_ws.until_drained().await.is_empty());

    let id = EnvelopeId::random();
    let to = [bob.device_id, carol.device_id];
    alice_ws.send(send(id, &to, b"over the socket")).await;
    assert_eq!(
        answer(&mut alice_ws).await,
        ServerMessage::Accepted {
            id,
            duplicate: false,
            full: vec![]
        }
    );
    let pushed = bob_ws.until_drained().await;
    assert_eq!(pushed.len(), 1);
    assert_eq!(
        (pushed[0].id, pushed[0].payload.as_slice()),
        (id, &b"over the socket"[..])
    );
    // A client without the subprotocol gets the same envelope as JSON.
    let json = carol_ws.envelope().await;
    assert_eq!(
        (json.id, json.payload.as_slice()),
        (id, &b"over the socket"[..])
    );

    // A retry is recognised, over either transport, and queues nothing.
    alice_ws.send(send(id, &to, b"over the socket")).await;
    assert_eq!(
        answer(&mut alice_ws).await,
        ServerMessage::Accepted {
            id,
            duplicate: true,
            full: vec![]
        }
    );
    let http_retry = alice
        .post(
            "/v1/messages",
            &SendRequest {
                id,
                recipients: to.to_vec(),
                payload: b"over the socket".to_vec().into(),
                commit: None,
            },
        )
        .await;
    assert_eq!(http_retry.status(), reqwest::StatusCode::OK);
    bob_ws.ack(&[id]).await;
    carol_ws.ack(&[id]).await;
    test_support::eventually("both acks remove the envelope", || async {
        bob.fetch().await.envelopes.is_empty() && carol.fetch().await.envelopes.is_empty()
    })
    .await;
    assert!(
        alice.fetch().await.envelopes.is_empty(),
        "the sender gets no copy"
    );
}

#[tokio::test]
async fn several_envelopes_waiting_come_in_one_frame_in_order() {
    let server = TestServer::start().await;
    let alice = server.register_fresh().await;
    let bob = server.register_fresh().await;
    let mut sent = Vec::new();
    for i in 0..5u8 {
        sent.push(alice.send_ok(&[bob.device_id], &[i + 1; 40]).await);
    }
    let mut bob_ws = bob.ws_binary().await;
    match bob_ws.frame().await {
        ServerMessage::Envelopes(batch) => {
            assert_eq!(batch.iter().map(|e| e.id).collect::<Vec<_>>(), sent);
        }
        other => panic!("expected one frame of envelopes, got {other:?}"),
    }
    assert_eq!(bob_ws.frame().await, ServerMessage::Drained);
}

#[tokio::test]
async fn a_bad_send_on_the_socket_gets_the_error_http_would_give_and_loses_nothing() {
    let server = TestServer::builder()
        .configure(|c| {
            c.mailbox.max_queued_per_device = 1;
            c.mailbox.max_recipients = 2;
        })
        .start()
        .await;
    let alice = server.register_fresh().await;
    let bob = server.register_fresh().await;
    let max_bytes = server.state.config().mailbox.max_envelope_bytes;
    let mut ws = alice.ws_binary().await;
    ws.until_drained().await;

    let first = EnvelopeId::random();
    ws.send(send(first, &[bob.device_id], b"kept")).await;
    assert!(matches!(
        answer(&mut ws).await,
        ServerMessage::Accepted { .. }
    ));

    let cases: Vec<(Send, u16, ErrorCode)> = vec![
        (
            send(first, &[bob.device_id], b"other bytes"),
            409,
            ErrorCode::EnvelopeIdConflict,
        ),
        (
            send(EnvelopeId::random(), &[bob.device_id], b""),
            422,
            ErrorCode::InvalidRequest,
        ),
        (
            send(EnvelopeId::random(), &[], b"x"),
            422,
            ErrorCode::InvalidRequest,
        ),
        (
            send(
                EnvelopeId::random(),
                &[DeviceId::random(), DeviceId::random(), DeviceId::random()],
                b"x",
            ),
            422,
            ErrorCode::TooManyRecipients,
        ),
        (
            send(EnvelopeId::random(), &[bob.device_id], b"full"),
            507,
            ErrorCode::MailboxFull,
        ),
        (
            Send {
                commit: Some(CommitPosition {
                    group: [1; 32],
                    epoch: u64::MAX,
                }),
                ..send(EnvelopeId::random(), &[alice.device_id], b"commit")
            },
            422,
            ErrorCode::InvalidRequest,
        ),
        (
            send(
                EnvelopeId::random(),
                &[bob.device_id],
                &vec![0; max_bytes + 1],
            ),
            413,
            ErrorCode::PayloadTooLarge,
        ),
    ];
    for (bad, status, code) in cases {
        let id = bad.id;
        ws.send(bad).await;
        assert_eq!(refused(answer(&mut ws).await, id, status).0, code);
    }
    let unknown = DeviceId::random();
    let id = EnvelopeId::random();
    ws.send(send(id, &[unknown], b"x")).await;
    assert_eq!(
        refused(answer(&mut ws).await, id, 422),
        (ErrorCode::UnknownRecipients, vec![unknown])
    );
    // The socket is still open and nothing stored was lost.
    let page = bob.fetch().await;
    assert_eq!(page.envelopes.len(), 1);
    assert_eq!(
        (page.envelopes[0].id, page.envelopes[0].payload.as_slice()),
        (first, &b"kept"[..])
    );
}

#[tokio::test]
async fn a_frame_that_does_not_decode_closes_the_socket_and_loses_nothing() {
    let server = TestServer::start().await;
    let alice = server.register_fresh().await;
    let bob = server.register_fresh().await;
    let id = alice.send_ok(&[bob.device_id], b"keep me").await;
    for bad in [
        vec![9, 1, 2],       // another version
        vec![1, 0x7f],       // an unknown type
        vec![1, 0x01, 0, 0], // a truncated send
    ] {
        let mut ws = bob.ws_binary().await;
        ws.until_drained().await;
        ws.send_raw(bad).await;
        assert_eq!(ws.closed().await.map(|c| c.0), Some(close::PROTOCOL));
    }
    let mut ws = bob.ws_binary().await;
    ws.send_text("{\"type\":\"ack\",\"ids\":[]}").await;
    assert_eq!(ws.closed().await.map(|c| c.0), Some(close::PROTOCOL));
    // A JSON client sending binary is told the same way.
    let mut json = bob.ws().await;
    json.until_drained().await;
    json.send_bytes(vec![1, 0x02, 0, 0]).await;
    assert_eq!(json.closed().await.map(|c| c.0), Some(close::PROTOCOL));
    assert_eq!(bob.fetch().await.envelopes[0].id, id);
}

#[tokio::test]
async fn a_backlog_drains_whole_through_a_small_window_with_acks_in_flight() {
    // Acks commit while the window refills, so a read can happen while an
    // ack it no longer needs to wait for is still being counted; every
    // envelope must still come, in order, and the mailbox end be announced.
    let server = TestServer::builder()
        .configure(|c| c.mailbox.push_window = 3)
        .start()
        .await;
    let alice = server.register_fresh().await;
    let bob = server.register_fresh().await;
    let mut sent = Vec::new();
    for i in 0..90u8 {
        sent.push(alice.send_ok(&[bob.device_id], &[i, 1]).await);
    }
    let mut ws = bob.ws_binary().await;
    let mut received = Vec::new();
    loop {
        match ws.frame().await {
            ServerMessage::Envelopes(batch) => {
                assert!(batch.len() <= 3, "the window holds");
                let ids: Vec<EnvelopeId> = batch.iter().map(|e| e.id).collect();
                ws.ack(&ids).await;
                received.extend(ids);
            }
            ServerMessage::Drained if received.len() == sent.len() => break,
            ServerMessage::Drained => panic!("drained after {} of 90", received.len()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(received, sent);
}

#[tokio::test]
async fn sends_racing_a_connected_device_reach_it_once_each_in_each_senders_order() {
    // New envelopes reach a caught-up session from its inbox, and a session
    // that falls behind its small window reads the mailbox: across the
    // switches between the two, nothing is skipped, repeated or reordered.
    let server = TestServer::builder()
        .configure(|c| c.mailbox.push_window = 4)
        .start()
        .await;
    let alice = server.register_fresh().await;
    let carol = server.register_fresh().await;
    let bob = server.register_fresh().await;
    let mut bob_ws = bob.ws_binary().await;
    assert_eq!(bob_ws.frame().await, ServerMessage::Drained);
    let mut senders = Vec::new();
    for (tag, device) in [(1u8, &alice), (2u8, &carol)] {
        let mut ws = device.ws_binary().await;
        let to = bob.device_id;
        senders.push(tokio::spawn(async move {
            let ids: Vec<EnvelopeId> = (0..40u8).map(|_| EnvelopeId::time_ordered()).collect();
            for (i, id) in ids.iter().enumerate() {
                ws.send(send(*id, &[to], &[tag, i as u8])).await;
            }
            for id in &ids {
                assert_eq!(
                    answer(&mut ws).await,
                    ServerMessage::Accepted {
                        id: *id,
                        duplicate: false,
                        full: vec![]
                    }
                );
            }
            ids
        }));
    }
    let mut received: Vec<(u8, u8)> = Vec::new();
    let mut ids = std::collections::HashSet::new();
    while received.len() < 80 {
        match bob_ws.frame().await {
            ServerMessage::Envelopes(batch) => {
                assert!(batch.len() <= 4, "the window holds");
                for e in &batch {
                    assert!(ids.insert(e.id), "pushed twice: {}", e.id);
                    let p = e.payload.as_slice();
                    received.push((p[0], p[1]));
                }
                let acked: Vec<EnvelopeId> = batch.iter().map(|e| e.id).collect();
                bob_ws.ack(&acked).await;
            }
            ServerMessage::Drained => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    for sender in senders {
        let sent = sender.await.unwrap();
        assert!(sent.iter().all(|id| ids.contains(id)));
    }
    for tag in [1u8, 2] {
        let order: Vec<u8> = received
            .iter()
            .filter(|(t, _)| *t == tag)
            .map(|(_, i)| *i)
            .collect();
        assert_eq!(order, (0..40).collect::<Vec<u8>>(), "sender {tag}'s order");
    }
    test_support::eventually("every ack is stored", || async {
        bob.fetch().await.envelopes.is_empty()
    })
    .await;
}

#[tokio::test]
async fn the_push_window_is_bounded_in_bytes_and_still_passes_a_large_envelope() {
    let server = TestServer::builder()
        .configure(|c| c.mailbox.push_window_bytes = 100)
        .start()
        .await;
    let alice = server.register_fresh().await;
    let bob = server.register_fresh().await;
    let big = alice.send_ok(&[bob.device_id], &[1; 150]).await;
    let mut small = Vec::new();
    for i in [2u8, 3, 4] {
        small.push(alice.send_ok(&[bob.device_id], &[i; 40]).await);
    }
    let mut ws = bob.ws_binary().await;
    let mut batches = Vec::new();
    loop {
        match ws.frame().await {
            ServerMessage::Envelopes(batch) => {
                let ids: Vec<EnvelopeId> = batch.iter().map(|e| e.id).collect();
                ws.ack(&ids).await;
                batches.push(ids);
            }
            ServerMessage::Drained => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    // 150 bytes exceed the window but go alone; then two of 40 fit in 100
    // bytes and the third waits for their ack.
    assert_eq!(
        batches,
        vec![vec![big], small[..2].to_vec(), small[2..].to_vec()]
    );
}

#[tokio::test]
async fn a_send_to_a_full_mailbox_goes_to_the_others_and_version_2_names_it() {
    let server = TestServer::builder()
        .configure(|c| c.mailbox.max_queued_per_device = 2)
        .start()
        .await;
    let alice = server.register_fresh().await;
    let bob = server.register_fresh().await;
    let carol = server.register_fresh().await;
    for _ in 0..2 {
        alice.send_ok(&[bob.device_id], b"fills bob").await;
    }

    let mut v2 = alice.ws_binary_v2().await;
    v2.until_drained().await;
    let id = EnvelopeId::random();
    v2.send(send(id, &[bob.device_id, carol.device_id], b"group"))
        .await;
    assert_eq!(
        answer(&mut v2).await,
        ServerMessage::Accepted {
            id,
            duplicate: false,
            full: vec![bob.device_id]
        }
    );
    assert_eq!(carol.fetch().await.envelopes.len(), 1);

    // A version 1 client cannot read the list: it gets a plain acceptance,
    // and the send still reached everyone with room.
    let mut v1 = alice.ws_binary().await;
    v1.until_drained().await;
    let id = EnvelopeId::random();
    v1.send(send(id, &[bob.device_id, carol.device_id], b"again"))
        .await;
    assert_eq!(
        answer(&mut v1).await,
        ServerMessage::Accepted {
            id,
            duplicate: false,
            full: vec![]
        }
    );
    assert_eq!(carol.fetch().await.envelopes.len(), 2);
    assert_eq!(bob.fetch().await.envelopes.len(), 2);
}
