//! Relay mode: simulated devices register through the real API, hold real
//! delivery WebSockets (spread over loopback source addresses) and exchange
//! opaque envelopes, so the numbers are the server's alone: no MLS work on
//! either side.
//!
//! Each payload starts with the send time and a sequence number; receivers
//! compute end-to-end latency from it (one process, one clock), drop
//! repeated envelope ids as clients do, and acknowledge over the socket.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use redoubt_proto::api::{RequestCodeRequest, SendRequest, VerifyCodeRequest, VerifyCodeResponse};
use redoubt_proto::ws::binary::{self, ClientMessage, ServerMessage};
use redoubt_proto::ws::{ClientFrame, ServerFrame};
use redoubt_proto::{AuthToken, DeviceId, EnvelopeId, PhoneNumber};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::cluster::CodeSource;
use crate::report::{histogram, Latency, Report};
use crate::workload::{recipients_of, senders, Transport, Workload};
use crate::LoadError;

/// The relay under load.
#[derive(Clone)]
pub struct Target {
    /// Base URLs of its nodes; devices are spread over them.
    pub urls: Vec<String>,
    /// Process ids of its nodes, for CPU and memory (may be empty).
    pub pids: Vec<u32>,
    /// Where verification codes come from.
    pub codes: CodeSource,
    /// A description for the report.
    pub setup: String,
}

/// A registered simulated device.
#[derive(Clone)]
struct Device {
    base: String,
    http: reqwest::Client,
    source: IpAddr,
    device_id: DeviceId,
    token: AuthToken,
}

fn source(i: usize, w: &Workload) -> IpAddr {
    let n = usize::from(w.source_addresses.max(1));
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % n) as u8))
}

/// `n` numbers unique to this run: `prefix` (such as `+3361`, a French
/// mobile block) and seven digits from a random start.
pub(crate) fn phone_numbers(prefix: &str, n: usize) -> Vec<PhoneNumber> {
    let mut out = Vec::with_capacity(n);
    let mut k: u64 = rand::random::<u64>() % 5_000_000;
    while out.len() < n {
        if let Ok(p) = PhoneNumber::parse(&format!("{prefix}{:07}", k % 10_000_000)) {
            out.push(p);
        }
        k += 1;
    }
    out
}

async fn register(
    target: &Target,
    http: reqwest::Client,
    source: IpAddr,
    base: String,
    phone: PhoneNumber,
) -> Result<Device, LoadError> {
    let fail = |what: &str, e: String| LoadError::Relay(format!("{what}: {e}"));
    let r = http
        .post(format!("{base}/v1/registration/code"))
        .json(&RequestCodeRequest {
            phone: phone.clone(),
        })
        .send()
        .await
        .map_err(|e| fail("request code", e.to_string()))?;
    if !r.status().is_success() {
        return Err(fail("request code", r.text().await.unwrap_or_default()));
    }
    let session = r
        .json::<redoubt_proto::api::RequestCodeResponse>()
        .await
        .map_err(|e| fail("request code", e.to_string()))?
        .session;
    let code = target
        .codes
        .wait(phone.e164())
        .await
        .ok_or_else(|| fail("code", "no code arrived".into()))?;
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let challenge = VerifyCodeRequest::registration_challenge(&phone, &code);
    let r = http
        .post(format!("{base}/v1/registration/verify"))
        .json(&VerifyCodeRequest {
            session,
            phone,
            code,
            device_name: "load".into(),
            signature_key: key.verifying_key().to_bytes().to_vec().into(),
            proof: key.sign(&challenge).to_bytes().to_vec().into(),
        })
        .send()
        .await
        .map_err(|e| fail("verify", e.to_string()))?;
    if !r.status().is_success() {
        return Err(fail("verify", r.text().await.unwrap_or_default()));
    }
    let body: VerifyCodeResponse = r.json().await.map_err(|e| fail("verify", e.to_string()))?;
    Ok(Device {
        base,
        http,
        source,
        device_id: body.device_id,
        token: body.token,
    })
}

