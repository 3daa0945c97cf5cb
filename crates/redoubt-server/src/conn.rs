//! Accepting connections so that one hostile address cannot starve the
//! others (issue 16, item 5): the open-file limit raised at start-up, a cap
//! on the connections one address (an IPv6 /64) may hold open, and
//! deadlines on reading a request's headers and body.
//!
//! Why an accept loop of its own rather than `axum::serve`: hyper enforces
//! its header-read deadline only with a timer, which `axum::serve` does not
//! give it, so an idle connection or headers sent a byte every few seconds
//! stayed open for good. Here hyper gets tokio's timer; the deadline also
//! covers the wait for the next request on a kept-alive connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

use crate::config::HttpConfig;

/// Raises this process's soft limit on open files to its hard limit, and
/// returns the new soft limit. At the usual default of 1,024 a thousand
/// idle connections from anyone made the relay refuse everyone, its health
/// check included.
pub fn raise_open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).ok()?;
        rlimit::increase_nofile_limit(hard).ok()
    }
    #[cfg(not(unix))]
    None
}

/// Whom a connection is counted against: an IPv4 address, or an IPv6 /64
/// (one subscriber's prefix, which holds as many addresses as it likes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Holder {
    V4(u32),
    V6(u64),
}

impl Holder {
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(u32::from(v4)),
                None => Self::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// Open connections per holder, with a cap.
#[derive(Clone)]
pub(crate) struct Admission {
    open: Arc<Mutex<HashMap<Holder, usize>>>,
    cap: usize,
    exempt: Arc<Vec<IpAddr>>,
}

/// One admitted connection; dropping it frees its place.
pub(crate) struct Admitted {
    holder: Option<Holder>,
    open: Arc<Mutex<HashMap<Holder, usize>>>,
}

impl Admission {
    pub(crate) fn new(config: &HttpConfig) -> Self {
        Self {
            open: Arc::default(),
            cap: config.max_connections_per_address,
            // A trusted proxy carries everyone's connections.
            exempt: Arc::new(config.trusted_proxies.clone()),
        }
    }

    /// A place for a connection from `ip`, or `None` when its holder is at
    /// the cap.
    pub(crate) fn admit(&self, ip: IpAddr) -> Option<Admitted> {
        if self.exempt.contains(&ip) {
            return Some(Admitted {
                holder: None,
                open: self.open.clone(),
            });
        }
        let holder = Holder::of(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(holder).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(Admitted {
            holder: Some(holder),
            open: self.open.clone(),
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let Some(holder) = self.holder else { return };
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&holder) {
            *count -= 1;
            if *count == 0 {
                open.remove(&holder);
            }
        }
    }
}

/// Serves `app` on `listener` until `stop` resolves; then stops accepting
/// and returns a future that resolves once every open connection has
/// finished (the caller bounds how long it waits).
pub(crate) async fn accept_loop(
    listener: TcpListener,
    app: axum::Router,
    config: &HttpConfig,
    stop: impl std::future::Future<Output = ()>,
) -> impl std::future::Future<Output = ()> {
    let admission = Admission::new(config);
    // HTTP/1.1 only: clients and proxies speak it to the relay (WebSockets
    // need it), and serving HTTP/2 in clear as well means first reading
    // which one the client speaks, a wait with no deadline of its own.
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout);
    let graceful = GracefulShutdown::new();
    let mut refused_logged = false;
    tokio::pin!(stop);
    loop {
        let (tcp, remote) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors or a connection reset before it
                    // was accepted: the listener itself is fine. Pause so
                    // a full descriptor table is not a busy loop.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(place) = admission.admit(remote.ip()) else {
            // Closed at once, before any byte is read. Logged once per
            // start, without the address (it is user data).
            if !refused_logged {
                refused_logged = true;
                tracing::warn!(
                    "refusing connections from an address at http.max_connections_per_address"
                );
            }
            continue;
        };
        // No Nagle delay: a pushed envelope or a send's answer is one small
        // write that the peer waits for, and Nagle would hold it until the
        // previous one is acknowledged (up to 40 ms with delayed acks).
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
            request.extensions_mut().insert(ConnectInfo(remote));
            app.clone().oneshot(request.map(axum::body::Body::new))
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let first_byte = config.header_timeout;
        tokio::spawn(async move {
            // hyper's header deadline starts at the first byte, so a
            // connection that sends nothing is timed here.
            let mut byte = [0u8; 1];
            match tokio::time::timeout(first_byte, tcp.peek(&mut byte)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            // The place goes with the socket, so that a WebSocket, which
            // outlives this task once upgraded, still counts.
            let held = Held { tcp, _place: place };
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(held), service)
                .into_owned();
            // A client that goes away mid-request is its own business.
            let _ = watcher.watch(connection).await;
        });
    }
    drop(listener);
    graceful.shutdown()
}

/// A connection's socket with its place under the cap.
struct Held {
    tcp: tokio::net::TcpStream,
    _place: Admitted,
}

impl tokio::io::AsyncRead for Held {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Held {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v6_prefix_is_one_holder_and_mapped_v4_is_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Holder::of(a), Holder::of(b));
        assert_ne!(Holder::of(a), Holder::of(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(Holder::of(mapped), Holder::of(v4));
    }

    #[test]
    fn places_are_capped_per_holder_and_freed_on_drop() {
        let config = HttpConfig {
            max_connections_per_address: 2,
            trusted_proxies: vec!["10.0.0.1".parse().unwrap()],
            ..HttpConfig::default()
        };
        let admission = Admission::new(&config);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let first = admission.admit(ip).unwrap();
        let _second = admission.admit(ip).unwrap();
        assert!(admission.admit(ip).is_none());
        assert!(admission.admit("192.0.2.2".parse().unwrap()).is_some());
        drop(first);
        assert!(admission.admit(ip).is_some());
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..10).map(|_| admission.admit(proxy).unwrap()).collect();
        assert_eq!(held.len(), 10, "trusted proxies are not capped");
    }
}
