//! Mailboxes: fan-out, WebSocket push, offline fetch, acks, restarts, caps.

use std::collections::HashSet;

use redoubt_proto::api::{CommitTag, SendRequest, SendResponse};
use redoubt_proto::ws::ServerFrame;
use redoubt_proto::{EnvelopeId, ErrorCode};
use reqwest::StatusCode;
use test_support::{api_error, TestServer};

#[tokio::test]
async fn one_send_fans_out_to_three_devices() {
    let server = TestServer::start().await;
    let sender = server.register_fresh().await;
    let bob_phone = test_support::fresh_phone();
    let bob_laptop = server.register(&bob_phone).await;
    let bob_phone_device = server.register(&bob_phone).await;
    let carol = server.register_fresh().await;
    let recipients = [
        bob_laptop.device_id,
        bob_phone_device.device_id,
        carol.device_id,
    ];
    let id = sender.send_ok(&recipients, b"\x01opaque mls bytes").await;
    for device in [&bob_laptop, &bob_phone_device, &carol] {
        let page = device.fetch().await;
        assert_eq!(page.envelopes.len(), 1);
        assert_eq!(page.envelopes[0].id, id);
        assert_eq!(
            page.envelopes[0].payload.as_slice(),
            b"\x01opaque mls bytes"
        );
        assert!(!page.more);
    }
    // The sender's own mailbox did not receive a copy.
    assert!(sender.fetch().await.envelopes.is_empty());
    let metrics = server.metrics().await.text().await.unwrap();
    assert!(
        metrics.contains("redoubt_envelopes_queued_total 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_connected_device_gets_envelopes_pushed_and_acks_over_the_socket() {
    let server = TestServer::start().await;
    let alice = server.register_fresh().await;
    let bob = server.register_fresh().await;
    let mut socket = bob.ws().await;
    assert!(
        socket.until_drained().await.is_empty(),
        "an empty mailbox is announced as drained"
    );
    let id = alice.send_ok(&[bob.device_id], b"live").await;
    let envelope = socket.envelope().await;
    assert_eq!(envelope.id, id);
    assert_eq!(envelope.payload.as_slice(), b"live");
    socket.ack(&[id]).await;
    // The ack is processed before the next push, which proves it landed.
    let second = alice.send_ok(&[bob.device_id], b"second").await;
    assert_eq!(socket.envelope().await.id, second);
    socket.ack(&[second]).await;
    let third = alice.send_ok(&[bob.device_id], b"third").await;
    assert_eq!(socket.envelope().await.id, third);
    // Acks over the socket are asynchronous; wait until the mailbox shows
    // exactly the one envelope not acked.
    test_support::eventually("the socket acks are applied", || async {
        bob.fetch()
            .await
            .envelopes
            .iter()
            .map(|e| e.id)
            .collect::<Vec<_>>()
            == vec![third]
    })
    .await;
    socket.close().await;
    let metrics = server.metrics().await.text().await.unwrap();
    assert!(
        metrics.contains("redoubt_envelopes_delivered_total 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn unacked_envelopes_come_back_on_reconnect_in_order() {
    let server = TestServer::start().await;
    let alice = server.register_fresh().await;
    let bob = server.register_fresh().await;
    let mut sent = Vec::new();
    for i in 0..5u8 {
        sent.push(alice.send_ok(&[bob.device_id], &[i]).await);
    }
    let mut socket = bob.ws().await;
    let first: Vec<EnvelopeId> = socket.until_drained().await.iter().map(|e| e.id).collect();
    assert_eq!(first, sent);
    socket.ack(&sent[..2]).await;
    test_support::eventually("the ack is applied", || async {
        bob.fetch().await.envelopes.len() == 3
    })
    .await;
    socket.close().await;
    let mut again = bob.ws().await;
    let second: Vec<EnvelopeId> = again.until_drained().await.iter().map(|e| e.id).collect();
    assert_eq!(second, sent[2..].to_vec());
}

#[tokio::test]
async fn the_push_window_waits_for_acks() {
    let server = TestServer::builder()
        .configure(|c| c.mailbox.push_window = 3)
        .start()
        .await;
    let alice = server.register_fresh().await;
    let bob = server.register_fresh().await;
    let mut sent = Vec::new();
    for i in 0..7u8 {
        sent.push(alice.send_ok(&[bob.device_id], &[i]).await);
    }
    let mut socket = bob.ws().await;
    let mut received = Vec::new();
    while received.len() < 7 {
        // Three arrive, then nothing until they are acked.
        let mut batch = Vec::new();
        for _ in 0..3.min(7 - received.len()) {
            batch.push(socket.envelope().await.id);
        }
        socket.ack(&batch).await;
        received.extend(batch);
    }
    assert_eq!(received, sent);
    assert!(matches!(socket.frame().await, ServerFrame::Drained));
}

#[tokio::test]
async fn offline_devices_fetch_then_ack() {
    let server = TestServer::builder()
        .configure(|c| c.mailbox.fetch_page = 2)
        .start()
        .await;
    let alice = server.register_fresh().await;
    let bob = server.register_fresh().await;
    let ids = [
        alice.send_ok(&[bob.device_id], b"1").await,
        alice.send_ok(&[bob.device_id], b"2").await,
        alice.send_ok(&[bob.device_id], b"3").await,
    ];
    let page = bob.fetch().await;
    assert_eq!(
        page.envelopes.iter().map(|e| e.id).collect::<Vec<_>>(),
        ids[..2].to_vec()
    );
    assert!(page.more);
    // Fetching again without acking returns the same page: nothing is lost
    // if the device crashes before processing.
    assert_eq!(bob.fetch().await.envelopes.len(), 2);
    assert_eq!(bob.ack(&ids[..2]).await, 2);
    let page = bob.fetch().await;
    assert_eq!(
        page.envelopes.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![ids[2]]
    );
    assert!(!page.more);
    assert_eq!(bob.ack(&ids).await, 1, "acking again is harmless");
    assert!(bob.fetch().await.envelopes.is_empty());
}

#[tokio::test]
async fn a_retried_send_is_stored_once() {
    let server = TestServer::start().await;
    let alice = server.register_fresh().await;
    let bob = server.register_fresh().await;
    let id = EnvelopeId::random();
    let first = alice.send_with_id(id, &[bob.device_id], b"retry me").await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let retry = alice.send_with_id(id, &[bob.device_id], b"retry me").await;
    assert_eq!(retry.status(), StatusCode::OK);
    let body: SendResponse = retry.json().await.unwrap();
    assert!(body.duplicate);
    assert_eq!(bob.fetch().await.envelopes.len(), 1);
    assert_eq!(bob.ack(&[id]).await, 1);
    // A late retry after delivery is still recognised, not delivered twice.
    assert_eq!(
        alice
            .send_with_id(id, &[bob.device_id], b"retry me")
            .await
            .status(),
        StatusCode::OK
    );
    assert!(bob.fetch().await.envelopes.is_empty());
    let (status, body) = api_error(
        alice
            .send_with_id(id, &[bob.device_id], b"other bytes")
            .await,
    )
    .await;
    assert_eq!(
        (status, body.error.code),
        (StatusCode::CONFLICT, ErrorCode::EnvelopeIdConflict)
    );
}

#[tokio::test]
async fn a_second_commit_from_the_same_epoch_is_refused_as_stale() {
    let server = TestServer::start().await;
    let alice = server.register_fresh().await;
    let bob = server.register_fresh().await;
    let commit = |epoch: u64, group: Vec<u8>, payload: &[u8]| SendRequest {
        id: EnvelopeId::random(),
        recipients: vec![bob.device_id],
        payload: payload.to_vec().into(),
        commit: Some(CommitTag {
            group: group.into(),
            epoch,
        }),
    };
    let first = commit(7, vec![9; 32], b"alice adds carol");
    assert_eq!(
        alice.post("/v1/messages", &first).await.status(),
        StatusCode::ACCEPTED
    );
    let (status, body) = api_error(
        bob.post("/v1/messages", &commit(7, vec![9; 32], b"bob adds dave"))
            .await,
    )
    .await;
    assert_eq!(
        (status, body.error.code),
        (StatusCode::CONFLICT, ErrorCode::StaleCommit)
    );
    // The accepted commit's own retry is still answered as a duplicate.
    assert_eq!(
        alice.post("/v1/messages", &first).await.status(),
        StatusCode::OK
    );
    let (status, body) = api_error(
        alice
            .post("/v1/messages", &commit(8, vec![9; 5], b"x"))
            .await,
    )
    .await;
    assert_eq!(
        (status, body.error.code),
        (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidRequest)
    );
    let (status, body) = api_error(
        alice
            .post("/v1/messages", &commit(u64::MAX, vec![9; 32], b"x"))
            .await,
    )
    .await;
    assert_eq!(
        (status, body.error.code),
        (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidRequest)
    );
    let page = bob.fetch().await;
    assert_eq!(
        page.envelopes.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![first.id],
        "only the accepted commit was queued"
    );
}

#[tokio::test]
async fn a_full_mailbox_is_left_out_and_the_others_still_get_the_send() {
    let server = TestServer::builder()
        .configure(|c| c.mailbox.max_queued_per_device = 3)
        .start()
        .await;
    let alice = server.register_fresh().await;
    let bob = server.register_fresh().await;
    let carol = server.register_fresh().await;
    for _ in 0..3 {
        alice.send_ok(&[bob.device_id], b"fill").await;
    }
    // Issue 16, item 1: before, one full mailbox refused the send for
    // everyone, so one flooded member silenced a whole group.
    let response = alice
        .send(&[carol.device_id, bob.device_id], b"to the group")
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: SendResponse = response.json().await.unwrap();
    assert_eq!(body.full, vec![bob.device_id], "the full mailbox is named");
    assert_eq!(
        carol.fetch().await.envelopes[0].payload.as_slice(),
        b"to the group"
    );
    assert_eq!(
        bob.fetch().await.envelopes.len(),
        3,
        "nothing already queued was dropped, nothing added"
    );
    // When nobody has room, the send is refused whole and says so.
    let (status, body) = api_error(alice.send(&[bob.device_id], b"overflow").await).await;
    assert_eq!(
        (status, body.error.code),
        (StatusCode::INSUFFICIENT_STORAGE, ErrorCode::MailboxFull)
    );
    assert_eq!(body.error.devices, vec![bob.device_id]);
    // Draining makes room again.
    let ids: Vec<EnvelopeId> = bob.fetch().await.envelopes.iter().map(|e| e.id).collect();
    bob.ack(&ids).await;
    alice.send_ok(&[bob.device_id], b"fits now").await;
}

#[tokio::test]
async fn one_sender_cannot_fill_a_mailbox_for_everyone_else() {
    let server = TestServer::builder()
        .configure(|c| {
            c.mailbox.max_queued_per_device = 10;
            c.limits.sends_per_recipient.max = 4;
        })
        .start()
        .await;
    let flooder = server.register_fresh().await;
    let victim = server.register_fresh().await;
    let bystander = server.register_fresh().await;
    let friend = server.register_fresh().await;
    for _ in 0..4 {
        flooder.send_ok(&[victim.device_id], b"flood").await;
    }
    // The flooder's share of the victim's mailbox is spent: a send to the
    // victim alone is rate-limited, one to a group leaves the victim out.
    let (status, body) = api_error(flooder.send(&[victim.device_id], b"more").await).await;
    assert_eq!(
        (status, body.error.code),
        (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited)
    );
    let response = flooder
        .send(&[bystander.device_id, victim.device_id], b"group")
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: SendResponse = response.json().await.unwrap();
    assert_eq!(body.full, vec![victim.device_id]);
    // Everyone else still reaches the victim: the mailbox has room.
    friend.send_ok(&[victim.device_id], b"hello").await;
    let queued = victim.fetch().await.envelopes;
    assert_eq!(queued.len(), 5);
    assert_eq!(queued[4].payload.as_slice(), b"hello");
}

#[tokio::test]
async fn nothing_is_lost_or_duplicated_across_a_restart() {
    let server = TestServer::start().await;
    let alice = server.register_fresh().await;
    let bob = server.register_fresh().await;
    let mut sent = Vec::new();
    for i in 0..20u8 {
        sent.push(alice.send_ok(&[bob.device_id], &[i; 3]).await);
    }
    // Bob takes the first ten and acks them, then the server restarts
    // before he fetches the rest.
    let first: Vec<EnvelopeId> = bob
        .fetch()
        .await
        .envelopes
        .iter()
        .take(10)
        .map(|e| e.id)
        .collect();
    bob.ack(&first).await;
    let dir = server.stop().await;

    let server = TestServer::builder().data_dir(dir).start().await;
    let mut bob = bob.clone();
    bob.base = server.base_url();
    let mut socket = bob.ws().await;
    let rest: Vec<EnvelopeId> = socket.until_drained().await.iter().map(|e| e.id).collect();
    assert_eq!(rest, sent[10..].to_vec());
    socket.ack(&rest).await;
    socket.close().await;
    test_support::eventually("the mailbox is empty", || async {
        bob.fetch().await.envelopes.is_empty()
    })
    .await;
    let all: HashSet<EnvelopeId> = first.into_iter().chain(rest).collect();
    assert_eq!(all.len(), 20);
}

#[tokio::test]
async fn a_new_connection_replaces_the_old_one() {
    let server = TestServer::start().await;
    let bob = server.register_fresh().await;
    let mut old = bob.ws().await;
    old.until_drained().await;
    let mut new = bob.ws().await;
    new.until_drained().await;
    assert_eq!(
        old.closed().await.map(|c| c.0),
        Some(redoubt_proto::ws::close::REPLACED)
    );
}

#[tokio::test]
async fn shutdown_closes_sockets_with_going_away() {
    let server = TestServer::start().await;
    let bob = server.register_fresh().await;
    let mut socket = bob.ws().await;
    socket.until_drained().await;
    let stopping = tokio::spawn(server.stop());
    assert_eq!(socket.closed().await.map(|c| c.0), Some(1001));
    stopping.await.unwrap();
}

#[tokio::test]
async fn protocol_violations_close_the_socket_and_lose_nothing() {
    let server = TestServer::start().await;
    let alice = server.register_fresh().await;
    let bob = server.register_fresh().await;
    let id = alice.send_ok(&[bob.device_id], b"keep me").await;
    let mut socket = bob.ws().await;
    socket.until_drained().await;
    socket.send_raw("{\"type\":\"nonsense\"}").await;
    assert_eq!(
        socket.closed().await.map(|c| c.0),
        Some(redoubt_proto::ws::close::PROTOCOL)
    );
    assert_eq!(bob.fetch().await.envelopes[0].id, id);
}

/// Issue 16, item 14: frames the WebSocket layer itself refuses end the
/// session with the close code RFC 6455 gives them, not a dropped socket;
/// nothing queued is lost.
#[tokio::test]
async fn broken_websocket_frames_get_their_rfc_6455_close_codes() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let server = TestServer::builder()
        .configure(|c| {
            // Frames above 64 KiB are too large for this relay.
            c.mailbox.max_envelope_bytes = 1024;
            c.mailbox.max_recipients = 4;
        })
        .start()
        .await;
    let alice = server.register_fresh().await;
    let bob = server.register_fresh().await;
    let id = alice.send_ok(&[bob.device_id], b"keep me").await;

    let not_utf8 = Frame::message(vec![0xff, 0xfe, 0x80], OpCode::Data(Data::Text), true);
    let mut reserved = Frame::message(b"x".to_vec(), OpCode::Data(Data::Binary), true);
    reserved.header_mut().rsv1 = true;
    let too_large = Frame::message(vec![b'a'; 200 * 1024], OpCode::Data(Data::Text), true);
    for (frame, code) in [(not_utf8, 1007), (reserved, 1002), (too_large, 1009)] {
        let mut socket = bob.ws().await;
        socket.until_drained().await;
        socket.send_frame(frame).await;
        assert_eq!(socket.closed().await.map(|c| c.0), Some(code));
    }
    assert_eq!(bob.fetch().await.envelopes[0].id, id);
}

/// Issue 16, item 14: a request to the WebSocket endpoint that is not a
/// handshake gets the API's JSON error, not axum's plain text.
#[tokio::test]
async fn a_plain_request_to_the_websocket_endpoint_gets_a_json_error() {
    let server = TestServer::start().await;
    let bob = server.register_fresh().await;
    let response = bob.get("/v1/ws").await;
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let (status, body) = api_error(response).await;
    assert_eq!(
        (status, body.error.code),
        (StatusCode::UPGRADE_REQUIRED, ErrorCode::InvalidRequest)
    );
}
