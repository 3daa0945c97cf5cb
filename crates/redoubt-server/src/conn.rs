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
            let held = Held {
                tcp,
                _place: place,
                owed: None,
            };
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
    /// The rest of a rewritten error answer still to write, and how much of
    /// it is written (boxed: an idle WebSocket keeps this struct for life).
    owed: Option<Box<(Vec<u8>, usize)>>,
}

/// hyper answers a request it cannot parse itself, before the app sees
/// it, with a bare head: `400`, `414` or `431` and `content-length: 0`. Every
/// other error of the relay is a JSON body with a stable code (invariant
/// 4), and clients branch on it; hyper offers no hook for that answer, so
/// its head is recognised here, on its way out, and given the body. No
/// answer of the app matches (each of its errors has a content type), and
/// neither can a WebSocket frame (those never start with `H`).
pub(crate) fn bare_error_with_body(head: &[u8]) -> Option<Vec<u8>> {
    const LENGTH: &[u8] = b"\r\ncontent-length: 0\r\n";
    let status = head.get(..12)?;
    let (code, message) = match status {
        b"HTTP/1.1 400" => (
            redoubt_proto::ErrorCode::InvalidRequest,
            "the request is not valid HTTP/1.1",
        ),
        b"HTTP/1.1 414" => (
            redoubt_proto::ErrorCode::HeadersTooLarge,
            "the request target is longer than the server reads",
        ),
        b"HTTP/1.1 431" => (
            redoubt_proto::ErrorCode::HeadersTooLarge,
            "the request headers are larger than the server reads",
        ),
        _ => return None,
    };
    if !head.ends_with(b"\r\n\r\n")
        || head.windows(4).filter(|w| w == b"\r\n\r\n").count() != 1
        || contains(head, b"content-type:")
    {
        return None;
    }
    let at = head.windows(LENGTH.len()).position(|w| w == LENGTH)?;
    let body = serde_json::to_vec(&redoubt_proto::ErrorBody {
        error: redoubt_proto::ErrorDetail {
            code,
            message: message.into(),
            devices: Vec::new(),
            market: None,
        },
    })
    .ok()?;
    let mut out = Vec::with_capacity(head.len() + body.len() + 48);
    out.extend_from_slice(&head[..at]);
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&head[at + LENGTH.len()..]);
    out.extend_from_slice(&body);
    Some(out)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

impl Held {
    /// Writes what is owed of a rewritten answer; ready once all is.
    fn pay(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        use tokio::io::AsyncWrite as _;
        while let Some(owed) = &mut self.owed {
            let (bytes, done) = &mut **owed;
            if *done == bytes.len() {
                self.owed = None;
                break;
            }
            match std::pin::Pin::new(&mut self.tcp).poll_write(cx, &bytes[*done..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => *done += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `buf` whole as a rewritten answer, if it is hyper's bare one.
    fn rewrite(
        &mut self,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Option<std::task::Poll<std::io::Result<usize>>> {
        if buf.first() != Some(&b'H') {
            return None;
        }
        let answer = bare_error_with_body(buf)?;
        self.owed = Some(Box::new((answer, 0)));
        // The caller's bytes are taken; the rest is written on later polls
        // (hyper flushes next).
        Some(match self.pay(cx) {
            std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
            _ => std::task::Poll::Ready(Ok(buf.len())),
        })
    }
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
        let this = self.get_mut();
        std::task::ready!(this.pay(cx))?;
        if let Some(done) = this.rewrite(cx, buf) {
            return done;
        }
        std::pin::Pin::new(&mut this.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.pay(cx))?;
        // hyper writes a head as the first slice of its own.
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            if let Some(done) = this.rewrite(cx, first) {
                return done;
            }
        }
        std::pin::Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.pay(cx))?;
        std::pin::Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.pay(cx))?;
        std::pin::Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_bare_error_heads_get_a_json_body() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Tue, 08 Dec 2026 00:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(bare_error_with_body(head).unwrap()).unwrap();
        let (head_out, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head_out.starts_with("HTTP/1.1 431 "));
        assert!(head_out.contains("content-type: application/json"));
        assert!(head_out.contains(&format!("content-length: {}", body.len())));
        assert!(head_out.contains("date: "));
        let parsed: redoubt_proto::ErrorBody = serde_json::from_str(body).unwrap();
        assert_eq!(parsed.error.code, redoubt_proto::ErrorCode::HeadersTooLarge);
        // The app's own answers, and anything else, pass untouched.
        for other in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            b"\x82\x05hello",
        ] {
            assert_eq!(bare_error_with_body(other), None);
        }
    }

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
