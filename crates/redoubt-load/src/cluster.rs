//! Relay nodes the tool starts itself: `redoubtd` processes on ephemeral
//! ports, on SQLite (one node) or sharing PostgreSQL and NATS, with the
//! development code sender so simulated devices register through the real
//! API by reading their codes from the node's log.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redoubt_server::config::{FanoutConfig, PostgresConfig, RateLimit, StorageConfig};

use crate::LoadError;

/// Verification codes by E.164 number.
#[derive(Default)]
pub struct Codes {
    map: Mutex<HashMap<String, String>>,
}

impl Codes {
    /// Records a code.
    pub fn insert(&self, phone: &str, code: &str) {
        self.lock().insert(phone.to_owned(), code.to_owned());
    }

    /// Takes the code for a number, if it has arrived.
    pub fn take(&self, phone: &str) -> Option<String> {
        self.lock().remove(phone)
    }

    /// Parses one log line of the development code sender.
    pub fn scan(&self, line: &str) {
        if !line.contains("DEV CODE SENDER") {
            return;
        }
        let field = |name: &str| {
            line.split(name)
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .map(|v| v.trim_matches(|c: char| c == '"' || c == ',').to_owned())
        };
        if let (Some(phone), Some(code)) = (field("phone="), field("code=")) {
            let code: String = code.chars().take_while(char::is_ascii_digit).collect();
            self.insert(&phone, &code);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Looks a number's code up.
pub type CodeLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Where codes come from: the tool's own nodes' logs, or a function (tests
/// that run the relay in process read their captured log).
#[derive(Clone)]
pub enum CodeSource {
    /// Parsed from the logs of nodes this tool started.
    Logs(Arc<Codes>),
    /// Looked up by number.
    Lookup(CodeLookup),
}

impl CodeSource {
    /// Waits up to ten seconds for the code sent to `phone`.
    pub async fn wait(&self, phone: &str) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = match self {
                Self::Logs(codes) => codes.take(phone),
                Self::Lookup(f) => f(phone),
            };
            if found.is_some() || Instant::now() > deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The database the nodes use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// Embedded SQLite (one node only).
    Sqlite,
    /// PostgreSQL at this URL, in a schema of the run's own.
    Postgres(String),
}

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The `redoubtd` binary.
    pub binary: PathBuf,
    /// How many nodes.
    pub nodes: usize,
    /// Their database.
    pub storage: Storage,
    /// NATS for fan-out between nodes (needed for more than one node).
    pub nats_url: Option<String>,
    /// Mailbox cap per device (the backlog scenario needs a large one).
    pub max_queued_per_device: u64,
}

/// A started node.
pub struct Node {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Node {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Nodes started by the tool; stopped (and their PostgreSQL schema dropped)
/// when dropped.
pub struct Cluster {
    /// The nodes.
    pub nodes: Vec<Node>,
    /// Codes from their logs.
    pub codes: Arc<Codes>,
    schema: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts the nodes and waits until each listens.
    pub fn start(spec: &ClusterSpec) -> Result<Self, LoadError> {
        if !spec.binary.exists() {
            return Err(LoadError::Spawn {
                what: "redoubtd",
                detail: format!(
                    "{} does not exist; build it with `cargo build --release --bin redoubtd`",
                    spec.binary.display()
                ),
            });
        }
        if spec.nodes > 1 && (spec.storage == Storage::Sqlite || spec.nats_url.is_none()) {
            return Err(LoadError::Spawn {
                what: "redoubtd",
                detail: "several nodes need --storage postgres and --nats".into(),
            });
        }
        let dir = tempfile::tempdir()?;
        let schema_name = format!("load_{}", uuid::Uuid::new_v4().simple());
        let mut config = redoubt_server::Config {
            listen: ([127, 0, 0, 1], 0).into(),
            ..Default::default()
        };
        // The listening line and the development codes are read from the log;
        // nothing per request is written at this level.
        config.log.filter = "warn,redoubt_server=info".into();
        config.registration.per_number = RateLimit {
            max: 1000,
            window: Duration::from_secs(3600),
        };
        config.registration.per_ip = RateLimit {
            max: 10_000_000,
            window: Duration::from_secs(3600),
        };
        config.mailbox.max_queued_per_device = spec.max_queued_per_device;
        // Every simulated device connects from 127.0.0.1, where real ones
        // would come from addresses of their own.
        config.http.max_connections_per_address = 10_000_000;
        // Simulated users look up, claim and send far faster than people,
        // from one address and consecutive numbers of one country.
        config.relax_abuse_limits(RateLimit {
            max: 100_000_000,
            window: Duration::from_secs(3600),
        });
        let mut schema = None;
        if let Storage::Postgres(url) = &spec.storage {
            config.storage = StorageConfig::Postgres(PostgresConfig {
                url: url.clone(),
                schema: Some(schema_name.clone()),
                max_connections: 16,
            });
            schema = Some((url.clone(), schema_name.clone()));
        }
        if let Some(nats) = &spec.nats_url {
            config.fanout = FanoutConfig::Nats {
                url: nats.clone(),
                subject_prefix: schema_name.clone(),
            };
        }
        let config_path = dir.path().join("redoubtd.toml");
        std::fs::write(&config_path, config.to_toml())?;
        let codes = Arc::new(Codes::default());
        let mut cluster = Self {
            nodes: Vec::new(),
            codes: codes.clone(),
            schema,
            _dir: dir,
        };
        for i in 0..spec.nodes {
            let data = cluster._dir.path().join(format!("node{i}"));
            let node = spawn_node(&spec.binary, &config_path, &data, codes.clone())?;
            cluster.nodes.push(node);
        }
        Ok(cluster)
    }

    /// The nodes' base URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("http://{}", n.addr))
            .collect()
    }

    /// The nodes' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().map(Node::pid).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
        if let Some((url, schema)) = self.schema.take() {
            redoubt_server::storage::postgres::drop_schema_blocking(&url, &schema);
        }
    }
}

fn spawn_node(
    binary: &Path,
    config: &Path,
    data: &Path,
    codes: Arc<Codes>,
) -> Result<Node, LoadError> {
    let mut child = Command::new(binary)
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| LoadError::Spawn {
            what: "redoubtd",
            detail: e.to_string(),
        })?;
    let stderr = child.stderr.take().ok_or(LoadError::Spawn {
        what: "redoubtd",
        detail: "no stderr".into(),
    })?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        // Lines go to the starter until the address is known; codes are
        // read from every line for as long as the node runs.
        let mut forwarding = true;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            codes.scan(&line);
            if forwarding {
                forwarding = announced_address(&line).is_none();
                let _ = tx.send(line);
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = String::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                if let Some(addr) = announced_address(&line) {
                    return Ok(Node { child, addr });
                }
                seen.push_str(&line);
                seen.push('\n');
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(LoadError::Spawn {
                    what: "redoubtd",
                    detail: format!("it exited:\n{seen}"),
                })
            }
        }
        if Instant::now() > deadline {
            return Err(LoadError::Spawn {
                what: "redoubtd",
                detail: format!("it did not report its address:\n{seen}"),
            });
        }
    }
}

fn announced_address(line: &str) -> Option<SocketAddr> {
    if !line.contains("redoubtd listening") {
        return None;
    }
    line.split("address=")
        .nth(1)
        .and_then(|a| a.split_whitespace().next())
        .and_then(|a| a.trim_matches('"').parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_addresses_are_read_from_log_lines() {
        let codes = Codes::default();
        codes.scan("2026-11-23T00:00:00Z WARN redoubt_dev_codes: DEV CODE SENDER (development only): phone=+33612345678 code=123456");
        codes.scan("INFO something else phone=+33600000000 code=999999");
        assert_eq!(codes.take("+33612345678").as_deref(), Some("123456"));
        assert_eq!(codes.take("+33600000000"), None);
        assert_eq!(
            announced_address("INFO redoubt_server: redoubtd listening address=127.0.0.1:4567"),
            Some("127.0.0.1:4567".parse().unwrap())
        );
    }
}
