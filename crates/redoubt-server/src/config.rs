//! The server's configuration, read from a TOML file. Every field has a
//! default, so `redoubtd` runs with no file at all; `redoubtd config example`
//! prints the documented file (`redoubtd.example.toml`), which a test keeps
//! identical to these defaults.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ServerError;

/// The documented example configuration, equal to the defaults.
pub const EXAMPLE_CONFIG: &str = include_str!("../redoubtd.example.toml");

/// Everything `redoubtd` can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The address and port the HTTP and WebSocket API listens on.
    pub listen: SocketAddr,
    /// Where the server keeps its files (the SQLite database by default).
    /// By default [`default_data_dir`], never the working directory; a
    /// relative path in a configuration file is taken from the file's
    /// folder.
    pub data_dir: PathBuf,
    /// How log lines are written.
    pub log: LogConfig,
    /// Which database holds durable state.
    pub storage: StorageConfig,
    /// HTTP limits and proxy trust.
    pub http: HttpConfig,
    /// Phone-number verification.
    pub registration: RegistrationConfig,
    /// Key-package limits.
    pub key_packages: KeyPackageConfig,
    /// Mailbox limits and delivery.
    pub mailbox: MailboxConfig,
    /// The IP-address log.
    pub ip_log: IpLogConfig,
    /// Background maintenance.
    pub maintenance: MaintenanceConfig,
    /// The legal desk's admin API.
    pub admin: AdminConfig,
    /// Who may read `/metrics`.
    pub metrics: MetricsConfig,
    /// Rate limits on contact lookups and key-package claims.
    pub limits: LimitsConfig,
    /// Where users are, and how market exits are enforced.
    pub markets: MarketsConfig,
    /// How nodes tell each other that a mailbox has something new.
    pub fanout: FanoutConfig,
    /// The key-transparency directory.
    pub kt: KtConfig,
}

/// The key-transparency directory: every account's number mapped to its
/// identity key and newest device list, published in signed epochs that
/// clients verify (see docs/key-transparency.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KtConfig {
    /// How often a new epoch publishes the changes queued since the last
    /// one. Shorter: a new key is visible sooner; each epoch adds a signed
    /// root to keep.
    #[serde(with = "humantime_serde")]
    pub epoch_interval: Duration,
}

impl Default for KtConfig {
    fn default() -> Self {
        Self {
            epoch_interval: Duration::from_secs(2),
        }
    }
}

/// Live delivery between nodes. One node needs nothing; several nodes
/// sharing PostgreSQL use NATS so that the node holding a device's
/// WebSocket hears about envelopes queued through any other node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "snake_case", deny_unknown_fields)]
pub enum FanoutConfig {
    /// Within this process only.
    #[default]
    Local,
    /// Over NATS core publish/subscribe. A wake-up carries a device id and
    /// an envelope id, never ciphertext or a phone number; a lost one costs
    /// only latency, because sessions also look at their mailbox on every
    /// ping.
    Nats {
        /// The NATS server, such as `nats://10.0.0.5:4222`.
        url: String,
        /// The subject prefix, so several deployments can share a NATS.
        #[serde(default = "default_nats_prefix")]
        subject_prefix: String,
    },
}

fn default_nats_prefix() -> String {
    "redoubt".into()
}

/// Market policy enforcement. The exits themselves are decided with
/// `redoubtd market ...` and kept in `DATA_DIR/legal/markets.json`; these
/// settings say how the relay tells where a request comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MarketsConfig {
    /// An IP-to-country table: a CSV of ranges in the DB-IP lite format
    /// (`first_ip,last_ip,country`) or a MaxMind `.mmdb` country database.
    /// Unset: addresses have no country and only phone numbers count.
    pub ip_table: Option<PathBuf>,
    /// Which signal puts a request in a market when the phone number's
    /// region and the address's country disagree.
    pub precedence: redoubt_legal::jurisdiction::Precedence,
    /// A page users can read about an exit, given in 451 answers and
    /// notices.
    pub notice_link: Option<String>,
    /// How long before the effective date every account of the market is
    /// told again (it is told once at the announcement too).
    #[serde(with = "humantime_serde")]
    pub reminder_before: Duration,
    /// How often the relay re-reads the market book, sends due notices,
    /// closes sessions of exited markets and runs due purges.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// The markets the service operates in (ISO 3166-1 alpha-2 codes), for
    /// the legal desk: an order from a jurisdiction not listed is refused
    /// (`jurisdiction_not_served`). Empty: every market not exited.
    pub served: Vec<String>,
}

