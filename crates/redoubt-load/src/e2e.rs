//! E2E mode: every simulated device is a real `redoubt-client` profile
//! (its own encrypted store and OpenMLS state), chats are real MLS groups,
//! and every message is encrypted by the sender and decrypted by each
//! recipient, so the numbers cover the whole path a user's message takes.
//! Heavier per device than relay mode; use tens of devices, not thousands.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use redoubt_client::model::ChatRecord;
use redoubt_client::seal::KdfParams;
use redoubt_client::{Client, ClientConfig};
use redoubt_proto::PhoneNumber;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::relay::{phone_numbers, progress_bar, server_cpu, Pending, Shared, Target};
use crate::report::{histogram, Latency, Report};
use crate::workload::{recipients_of, senders, Pattern, Workload};
use crate::LoadError;

const PASSPHRASE: &str = "redoubt-load";

fn config() -> ClientConfig {
    ClientConfig {
        // Profiles are throwaway; a cheap key derivation keeps set-up short.
        kdf: KdfParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        },
        key_packages: 10,
        ..ClientConfig::default()
    }
}

/// The text of message `seq`: a parseable header, then padding.
fn text(seq: u64, at: u64, size: usize) -> String {
    let mut t = format!("load:{at}:{seq}:");
    while t.len() < size {
        t.push('x');
    }
    t
}

