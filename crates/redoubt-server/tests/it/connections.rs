//! Issue 16, item 5: one address cannot starve the others of connections,
//! and connections that send nothing, or send it a byte at a time, are
//! closed.

use std::net::SocketAddr;
use std::time::Duration;

use test_support::{ServerProcess, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection to `server` from the loopback address `from`.
async fn connect_from(server: SocketAddr, from: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    socket.connect(server).await.unwrap()
}

/// Whether the server closed `stream` within `patience` (reading any
/// response it sent first).
async fn closed_within(stream: &mut TcpStream, patience: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

async fn health_from(server: &str, from: &str) -> reqwest::StatusCode {
    reqwest::Client::builder()
        .local_address(from.parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .get(format!("{server}/healthz"))
        .send()
        .await
        .expect("the relay answers")
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_more_than_its_share_of_connections() {
    let server = TestServer::builder()
        .configure(|c| c.http.max_connections_per_address = 20)
        .start()
        .await;
    let mut held = Vec::new();
    for _ in 0..50 {
        held.push(connect_from(server.addr, "127.0.0.3").await);
    }
    let mut open = 0;
    for stream in &mut held {
        if !closed_within(stream, Duration::from_millis(300)).await {
            open += 1;
        }
    }
    assert_eq!(open, 20, "the relay kept exactly its cap of connections");
    // Everyone else is served meanwhile.
    assert_eq!(health_from(&server.base_url(), "127.0.0.4").await, 200);
    // Once the address lets go, it is served again.
    drop(held);
    test_support::eventually("the address is served again", || async {
        reqwest::Client::builder()
            .local_address("127.0.0.3".parse::<std::net::IpAddr>().unwrap())
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap()
            .get(server.url("/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_are_closed() {
    let server = TestServer::builder()
        .configure(|c| {
            c.http.header_timeout = Duration::from_secs(1);
            c.http.body_timeout = Duration::from_secs(1);
        })
        .start()
        .await;
    // Nothing at all.
    let mut idle = connect_from(server.addr, "127.0.0.5").await;
    // Headers a byte at a time, forever.
    let mut slow_headers = connect_from(server.addr, "127.0.0.5").await;
    let dripping = tokio::spawn(async move {
        slow_headers
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if slow_headers.write_all(b"X").await.is_err() {
                return true;
            }
        }
        closed_within(&mut slow_headers, Duration::from_millis(10)).await
    });
    // A body promised and never sent.
    let mut slow_body = connect_from(server.addr, "127.0.0.5").await;
    slow_body
        .write_all(
            b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 1000\r\nAuthorization: Bearer nothing\r\n\r\n{\"id\":",
        )
        .await
        .unwrap();

    // One request, then nothing: the kept-alive connection is closed too.
    let mut kept_alive = connect_from(server.addr, "127.0.0.5").await;
    kept_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = [0u8; 12];
    kept_alive.read_exact(&mut response).await.unwrap();
    assert_eq!(&response, b"HTTP/1.1 200");

    assert!(closed_within(&mut idle, Duration::from_secs(10)).await);
    assert!(closed_within(&mut kept_alive, Duration::from_secs(10)).await);
    assert!(closed_within(&mut slow_body, Duration::from_secs(10)).await);
    assert!(dripping.await.unwrap(), "the dripping headers were cut off");
    assert_eq!(health_from(&server.base_url(), "127.0.0.6").await, 200);
}

/// The real binary under a low open-file limit: it raises its own limit at
/// start, so three hundred idle connections (from three addresses, each
/// under its cap) do not stop it from answering anyone else.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_raises_its_open_file_limit() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("redoubtd-low-limit");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nulimit -Sn 256\nexec {} \"$@\"\n",
            env!("CARGO_BIN_EXE_redoubtd")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::spawn(&wrapper, &data, &[], &[]);
    let addr: SocketAddr = server
        .base_url()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let mut held = Vec::new();
    for from in ["127.0.0.7", "127.0.0.8", "127.0.0.9"] {
        for _ in 0..100 {
            held.push(connect_from(addr, from).await);
        }
    }
    assert_eq!(health_from(&server.base_url(), "127.0.0.10").await, 200);
    drop(held);
}
