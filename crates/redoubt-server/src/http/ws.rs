//! Live delivery over WebSocket.
//!
//! A connected device is pushed its mailbox oldest first, at most
//! `push_window` envelopes ahead of its acks, then each new envelope as soon
//! as the fan-out wakes the session. Nothing is removed until the device
//! acks, so a dropped connection re-sends the unacked envelopes next time and
//! the client drops the ids it has already processed.
//!
//! Where the store hands committed envelopes to the sessions in commit order
//! (SQLite, see [`crate::sessions`]), a session that has pushed everything
//! older pushes new envelopes from its inbox without reading the mailbox.
//! It knows what is older by mailbox sequence number: `seen` is the highest
//! one it has pushed or read, and an inbox envelope above it was committed
//! after everything the session has read. Whenever that cannot be relied
//! on (the session is behind, its inbox overflowed, a wake-up came without
//! data, the window has no room for all of it) the session reads the
//! mailbox as before.
//!
//! A client that offers the binary subprotocol ([`binary::PROTOCOL`]) gets
//! compact binary frames, several envelopes to a frame, and may also send
//! on the socket: each send goes through the same checks and store as
//! `POST /v1/messages` and is answered `accepted` or `refused` by id.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures::stream::{FuturesUnordered, SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use redoubt_proto::ws::binary::{self, ClientMessage, ServerMessage};
use redoubt_proto::ws::{close, ClientFrame, ServerFrame};
use redoubt_proto::{EnvelopeId, ErrorBody};

use super::extract::Authed;
use super::messages::{submit, to_wire, Accepted, Submission, MAX_ACK_IDS};
use crate::error::ApiError;
use crate::sessions::{CloseReason, Inbox, Signal};
use crate::storage::{CommitPosition, QueuedEnvelope, StoreError};
use crate::AppState;

/// Sends one session may have waiting for the store; past this the session
/// stops reading its socket until one is answered (TCP pushes back).
const MAX_SENDS_IN_FLIGHT: usize = 64;

/// Acks one session may have waiting for their commit, likewise.
const MAX_ACKS_IN_FLIGHT: usize = 4;

/// Open the delivery WebSocket.
#[utoipa::path(
    get, path = "/v1/ws", tag = "messages", security(("bearer" = [])),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol; frames are JSON ServerFrame/ClientFrame, or binary frames (sends too) with the subprotocol redoubt.bin.1"),
        (status = 401, body = ErrorBody),
        (status = 426, description = "Not a WebSocket handshake (`invalid_request`)", body = ErrorBody),
    )
)]
pub async fn upgrade(
    State(state): State<AppState>,
    auth: Authed,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    // axum answers a request that is not a handshake in plain text; the
    // API answers every error in its JSON shape (issue 16).
    let ws = match ws {
        Ok(ws) => ws,
        Err(_) => return ApiError::UpgradeRequired.into_response(),
    };
    let tasks = state.tasks().clone();
    // Small buffers: tungstenite's default 128 KiB read buffer per socket
    // dominated an idle connection's memory (measured by redoubt-load's
    // idle scenario: 132.8 KiB per connection, 8.9 KiB with a 4 KiB
    // buffer, 5.2 KiB with 512 bytes). Frames from clients are small JSON;
    // the buffer grows for the rare large one (a long ack). Frames to the
    // client wait in a write buffer until the session flushes (a push and
    // its `drained`, or several answers, go out in one write): with no
    // buffer each frame was a system call of its own, a third of the
    // session's CPU (one-to-one 30k to 35k msg/s; an idle connection
    // keeps the few bytes its last write needed, 3.93 to 3.97 KiB).
    // The largest frame a client may send: a send with the largest
    // envelope to the most recipients, or the largest ack.
    let mailbox = &state.config().mailbox;
    let max_frame = (64 + mailbox.max_envelope_bytes + 16 * mailbox.max_recipients).max(64 * 1024);
    ws.protocols([binary::PROTOCOL_V2, binary::PROTOCOL])
        .max_message_size(max_frame)
        .read_buffer_size(512)
        .write_buffer_size(4 * 1024)
        .on_upgrade(move |socket| {
            let encoding = match socket.protocol() {
                Some(_) => Encoding::Binary,
                None => Encoding::Json,
            };
            // A client of version 1 cannot read a partial acceptance.
            let partial = socket
                .protocol()
                .is_some_and(|p| p.as_bytes() == binary::PROTOCOL_V2.as_bytes());
            // No tracing span per session: each costs an entry in the
            // subscriber's registry for the session's whole life, and the
            // session logs little (its open and close, at debug).
            //
            // The socket is split here, not in `run`: an async fn keeps
            // its arguments in its future for its whole life, even once
            // moved out, and a whole `WebSocket` there was most of an idle
            // session's task (its future was 1.6 KiB).
            let (sink, stream) = socket.split();
            let session = Session {
                state,
                auth,
                encoding,
                partial,
                in_flight: InFlight::default(),
                acking: HashSet::new(),
                backlogged: false,
                announced: false,
                seen: 0,
            };
            tasks.track_future(run(session, sink, stream))
        })
}

