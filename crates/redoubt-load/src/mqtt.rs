//! The same workload against an MQTT broker, the closest store-and-forward
//! peer: Mosquitto with QoS 1 and persistent sessions (`clean_session =
//! false`), so messages for a disconnected client wait for it as envelopes
//! wait in a Redoubt mailbox.
//!
//! Mapping: a device is a client subscribed to its own topic (one to one)
//! or to its group's topic (groups: one publish, fan-out in the broker, as
//! one upload fans out in the relay). A group member also receives its own
//! publish, which it ignores. Differences that favour the peer are listed
//! in `BENCHMARKS.md`: no authentication per message, no registration, and
//! Mosquitto writes its persistence file every `autosave_interval` rather
//! than committing each message before acknowledging it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};

use crate::relay::{
    header, offline_devices, payload, progress_bar, server_cpu, server_rss, Pending, Presence,
    Shared,
};
use crate::report::{histogram, Latency, Report};
use crate::workload::{recipients_of, senders, Pattern, Workload};
use crate::LoadError;

/// A Mosquitto started by the tool on a free port, with its own
/// configuration and persistence directory.
pub struct Broker {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Starts `binary` (such as `/usr/sbin/mosquitto`).
    pub fn start(binary: &Path) -> Result<Self, LoadError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = tempfile::tempdir()?;
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nmax_queued_messages 0\nmax_inflight_messages 100\n\
                 max_connections -1\nlog_dest none\n",
                dir.path().display()
            ),
        )?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| LoadError::Spawn {
                what: "mosquitto",
                detail: format!("{}: {e}", binary.display()),
            })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(LoadError::Spawn {
                    what: "mosquitto",
                    detail: "it did not listen".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            child,
            port,
            _dir: dir,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The default binary's path.
    pub fn default_binary() -> PathBuf {
        PathBuf::from("/usr/sbin/mosquitto")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn topic(run: &str, i: usize, pattern: Pattern) -> String {
    match pattern {
        Pattern::OneToOne => format!("r/{run}/{i}"),
        Pattern::Group { size } => format!("g/{run}/{}", i / size.max(2)),
    }
}

struct Peer {
    client: AsyncClient,
    /// Sequence numbers this device published (ignored when they come back
    /// through its own group subscription).
    mine: Arc<Mutex<HashSet<u64>>>,
}

/// What every connection of one run shares.
struct Run<'a> {
    id: &'a str,
    port: u16,
    w: &'a Workload,
    shared: &'a Arc<Shared>,
    stop: &'a tokio::sync::watch::Receiver<bool>,
}

type Delivery = tokio::task::JoinHandle<hdrhistogram::Histogram<u64>>;

/// Connects device `i`, subscribes, and spawns its event loop, which
/// records deliveries until the run stops. Returns when the subscription
/// is acknowledged.
async fn connect(
    r: &Run<'_>,
    i: usize,
    presence: Presence,
    mine: Arc<Mutex<HashSet<u64>>>,
) -> Result<(Peer, Delivery), LoadError> {
    let (run, port, w, shared, stop) = (r.id, r.port, r.w, r.shared, r.stop.clone());
    let mut options = MqttOptions::new(format!("load-{run}-{i}"), "127.0.0.1", port);
    options
        .set_keep_alive(Duration::from_secs(60))
        .set_clean_session(false)
        .set_inflight(100)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, eventloop) = AsyncClient::new(options, 1000);
    client
        .subscribe(topic(run, i, w.pattern), QoS::AtLeastOnce)
        .await
        .map_err(|e| LoadError::Broker(e.to_string()))?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(event_loop(
        eventloop,
        shared.clone(),
        presence,
        stop,
        mine.clone(),
        ready_tx,
    ));
    let _ = ready_rx.await;
    Ok((Peer { client, mine }, task))
}

async fn event_loop(
    mut eventloop: EventLoop,
    shared: Arc<Shared>,
    presence: Presence,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mine: Arc<Mutex<HashSet<u64>>>,
    ready: tokio::sync::oneshot::Sender<()>,
) -> hdrhistogram::Histogram<u64> {
    let mut latency = histogram();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut ready = Some(ready);
    loop {
        let event = tokio::select! {
            _ = stop.changed() => break,
            e = eventloop.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                shared.sent.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                shared
                    .app_bytes
                    .fetch_add((p.payload.len() + p.topic.len()) as u64, Ordering::Relaxed);
                let Some((at, seq)) = header(&p.payload) else {
                    continue;
                };
                if mine
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&seq)
                {
                    continue;
                }
                if !seen.insert(seq) {
                    shared.duplicates.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if presence == Presence::Online {
                    let _ = latency.record(shared.micros().saturating_sub(at).max(1));
                    shared.online_deliveries.fetch_add(1, Ordering::Relaxed);
                    shared.delivered(seq);
                }
                shared.all_deliveries.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => {
                if !*stop.borrow() {
                    shared.error(format!("mqtt: {e}"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    latency
}

/// Runs `w` against the broker on `port` (process `pid` for CPU and memory).
pub async fn run(
    port: u16,
    pid: Option<u32>,
    w: &Workload,
    show_progress: bool,
) -> Result<Report, LoadError> {
    let progress = progress_bar(show_progress);
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let pids: Vec<u32> = pid.into_iter().collect();
    let shared = Shared::new();
    let mut report = Report {
        system: "mosquitto".into(),
        setup: "Mosquitto, QoS 1, persistent sessions".into(),
        workload: Some(w.clone()),
        ..Report::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let run = Run {
        id: &run_id,
        port,
        w,
        shared: &shared,
        stop: &stop_rx,
    };
    let offline: HashSet<usize> = if w.backlog.is_some() {
        [1].into()
    } else {
        offline_devices(w, &senders(w))
    };
    let rss0 = server_rss(&pids);

    // Connect everyone; offline devices subscribe (so the broker keeps their
    // messages) and disconnect.
    progress.set_message("connecting");
    progress.set_length(w.devices as u64);
    let mut peers: Vec<Option<Peer>> = Vec::new();
    let mut tasks = Vec::new();
    // The first connection of an offline device only sets up its session;
    // what its event loop sees as the connection drops is not the run's.
    let scratch = Shared::new();
    let setup = Run {
        id: &run_id,
        port,
        w,
        shared: &scratch,
        stop: &stop_rx,
    };
    for i in 0..w.devices {
        let mine = Arc::new(Mutex::new(HashSet::new()));
        let on = if offline.contains(&i) { &setup } else { &run };
        let (peer, task) = connect(on, i, Presence::Online, mine).await?;
        if offline.contains(&i) {
            let _ = peer.client.disconnect().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            task.abort();
            peers.push(None);
        } else {
            tasks.push(task);
            peers.push(Some(peer));
        }
        progress.inc(1);
    }

    if w.idle {
        progress.set_message("holding");
        let cpu0 = server_cpu(&pids);
        tokio::time::sleep(w.duration).await;
        let rss1 = server_rss(&pids);
        report.seconds = w.duration.as_secs_f64();
        report.server_cpu_seconds = server_cpu(&pids) - cpu0;
        report.server_cores = report.server_cpu_seconds / report.seconds;
        report.rss_per_connection_kib =
            Some(rss1.saturating_sub(rss0) as f64 / 1024.0 / w.devices.max(1) as f64);
    } else if let Some(n) = w.backlog {
        let sender = peers[0].as_ref().expect("sender online");
        let t = topic(&run_id, 1, w.pattern);
        progress.set_message("queueing backlog");
        progress.set_position(0);
        progress.set_length(n);
        let t0 = Instant::now();
        let cpu0 = server_cpu(&pids);
        let lo0 = crate::procstat::loopback_bytes();
        for s in 0..n {
            sender
                .client
                .publish(
                    &t,
                    QoS::AtLeastOnce,
                    false,
                    payload(s, shared.micros(), w.message_size),
                )
                .await
                .map_err(|e| LoadError::Broker(e.to_string()))?;
            progress.inc(1);
        }
        while shared.sent.load(Ordering::Relaxed) < n && t0.elapsed() < Duration::from_secs(600) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let queue_seconds = t0.elapsed().as_secs_f64();
        progress.set_message("draining");
        let t1 = Instant::now();
        let (_peer, task) = connect(
            &run,
            1,
            Presence::Offline,
            Arc::new(Mutex::new(HashSet::new())),
        )
        .await?;
        tasks.push(task);
        shared
            .await_deliveries(n, Duration::from_secs(600), &progress)
            .await;
        let drain = t1.elapsed().as_secs_f64();
        report.messages_sent = shared.sent.load(Ordering::Relaxed);
        report.deliveries_expected = n;
        report.deliveries = shared.all_deliveries.load(Ordering::Relaxed);
        report.missing = n.saturating_sub(report.deliveries);
        report.seconds = queue_seconds;
        report.messages_per_second = n as f64 / queue_seconds.max(1e-9);
        report.drain_seconds = Some(drain);
        report.drain_per_second = Some(report.deliveries as f64 / drain.max(1e-9));
        report.server_cpu_seconds = server_cpu(&pids) - cpu0;
        report.server_cores = report.server_cpu_seconds / (queue_seconds + drain).max(1e-9);
        report.loopback_bytes = crate::procstat::loopback_bytes().saturating_sub(lo0);
    } else {
        traffic(
            &run,
            &pids,
            &peers,
            &offline,
            &progress,
            &mut report,
            &mut tasks,
        )
        .await?;
    }
    let _ = stop_tx.send(true);
    let mut latency = histogram();
    for h in futures::future::join_all(tasks).await.into_iter().flatten() {
        let _ = latency.add(&h);
    }
    if report.latency.count == 0 && !latency.is_empty() {
        report.latency = Latency::from_micros(&latency);
    }
    for p in peers.into_iter().flatten() {
        let _ = p.client.disconnect().await;
    }
    progress.finish_and_clear();
    report.duplicates = shared.duplicates.load(Ordering::Relaxed);
    report.app_bytes = shared.app_bytes.load(Ordering::Relaxed);
    shared.finish(&mut report, &pids);
    Ok(report)
}

async fn traffic(
    run: &Run<'_>,
    pids: &[u32],
    peers: &[Option<Peer>],
    offline: &HashSet<usize>,
    progress: &indicatif::ProgressBar,
    report: &mut Report,
    tasks: &mut Vec<Delivery>,
) -> Result<(), LoadError> {
    let (run_id, w, shared) = (run.id, run.w, run.shared);
    progress.set_message("sending");
    progress.set_position(0);
    let cpu0 = server_cpu(pids);
    let lo0 = crate::procstat::loopback_bytes();
    let t0 = Instant::now();
    let mut seq = 0u64;
    let mut expected = 0u64;
    let limit = w.messages.unwrap_or(u64::MAX);
    let senders = senders(w);
    let windows: Vec<Arc<tokio::sync::Semaphore>> = (0..w.devices)
        .map(|_| Arc::new(tokio::sync::Semaphore::new(w.window.max(1))))
        .collect();
    let interval = w
        .rate
        .map(|r| Duration::from_secs_f64(senders.len() as f64 / r.max(0.001)));
    // One loop serves every sender in turn: a sender whose window is full is
    // skipped this round (closed loop), or waits its turn (fixed rate).
    let mut last_round = Instant::now();
    'run: while t0.elapsed() < w.duration && seq < limit {
        let mut progressed = false;
        for &from in &senders {
            if seq >= limit || t0.elapsed() >= w.duration {
                break 'run;
            }
            let Ok(slot) = windows[from].clone().try_acquire_owned() else {
                continue;
            };
            let Some(peer) = peers[from].as_ref() else {
                continue;
            };
            let to = recipients_of(from, w.devices, w.pattern);
            let online = to.iter().filter(|j| !offline.contains(j)).count();
            expected += to.len() as u64;
            let s = seq;
            seq += 1;
            shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    s,
                    Pending {
                        remaining: online,
                        _slot: if online > 0 { Some(slot) } else { None },
                    },
                );
            peer.mine
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(s);
            let body = payload(s, shared.micros(), w.message_size);
            let topics: Vec<String> = match w.pattern {
                Pattern::OneToOne => to.iter().map(|&j| topic(run_id, j, w.pattern)).collect(),
                Pattern::Group { .. } => vec![topic(run_id, from, w.pattern)],
            };
            for t in topics {
                if let Err(e) = peer
                    .client
                    .publish(t, QoS::AtLeastOnce, false, body.clone())
                    .await
                {
                    shared.error(format!("publish: {e}"));
                }
            }
            progress.inc(1);
            progressed = true;
        }
        if let Some(every) = interval {
            let next = last_round + every;
            tokio::time::sleep_until(next.into()).await;
            last_round = next;
        } else if !progressed {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    progress.set_message("delivering");
    shared.settle(Duration::from_secs(30)).await;
    let seconds = t0.elapsed().as_secs_f64();
    let cpu1 = server_cpu(pids);
    let lo1 = crate::procstat::loopback_bytes();
    // Offline devices reconnect to their persistent sessions and drain.
    for &i in offline {
        let (_peer, task) = connect(
            run,
            i,
            Presence::Offline,
            Arc::new(Mutex::new(HashSet::new())),
        )
        .await?;
        tasks.push(task);
    }
    shared
        .await_deliveries(expected, Duration::from_secs(60), progress)
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    report.messages_sent = seq;
    report.deliveries_expected = expected;
    report.deliveries = shared.all_deliveries.load(Ordering::Relaxed);
    report.missing = expected.saturating_sub(report.deliveries);
    report.seconds = seconds;
    report.deliveries_per_second =
        shared.online_deliveries.load(Ordering::Relaxed) as f64 / seconds.max(1e-9);
    report.messages_per_second = seq as f64 / seconds.max(1e-9);
    report.server_cpu_seconds = cpu1 - cpu0;
    report.server_cores = (cpu1 - cpu0) / seconds.max(1e-9);
    report.loopback_bytes = lo1.saturating_sub(lo0);
    Ok(())
}