/// Registers `n` devices, spread over nodes and source addresses.
async fn register_all(
    target: &Target,
    w: &Workload,
    progress: &indicatif::ProgressBar,
) -> Result<Vec<Device>, LoadError> {
    let clients: Vec<reqwest::Client> = (0..usize::from(w.source_addresses.max(1)))
        .map(|i| {
            reqwest::Client::builder()
                .local_address(source(i, w))
                .timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(64)
                .build()
                .expect("HTTP client")
        })
        .collect();
    progress.set_length(w.devices as u64);
    progress.set_message("registering");
    let phones = phone_numbers("+3361", w.devices);
    let mut devices: Vec<(usize, Device)> =
        futures::stream::iter(phones.into_iter().enumerate().map(|(i, phone)| {
            let http = clients[i % clients.len()].clone();
            let base = target.urls[i % target.urls.len()].clone();
            let src = source(i, w);
            async move {
                let d = register(target, http, src, base, phone).await;
                progress.inc(1);
                d.map(|d| (i, d))
            }
        }))
        .buffer_unordered(w.register_concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    devices.sort_by_key(|(i, _)| *i);
    Ok(devices.into_iter().map(|(_, d)| d).collect())
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a device's delivery socket from its source address, offering the
/// binary subprotocol when devices send on the socket.
async fn connect(d: &Device, transport: Transport) -> Result<Socket, LoadError> {
    let fail = |e: String| LoadError::Relay(format!("websocket: {e}"));
    let url = format!("{}/v1/ws", d.base.replacen("http", "ws", 1));
    let mut request = url.into_client_request().map_err(|e| fail(e.to_string()))?;
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", d.token.expose())
            .parse()
            .map_err(|_| fail("token".into()))?,
    );
    if transport == Transport::Websocket {
        request.headers_mut().insert(
            "sec-websocket-protocol",
            binary::PROTOCOL
                .parse()
                .map_err(|_| fail("protocol".into()))?,
        );
    }
    let server: SocketAddr = d
        .base
        .trim_start_matches("http://")
        .parse()
        .map_err(|_| fail("base URL must be http://IP:PORT".into()))?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(d.source, 0))?;
    let tcp = socket.connect(server).await?;
    // As clients do: small frames go out at once, not after the last ack.
    tcp.set_nodelay(true)?;
    // tungstenite zero-fills its whole read buffer before every read, even
    // one that finds nothing: at the default 128 KiB that memset was the
    // load generator's top cost (8.7 % of its samples). Pushes are a few
    // KiB; the buffer grows for a larger frame.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(8 * 1024);
    let (ws, response) = tokio_tungstenite::client_async_with_config(
        request,
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
        Some(config),
    )
    .await
    .map_err(|e| fail(e.to_string()))?;
    if transport == Transport::Websocket
        && response.headers().get("sec-websocket-protocol").is_none()
    {
        return Err(fail(
            "the relay does not speak the binary subprotocol".into(),
        ));
    }
    Ok(ws)
}

type Answers = Arc<Mutex<HashMap<EnvelopeId, tokio::sync::oneshot::Sender<Result<(), String>>>>>;

/// A device's open socket, for sending on it: frames go out through one
/// writer task (which flushes once per burst), answers come back by id
/// through the device's receive loop.
#[derive(Clone)]
struct Link {
    out: tokio::sync::mpsc::UnboundedSender<Message>,
    answers: Answers,
    transport: Transport,
}