/// How frames are written on this socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// JSON text frames (no subprotocol): pushes and acks only.
    Json,
    /// Binary frames of [`binary`]: pushes, acks and sends.
    Binary,
}

struct Session {
    state: AppState,
    auth: Authed,
    encoding: Encoding,
    /// The client reads partial acceptances ([`binary::PROTOCOL_V2`]).
    partial: bool,
    /// Pushed and not acknowledged.
    in_flight: InFlight,
    /// Acknowledged, with the ack not yet committed: still in the mailbox,
    /// so never pushed again, but no longer holding the window.
    acking: HashSet<EnvelopeId>,
    /// The last read filled the window: more may be waiting behind it.
    backlogged: bool,
    announced: bool,
    /// The highest mailbox sequence number pushed or read so far.
    seen: i64,
}

/// What one frame from the client asks for.
enum Incoming {
    /// Acknowledge these envelopes.
    Ack(Vec<EnvelopeId>),
    /// Queue an envelope.
    Send(binary::Send),
    /// Nothing (a ping or pong).
    Nothing,
    /// End the session.
    End(End),
}

enum End {
    /// Close with this code and reason.
    Close(u16, std::borrow::Cow<'static, str>),
    /// The peer went away; nothing to send.
    Gone,
}

/// A session's task. Every await that an idle session is not parked in is
/// boxed (`Box::pin`): the task's future is as large as its largest await
/// state, and an idle session should pay only for the one it waits in. Its
/// arguments are small for the same reason (they stay in the future).
async fn run(
    mut session: Session,
    mut sink: SplitSink<WebSocket, Message>,
    mut stream: SplitStream<WebSocket>,
) {
    let (state, encoding) = (session.state.clone(), session.encoding);
    let device = session.auth.device_id;
    let subscription = state
        .sessions()
        // The session itself has no use for its markets: one copy, where
        // a market exit looks for them.
        .attach(device, std::mem::take(&mut session.auth.markets));
    state.fanout().attached(device).await;
    state.metrics().connected_devices.inc();
    tracing::debug!("websocket session opened");
    let ping_every = state.config().mailbox.ws_ping_interval;
    let shutdown = state.shutdown_token().clone();
    drop(state);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut last_heard = tokio::time::Instant::now();
    let mut sending = Waiting::default();
    let mut acks = Waiting::default();

    let end = 'run: {
        if let Err(end) = Box::pin(session.push(&subscription.signal, &mut sink)).await {
            break 'run end;
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break 'run End::Close(1001, "server shutting down".into()),
                reason = subscription.signal.closed() => {
                    break 'run match reason {
                        CloseReason::Revoked => End::Close(close::REVOKED, "device revoked".into()),
                        // A close reason has room for 123 bytes: name the
                        // market; the notice itself is in the mailbox and in
                        // the 451 every later request gets.
                        CloseReason::MarketExited(market) => End::Close(
                            close::MARKET_EXITED,
                            format!("unavailable for legal reasons: the service has left {market}").into(),
                        ),
                        CloseReason::Replaced => End::Close(close::REPLACED, "replaced by a newer connection".into()),
                    };
                }
                _ = subscription.signal.woken() => {
                    if let Err(end) = Box::pin(session.push(&subscription.signal, &mut sink)).await {
                        break 'run end;
                    }
                }
                Some(answer) = sending.next(), if !sending.is_empty() => {
                    let answer: Result<Vec<u8>, Lost> = answer;
                    let Ok(answer) = answer else {
                        break 'run End::Close(1011, "internal error".into());
                    };
                    if Box::pin(sink.send(Message::Binary(answer.into()))).await.is_err() {
                        break 'run End::Gone;
                    }
                }
                Some(acked) = acks.next(), if !acks.is_empty() => {
                    let acked: Result<Result<Vec<EnvelopeId>, StoreError>, Lost> = acked;
                    let Ok(Ok(ids)) = acked else {
                        break 'run End::Close(1011, "internal error".into());
                    };
                    // Nothing to push: the ack's arrival already freed
                    // the window and refilled it.
                    for id in &ids {
                        session.acking.remove(id);
                    }
                }
                frame = stream.next(), if sending.len() < MAX_SENDS_IN_FLIGHT
                    && acks.len() < MAX_ACKS_IN_FLIGHT => {
                    last_heard = tokio::time::Instant::now();
                    match classify(frame, encoding) {
                        Incoming::Nothing => {}
                        Incoming::End(end) => break 'run end,
                        Incoming::Send(send) => sending.push(session.send(send)),
                        Incoming::Ack(mut ids) => {
                            // Acks (and sends) already waiting share this
                            // ack's commit; a device draining a backlog acks
                            // faster than one commit each.
                            let room = MAX_SENDS_IN_FLIGHT.saturating_sub(sending.len());
                            let after = more_frames(&mut stream, encoding, &mut ids, room, |send| {
                                sending.push(session.send(send))
                            });
                            // The ack commits on its own task while the
                            // window refills: a device draining a backlog
                            // gets the next envelopes during the fsync.
                            acks.push(session.ack(ids));
                            if let Some(end) = after {
                                break 'run end;
                            }
                            // Only a mailbox that had more than the window
                            // can have more to push now; anything newer
                            // wakes the session. (A read per ack was half
                            // of PostgreSQL's queries in the one-to-one run.)
                            if session.backlogged {
                                if let Err(end) = Box::pin(session.push(&subscription.signal, &mut sink)).await {
                                    break 'run end;
                                }
                            }
                        }
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > ping_every * 2 {
                        break 'run End::Close(1001, "no answer to pings".into());
                    }
                    if Box::pin(sink.send(Message::Ping(Default::default()))).await.is_err() {
                        break 'run End::Gone;
                    }
                    let Authed { account_id, addr, .. } = session.auth;
                    Box::pin(session.state.ip_recorder().observe(account_id, addr, false)).await;
                    // A safety net for wake-ups that can be lost (another
                    // node's, over the network): look at the mailbox on
                    // every ping. In-process wake-ups cannot be lost.
                    if session.state.fanout().may_lose_wakeups() {
                        if let Err(end) = Box::pin(session.push(&subscription.signal, &mut sink)).await {
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
        let _ = Box::pin(tokio::time::timeout(
            Duration::from_secs(5),
            sink.send(Message::Close(Some(frame))),
        ))
        .await;
    }
    // Sends and acks the client made before the end still happen: those not
    // yet handed to the store are, and an ack the client sent just before
    // closing is not lost. (Their answers have nowhere to go.)
    Box::pin(async {
        sending.finish().await;
        acks.finish().await;
    })
    .await;
    // The session's last sighting is recorded exactly, for the IP log.
    let Session { state, auth, .. } = session;
    Box::pin(
        state
            .ip_recorder()
            .observe(auth.account_id, auth.addr, true),
    )
    .await;
    state.metrics().connected_devices.dec();
    drop(subscription);
    tracing::debug!("websocket session closed");
}

impl Session {
    /// Pushes envelopes not yet in flight, up to the window, flushing once:
    /// from the inbox when it can be trusted to hold everything new, else
    /// read from the mailbox.
    async fn push<S>(&mut self, signal: &Signal, sink: &mut S) -> Result<(), End>
    where
        S: futures::Sink<Message> + Unpin,
    {
        let fresh = match self.pushable_from(signal.take_inbox()) {
            Some(fresh) => fresh,
            None => self.read().await?,
        };
        for e in &fresh {
            self.in_flight.insert(e.id, e.payload.len());
        }
        let fresh: Vec<_> = fresh.into_iter().map(to_wire).collect();
        let pushed = !fresh.is_empty();
        match self.encoding {
            Encoding::Binary if pushed => {
                feed(
                    sink,
                    Message::Binary(ServerMessage::Envelopes(fresh).encode().into()),
                )
                .await?
            }
            Encoding::Binary => {}
            Encoding::Json => {
                for envelope in fresh {
                    feed(sink, json(&ServerFrame::Envelope(envelope))?).await?;
                }
            }
        }
        if !self.backlogged && (pushed || !self.announced) {
            self.announced = true;
            let drained = match self.encoding {
                Encoding::Binary => Message::Binary(ServerMessage::Drained.encode().into()),
                Encoding::Json => json(&ServerFrame::Drained)?,
            };
            feed(sink, drained).await?;
        }
        sink.flush().await.map_err(|_| End::Gone)
    }

    /// The inbox's envelopes newer than anything pushed or read, if the
    /// inbox can stand in for a mailbox read: the session is caught up,
    /// nothing asked for a read, and the window has room for all of them.
    fn pushable_from(&mut self, inbox: Inbox) -> Option<Vec<QueuedEnvelope>> {
        if inbox.must_read
            || self.backlogged
            || !self.announced
            || !self.state.store().feeds_commits()
        {
            return None;
        }
        let seen = self.seen;
        let new: Vec<_> = inbox
            .envelopes
            .into_iter()
            .filter(|(seq, _)| *seq > seen)
            .collect();
        if new.len() > self.room(new.iter().map(|(_, e)| e.payload.len())) {
            return None;
        }
        // In commit order, all above `seen`: the last is the highest.
        if let Some(&(seq, _)) = new.last() {
            self.seen = seq;
        }
        Some(new.into_iter().map(|(seq, e)| e.queued(seq)).collect())
    }

    /// The oldest envelopes in the mailbox not yet in flight, up to the
    /// window's room; notes whether more wait behind them.
    async fn read(&mut self) -> Result<Vec<QueuedEnvelope>, End> {
        let window = self.state.config().mailbox.push_window;
        // Envelopes being acked are still stored and come back first.
        let limit = window.saturating_add(u32::try_from(self.acking.len()).unwrap_or(u32::MAX));
        let now = self.state.clock().now();
        let batch = self
            .state
            .store()
            .pending(self.auth.device_id, now, limit)
            .await
            .map_err(store_failed)?;
        if let Some(last) = batch.iter().map(|e| e.seq).max() {
            self.seen = self.seen.max(last);
        }
        let full = batch.len() >= limit as usize;
        if !full {
            // Everything pending is in this batch: ids in flight but absent
            // were acked elsewhere (over HTTP) or expired.
            let present: HashSet<EnvelopeId> = batch.iter().map(|e| e.id).collect();
            self.in_flight.retain(|id| present.contains(id));
        }
        let waiting: Vec<_> = batch
            .into_iter()
            .filter(|e| !self.acking.contains(&e.id) && !self.in_flight.contains(&e.id))
            .collect();
        let room = self.room(waiting.iter().map(|e| e.payload.len()));
        // More is waiting if the read was cut at its limit, or if it found
        // more than the window has room for (an ack that committed before
        // this read still counts in `acking`, so the read's limit can
        // exceed what is left and leave envelopes unpushed).
        self.backlogged = full || waiting.len() > room;
        Ok(waiting.into_iter().take(room).collect())
    }

    /// How many envelopes of these payload sizes, in order, the window has
    /// room for.
    fn room(&self, sizes: impl Iterator<Item = usize>) -> usize {
        let mailbox = &self.state.config().mailbox;
        self.in_flight.room(
            sizes,
            mailbox.push_window as usize,
            mailbox.push_window_bytes,
        )
    }

    /// Frees the window of acknowledged envelopes and commits the ack; the
    /// future yields the ids once they are deleted.
    fn ack(&mut self, ids: Vec<EnvelopeId>) -> Pending<Result<Vec<EnvelopeId>, StoreError>> {
        for id in &ids {
            self.in_flight.remove(id);
            self.acking.insert(*id);
        }
        let state = self.state.clone();
        let device = self.auth.device_id;
        self.detach(async move {
            let removed = state.store().ack(device, &ids).await.inspect_err(|e| {
                tracing::error!(error = %e, "storage failed during websocket session");
            })?;
            state.metrics().envelopes_delivered.inc_by(removed);
            Ok(ids)
        })
    }

    /// Runs a store call for this session. Where the store feeds its
    /// commits to the sessions, the call runs within the session (which
    /// finishes its calls before it ends), and the writer itself hands a
    /// queued envelope to its recipients. Elsewhere the waking is the
    /// caller's work after the commit, so the call gets a task of its own
    /// that finishes even if the session ends first. (A task per send and per ack was a thread
    /// hop and an allocation each on the hot path.)
    fn detach<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Pending<T> {
        use futures::FutureExt as _;
        if self.state.store().feeds_commits() {
            Box::pin(work.map(Ok))
        } else {
            Box::pin(self.state.tasks().spawn(work).map(|r| r.map_err(|_| Lost)))
        }
    }

    /// Queues a send; the future yields the answer for the socket.
    /// The answer comes encoded: a few bytes of frame rather than a
    /// `ServerMessage`, which would size every wait of the session for the
    /// largest refusal.
    fn send(&self, send: binary::Send) -> Pending<Vec<u8>> {
        let state = self.state.clone();
        let (sender, partial) = (self.auth.account_id, self.partial);
        self.detach(async move {
            let id = send.id;
            let submission = Submission {
                sender,
                id,
                recipients: send.recipients,
                payload: send.payload,
                commit: send.commit.map(|c| CommitPosition {
                    group: c.group,
                    epoch: c.epoch,
                }),
            };
            match submit(&state, submission).await {
                Ok(Accepted { duplicate, full }) => ServerMessage::Accepted {
                    id,
                    duplicate,
                    // Version 1 clients get a plain acceptance.
                    full: if partial { full } else { Vec::new() },
                },
                Err(e) => {
                    let (status, error) = e.to_body();
                    ServerMessage::Refused {
                        id,
                        status: status.as_u16(),
                        error,
                    }
                }
            }
            .encode()
        })
    }
}

fn store_failed(e: StoreError) -> End {
    tracing::error!(error = %e, "storage failed during websocket session");
    End::Close(1011, "internal error".into())
}

/// The close a frame the WebSocket layer could not read calls for (RFC 6455
/// section 7.4.1): 1007 for a text frame that is not UTF-8, 1009 for one
/// over the size limit, 1002 for any other breach of the protocol. A
/// connection that simply dropped gets none. Without it the socket was
/// dropped with no close frame at all, and the client could not tell a
/// bug of its own from a network failure (issue 16).
fn violation(e: axum::Error) -> End {
    let Ok(error) = e.into_inner().downcast::<tungstenite::Error>() else {
        return End::Gone;
    };
    match *error {
        tungstenite::Error::Utf8(_) => End::Close(1007, "a text frame is not UTF-8".into()),
        tungstenite::Error::Capacity(_) => End::Close(1009, "the frame is too large".into()),
        tungstenite::Error::Protocol(_) => End::Close(1002, "WebSocket protocol error".into()),
        _ => End::Gone,
    }
}

/// Reads one frame from the client.
fn classify(frame: Option<Result<Message, axum::Error>>, encoding: Encoding) -> Incoming {
    let protocol = |reason: &'static str| Incoming::End(End::Close(close::PROTOCOL, reason.into()));
    let too_many = || protocol("too many ids in one ack");
    match (frame, encoding) {
        (None | Some(Ok(Message::Close(_))), _) => Incoming::End(End::Gone),
        (Some(Err(e)), _) => Incoming::End(violation(e)),
        (Some(Ok(Message::Ping(_) | Message::Pong(_))), _) => Incoming::Nothing,
        (Some(Ok(Message::Text(text))), Encoding::Json) => {
            match serde_json::from_str::<ClientFrame>(text.as_str()) {
                Ok(ClientFrame::Ack { ids }) if ids.len() <= MAX_ACK_IDS => Incoming::Ack(ids),
                Ok(ClientFrame::Ack { .. }) => too_many(),
                Err(_) => protocol("malformed frame"),
            }
        }
        (Some(Ok(Message::Binary(bytes))), Encoding::Binary) => {
            match ClientMessage::decode(&bytes) {
                Ok(ClientMessage::Ack(ids)) if ids.len() <= MAX_ACK_IDS => Incoming::Ack(ids),
                Ok(ClientMessage::Ack(_)) => too_many(),
                Ok(ClientMessage::Send(send)) => Incoming::Send(send),
                Err(_) => protocol("malformed frame"),
            }
        }
        (Some(Ok(Message::Binary(_))), Encoding::Json) => {
            protocol("binary frames need the redoubt.bin.1 subprotocol")
        }
        (Some(Ok(Message::Text(_))), Encoding::Binary) => {
            protocol("text frames are not used with the binary subprotocol")
        }
    }
}

/// Takes the frames that have already arrived behind an ack being handled:
/// acks join `ids` (up to four acks' worth), sends go to `send` (at most
/// `room` of them). Anything that ends the session is returned, to act on
/// after the acks are stored.
fn more_frames<S>(
    stream: &mut S,
    encoding: Encoding,
    ids: &mut Vec<EnvelopeId>,
    mut room: usize,
    mut send: impl FnMut(binary::Send),
) -> Option<End>
where
    S: futures::Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    use futures::FutureExt as _;
    while ids.len() < 4 * MAX_ACK_IDS && room > 0 {
        let frame = stream.next().now_or_never()?;
        match classify(frame, encoding) {
            Incoming::Ack(more) => ids.extend(more),
            Incoming::Send(s) => {
                room -= 1;
                send(s)
            }
            Incoming::Nothing => {}
            Incoming::End(end) => return Some(end),
        }
    }
    None
}

/// Envelopes pushed and not yet acknowledged, with their payload sizes.
#[derive(Default)]
struct InFlight {
    sizes: HashMap<EnvelopeId, usize>,
    bytes: usize,
}

impl InFlight {
    fn contains(&self, id: &EnvelopeId) -> bool {
        self.sizes.contains_key(id)
    }

    fn insert(&mut self, id: EnvelopeId, size: usize) {
        if let Some(old) = self.sizes.insert(id, size) {
            self.bytes -= old;
        }
        self.bytes += size;
    }

    fn remove(&mut self, id: &EnvelopeId) {
        if let Some(size) = self.sizes.remove(id) {
            self.bytes -= size;
        }
        // A session that drained a backlog should not keep a window's worth
        // of table while it idles.
        if self.sizes.is_empty() && self.sizes.capacity() > 64 {
            self.sizes = HashMap::new();
        }
    }

    fn retain(&mut self, keep: impl Fn(&EnvelopeId) -> bool) {
        let mut dropped = 0;
        self.sizes.retain(|id, size| {
            let kept = keep(id);
            if !kept {
                dropped += *size;
            }
            kept
        });
        self.bytes -= dropped;
    }

    /// How many envelopes of these payload sizes, in order, fit beside
    /// those in flight: at most `count` envelopes and `bytes` payload
    /// bytes in flight, but always one when nothing is (an envelope larger
    /// than the byte window must still go).
    fn room(&self, sizes: impl Iterator<Item = usize>, count: usize, bytes: usize) -> usize {
        let (mut n, mut total) = (0, self.bytes);
        for size in sizes {
            let empty = self.sizes.is_empty() && n == 0;
            if self.sizes.len() + n >= count || (total + size > bytes && !empty) {
                break;
            }
            n += 1;
            total += size;
        }
        n
    }
}

/// A store call a session waits for: `Err` if its task was lost (panicked
/// or cancelled at shutdown).
type Pending<T> = futures::future::BoxFuture<'static, Result<T, Lost>>;

/// A store call's task ended without an answer.
#[derive(Debug)]
struct Lost;

/// Store calls a session waits for (its sends or its acks). The set is made
/// on first use: most sessions never send, and an empty `FuturesUnordered`
/// already costs two allocations, a tenth of an idle session's memory.
struct Waiting<T>(Option<FuturesUnordered<Pending<T>>>);

impl<T> Default for Waiting<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<T> Waiting<T> {
    fn push(&mut self, task: Pending<T>) {
        self.0.get_or_insert_with(FuturesUnordered::new).push(task);
    }

    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, FuturesUnordered::len)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next task to finish; never resolves while none waits.
    async fn next(&mut self) -> Option<Result<T, Lost>> {
        match &mut self.0 {
            Some(tasks) if !tasks.is_empty() => tasks.next().await,
            _ => std::future::pending().await,
        }
    }

    /// Waits for every call in the set to finish.
    async fn finish(&mut self) {
        if let Some(tasks) = &mut self.0 {
            while tasks.next().await.is_some() {}
        }
    }
}

/// A JSON text frame.
fn json(frame: &ServerFrame) -> Result<Message, End> {
    let text =
        serde_json::to_string(frame).map_err(|_| End::Close(1011, "internal error".into()))?;
    Ok(Message::Text(text.into()))
}

/// Queues a frame without flushing.
async fn feed<S>(sink: &mut S, message: Message) -> Result<(), End>
where
    S: futures::Sink<Message> + Unpin,
{
    sink.feed(message).await.map_err(|_| End::Gone)
}