impl MarketsConfig {
    /// The policy the legal desk applies at `now`: the served markets
    /// configured here, the exits the market book says took effect.
    pub fn policy(
        &self,
        book: &redoubt_legal::markets::MarketBook,
        now: time::OffsetDateTime,
    ) -> redoubt_legal::verify::MarketPolicy {
        redoubt_legal::verify::MarketPolicy {
            served: self.served.clone(),
            ..book.policy(now)
        }
    }
}

impl Default for MarketsConfig {
    fn default() -> Self {
        Self {
            ip_table: None,
            precedence: redoubt_legal::jurisdiction::Precedence::Either,
            notice_link: None,
            reminder_before: Duration::from_secs(7 * 24 * 3600),
            check_interval: Duration::from_secs(10),
            served: Vec::new(),
        }
    }
}

/// Rate limits against harvesting: every node on one database shares the
/// counts. Windows are at most a day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Phone-number lookups one account may make. Looking numbers up one
    /// by one is how a whole number range would be enumerated (300 a
    /// second were measured before these limits).
    pub lookups_per_account: RateLimit,
    /// Phone-number lookups from one client address (an IPv6 /64), across
    /// all its accounts.
    pub lookups_per_address: RateLimit,
    /// Key packages one account may claim, over all devices.
    pub claims_per_account: RateLimit,
    /// Key packages one account may claim from any one device: draining a
    /// device's one-time packages (forcing everyone onto its last-resort
    /// package) then takes one caller days, not a quarter of a second.
    pub claims_per_device: RateLimit,
    /// Envelopes one account may queue into any one device's mailbox: a
    /// burst of `max`, refilled at `max` per `window`. Over it, that
    /// mailbox is left out of the send (reported as full) and the other
    /// recipients still get it, so one sender can no longer fill a
    /// victim's mailbox for everyone. Kept in each node's memory, never in
    /// the database: a stored row per pair would record who writes to whom.
    pub sends_per_recipient: RateLimit,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let hour = Duration::from_secs(3600);
        Self {
            lookups_per_account: RateLimit {
                max: 100,
                window: hour,
            },
            lookups_per_address: RateLimit {
                max: 500,
                window: hour,
            },
            claims_per_account: RateLimit {
                max: 1000,
                window: hour,
            },
            claims_per_device: RateLimit {
                max: 10,
                window: hour,
            },
            sends_per_recipient: RateLimit {
                max: 1000,
                window: hour,
            },
        }
    }
}

/// Who may read the Prometheus metrics. The admin listener (a private
/// interface) always serves `/metrics`. The public listener serves it only
/// to a scraper that presents `token`: metrics say how busy the relay is
/// and which routes fail, which is nobody else's business (issue 16).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// A bearer token (at least 32 characters) for `/metrics` on the public
    /// listener. Unset: `/metrics` there answers 404.
    pub token: Option<String>,
}

