//! The Redoubt relay server (`redoubtd`).
//!
//! It registers accounts by phone number, authenticates devices by bearer
//! token, stores MLS KeyPackages for others to claim, and queues opaque
//! envelopes in per-device mailboxes, pushing them over WebSocket and
//! deleting them once acknowledged. It also keeps the IP-address log, the
//! only per-request record the legal desk may read.
//!
//! What it must never do: see plaintext, hold a private key or group secret,
//! record who sent an envelope, or write a phone number, code, token or
//! message byte to its logs (the development code sender's marked line is
//! the one exception, and it is off in production).
//!
//! Embedding: build an [`AppState`] with [`AppState::open`], then [`serve`]
//! it on a listener; [`run`] does both with the system clock. Tests serve it
//! on `127.0.0.1:0`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod admin;
pub mod clock;
pub mod code_sender;
pub mod config;
pub mod conn;
pub mod error;
pub mod http;
pub mod iplog;
pub mod kt;
pub mod legal_notices;
pub mod maintenance;
pub mod markets;
pub mod metrics;
pub mod nats;
pub mod quota;
pub mod sessions;
pub mod storage;
pub mod telemetry;

pub use clock::Clock;
pub use config::Config;
pub use error::{ApiError, ServerError};

use code_sender::CodeSender;
use iplog::IpRecorder;
use maintenance::Purger;
use metrics::Metrics;
use sessions::{Fanout, LocalFanout, Sessions};
use storage::sqlite::SqliteStore;
use storage::Store;

/// Everything a request handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    config: Config,
    store: Arc<dyn Store>,
    sqlite: Option<SqliteStore>,
    postgres: Option<storage::postgres::PgStore>,
    clock: Clock,
    code_sender: Arc<dyn CodeSender>,
    metrics: Metrics,
    sessions: Arc<Sessions>,
    fanout: Arc<dyn Fanout>,
    ip_recorder: IpRecorder,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    admin_addr: std::sync::OnceLock<SocketAddr>,
    markets: markets::Markets,
    service_key: redoubt_legal::disclosure::ServiceKey,
    phone_keyer: storage::PhoneKeyer,
    legal_cache: redoubt_legal::desk::DeskCache,
    kt: Arc<kt::Transparency>,
    sender_quota: quota::SenderQuota,
}

/// The legal desk as the relay runs it: its state in the relay's database,
/// its only view of user data the read-only `legal_view` queries.
pub type RelayDesk =
    redoubt_legal::desk::Desk<storage::legal_view::RelayRecords, storage::legal_view::RelayRecords>;

/// Creates the data directory for its owner only (0700): it holds the
/// database, the service key and the legal desk's files (issue 16). An
/// existing directory open to other users is left as the operator made it
/// (it may be shared on purpose, or be a system directory), with a warning;
/// the database file inside is made private either way.
pub(crate) fn private_dir(path: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if !path.exists() {
            return std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path);
        }
        if std::fs::metadata(path)?.permissions().mode() & 0o077 != 0 {
            tracing::warn!("the data directory is open to other users; make it 0700 (chmod 700)");
        }
        Ok(())
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(path)
}