/// Connects a device and starts its receive loop and socket writer.
async fn open(
    d: &Device,
    transport: Transport,
    shared: Arc<Shared>,
    presence: Presence,
    stop: tokio::sync::watch::Receiver<bool>,
    drained: Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(tokio::task::JoinHandle<Received>, Link), LoadError> {
    let (mut sink, stream) = connect(d, transport).await?.split();
    let (out, mut queue) = tokio::sync::mpsc::unbounded_channel::<Message>();
    tokio::spawn(async move {
        while let Some(first) = queue.recv().await {
            let closing = matches!(first, Message::Close(_));
            if sink.feed(first).await.is_err() {
                break;
            }
            while let Ok(next) = queue.try_recv() {
                if sink.feed(next).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() || closing {
                break;
            }
        }
    });
    let link = Link {
        out,
        answers: Arc::default(),
        transport,
    };
    let receiver = tokio::spawn(receive(
        stream,
        link.clone(),
        shared,
        presence,
        stop,
        drained,
    ));
    Ok((receiver, link))
}

/// A message on its way: how many online recipients have yet to get it, and
/// the sender's window slot it holds.
pub(crate) struct Pending {
    pub(crate) remaining: usize,
    pub(crate) _slot: Option<OwnedSemaphorePermit>,
}

pub(crate) struct Shared {
    pub(crate) start: Instant,
    pub(crate) pending: Mutex<HashMap<u64, Pending>>,
    pub(crate) online_deliveries: AtomicU64,
    pub(crate) all_deliveries: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) app_bytes: AtomicU64,
    pub(crate) stop_sending: AtomicBool,
    pub(crate) errors: Mutex<Report>,
}

impl Shared {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            pending: Mutex::new(HashMap::new()),
            online_deliveries: AtomicU64::new(0),
            all_deliveries: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            app_bytes: AtomicU64::new(0),
            stop_sending: AtomicBool::new(false),
            errors: Mutex::new(Report::default()),
        })
    }

    pub(crate) fn micros(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    pub(crate) fn delivered(&self, seq: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = pending.get_mut(&seq) {
            p.remaining = p.remaining.saturating_sub(1);
            if p.remaining == 0 {
                pending.remove(&seq);
            }
        }
    }

    /// Waits until every message sent has reached its online recipients,
    /// or `limit` passes.
    pub(crate) async fn settle(&self, limit: Duration) {
        let until = Instant::now() + limit;
        while !self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
            && Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `n` deliveries (online or not) have arrived, or `limit`
    /// passes, showing the count on `progress`.
    pub(crate) async fn await_deliveries(
        &self,
        n: u64,
        limit: Duration,
        progress: &indicatif::ProgressBar,
    ) {
        let until = Instant::now() + limit;
        loop {
            let got = self.all_deliveries.load(Ordering::Relaxed);
            progress.set_position(got);
            if got >= n || Instant::now() >= until {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Moves the errors collected during the run into `report`, with the
    /// servers' peak memory.
    pub(crate) fn finish(&self, report: &mut Report, pids: &[u32]) {
        let errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        report.errors += errors.errors;
        report
            .error_samples
            .extend(errors.error_samples.iter().cloned());
        report.server_peak_rss_mib = pids
            .iter()
            .map(|&p| crate::procstat::peak_rss_bytes(p))
            .sum::<u64>() as f64
            / (1024.0 * 1024.0);
    }

    pub(crate) fn error(&self, m: impl Into<String>) {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .error(m);
    }
}

pub(crate) fn payload(seq: u64, sent_at_us: u64, size: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(size.max(16));
    p.extend_from_slice(&sent_at_us.to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.resize(size.max(16), 0x5a);
    p
}

pub(crate) fn header(p: &[u8]) -> Option<(u64, u64)> {
    let at = u64::from_le_bytes(p.get(..8)?.try_into().ok()?);
    let seq = u64::from_le_bytes(p.get(8..16)?.try_into().ok()?);
    Some((at, seq))
}

/// Who sends what to whom, and the count so far.
struct Plan {
    seq: AtomicU64,
    expected: AtomicU64,
    limit: u64,
    recipients: Vec<Vec<usize>>,
    ids: Vec<DeviceId>,
    offline: HashSet<usize>,
    shared: Arc<Shared>,
}

impl Plan {
    /// The next message from `from`: its sequence number and recipients,
    /// registered as pending on its online recipients (holding the
    /// sender's window `slot` until they all have it). `None` once the
    /// message limit is reached.
    fn next(
        &self,
        from: usize,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Option<(u64, Vec<DeviceId>)> {
        let s = self.seq.fetch_add(1, Ordering::Relaxed);
        if s >= self.limit {
            return None;
        }
        let to = &self.recipients[from];
        let online = to.iter().filter(|j| !self.offline.contains(j)).count();
        self.expected.fetch_add(to.len() as u64, Ordering::Relaxed);
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                s,
                Pending {
                    remaining: online,
                    _slot: if online > 0 { slot } else { None },
                },
            );
        Some((s, to.iter().map(|&j| self.ids[j]).collect()))
    }
}

/// Whether a receiving device was online while senders sent: only online
/// devices' latencies are the delivery latency the report gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Presence {
    /// Connected throughout.
    Online,
    /// Connected only afterwards, to drain.
    Offline,
}

/// What a receiver saw.
struct Received {
    latency: Histogram<u64>,
}

/// Reads a device's socket until `stop`, acknowledging every envelope and
/// handing answers to sends back to their senders.
async fn receive(
    mut ws: futures::stream::SplitStream<Socket>,
    link: Link,
    shared: Arc<Shared>,
    presence: Presence,
    stop: tokio::sync::watch::Receiver<bool>,
    drained: Option<tokio::sync::oneshot::Sender<()>>,
) -> Received {
    use futures::FutureExt as _;
    let mut latency = histogram();
    let mut seen: HashSet<EnvelopeId> = HashSet::new();
    let mut stop = stop;
    let mut drained = drained;
    let mut got = |e: redoubt_proto::api::Envelope, to_ack: &mut Vec<EnvelopeId>| {
        if seen.insert(e.id) {
            let now = shared.micros();
            if let Some((at, seq)) = header(e.payload.as_slice()) {
                if presence == Presence::Online {
                    let _ = latency.record(now.saturating_sub(at).max(1));
                    shared.online_deliveries.fetch_add(1, Ordering::Relaxed);
                    shared.delivered(seq);
                }
            }
            shared.all_deliveries.fetch_add(1, Ordering::Relaxed);
        } else {
            shared.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        to_ack.push(e.id);
    };
    'run: loop {
        let first = tokio::select! {
            _ = stop.changed() => break,
            f = ws.next() => f,
        };
        // Take every frame already here, then acknowledge them in one
        // frame, as a client that stores a page and then acks does.
        let mut frames = vec![first];
        while frames.len() < 256 {
            match ws.next().now_or_never() {
                Some(f) => frames.push(f),
                None => break,
            }
        }
        let mut to_ack = Vec::new();
        let mut was_drained = false;
        for frame in frames {
            match frame {
                Some(Ok(Message::Text(text))) => {
                    shared
                        .app_bytes
                        .fetch_add(text.len() as u64, Ordering::Relaxed);
                    match serde_json::from_str::<ServerFrame>(text.as_str()) {
                        Ok(ServerFrame::Envelope(e)) => got(e, &mut to_ack),
                        Ok(ServerFrame::Drained) => was_drained = true,
                        Err(_) => shared.error("unparseable frame"),
                    }
                }
                Some(Ok(Message::Binary(bytes))) => {
                    shared
                        .app_bytes
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    match ServerMessage::decode(&bytes) {
                        Ok(ServerMessage::Envelopes(batch)) => {
                            for e in batch {
                                got(e, &mut to_ack);
                            }
                        }
                        Ok(ServerMessage::Drained) => was_drained = true,
                        Ok(ServerMessage::Accepted { id, .. }) => answer(&link, id, Ok(())),
                        Ok(ServerMessage::Refused { id, status, .. }) => {
                            answer(&link, id, Err(format!("refused with {status}")))
                        }
                        Err(_) => shared.error("undecodable frame"),
                    }
                }
                Some(Ok(Message::Close(_))) | None => {
                    if !*stop.borrow() {
                        shared.error("a delivery socket closed");
                    }
                    break 'run;
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    shared.error(format!("socket: {e}"));
                    break 'run;
                }
            }
        }
        if was_drained {
            if let Some(tx) = drained.take() {
                let _ = tx.send(());
            }
        }
        if !to_ack.is_empty() {
            let ack = match link.transport {
                Transport::Websocket => Message::binary(ClientMessage::Ack(to_ack).encode()),
                Transport::Http => Message::text(
                    serde_json::to_string(&ClientFrame::Ack { ids: to_ack }).unwrap_or_default(),
                ),
            };
            if link.out.send(ack).is_err() {
                shared.error("ack failed");
                break;
            }
        }
    }
    let _ = link.out.send(Message::Close(None));
    Received { latency }
}

/// Hands the relay's answer to a send back to the sender waiting for it.
fn answer(link: &Link, id: EnvelopeId, result: Result<(), String>) {
    let waiting = link
        .answers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    if let Some(tx) = waiting {
        let _ = tx.send(result);
    }
}

/// Sends one envelope the way the workload's transport does.
async fn send(
    d: &Device,
    link: Option<&Link>,
    recipients: &[DeviceId],
    body: Vec<u8>,
    shared: &Shared,
) -> bool {
    match link {
        Some(link) if link.transport == Transport::Websocket => {
            send_on_socket(link, recipients, body, shared).await
        }
        _ => send_one(d, recipients, body, shared).await,
    }
}

/// Sends one envelope on the device's open socket and waits for its answer.
async fn send_on_socket(
    link: &Link,
    recipients: &[DeviceId],
    body: Vec<u8>,
    shared: &Shared,
) -> bool {
    let id = EnvelopeId::time_ordered();
    let frame = ClientMessage::Send(binary::Send {
        id,
        recipients: recipients.to_vec(),
        commit: None,
        payload: body,
    })
    .encode();
    let (tx, rx) = tokio::sync::oneshot::channel();
    link.answers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, tx);
    shared
        .app_bytes
        .fetch_add(frame.len() as u64, Ordering::Relaxed);
    if link.out.send(Message::binary(frame)).is_err() {
        shared.error("send: the socket is closed");
        return false;
    }
    match tokio::time::timeout(Duration::from_secs(60), rx).await {
        Ok(Ok(Ok(()))) => true,
        Ok(Ok(Err(e))) => {
            shared.error(format!("send: {e}"));
            false
        }
        Ok(Err(_)) | Err(_) => {
            shared.error("send: no answer on the socket");
            false
        }
    }
}

/// Sends one envelope; retried with the same id on transport errors so an
/// accepted message is never sent twice under two ids.
async fn send_one(d: &Device, recipients: &[DeviceId], body: Vec<u8>, shared: &Shared) -> bool {
    let request = SendRequest {
        id: EnvelopeId::time_ordered(),
        recipients: recipients.to_vec(),
        payload: body.into(),
        commit: None,
    };
    let json = serde_json::to_vec(&request).unwrap_or_default();
    for _ in 0..5 {
        let r = d
            .http
            .post(format!("{}/v1/messages", d.base))
            .bearer_auth(d.token.expose())
            .header("content-type", "application/json")
            .body(json.clone())
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => {
                shared
                    .app_bytes
                    .fetch_add(json.len() as u64, Ordering::Relaxed);
                return true;
            }
            Ok(r) => {
                shared.error(format!("send: HTTP {}", r.status()));
                return false;
            }
            Err(e) => {
                shared.error(format!("send: {}", e.without_url()));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    false
}

/// The devices kept offline while senders send: the configured fraction of
/// the recipients (never a sender), taken from the end.
pub(crate) fn offline_devices(w: &Workload, senders: &[usize]) -> HashSet<usize> {
    let recipients: Vec<usize> = (0..w.devices).filter(|i| !senders.contains(i)).collect();
    let n = ((recipients.len() as f64) * w.offline.clamp(0.0, 1.0)).round() as usize;
    recipients.iter().rev().take(n).copied().collect()
}

/// Resident memory of the server processes now, summed.
pub(crate) fn server_rss(pids: &[u32]) -> u64 {
    pids.iter().map(|&p| crate::procstat::rss_bytes(p)).sum()
}

pub(crate) fn server_cpu(pids: &[u32]) -> f64 {
    pids.iter().map(|&p| crate::procstat::cpu_seconds(p)).sum()
}

pub(crate) fn progress_bar(show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed_precise}] {pos}/{len}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Runs `w` against `target`.
pub async fn run(target: &Target, w: &Workload, show_progress: bool) -> Result<Report, LoadError> {
    let progress = progress_bar(show_progress);
    let devices = register_all(target, w, &progress).await?;
    let mut report = Report {
        system: "redoubt".into(),
        setup: target.setup.clone(),
        workload: Some(w.clone()),
        ..Report::default()
    };
    let shared = Shared::new();
    if w.idle {
        idle(target, w, &devices, &shared, &progress, &mut report).await?;
    } else if let Some(n) = w.backlog {
        backlog(target, w, &devices, n, &shared, &progress, &mut report).await?;
    } else {
        traffic(target, w, &devices, &shared, &progress, &mut report).await?;
    }
    progress.finish_and_clear();
    shared.finish(&mut report, &target.pids);
    Ok(report)
}

async fn traffic(
    target: &Target,
    w: &Workload,
    devices: &[Device],
    shared: &Arc<Shared>,
    progress: &indicatif::ProgressBar,
    report: &mut Report,
) -> Result<(), LoadError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let senders = senders(w);
    let offline = offline_devices(w, &senders);

    progress.set_message("connecting");
    progress.set_position(0);
    progress.set_length(w.devices as u64);
    let mut receivers = Vec::new();
    let mut links: Vec<Option<Link>> = vec![None; devices.len()];
    for (i, d) in devices.iter().enumerate() {
        if offline.contains(&i) {
            continue;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (receiver, link) = open(
            d,
            w.transport,
            shared.clone(),
            Presence::Online,
            stop_rx.clone(),
            Some(tx),
        )
        .await?;
        receivers.push(receiver);
        links[i] = Some(link);
        let _ = rx.await;
        progress.inc(1);
    }

    progress.set_message("sending");
    progress.set_position(0);
    progress.set_length(w.messages.unwrap_or(0));
    let cpu0 = server_cpu(&target.pids);
    let lo0 = crate::procstat::loopback_bytes();
    let t0 = Instant::now();
    let plan = Arc::new(Plan {
        seq: AtomicU64::new(0),
        expected: AtomicU64::new(0),
        limit: w.messages.unwrap_or(u64::MAX),
        recipients: (0..w.devices)
            .map(|i| recipients_of(i, w.devices, w.pattern))
            .collect(),
        ids: devices.iter().map(|d| d.device_id).collect(),
        offline: offline.clone(),
        shared: shared.clone(),
    });
    let mut tasks = Vec::new();
    match w.rate {
        None => {
            for &from in &senders {
                let (shared, d, plan) = (shared.clone(), devices[from].clone(), plan.clone());
                let link = links[from].clone();
                let window = Arc::new(Semaphore::new(w.window.max(1)));
                let size = w.message_size;
                let progress = progress.clone();
                tasks.push(tokio::spawn(async move {
                    while !shared.stop_sending.load(Ordering::Relaxed) {
                        // Time out now and then to notice the end of the run
                        // even if a message never arrives.
                        let slot = match tokio::time::timeout(
                            Duration::from_millis(200),
                            window.clone().acquire_owned(),
                        )
                        .await
                        {
                            Ok(Ok(slot)) => slot,
                            Ok(Err(_)) => break,
                            Err(_) => continue,
                        };
                        if shared.stop_sending.load(Ordering::Relaxed) {
                            break;
                        }
                        let Some((s, to)) = plan.next(from, Some(slot)) else {
                            shared.stop_sending.store(true, Ordering::Relaxed);
                            break;
                        };
                        let body = payload(s, shared.micros(), size);
                        if send(&d, link.as_ref(), &to, body, &shared).await {
                            shared.sent.fetch_add(1, Ordering::Relaxed);
                            progress.inc(1);
                        } else {
                            shared
                                .pending
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .remove(&s);
                        }
                    }
                }));
            }
        }
        Some(rate) => {
            let (shared, plan) = (shared.clone(), plan.clone());
            let devices = devices.to_vec();
            let links = links.clone();
            let size = w.message_size;
            let progress = progress.clone();
            let senders = senders.clone();
            tasks.push(tokio::spawn(async move {
                let in_flight = Arc::new(Semaphore::new(512));
                let mut tick =
                    tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut k = 0usize;
                while !shared.stop_sending.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let from = senders[k % senders.len()];
                    k += 1;
                    let Some((s, to)) = plan.next(from, None) else {
                        shared.stop_sending.store(true, Ordering::Relaxed);
                        break;
                    };
                    let Ok(permit) = in_flight.clone().acquire_owned().await else {
                        break;
                    };
                    let (shared, d, progress) =
                        (shared.clone(), devices[from].clone(), progress.clone());
                    let link = links[from].clone();
                    tokio::spawn(async move {
                        let body = payload(s, shared.micros(), size);
                        if send(&d, link.as_ref(), &to, body, &shared).await {
                            shared.sent.fetch_add(1, Ordering::Relaxed);
                            progress.inc(1);
                        }
                        drop(permit);
                    });
                }
                // Let the last sends finish.
                let _ = in_flight.acquire_many(512).await;
            }));
        }
    }
    // Send for the duration (or until the message limit stops the senders).
    let deadline = t0 + w.duration;
    while Instant::now() < deadline && !shared.stop_sending.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shared.stop_sending.store(true, Ordering::Relaxed);
    // Wake closed-loop senders waiting for a window slot.
    futures::future::join_all(tasks).await;
    // Wait for what is in flight to reach the online devices.
    progress.set_message("delivering");
    shared.settle(Duration::from_secs(30)).await;
    let seconds = t0.elapsed().as_secs_f64();
    let cpu1 = server_cpu(&target.pids);
    let lo1 = crate::procstat::loopback_bytes();

    // Offline devices come online and drain.
    progress.set_message("draining offline devices");
    let expected = plan.expected.load(Ordering::Relaxed);
    for (i, d) in devices.iter().enumerate() {
        if offline.contains(&i) {
            let (receiver, _) = open(
                d,
                w.transport,
                shared.clone(),
                Presence::Offline,
                stop_rx.clone(),
                None,
            )
            .await?;
            receivers.push(receiver);
        }
    }
    shared
        .await_deliveries(expected, Duration::from_secs(60), progress)
        .await;
    // Late duplicates would show up now; give them a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    shared.stop_sending.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let mut latency = histogram();
    for r in futures::future::join_all(receivers)
        .await
        .into_iter()
        .flatten()
    {
        let _ = latency.add(&r.latency);
    }
    let sent = shared.sent.load(Ordering::Relaxed);
    let deliveries = shared.all_deliveries.load(Ordering::Relaxed);
    report.messages_sent = sent;
    report.deliveries_expected = expected;
    report.deliveries = deliveries;
    report.duplicates = shared.duplicates.load(Ordering::Relaxed);
    report.missing = expected.saturating_sub(deliveries);
    report.seconds = seconds;
    report.deliveries_per_second =
        shared.online_deliveries.load(Ordering::Relaxed) as f64 / seconds.max(1e-9);
    report.messages_per_second = sent as f64 / seconds.max(1e-9);
    report.latency = Latency::from_micros(&latency);
    report.server_cpu_seconds = cpu1 - cpu0;
    report.server_cores = (cpu1 - cpu0) / seconds.max(1e-9);
    report.app_bytes = shared.app_bytes.load(Ordering::Relaxed);
    report.loopback_bytes = lo1.saturating_sub(lo0);
    Ok(())
}

async fn idle(
    target: &Target,
    w: &Workload,
    devices: &[Device],
    shared: &Arc<Shared>,
    progress: &indicatif::ProgressBar,
    report: &mut Report,
) -> Result<(), LoadError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let before = server_rss(&target.pids);
    progress.set_message("connecting");
    progress.set_position(0);
    progress.set_length(devices.len() as u64);
    let sockets: Vec<_> = futures::stream::iter(devices.iter().map(|d| {
        let (shared, stop_rx) = (shared.clone(), stop_rx.clone());
        async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let (task, _) =
                open(d, w.transport, shared, Presence::Online, stop_rx, Some(tx)).await?;
            let _ = rx.await;
            progress.inc(1);
            Ok::<_, LoadError>(task)
        }
    }))
    .buffer_unordered(64)
    .collect()
    .await;
    let mut held = Vec::new();
    for s in sockets {
        match s {
            Ok(t) => held.push(t),
            Err(e) => shared.error(e.to_string()),
        }
    }
    progress.set_message("holding");
    let cpu0 = server_cpu(&target.pids);
    tokio::time::sleep(w.duration).await;
    let after = server_rss(&target.pids);
    report.seconds = w.duration.as_secs_f64();
    report.server_cpu_seconds = server_cpu(&target.pids) - cpu0;
    report.server_cores = report.server_cpu_seconds / report.seconds.max(1e-9);
    report.rss_per_connection_kib =
        Some(after.saturating_sub(before) as f64 / 1024.0 / held.len().max(1) as f64);
    report.deliveries = 0;
    let _ = stop_tx.send(true);
    futures::future::join_all(held).await;
    Ok(())
}

async fn backlog(
    target: &Target,
    w: &Workload,
    devices: &[Device],
    n: u64,
    shared: &Arc<Shared>,
    progress: &indicatif::ProgressBar,
    report: &mut Report,
) -> Result<(), LoadError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (from, to) = (&devices[0], devices[1].device_id);
    // The sender's own socket, to send on (its mailbox stays empty).
    let (sender, link) = open(
        from,
        w.transport,
        shared.clone(),
        Presence::Online,
        stop_rx.clone(),
        None,
    )
    .await?;
    progress.set_message("queueing backlog");
    progress.set_position(0);
    progress.set_length(n);
    let t0 = Instant::now();
    let cpu0 = server_cpu(&target.pids);
    let lo0 = crate::procstat::loopback_bytes();
    let sent: Vec<bool> = futures::stream::iter((0..n).map(|s| {
        let (shared, link) = (shared.clone(), &link);
        async move {
            let ok = send(
                from,
                Some(link),
                &[to],
                payload(s, shared.micros(), w.message_size),
                &shared,
            )
            .await;
            progress.inc(1);
            ok
        }
    }))
    .buffer_unordered(32)
    .collect()
    .await;
    let accepted = sent.iter().filter(|ok| **ok).count() as u64;
    let queue_seconds = t0.elapsed().as_secs_f64();
    progress.set_message("draining");
    progress.set_position(0);
    let t1 = Instant::now();
    let (task, _) = open(
        &devices[1],
        w.transport,
        shared.clone(),
        Presence::Offline,
        stop_rx,
        None,
    )
    .await?;
    shared
        .await_deliveries(accepted, Duration::from_secs(600), progress)
        .await;
    let drain = t1.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let _ = task.await;
    let _ = sender.await;
    report.messages_sent = accepted;
    report.deliveries_expected = accepted;
    report.deliveries = shared.all_deliveries.load(Ordering::Relaxed);
    report.duplicates = shared.duplicates.load(Ordering::Relaxed);
    report.missing = accepted.saturating_sub(report.deliveries);
    report.seconds = queue_seconds;
    report.messages_per_second = accepted as f64 / queue_seconds.max(1e-9);
    report.drain_seconds = Some(drain);
    report.drain_per_second = Some(report.deliveries as f64 / drain.max(1e-9));
    report.server_cpu_seconds = server_cpu(&target.pids) - cpu0;
    report.server_cores = report.server_cpu_seconds / (queue_seconds + drain).max(1e-9);
    report.app_bytes = shared.app_bytes.load(Ordering::Relaxed);
    report.loopback_bytes = crate::procstat::loopback_bytes().saturating_sub(lo0);
    Ok(())
}