impl std::fmt::Debug for MetricsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsConfig")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// The legal desk's admin API: off unless given an address. It has its own
/// listener so it can be bound to a private interface, never the public one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Where the admin API listens, such as 127.0.0.1:8081. Unset: disabled.
    pub listen: Option<SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: default_data_dir(),
            log: LogConfig::default(),
            storage: StorageConfig::default(),
            http: HttpConfig::default(),
            registration: RegistrationConfig::default(),
            key_packages: KeyPackageConfig::default(),
            mailbox: MailboxConfig::default(),
            ip_log: IpLogConfig::default(),
            maintenance: MaintenanceConfig::default(),
            admin: AdminConfig::default(),
            metrics: MetricsConfig::default(),
            limits: LimitsConfig::default(),
            markets: MarketsConfig::default(),
            fanout: FanoutConfig::default(),
            kt: KtConfig::default(),
        }
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ServerError> {
        let text = std::fs::read_to_string(path).map_err(|source| ServerError::ConfigRead {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::from_toml(&text)?;
        // Where the server's data lives must not change with the folder
        // the operator happened to start it from.
        if config.data_dir.is_relative() {
            let base = path.parent().unwrap_or(Path::new("."));
            config.data_dir =
                std::path::absolute(base.join(&config.data_dir)).map_err(|source| {
                    ServerError::ConfigRead {
                        path: path.to_owned(),
                        source,
                    }
                })?;
        }
        Ok(config)
    }

    /// Parses and validates configuration text.
    pub fn from_toml(text: &str) -> Result<Self, ServerError> {
        let config: Config =
            toml::from_str(text).map_err(|e| ServerError::ConfigInvalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The configuration as a file `redoubtd --config` reads back (what
    /// `config check` prints, and how tools write configurations for the
    /// nodes they start).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("every configuration serialises to TOML")
    }

    /// Checks the rules that types alone do not express.
    pub fn validate(&self) -> Result<(), ServerError> {
        let bad = |msg: &str| Err(ServerError::ConfigInvalid(msg.to_owned()));
        if self
            .metrics
            .token
            .as_ref()
            .is_some_and(|t| t.chars().count() < 32)
        {
            return bad("metrics.token must be at least 32 characters long");
        }
        if self.mailbox.max_envelope_bytes > self.http.max_body_bytes {
            return bad("mailbox.max_envelope_bytes must not exceed http.max_body_bytes");
        }
        if self.kt.epoch_interval < Duration::from_millis(100) {
            return bad("kt.epoch_interval must be at least 100ms");
        }
        if self.mailbox.max_queued_per_device == 0 || self.mailbox.max_recipients == 0 {
            return bad("mailbox limits must be at least 1");
        }
        if self.mailbox.fetch_page == 0
            || self.mailbox.push_window == 0
            || self.mailbox.push_window_bytes == 0
        {
            return bad(
                "mailbox.fetch_page, mailbox.push_window and mailbox.push_window_bytes must be at least 1",
            );
        }
        if self.registration.max_attempts == 0 {
            return bad("registration.max_attempts must be at least 1");
        }
        if self.registration.per_number.max == 0 || self.registration.per_ip.max == 0 {
            return bad("registration rate limits must allow at least one request");
        }
        if self.key_packages.max_batch == 0 || self.key_packages.max_per_device == 0 {
            return bad("key_packages limits must be at least 1");
        }
        // Rate events older than a day are purged, so a longer window would
        // silently count less than it says; an empty one counts nothing.
        let reg = &self.registration;
        let lim = &self.limits;
        for (name, limit) in [
            ("registration.per_number", reg.per_number),
            ("registration.per_ip", reg.per_ip),
            ("registration.per_number_block", reg.per_number_block),
            ("registration.per_country", reg.per_country),
            ("registration.sms_budget", reg.sms_budget),
            ("limits.lookups_per_account", lim.lookups_per_account),
            ("limits.lookups_per_address", lim.lookups_per_address),
            ("limits.claims_per_account", lim.claims_per_account),
            ("limits.claims_per_device", lim.claims_per_device),
            ("limits.sends_per_recipient", lim.sends_per_recipient),
        ] {
            if limit.window.is_zero() || limit.window > crate::storage::MAX_RATE_WINDOW {
                return Err(ServerError::ConfigInvalid(format!(
                    "{name}.window must be more than zero and at most a day"
                )));
            }
        }
        if self.maintenance.purge_interval.is_zero() {
            return bad("maintenance.purge_interval must be positive");
        }
        if self.ip_log.retention.is_zero() {
            return bad("ip_log.retention must be positive");
        }
        for code in &self.markets.served {
            if redoubt_legal::markets::known_country(code).ok().as_deref() != Some(code.as_str()) {
                return Err(ServerError::ConfigInvalid(format!(
                    "markets.served: {code:?} is not an ISO 3166-1 alpha-2 code in capitals, such as \"FR\""
                )));
            }
        }
        if let FanoutConfig::Nats { subject_prefix, .. } = &self.fanout {
            if subject_prefix.is_empty()
                || !subject_prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
            {
                return bad("fanout.subject_prefix must be letters, digits, '_', '-' or '.'");
            }
        }
        if matches!(self.fanout, FanoutConfig::Nats { .. })
            && matches!(self.storage, StorageConfig::Sqlite(_))
        {
            return bad(
                "fanout.backend = \"nats\" needs storage.backend = \"postgres\": \
                 nodes must share one database",
            );
        }
        if self.markets.check_interval.is_zero() {
            return bad("markets.check_interval must be positive");
        }
        if let Some(link) = &self.markets.notice_link {
            if !(link.starts_with("https://") || link.starts_with("http://"))
                || link.len() > 200
                || link.chars().any(char::is_whitespace)
            {
                return bad("markets.notice_link must be an http(s) URL of at most 200 characters");
            }
        }
        Ok(())
    }

    /// Sets every limit against abuse at scale to `limit`: lookups, claims,
    /// sends into one mailbox, and codes per block of numbers, per country
    /// and in all. For harnesses in which many simulated users share one
    /// address, one country and one block of numbers (the tests, the load
    /// tool); the per-number and per-address code limits stay as they are.
    pub fn relax_abuse_limits(&mut self, limit: RateLimit) {
        self.limits = LimitsConfig {
            lookups_per_account: limit,
            lookups_per_address: limit,
            claims_per_account: limit,
            claims_per_device: limit,
            sends_per_recipient: limit,
        };
        self.registration.per_number_block = limit;
        self.registration.per_country = limit;
        self.registration.sms_budget = limit;
    }

    /// What in this configuration, and in the files it points at, is unsafe
    /// for serving real users, one sentence each. `config check` prints
    /// them; an empty list means none was found.
    pub fn production_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if matches!(self.registration.code_sender, CodeSenderConfig::Log) {
            warnings.push(
                "registration.code_sender = \"log\" writes verification codes to the log: \
                 anyone who reads the log can register any number"
                    .to_owned(),
            );
        }
        if let StorageConfig::Sqlite(s) = &self.storage {
            if s.synchronous == SqliteSync::Normal {
                warnings.push(
                    "storage.sqlite.synchronous = \"normal\": a power cut can lose \
                     messages the relay has already accepted"
                        .to_owned(),
                );
            }
        }
        if let Some(admin) = self.admin.listen {
            if !admin.ip().is_loopback() && !is_private(admin.ip()) {
                warnings.push(format!(
                    "admin.listen = {admin} is a public address: bind the legal desk's \
                     API to a private interface"
                ));
            }
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let open_to_others =
                |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o077 != 0);
            if open_to_others(&self.data_dir) {
                warnings.push(format!(
                    "the data directory {} is open to other users: chmod 700 it",
                    self.data_dir.display()
                ));
            }
            if matches!(self.storage, StorageConfig::Sqlite(_))
                && open_to_others(&self.sqlite_path())
            {
                warnings.push(format!(
                    "the database {} is readable by other users: chmod 600 it",
                    self.sqlite_path().display()
                ));
            }
        }
        warnings
    }

    /// The SQLite database file this configuration points at.
    pub fn sqlite_path(&self) -> PathBuf {
        match &self.storage {
            StorageConfig::Sqlite(SqliteConfig { path: Some(p), .. }) => p.clone(),
            _ => self.data_dir.join("redoubt.db"),
        }
    }
}

/// Where the server keeps its files when no configuration says otherwise:
/// `$XDG_DATA_HOME/redoubtd`, else `~/.local/share/redoubtd`, else (a
/// service account with no home) `/var/lib/redoubtd`. Never the working
/// directory, so starting the relay from another folder cannot silently
/// start it on an empty database.
pub fn default_data_dir() -> PathBuf {
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    std::env::var_os("XDG_DATA_HOME")
        .and_then(absolute)
        .or_else(|| {
            std::env::var_os("HOME")
                .and_then(absolute)
                .map(|h| h.join(".local").join("share"))
        })
        .map(|base| base.join("redoubtd"))
        .unwrap_or_else(|| PathBuf::from("/var/lib/redoubtd"))
}

/// Whether an address is on a private network (RFC 1918, RFC 4193) or
/// link-local: not reachable from the internet.
fn is_private(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_private() || v4.is_link_local(),
        std::net::IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xfe00) == 0xfc00 || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Log output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` for log collectors.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `info,redoubt_server=debug`.
    /// The `RUST_LOG` environment variable overrides it.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".into(),
        }
    }
}

/// How log lines are formatted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per event.
    Json,
}

/// The storage backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "snake_case", deny_unknown_fields)]
pub enum StorageConfig {
    /// An embedded SQLite database: zero setup, one node.
    Sqlite(SqliteConfig),
    /// A PostgreSQL database shared by several nodes.
    Postgres(PostgresConfig),
}

/// PostgreSQL settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// A connection URL such as `postgres://redoubt@db.internal/redoubt`.
    /// Keep passwords out of the file: libpq's `PGPASSWORD` and
    /// `~/.pgpass` are honoured.
    pub url: String,
    /// A schema for every table (created if missing); unset uses the
    /// connection's default search path.
    #[serde(default)]
    pub schema: Option<String>,
    /// Connections per node.
    #[serde(default = "default_pg_connections")]
    pub max_connections: u32,
}