impl AppState {
    /// Opens storage as configured and assembles the state.
    pub async fn open(config: Config, clock: Clock) -> Result<Self, ServerError> {
        config.validate()?;
        // The market policy first: a table that does not parse must stop the
        // server before it creates or changes anything.
        let markets = markets::Markets::open(&config)?;
        private_dir(&config.data_dir).map_err(|source| ServerError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        // The operator's service key signs every notice to users, so that
        // clients can tell the operator's word from a forged one. It is the
        // legal desk's key (it also signs disclosure packages and reports),
        // created on first start.
        let key_path = config.data_dir.join("legal").join("service_key");
        let service_key = redoubt_legal::disclosure::ServiceKey::load_or_create(&key_path)
            .map_err(|e| {
                ServerError::ConfigInvalid(format!("service key {}: {e}", key_path.display()))
            })?;
        let (store, sqlite, postgres): (Arc<dyn Store>, _, _) = match &config.storage {
            config::StorageConfig::Sqlite(s) => {
                let sqlite = SqliteStore::open(&config.sqlite_path(), s).await?;
                (Arc::new(sqlite.clone()), Some(sqlite), None)
            }
            config::StorageConfig::Postgres(p) => {
                let pg = storage::postgres::PgStore::open(p).await?;
                (Arc::new(pg.clone()), None, Some(pg))
            }
        };
        let records = match (&sqlite, &postgres) {
            (Some(s), _) => storage::legal_view::RelayRecords::Sqlite(s.clone()),
            (None, Some(p)) => storage::legal_view::RelayRecords::Postgres(p.clone()),
            (None, None) => unreachable!("one backend is always opened"),
        };
        let kt =
            Arc::new(kt::Transparency::open(records, clock.now_offset().unix_timestamp()).await?);
        let code_sender = code_sender::from_config(&config.registration.code_sender);
        let sessions = Arc::new(Sessions::default());
        // SQLite has one writer (and one node): its commits are ordered, so
        // it can hand them to the sessions as they commit (`sessions`).
        if let Some(sqlite) = &sqlite {
            sqlite.feed_commits_to(sessions.clone());
        }
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let fanout: Arc<dyn Fanout> = match &config.fanout {
            config::FanoutConfig::Local => Arc::new(LocalFanout::new(sessions.clone())),
            config::FanoutConfig::Nats {
                url,
                subject_prefix,
            } => {
                nats::NatsFanout::connect(
                    url,
                    subject_prefix,
                    sessions.clone(),
                    shutdown.clone(),
                    &tasks,
                )
                .await?
            }
        };
        let ip_recorder =
            IpRecorder::new(store.clone(), clock.clone(), config.ip_log.touch_interval);
        let config_quota = config.limits.sends_per_recipient;
        Ok(Self(Arc::new(Inner {
            config,
            store,
            sqlite,
            postgres,
            clock,
            code_sender,
            metrics: Metrics::default(),
            sessions,
            fanout,
            ip_recorder,
            shutdown,
            tasks,
            admin_addr: std::sync::OnceLock::new(),
            markets,
            phone_keyer: storage::PhoneKeyer::new(service_key.derive_secret("phone-key")),
            service_key,
            legal_cache: Default::default(),
            kt,
            sender_quota: quota::SenderQuota::new(config_quota),
        })))
    }

    /// How phone numbers are keyed in the tables that must not give them
    /// away (pending codes, the per-number request limit).
    pub fn phone_keyer(&self) -> &storage::PhoneKeyer {
        &self.0.phone_keyer
    }

    /// What each sender may still queue into each mailbox (this node's).
    pub fn sender_quota(&self) -> &quota::SenderQuota {
        &self.0.sender_quota
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.0.config
    }
    /// The storage backend.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.0.store
    }
    /// The clock.
    pub fn clock(&self) -> &Clock {
        &self.0.clock
    }
    /// The verification-code sender.
    pub fn code_sender(&self) -> &Arc<dyn CodeSender> {
        &self.0.code_sender
    }
    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }
    /// Live sessions on this node.
    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.0.sessions
    }
    /// The fan-out to live sessions.
    pub fn fanout(&self) -> &Arc<dyn Fanout> {
        &self.0.fanout
    }
    /// The IP-log recorder.
    pub fn ip_recorder(&self) -> &IpRecorder {
        &self.0.ip_recorder
    }
    /// Cancelled when the server starts shutting down.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.0.shutdown
    }
    /// Tracks WebSocket sessions and background tasks, so shutdown can wait
    /// for them.
    pub fn tasks(&self) -> &TaskTracker {
        &self.0.tasks
    }
    /// The legal desk over this relay's database, with the market policy
    /// and IP-log retention in force now. Its writes are serialised by the
    /// database, across nodes and processes.
    pub fn legal_desk(&self) -> RelayDesk {
        let now = self.clock().now_offset();
        RelayDesk::new(
            self.legal_records(),
            self.legal_records(),
            self.service_key().clone(),
            self.config().markets.policy(&self.markets().book(), now),
            // A retention beyond time's range is no limit at all.
            time::Duration::try_from(self.config().ip_log.retention).unwrap_or(time::Duration::MAX),
        )
        .with_cache(self.0.legal_cache.clone())
    }

    /// The key-transparency directory.
    pub fn kt(&self) -> &kt::Transparency {
        &self.0.kt
    }

    /// Where the admin API listens, once it does.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.0.admin_addr.get().copied()
    }

    /// Market-exit enforcement.
    pub fn markets(&self) -> &markets::Markets {
        &self.0.markets
    }

    /// The operator's service key, which signs notices to users.
    pub fn service_key(&self) -> &redoubt_legal::disclosure::ServiceKey {
        &self.0.service_key
    }

    /// The SQLite store, when that is the backend (the legal desk reads it).
    pub fn sqlite(&self) -> Option<&SqliteStore> {
        self.0.sqlite.as_ref()
    }

    /// A purger over this state's store and settings.
    pub fn purger(&self) -> Purger {
        let purger = Purger::new(
            self.store().clone(),
            self.clock().clone(),
            self.config().clone(),
            self.metrics().clone(),
        );
        match self.postgres() {
            Some(pg) => purger.with_leader_lease(pg.clone()),
            None => purger,
        }
    }

    /// The records the legal desk may read, on whichever backend.
    pub fn legal_records(&self) -> storage::legal_view::RelayRecords {
        match (&self.0.sqlite, &self.0.postgres) {
            (Some(s), _) => storage::legal_view::RelayRecords::Sqlite(s.clone()),
            (None, Some(p)) => storage::legal_view::RelayRecords::Postgres(p.clone()),
            (None, None) => unreachable!("AppState::open always sets one backend"),
        }
    }

    /// The PostgreSQL store, when that is the backend.
    pub fn postgres(&self) -> Option<&storage::postgres::PgStore> {
        self.0.postgres.as_ref()
    }

    async fn close(&self) {
        if let Some(sqlite) = &self.0.sqlite {
            sqlite.close().await;
        }
        if let Some(pg) = &self.0.postgres {
            pg.close().await;
        }
    }
}

