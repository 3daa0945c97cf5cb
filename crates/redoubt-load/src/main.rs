//! `redoubt-load`: load a Redoubt relay and, optionally, an MQTT broker with
//! the same workload, and report both.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use redoubt_load::cluster::{Cluster, ClusterSpec, CodeSource, Codes, Storage};
use redoubt_load::relay::Target;
use redoubt_load::report::Report;
use redoubt_load::workload::{Pattern, Scenario, Transport, Workload};

/// Drive a Redoubt relay with simulated devices and measure it.
///
/// By default the tool starts its own `redoubtd` (next to this binary; it is
/// built first if missing when run through cargo), registers the devices
/// through the real API with the development code sender, and reports
/// deliveries per second, end-to-end latency (p50/p90/p99/max), server CPU
/// and peak memory, bytes and errors, checking that every accepted message
/// was delivered exactly once. `--peer mosquitto` runs the same workload
/// against a Mosquitto it starts, minutes apart on the same machine.
///
/// Examples:
///   redoubt-load --scenario one-to-one --peer mosquitto --out one-to-one.json
///   redoubt-load --scenario one-to-one --storage postgres --nodes 2 --nats nats://127.0.0.1:4222
#[derive(Parser, Debug)]
#[command(name = "redoubt-load", version, verbatim_doc_comment)]
struct Cli {
    /// A named scenario from BENCHMARKS.md; the options below override its
    /// settings.
    #[arg(long, value_enum)]
    scenario: Option<Scenario>,
    /// Relay mode sends opaque envelopes (the server alone); e2e mode runs
    /// real OpenMLS clients that encrypt and decrypt (the whole path).
    #[arg(long, value_enum, default_value_t = Mode::Relay)]
    mode: Mode,
    /// How relay-mode devices send: binary frames on their open WebSocket
    /// (the fast path), or one HTTP request each with JSON frames on the
    /// socket (the simple path; for before-and-after comparisons).
    #[arg(long, value_enum, default_value_t = Transport::Websocket)]
    transport: Transport,
    /// Simulated devices.
    #[arg(long)]
    devices: Option<usize>,
    /// `one-to-one` pairs devices; `group` puts them in groups of
    /// `--group-size`, each message going to every other member.
    #[arg(long, value_enum)]
    pattern: Option<PatternArg>,
    /// Members per group (with `--pattern group`).
    #[arg(long, default_value_t = 100)]
    group_size: usize,
    /// How many devices send (default: all that have recipients).
    #[arg(long)]
    senders: Option<usize>,
    /// Payload bytes per message.
    #[arg(long)]
    message_size: Option<usize>,
    /// Total messages per second; without it each sender runs a closed loop
    /// with `--window` undelivered messages at most.
    #[arg(long)]
    rate: Option<f64>,
    /// Closed loop: undelivered messages per sender.
    #[arg(long)]
    window: Option<usize>,
    /// Seconds to send (or to hold connections, with --idle).
    #[arg(long)]
    duration: Option<f64>,
    /// Stop after this many messages.
    #[arg(long)]
    messages: Option<u64>,
    /// Fraction (0 to 1) of recipient devices offline while senders send;
    /// they connect afterwards and drain.
    #[arg(long)]
    offline: Option<f64>,
    /// Only hold the connections for `--duration` and report memory per
    /// connection.
    #[arg(long)]
    idle: bool,
    /// Queue this many envelopes for one offline device, then time its
    /// drain.
    #[arg(long)]
    backlog: Option<u64>,
    /// Loopback source addresses to spread connections over (127.0.0.1
    /// through 127.0.0.N).
    #[arg(long, default_value_t = 50)]
    source_addresses: u8,
    /// Use running relays at these base URLs instead of starting one; codes
    /// are then read from `--codes-file` (lines "PHONE CODE", as a
    /// `registration.code_sender` command can append them).
    #[arg(long = "target", value_name = "URL")]
    targets: Vec<String>,
    /// With `--target`: where the relay's code sender writes codes.
    #[arg(long)]
    codes_file: Option<PathBuf>,
    /// With `--target`: process ids of the relay nodes, for CPU and memory.
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// The `redoubtd` binary to start (default: next to this binary).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Relay nodes to start.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// The started nodes' database.
    #[arg(long, value_enum, default_value_t = StorageArg::Sqlite)]
    storage: StorageArg,
    /// PostgreSQL URL (with `--storage postgres`); the run uses a schema of
    /// its own and drops it afterwards.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pg_url: String,
    /// NATS URL for fan-out between started nodes (needed for --nodes > 1).
    #[arg(long)]
    nats: Option<String>,
    /// Also run the workload against this peer and print the ratio.
    #[arg(long, value_enum)]
    peer: Option<Peer>,
    /// The Mosquitto binary for `--peer mosquitto`.
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    mosquitto_bin: PathBuf,
    /// Write the results as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Relay,
    E2e,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PatternArg {
    OneToOne,
    Group,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StorageArg {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Peer {
    Mosquitto,
}

fn workload(cli: &Cli) -> anyhow::Result<Workload> {
    let mut w = cli.scenario.map(Scenario::workload).unwrap_or_default();
    if let Some(d) = cli.devices {
        w.devices = d;
    }
    match cli.pattern {
        Some(PatternArg::OneToOne) => w.pattern = Pattern::OneToOne,
        Some(PatternArg::Group) => {
            w.pattern = Pattern::Group {
                size: cli.group_size,
            }
        }
        None => {}
    }
    w.transport = cli.transport;
    if cli.senders.is_some() {
        w.senders = cli.senders;
    }
    if let Some(s) = cli.message_size {
        w.message_size = s.max(16);
    }
    if cli.rate.is_some() {
        w.rate = cli.rate;
    }
    if let Some(n) = cli.window {
        w.window = n.max(1);
    }
    if let Some(d) = cli.duration {
        anyhow::ensure!(d > 0.0, "--duration must be positive");
        w.duration = Duration::from_secs_f64(d);
    }
    if cli.messages.is_some() {
        w.messages = cli.messages;
    }
    if let Some(f) = cli.offline {
        anyhow::ensure!(
            (0.0..=1.0).contains(&f),
            "--offline is a fraction from 0 to 1"
        );
        w.offline = f;
    }
    if cli.idle {
        w.idle = true;
    }
    if cli.backlog.is_some() {
        w.backlog = cli.backlog;
        w.devices = w.devices.max(2);
    }
    w.source_addresses = cli.source_addresses.max(1);
    anyhow::ensure!(w.devices >= 2 || w.idle, "--devices must be at least 2");
    Ok(w)
}

/// The `redoubtd` next to this binary, built first when missing and cargo
/// is at hand, so `cargo run --release -p redoubt-load` is one command.
fn server_binary(cli: &Cli) -> anyhow::Result<PathBuf> {
    if let Some(p) = &cli.server_bin {
        return Ok(p.clone());
    }
    let me = std::env::current_exe()?;
    let path = me.with_file_name("redoubtd");
    if !path.exists() {
        if let Some(cargo) = std::env::var_os("CARGO") {
            let release = me
                .parent()
                .and_then(|d| d.file_name())
                .is_some_and(|n| n == "release");
            eprintln!("building redoubtd ...");
            let mut build = std::process::Command::new(cargo);
            build.args(["build", "--bin", "redoubtd"]);
            if release {
                build.arg("--release");
            }
            anyhow::ensure!(build.status()?.success(), "building redoubtd failed");
        }
    }
    Ok(path)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let w = workload(&cli)?;
    let show = !cli.quiet;
    let mut reports: Vec<Report> = Vec::new();

    let (target, _cluster) = if cli.targets.is_empty() {
        let storage = match cli.storage {
            StorageArg::Sqlite => Storage::Sqlite,
            StorageArg::Postgres => Storage::Postgres(cli.pg_url.clone()),
        };
        let spec = ClusterSpec {
            binary: server_binary(&cli)?,
            nodes: cli.nodes.max(1),
            storage: storage.clone(),
            nats_url: cli.nats.clone(),
            max_queued_per_device: w.backlog.map_or(10_000, |n| n + 1_000),
        };
        let cluster = Cluster::start(&spec)?;
        let setup = format!(
            "{} node{}, {}{}",
            spec.nodes,
            if spec.nodes == 1 { "" } else { "s" },
            match storage {
                Storage::Sqlite => "SQLite",
                Storage::Postgres(_) => "PostgreSQL",
            },
            if spec.nats_url.is_some() {
                " + NATS"
            } else {
                ""
            }
        );
        let target = Target {
            urls: cluster.urls(),
            pids: cluster.pids(),
            codes: CodeSource::Logs(cluster.codes.clone()),
            setup,
        };
        (target, Some(cluster))
    } else {
        let file = cli
            .codes_file
            .clone()
            .context("--target needs --codes-file to read verification codes from")?;
        let codes = std::sync::Arc::new(Codes::default());
        let lookup = {
            let codes = codes.clone();
            move |phone: &str| {
                if let Ok(text) = std::fs::read_to_string(&file) {
                    for line in text.lines() {
                        let mut parts = line.split_whitespace();
                        if let (Some(p), Some(c)) = (parts.next(), parts.next()) {
                            codes.insert(p, c);
                        }
                    }
                }
                codes.take(phone)
            }
        };
        let target = Target {
            urls: cli.targets.clone(),
            pids: cli.server_pids.clone(),
            codes: CodeSource::Lookup(std::sync::Arc::new(lookup)),
            setup: format!("{} running node(s)", cli.targets.len()),
        };
        (target, None)
    };

    let redoubt = match cli.mode {
        Mode::Relay => redoubt_load::relay::run(&target, &w, show).await?,
        Mode::E2e => redoubt_load::e2e::run(&target, &w, show).await?,
    };
    println!("{}", redoubt.summary());
    reports.push(redoubt);
    drop(_cluster);

    if let Some(Peer::Mosquitto) = cli.peer {
        let broker = redoubt_load::mqtt::Broker::start(&cli.mosquitto_bin)?;
        let peer = redoubt_load::mqtt::run(broker.port, Some(broker.pid()), &w, show).await?;
        println!("{}", peer.summary());
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        let (r, p) = (&reports[0], &peer);
        println!(
            "redoubt / mosquitto: deliveries/s {:.2}x, p50 latency {:.2}x, p99 latency {:.2}x, server CPU per delivery {:.2}x",
            ratio(r.deliveries_per_second, p.deliveries_per_second),
            ratio(r.latency.p50_ms, p.latency.p50_ms),
            ratio(r.latency.p99_ms, p.latency.p99_ms),
            ratio(
                ratio(r.server_cpu_seconds, r.deliveries as f64),
                ratio(p.server_cpu_seconds, p.deliveries as f64)
            ),
        );
        reports.push(peer);
    }
    if let Some(out) = &cli.out {
        let json = serde_json::json!({
            "date": humantime_now(),
            "machine": machine(),
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "results": reports,
        });
        std::fs::write(out, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| r.missing > 0)
        .map(|r| format!("{}: {} deliveries missing", r.system, r.missing))
        .collect();
    anyhow::ensure!(failed.is_empty(), "{}", failed.join("; "));
    Ok(())
}

fn humantime_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("unix {secs}")
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("redoubt-load: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("redoubt-load: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