fn default_pg_connections() -> u32 {
    16
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self::Sqlite(SqliteConfig::default())
    }
}

/// SQLite settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqliteConfig {
    /// The database file; by default `redoubt.db` inside `data_dir`.
    pub path: Option<PathBuf>,
    /// Connections for reads (writes always go through one connection).
    pub read_connections: u32,
    /// `full` syncs every commit to disk, so an accepted message survives a
    /// power cut; `normal` survives a process crash but not a power cut.
    pub synchronous: SqliteSync,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self {
            path: None,
            read_connections: 4,
            synchronous: SqliteSync::Full,
        }
    }
}

/// SQLite's `synchronous` pragma.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SqliteSync {
    /// Sync on every commit.
    Full,
    /// Sync at checkpoints.
    Normal,
}

/// HTTP settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Proxies whose `X-Forwarded-For` header is believed. Requests from any
    /// other peer are logged with the peer's own address.
    pub trusted_proxies: Vec<IpAddr>,
    /// With a trusted proxy, the header that carries the client's source port
    /// (for example `X-Forwarded-Port` set from HAProxy's `src_port`).
    pub client_port_header: Option<String>,
    /// How long shutdown waits for in-flight requests before giving up.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// The most connections one client address (an IPv6 /64) may hold open
    /// at once; more are closed as they arrive. Trusted proxies are exempt.
    pub max_connections_per_address: usize,
    /// How long a client has to send a request's headers, counted from
    /// the connection's start or the previous response: an idle connection
    /// is closed after it too. WebSockets, once upgraded, are not affected.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// How long a client has to send a request's body.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            trusted_proxies: Vec::new(),
            client_port_header: None,
            shutdown_grace: Duration::from_secs(30),
            max_connections_per_address: 256,
            // hyper's own default. It is also how long an idle kept-alive
            // connection stays: clients should let go of pooled
            // connections sooner (Redoubt's own after 5 s).
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// Phone-number verification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrationConfig {
    /// How codes reach phones.
    pub code_sender: CodeSenderConfig,
    /// How long a code stays valid.
    #[serde(with = "humantime_serde")]
    pub code_ttl: Duration,
    /// Wrong guesses allowed per code before a new one must be requested.
    pub max_attempts: u32,
    /// Code requests allowed per phone number from one client address (an
    /// IPv6 /64): counted apart per address so that strangers cannot use
    /// up a number's requests and lock its owner out; `per_number_block`
    /// bounds what one number gets from many addresses.
    pub per_number: RateLimit,
    /// Code requests allowed per client address: an IPv4 address, or an
    /// IPv6 /64 (one subscriber holds a whole /64, so counting single
    /// addresses let one prefix ask for codes without limit).
    pub per_ip: RateLimit,
    /// Codes sent to one block of numbers: the number without its last
    /// four digits (10,000 numbers). SMS pumping fraud walks the ranges of
    /// premium numbers it is paid for, one number after another.
    pub per_number_block: RateLimit,
    /// Codes sent to one country (the number's region).
    pub per_country: RateLimit,
    /// Codes sent in all: the service's SMS budget, so no abuse can run up
    /// an unbounded bill. Spent, it refuses everyone until the window
    /// frees room, so set it well above the real sign-up rate.
    pub sms_budget: RateLimit,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        Self {
            code_sender: CodeSenderConfig::Log,
            code_ttl: Duration::from_secs(10 * 60),
            max_attempts: 5,
            per_number: RateLimit {
                max: 3,
                window: Duration::from_secs(15 * 60),
            },
            per_ip: RateLimit {
                max: 20,
                window: Duration::from_secs(60 * 60),
            },
            per_number_block: RateLimit {
                max: 30,
                window: Duration::from_secs(60 * 60),
            },
            per_country: RateLimit {
                max: 2_000,
                window: Duration::from_secs(60 * 60),
            },
            sms_budget: RateLimit {
                max: 10_000,
                window: Duration::from_secs(60 * 60),
            },
        }
    }
}