/// The HTTP application over a ready state.
pub fn app(state: AppState) -> axum::Router {
    http::router(state)
}

/// Serves `state` on `listener` until `shutdown` resolves, then stops
/// accepting, closes WebSockets (code 1001), lets in-flight requests finish
/// (up to `http.shutdown_grace`), stops maintenance and closes storage.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let token = state.shutdown_token().clone();
    state.tasks().spawn(state.purger().run(token.clone(), None));
    state.tasks().spawn(notices(state.clone(), token.clone()));
    state
        .tasks()
        .spawn(markets::run(state.clone(), token.clone()));
    state.tasks().spawn(kt::run(state.clone(), token.clone()));
    if matches!(
        state.config().registration.code_sender,
        config::CodeSenderConfig::Log
    ) {
        tracing::warn!(
            "verification codes are written to this log (registration.code_sender = \"log\"); \
             configure a real code sender before serving real users"
        );
    }
    let files = conn::raise_open_file_limit();
    let local = listener.local_addr()?;
    // Said at every start, so an operator can see at once which data
    // (which accounts, which mailboxes) this relay is serving.
    tracing::info!(
        address = %local,
        data_dir = %state.config().data_dir.display(),
        open_file_limit = files,
        "redoubtd listening"
    );
    if let Some(admin) = state.config().admin.listen {
        let admin_listener = TcpListener::bind(admin).await?;
        let bound = admin_listener.local_addr()?;
        let _ = state.0.admin_addr.set(bound);
        tracing::info!(address = %bound, "legal desk admin API listening");
        let stop = token.clone();
        let router = admin::router(state.clone());
        state.tasks().spawn(async move {
            let served = axum::serve(admin_listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "admin API stopped");
            }
        });
    }

    let grace = state.config().http.shutdown_grace;
    let trigger = token.clone();
    let stop = async move {
        shutdown.await;
        trigger.cancel();
    };
    let draining =
        conn::accept_loop(listener, app(state.clone()), &state.config().http, stop).await;
    if tokio::time::timeout(grace, draining).await.is_err() {
        tracing::warn!("shutdown grace period over; dropping remaining connections");
    }
    token.cancel();
    state.tasks().close();
    if tokio::time::timeout(grace, state.tasks().wait())
        .await
        .is_err()
    {
        tracing::warn!("background tasks did not stop within the grace period");
    }
    state.close().await;
    tracing::info!("redoubtd stopped");
    Ok(())
}

/// Delivers due disclosure notices on the maintenance interval.
async fn notices(state: AppState, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(state.config().maintenance.purge_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        if let Err(e) = legal_notices::deliver_due(&state).await {
            tracing::error!(error = %e, "delivering disclosure notices failed");
        }
    }
}

/// Opens storage from `config` with the system clock and serves until
/// `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let state = AppState::open(config, Clock::system()).await?;
    serve(listener, state, shutdown).await
}