fn parse(text: &str) -> Option<(u64, u64)> {
    let mut parts = text.strip_prefix("load:")?.split(':');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Runs `w` with real clients against `target`.
pub async fn run(target: &Target, w: &Workload, show_progress: bool) -> Result<Report, LoadError> {
    let progress = progress_bar(show_progress);
    let dirs = tempfile::tempdir()?;
    let mut report = Report {
        system: "redoubt".into(),
        setup: format!("{}, e2e (OpenMLS clients)", target.setup),
        workload: Some(w.clone()),
        ..Report::default()
    };
    // Register sequentially-ish: each profile derives keys and uploads
    // key packages.
    progress.set_message("registering clients");
    progress.set_length(w.devices as u64);
    let mut clients = Vec::new();
    // A block apart from relay mode's, so the two never share an account.
    for (i, phone) in phone_numbers("+3362", w.devices).into_iter().enumerate() {
        let base = &target.urls[i % target.urls.len()];
        let request = Client::request_code(base, &phone, &config()).await?;
        let code = target
            .codes
            .wait(phone.e164())
            .await
            .ok_or_else(|| LoadError::Relay("no code arrived".into()))?;
        let client = Client::register(
            &dirs.path().join(format!("d{i}")),
            PASSPHRASE,
            &request,
            &code,
            "load",
            config(),
        )
        .await?;
        clients.push(client);
        progress.inc(1);
    }
    // Chats: pairs start direct chats, the first member of each group
    // creates it with the others.
    progress.set_message("creating chats");
    let mut chats: Vec<Option<ChatRecord>> = vec![None; w.devices];
    let size = match w.pattern {
        Pattern::OneToOne => 2,
        Pattern::Group { size } => size.max(2),
    };
    for first in (0..w.devices).step_by(size) {
        let members: Vec<usize> = (first..(first + size).min(w.devices)).collect();
        if members.len() < 2 {
            continue;
        }
        let phones: Vec<PhoneNumber> = members[1..]
            .iter()
            .map(|&j| clients[j].phone().clone())
            .collect();
        let chat = match w.pattern {
            Pattern::OneToOne => clients[first].start_direct(&phones[0]).await?,
            Pattern::Group { .. } => {
                clients[first]
                    .create_group(&format!("load-{first}"), &phones)
                    .await?
            }
        };
        chats[first] = Some(chat);
        for &j in &members[1..] {
            clients[j].sync().await?;
            let name = match w.pattern {
                Pattern::OneToOne => clients[first].phone().e164().to_owned(),
                Pattern::Group { .. } => format!("load-{first}"),
            };
            chats[j] = Some(clients[j].find_chat(&name).await?);
        }
    }

    let shared = Shared::new();
    let sender_set: HashSet<usize> = senders(w).into_iter().collect();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let limit = w.messages.unwrap_or(u64::MAX);
    let seq = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let expected = Arc::new(std::sync::atomic::AtomicU64::new(0));
    progress.set_message("sending");
    progress.set_position(0);
    let cpu0 = server_cpu(&target.pids);
    let lo0 = crate::procstat::loopback_bytes();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        let (url, token) = client.ws_endpoint();
        let mut request = url
            .into_client_request()
            .map_err(|e| LoadError::Relay(e.to_string()))?;
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {}", token.expose())
                .parse()
                .map_err(|_| LoadError::Relay("token".into()))?,
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| LoadError::Relay(e.to_string()))?;
        let chat = chats[i].clone();
        let sends = sender_set.contains(&i) && chat.is_some();
        let to = recipients_of(i, w.devices, w.pattern).len();
        let window = Arc::new(Semaphore::new(w.window.max(1)));
        let (shared, seq, expected, progress) = (
            shared.clone(),
            seq.clone(),
            expected.clone(),
            progress.clone(),
        );
        let mut stop = stop_rx.clone();
        let message_size = w.message_size;
        tasks.push(tokio::spawn(async move {
            let mut latency = histogram();
            loop {
                let may_send = sends && !shared.stop_sending.load(Ordering::Relaxed);
                tokio::select! {
                    _ = stop.changed() => break,
                    frame = ws.next() => {
                        if frame.is_none() { break; }
                        match client.sync().await {
                            Ok(report) => for m in report.messages {
                                if let Some((at, s)) = parse(&m.text) {
                                    let _ = latency.record(shared.micros().saturating_sub(at).max(1));
                                    shared.online_deliveries.fetch_add(1, Ordering::Relaxed);
                                    shared.all_deliveries.fetch_add(1, Ordering::Relaxed);
                                    shared.delivered(s);
                                }
                            },
                            Err(e) => shared.error(format!("sync: {e}")),
                        }
                    }
                    slot = window.clone().acquire_owned(), if may_send => {
                        let Ok(slot) = slot else { break };
                        let s = seq.fetch_add(1, Ordering::Relaxed);
                        if s >= limit {
                            shared.stop_sending.store(true, Ordering::Relaxed);
                            continue;
                        }
                        expected.fetch_add(to as u64, Ordering::Relaxed);
                        shared.pending.lock().unwrap_or_else(|p| p.into_inner())
                            .insert(s, Pending { remaining: to, _slot: Some(slot) });
                        let Some(chat) = chat.as_ref() else { continue };
                        match client.send_text(chat, &text(s, shared.micros(), message_size)).await {
                            Ok(_) => {
                                shared.sent.fetch_add(1, Ordering::Relaxed);
                                progress.inc(1);
                            }
                            Err(e) => {
                                shared.error(format!("send: {e}"));
                                shared.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&s);
                            }
                        }
                    }
                    // Re-check the stop flag now and then.
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
            latency
        }));
    }
    while t0.elapsed() < w.duration && !shared.stop_sending.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shared.stop_sending.store(true, Ordering::Relaxed);
    progress.set_message("delivering");
    shared.settle(Duration::from_secs(30)).await;
    let seconds = t0.elapsed().as_secs_f64();
    let cpu1 = server_cpu(&target.pids);
    let _ = stop_tx.send(true);
    let mut latency = histogram();
    for h in futures::future::join_all(tasks).await.into_iter().flatten() {
        let _ = latency.add(&h);
    }
    progress.finish_and_clear();
    let sent = shared.sent.load(Ordering::Relaxed);
    let expected = expected.load(Ordering::Relaxed);
    report.messages_sent = sent;
    report.deliveries_expected = expected;
    report.deliveries = shared.all_deliveries.load(Ordering::Relaxed);
    report.missing = expected.saturating_sub(report.deliveries);
    report.seconds = seconds;
    report.deliveries_per_second = report.deliveries as f64 / seconds.max(1e-9);
    report.messages_per_second = sent as f64 / seconds.max(1e-9);
    report.latency = Latency::from_micros(&latency);
    report.server_cpu_seconds = cpu1 - cpu0;
    report.server_cores = (cpu1 - cpu0) / seconds.max(1e-9);
    report.loopback_bytes = crate::procstat::loopback_bytes().saturating_sub(lo0);
    shared.finish(&mut report, &target.pids);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_carry_time_and_sequence() {
        let t = text(42, 1234, 64);
        assert_eq!(t.len(), 64);
        assert_eq!(parse(&t), Some((1234, 42)));
        assert_eq!(parse("hello"), None);
    }
}