/// At most `max` events per sliding `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Events allowed in the window.
    pub max: u32,
    /// The window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

/// How verification codes are delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CodeSenderConfig {
    /// Development only: write the code to the server log on a line marked
    /// `DEV CODE SENDER`. The server warns at start-up while this is active.
    Log,
    /// Run a program for each code, with `REDOUBT_PHONE` and `REDOUBT_CODE`
    /// in its environment (for example a script that calls an SMS gateway).
    /// It must exit 0 within `timeout`.
    Command {
        /// The program to run.
        program: PathBuf,
        /// Its arguments.
        #[serde(default)]
        args: Vec<String>,
        /// How long it may take.
        #[serde(with = "humantime_serde", default = "default_command_timeout")]
        timeout: Duration,
    },
}

fn default_command_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Key-package limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyPackageConfig {
    /// One-time key packages one device may keep stored.
    pub max_per_device: u64,
    /// Key packages in one upload.
    pub max_batch: usize,
    /// Below this count the server tells the device to upload more.
    pub low_watermark: u64,
    /// Devices one claim may name.
    pub max_claim: usize,
}

impl Default for KeyPackageConfig {
    fn default() -> Self {
        Self {
            max_per_device: 500,
            max_batch: 100,
            low_watermark: 20,
            max_claim: 1000,
        }
    }
}

