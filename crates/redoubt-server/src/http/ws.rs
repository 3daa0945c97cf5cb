//! Live delivery over WebSocket.
//!
//! A connected device is pushed its mailbox oldest first, at most
//! `push_window` envelopes ahead of its acks, then each new envelope as soon
//! as the fan-out wakes the session. Nothing is removed until the device
//! acks, so a dropped connection re-sends the unacked envelopes next time and
//! the client drops the ids it has already processed.

use std::collections::HashSet;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use redoubt_proto::ws::{close, ClientFrame, ServerFrame};
use redoubt_proto::{EnvelopeId, ErrorBody};
use tracing::Instrument;

use super::extract::Authed;
use super::messages::{to_wire, MAX_ACK_IDS};
use crate::sessions::CloseReason;
use crate::storage::StoreError;
use crate::AppState;

/// Open the delivery WebSocket.
#[utoipa::path(
    get, path = "/v1/ws", tag = "messages", security(("bearer" = [])),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol; frames are JSON ServerFrame/ClientFrame"),
        (status = 401, body = ErrorBody),
    )
)]
pub async fn upgrade(
    State(state): State<AppState>,
    auth: Authed,
    ws: WebSocketUpgrade,
) -> Response {
    let tasks = state.tasks().clone();
    // Small buffers: tungstenite's default 128 KiB read buffer per socket
    // dominated an idle connection's memory (measured by redoubt-load's
    // idle scenario: 132.8 KiB per connection, 8.9 KiB with a 4 KiB
    // buffer, 5.2 KiB with 512 bytes). Frames from clients are small JSON;
    // the buffer grows for the rare large one (a long ack).
    ws.max_message_size(64 * 1024)
        .read_buffer_size(512)
        .write_buffer_size(0)
        .on_upgrade(move |socket| {
            tasks.track_future(
                session(state, auth, socket).instrument(tracing::info_span!("ws_session")),
            )
        })
}

struct Session {
    state: AppState,
    auth: Authed,
    in_flight: HashSet<EnvelopeId>,
    announced: bool,
}

enum End {
    /// Close with this code and reason.
    Close(u16, std::borrow::Cow<'static, str>),
    /// The peer went away; nothing to send.
    Gone,
}

async fn session(state: AppState, auth: Authed, socket: WebSocket) {
    let subscription = state
        .sessions()
        .attach(auth.device_id, auth.markets.clone());
    state.fanout().attached(auth.device_id).await;
    state.metrics().connected_devices.inc();
    tracing::debug!("websocket session opened");
    let (mut sink, mut stream) = socket.split();
    let mut session = Session {
        state: state.clone(),
        auth: auth.clone(),
        in_flight: HashSet::new(),
        announced: false,
    };
    let mut close_rx = subscription.close.clone();
    let ping_every = state.config().mailbox.ws_ping_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut last_heard = tokio::time::Instant::now();
    let shutdown = state.shutdown_token().clone();

    let end = 'run: {
        if let Err(end) = session.push(&mut sink).await {
            break 'run end;
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break 'run End::Close(1001, "server shutting down".into()),
                _ = close_rx.changed() => {
                    let reason = close_rx.borrow().clone();
                    break 'run match reason {
                        Some(CloseReason::Revoked) => End::Close(close::REVOKED, "device revoked".into()),
                        // A close reason has room for 123 bytes: name the
                        // market; the notice itself is in the mailbox and in
                        // the 451 every later request gets.
                        Some(CloseReason::MarketExited(market)) => End::Close(
                            close::MARKET_EXITED,
                            format!("unavailable for legal reasons: the service has left {market}").into(),
                        ),
                        _ => End::Close(close::REPLACED, "replaced by a newer connection".into()),
                    };
                }
                _ = subscription.wake.notified() => {
                    if let Err(end) = session.push(&mut sink).await {
                        break 'run end;
                    }
                }
                frame = stream.next() => {
                    last_heard = tokio::time::Instant::now();
                    match frame {
                        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break 'run End::Gone,
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        Some(Ok(Message::Binary(_))) => {
                            break 'run End::Close(close::PROTOCOL, "binary frames are not used".into());
                        }
                        Some(Ok(Message::Text(text))) => {
                            match serde_json::from_str::<ClientFrame>(text.as_str()) {
                                Ok(ClientFrame::Ack { mut ids }) if ids.len() <= MAX_ACK_IDS => {
                                    // Acks already waiting share this one's
                                    // commit; a device draining a backlog
                                    // acks faster than one commit each.
                                    let after = more_acks(&mut stream, &mut ids);
                                    if let Err(end) = session.ack(&ids).await {
                                        break 'run end;
                                    }
                                    if let Some(end) = after {
                                        break 'run end;
                                    }
                                    if let Err(end) = session.push(&mut sink).await {
                                        break 'run end;
                                    }
                                }
                                Ok(ClientFrame::Ack { .. }) => {
                                    break 'run End::Close(close::PROTOCOL, "too many ids in one ack".into());
                                }
                                Err(_) => break 'run End::Close(close::PROTOCOL, "malformed frame".into()),
                            }
                        }
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > ping_every * 2 {
                        break 'run End::Close(1001, "no answer to pings".into());
                    }
                    if sink.send(Message::Ping(Default::default())).await.is_err() {
                        break 'run End::Gone;
                    }
                    state.ip_recorder().observe(auth.account_id, auth.addr, false).await;
                    // A safety net for wake-ups that can be lost (another
                    // node's, over the network): look at the mailbox on
                    // every ping. In-process wake-ups cannot be lost.
                    if state.fanout().may_lose_wakeups() {
                        if let Err(end) = session.push(&mut sink).await {
                            break 'run end;
                        }
                    }
                }
            }
        }
    };
    if let End::Close(code, reason) = end {
        let frame = CloseFrame {
            code,
            reason: reason.into_owned().into(),
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            sink.send(Message::Close(Some(frame))),
        )
        .await;
    }
    // The session's last sighting is recorded exactly, for the IP log.
    state
        .ip_recorder()
        .observe(auth.account_id, auth.addr, true)
        .await;
    state.metrics().connected_devices.dec();
    drop(subscription);
    tracing::debug!("websocket session closed");
}

