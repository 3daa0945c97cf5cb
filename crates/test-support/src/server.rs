//! The relay in process, on an ephemeral port.

use std::net::SocketAddr;
use std::path::Path;

use redoubt_server::{AppState, Clock, Config};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::device::TestDevice;

/// The metrics token of [`TestServer::builder`]'s configuration.
pub const METRICS_TOKEN: &str = "test-metrics-token-0123456789abcdef";

/// Builds a [`TestServer`].
pub struct TestServerBuilder {
    config: Config,
    clock: Clock,
    data_dir: Option<TempDir>,
    addr: Option<SocketAddr>,
}

impl TestServerBuilder {
    /// Changes the configuration.
    pub fn configure(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        self
    }

    /// Uses this clock (by default an adjustable one).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Reuses a data directory, as a restarted server would.
    pub fn data_dir(mut self, dir: TempDir) -> Self {
        self.data_dir = Some(dir);
        self
    }

    /// Listens on this address (by default `127.0.0.1:0`): a relay restarted
    /// where clients expect it.
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = Some(addr);
        self
    }

    /// Opens storage and serves on `127.0.0.1:0` (or the address given).
    pub async fn start(self) -> TestServer {
        crate::logs::init();
        let data_dir = match self.data_dir {
            Some(d) => d,
            None => tempfile::tempdir().expect("temporary directory"),
        };
        let mut config = self.config;
        config.data_dir = data_dir.path().to_owned();
        let state = AppState::open(config, self.clock.clone())
            .await
            .expect("server state opens");
        let listener = tokio::net::TcpListener::bind(
            self.addr
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
        )
        .await
        .expect("bind");
        let addr = listener.local_addr().expect("local address");
        let (tx, rx) = oneshot::channel::<()>();
        let serving = state.clone();
        let handle = tokio::spawn(async move {
            redoubt_server::serve(listener, serving, async {
                let _ = rx.await;
            })
            .await
        });
        TestServer {
            addr,
            state,
            clock: self.clock,
            data_dir: Some(data_dir),
            stop: Some(tx),
            handle: Some(handle),
        }
    }
}

/// A running relay.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state (store, metrics, sessions).
    pub state: AppState,
    /// Its clock.
    pub clock: Clock,
    data_dir: Option<TempDir>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), redoubt_server::ServerError>>>,
}

impl TestServer {
    /// A builder with test-friendly defaults: an adjustable clock, and limits
    /// loose enough that tests do not trip rate limits by accident.
    pub fn builder() -> TestServerBuilder {
        let mut config = Config::default();
        config.registration.per_ip.max = 10_000;
        config.http.shutdown_grace = std::time::Duration::from_secs(5);
        // Keys reach the key-transparency directory within a tenth of a
        // second, so first contacts in tests rarely wait for an epoch.
        config.kt.epoch_interval = std::time::Duration::from_millis(100);
        config.metrics.token = Some(METRICS_TOKEN.to_owned());
        // Tests claim, look up and send far more than people do, from one
        // address and consecutive numbers of one country; the tests of the
        // limits set their own.
        config.relax_abuse_limits(redoubt_server::config::RateLimit {
            max: 1_000_000,
            window: std::time::Duration::from_secs(3600),
        });
        TestServerBuilder {
            config,
            clock: Clock::adjustable(),
            data_dir: None,
            addr: None,
        }
    }

    /// A server with the defaults of [`TestServer::builder`].
    pub async fn start() -> Self {
        Self::builder().start().await
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A full URL for a path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `/metrics` from the public listener, with the test token.
    pub async fn metrics(&self) -> reqwest::Response {
        reqwest::Client::new()
            .get(self.url("/metrics"))
            .bearer_auth(METRICS_TOKEN)
            .send()
            .await
            .expect("metrics request")
    }

    /// The SQLite database file.
    pub fn db_path(&self) -> std::path::PathBuf {
        self.state.config().sqlite_path()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.data_dir
            .as_ref()
            .expect("data dir present until stop")
            .path()
    }

    /// Registers a new device for `phone`, reading the code from the
    /// development code sender's log line.
    pub async fn register(&self, phone: &str) -> TestDevice {
        TestDevice::register(&self.base_url(), phone, "test device").await
    }

    /// Registers a device for a fresh phone number.
    pub async fn register_fresh(&self) -> TestDevice {
        self.register(&crate::fresh_phone()).await
    }

    /// Shuts down gracefully and hands back the data directory, so a new
    /// server can be started on the same database.
    pub async fn stop(mut self) -> TempDir {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle
                .await
                .expect("server task")
                .expect("server stops cleanly");
        }
        self.data_dir.take().expect("data dir")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
