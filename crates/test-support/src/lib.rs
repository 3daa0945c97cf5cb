//! Builders for Redoubt's integration tests.
//!
//! - [`TestServer`]: the real relay, in process, on `127.0.0.1:0`, with a real
//!   SQLite file in a temporary directory and an adjustable clock.
//! - [`ServerProcess`]: the real `redoubtd` binary as a child process, for
//!   crash (SIGKILL) and log-output tests.
//! - [`TestDevice`]: a device registered through the real API, with helpers
//!   for every call and a WebSocket client.
//! - [`logs`]: captures everything the in-process servers log, which is also
//!   how tests read the development code sender's codes.
//! - [`hostile`]: plays a hostile relay by writing to its storage, for the
//!   malicious-relay tests.
//!
//! This crate is for tests only; nothing in it may be used by a binary.

pub mod device;
pub mod hostile;
pub mod legal;
pub mod logs;
pub mod process;
pub mod server;
pub mod services;

pub use device::{api_error, BinaryEvent, BinaryWs, TestDevice, WsClient};
pub use process::ServerProcess;
pub use server::{TestServer, TestServerBuilder};

use std::sync::atomic::{AtomicU64, Ordering};

/// A fresh, valid French mobile number (+33 6 1x xx xx xx) that no other
/// test in this process uses.
pub fn fresh_phone() -> String {
    fresh_phone_with_prefix("+3361", 7)
}

/// A fresh number: `prefix` followed by `digits` digits, valid for its
/// country and unique within this process. Callers pick a prefix inside a
/// numbering block their country assigns in full (some blocks, such as
/// +33 69, belong to overseas regions with other country codes).
pub fn fresh_phone_with_prefix(prefix: &str, digits: u32) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let modulus = 10u64.pow(digits);
    // Mixing in the process id keeps concurrent test binaries apart.
    let base = u64::from(std::process::id()) * 7919;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let candidate = format!(
            "{prefix}{:0width$}",
            (base + n) % modulus,
            width = digits as usize
        );
        if redoubt_proto::PhoneNumber::parse(&candidate).is_ok() {
            return candidate;
        }
    }
}

/// Polls `check` until it returns true, failing the test after ten seconds.
/// For effects that complete asynchronously (an ack sent over a WebSocket,
/// a background purge), instead of sleeping a guessed amount.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Writes the project's own IP-to-country test table (DB-IP lite CSV
/// format) to `dir` and returns its path. Loopback addresses stand in for
/// countries, so one machine can play clients from several markets:
/// 127.0.0.2 is in France, 127.0.0.3 in Germany, 127.0.0.4 in the United
/// Kingdom; 127.0.0.1 is in no table entry (no country).
pub fn write_ip_table(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("ip-countries.csv");
    std::fs::write(
        &path,
        "# Redoubt's test table: first_ip,last_ip,country\n\
         127.0.0.2,127.0.0.2,FR\n\
         127.0.0.3,127.0.0.3,DE\n\
         127.0.0.4,127.0.0.4,GB\n",
    )
    .expect("write the IP table");
    path
}