impl Session {
    /// Pushes envelopes not yet in flight, up to the window.
    async fn push<S>(&mut self, sink: &mut S) -> Result<(), End>
    where
        S: futures::Sink<Message> + Unpin,
    {
        let window = self.state.config().mailbox.push_window;
        let now = self.state.clock().now();
        let batch = self
            .state
            .store()
            .pending(self.auth.device_id, now, window)
            .await
            .map_err(store_failed)?;
        let full = batch.len() >= window as usize;
        if !full {
            // Everything pending is in this batch: ids in flight but absent
            // were acked elsewhere (over HTTP) or expired.
            let present: HashSet<EnvelopeId> = batch.iter().map(|e| e.id).collect();
            self.in_flight.retain(|id| present.contains(id));
        }
        let mut pushed = 0usize;
        for envelope in batch {
            if self.in_flight.insert(envelope.id) {
                send_frame(sink, &ServerFrame::Envelope(to_wire(envelope))).await?;
                pushed += 1;
            }
        }
        if !full && (pushed > 0 || !self.announced) {
            self.announced = true;
            send_frame(sink, &ServerFrame::Drained).await?;
        }
        Ok(())
    }

    async fn ack(&mut self, ids: &[EnvelopeId]) -> Result<(), End> {
        let removed = self
            .state
            .store()
            .ack(self.auth.device_id, ids)
            .await
            .map_err(store_failed)?;
        self.state.metrics().envelopes_delivered.inc_by(removed);
        for id in ids {
            self.in_flight.remove(id);
        }
        Ok(())
    }
}

fn store_failed(e: StoreError) -> End {
    tracing::error!(error = %e, "storage failed during websocket session");
    End::Close(1011, "internal error".into())
}

/// Takes the ack frames that have already arrived behind one being
/// handled, adding their ids to `ids` (up to four acks' worth). Anything
/// else that has arrived ends the session the way the main loop would,
/// after the acks are stored.
fn more_acks<S>(stream: &mut S, ids: &mut Vec<EnvelopeId>) -> Option<End>
where
    S: futures::Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    use futures::FutureExt as _;
    while ids.len() < 4 * MAX_ACK_IDS {
        let frame = stream.next().now_or_never()?;
        match frame {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Some(End::Gone),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Binary(_))) => {
                return Some(End::Close(
                    close::PROTOCOL,
                    "binary frames are not used".into(),
                ))
            }
            Some(Ok(Message::Text(text))) => {
                match serde_json::from_str::<ClientFrame>(text.as_str()) {
                    Ok(ClientFrame::Ack { ids: more }) if more.len() <= MAX_ACK_IDS => {
                        ids.extend(more)
                    }
                    Ok(ClientFrame::Ack { .. }) => {
                        return Some(End::Close(
                            close::PROTOCOL,
                            "too many ids in one ack".into(),
                        ))
                    }
                    Err(_) => return Some(End::Close(close::PROTOCOL, "malformed frame".into())),
                }
            }
        }
    }
    None
}

async fn send_frame<S>(sink: &mut S, frame: &ServerFrame) -> Result<(), End>
where
    S: futures::Sink<Message> + Unpin,
{
    let text =
        serde_json::to_string(frame).map_err(|_| End::Close(1011, "internal error".into()))?;
    sink.send(Message::Text(text.into()))
        .await
        .map_err(|_| End::Gone)
}