/// Mailbox limits and delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailboxConfig {
    /// The largest envelope payload, in bytes.
    pub max_envelope_bytes: usize,
    /// Envelopes one device may have waiting. A send is not queued for a
    /// device at the cap (the answer names it in `full`); when every
    /// recipient is at it, the send is refused with `mailbox_full`.
    pub max_queued_per_device: u64,
    /// How long an envelope waits for a device that never fetches it.
    #[serde(with = "humantime_serde")]
    pub message_ttl: Duration,
    /// How long an accepted envelope id is remembered, so a sender's retry is
    /// recognised even after delivery.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// Recipient devices in one send.
    pub max_recipients: usize,
    /// Envelopes in one page of `GET /v1/messages`.
    pub fetch_page: u32,
    /// Envelopes pushed on the WebSocket ahead of the device's acks.
    pub push_window: u32,
    /// Payload bytes pushed on the WebSocket ahead of the device's acks
    /// (at least one envelope is pushed, however large). With the envelope
    /// count this bounds what a session holds in flight, and lets the
    /// count be large for small messages: a device draining a backlog waits
    /// one round trip per window.
    pub push_window_bytes: usize,
    /// How often the server pings an idle WebSocket; two silent intervals close it.
    #[serde(with = "humantime_serde")]
    pub ws_ping_interval: Duration,
}

impl Default for MailboxConfig {
    fn default() -> Self {
        Self {
            max_envelope_bytes: 256 * 1024,
            max_queued_per_device: 10_000,
            message_ttl: Duration::from_secs(30 * 86_400),
            dedup_window: Duration::from_secs(7 * 86_400),
            max_recipients: 1000,
            fetch_page: 100,
            // 512 small envelopes per round trip drained a 100,000-envelope
            // backlog at 104k/s, against 69k/s with 64 (redoubt-load).
            push_window: 512,
            push_window_bytes: 1024 * 1024,
            ws_ping_interval: Duration::from_secs(30),
        }
    }
}

/// The IP-address log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IpLogConfig {
    /// How long a row is kept after it was last seen.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// A row's `last_seen` is refreshed at most this often, which bounds the
    /// write load of busy connections.
    #[serde(with = "humantime_serde")]
    pub touch_interval: Duration,
}

impl Default for IpLogConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(30 * 86_400),
            touch_interval: Duration::from_secs(60),
        }
    }
}

/// Background maintenance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaintenanceConfig {
    /// How often expired envelopes, codes and IP-log rows are purged.
    #[serde(with = "humantime_serde")]
    pub purge_interval: Duration,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            purge_interval: Duration::from_secs(3600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_equals_defaults() {
        let parsed = Config::from_toml(EXAMPLE_CONFIG).expect("example parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(Config::from_toml("lisen = \"127.0.0.1:1\"").is_err());
        assert!(Config::from_toml("[ip_log]\nretention = \"forever\"").is_err());
        assert!(Config::from_toml("[mailbox]\nmax_envelope_bytes = 99999999").is_err());
        // Rate-limit windows: events older than a day are purged.
        let err =
            Config::from_toml("[limits]\nlookups_per_account = { max = 5, window = \"2days\" }")
                .unwrap_err()
                .to_string();
        assert!(err.contains("limits.lookups_per_account.window"), "{err}");
        assert!(
            Config::from_toml("[registration]\nsms_budget = { max = 5, window = \"0s\" }").is_err()
        );
        assert!(
            Config::from_toml("[registration]\nper_ip = { max = 5, window = \"24h\" }").is_ok()
        );
    }

    #[test]
    fn command_sender_parses() {
        let c = Config::from_toml(
            "[registration.code_sender]\nkind = \"command\"\nprogram = \"/usr/local/bin/sms\"\n",
        )
        .unwrap();
        assert!(matches!(
            c.registration.code_sender,
            CodeSenderConfig::Command { .. }
        ));
    }
}
