//! `redoubtd`: the Redoubt relay server and its operator commands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use redoubt_server::config::{Config, EXAMPLE_CONFIG};

/// The Redoubt relay server.
///
/// redoubtd stores and forwards end-to-end-encrypted (MLS) messages it cannot
/// read. With no arguments it serves on 127.0.0.1:8080 with an embedded SQLite
/// database in ./redoubt-data, and writes verification codes to its log
/// (development mode).
#[derive(Parser, Debug)]
#[command(name = "redoubtd", version, about, long_about)]
struct Cli {
    /// Configuration file (TOML). Without one, the defaults apply; see
    /// `redoubtd config example`.
    #[arg(long, short, global = true, env = "REDOUBTD_CONFIG")]
    config: Option<PathBuf>,

    /// Override `listen` from the configuration.
    #[arg(long, global = true, env = "REDOUBTD_LISTEN")]
    listen: Option<SocketAddr>,

    /// Override `data_dir` from the configuration.
    #[arg(long, global = true, env = "REDOUBTD_DATA_DIR")]
    data_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the relay (the default when no command is given). Stops cleanly on
    /// Ctrl-C or SIGTERM: open WebSockets are closed, in-flight requests finish.
    Serve,
    /// Inspect configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Create or upgrade the database schema, then exit. `serve` does this
    /// too; this is for deployments that migrate before rolling out nodes.
    Migrate,
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Print a configuration file documenting every option with its default.
    Example,
    /// Validate the configuration (file plus overrides) and print the
    /// effective settings.
    Check,
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = match &cli.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(listen) = cli.listen {
        config.listen = listen;
    }
    if let Some(dir) = &cli.data_dir {
        config.data_dir = dir.clone();
    }
    config.validate()?;
    Ok(config)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown requested");
}

async fn serve(config: Config) -> anyhow::Result<()> {
    redoubt_server::telemetry::init(&config.log);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    redoubt_server::run(listener, config, shutdown_signal()).await?;
    Ok(())
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    redoubt_server::telemetry::init(&config.log);
    let state = redoubt_server::AppState::open(config, redoubt_server::Clock::system()).await?;
    drop(state);
    println!("database schema is up to date");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = (|| -> anyhow::Result<()> {
        match &cli.command {
            Some(Command::Config(ConfigCommand::Example)) => {
                print!("{EXAMPLE_CONFIG}");
                Ok(())
            }
            Some(Command::Config(ConfigCommand::Check)) => {
                let config = load_config(&cli)?;
                print!("{}", toml::to_string_pretty(&config)?);
                eprintln!("configuration is valid");
                Ok(())
            }
            Some(Command::Migrate) => {
                let config = load_config(&cli)?;
                tokio::runtime::Runtime::new()?.block_on(migrate(config))
            }
            None | Some(Command::Serve) => {
                let config = load_config(&cli)?;
                tokio::runtime::Runtime::new()?.block_on(serve(config))
            }
        }
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("redoubtd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
