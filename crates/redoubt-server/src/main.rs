//! `redoubtd`: the Redoubt relay server and its operator commands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use redoubt_server::config::{Config, EXAMPLE_CONFIG};

mod cli_legal;
use cli_legal::LegalCommand;

/// The Redoubt relay server.
///
/// redoubtd stores and forwards end-to-end-encrypted (MLS) messages it cannot
/// read. With no arguments it serves on 127.0.0.1:8080 with an embedded SQLite
/// database in ~/.local/share/redoubtd (or $XDG_DATA_HOME/redoubtd), and
/// writes verification codes to its log (development mode).
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

// The command line is parsed once at start-up; the size of its largest
// variant does not matter, and boxing would only obscure the clap derive.
#[allow(clippy::large_enum_variant)]
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
    /// Market policy: announce, cancel and list exits from a jurisdiction.
    /// Changes are recorded in the legal desk's audit log.
    #[command(subcommand)]
    Market(MarketCommand),
    /// The legal desk: court orders, the authority trust store, operators,
    /// disclosure (phone number and IP records only) and the audit log. Its
    /// state is in the relay's database; its service key in
    /// <data_dir>/legal.
    #[command(subcommand)]
    Legal(LegalCommand),
}

#[derive(Subcommand, Debug)]
enum MarketCommand {
    /// Announce leaving a jurisdiction: from the effective date it is
    /// refused (HTTP 451), and after the grace period its accounts' data
    /// is purged.
    AnnounceExit {
        /// ISO 3166-1 alpha-2 code, such as FR.
        jurisdiction: String,
        /// When the exit takes effect (RFC 3339, or a date such as 2027-01-15).
        #[arg(long)]
        effective: String,
        /// A file with the notice users see.
        #[arg(long)]
        notice: PathBuf,
        /// Days between the effective date and the purge of the market's
        /// accounts.
        #[arg(long, default_value_t = 30)]
        grace_days: u16,
        /// Your operator key file: the decision is signed with it and
        /// recorded in the legal desk's audit log.
        #[arg(long, env = "REDOUBT_OPERATOR_KEY")]
        operator_key: PathBuf,
    },
    /// Cancel an announced exit that has not taken effect.
    CancelExit {
        /// The jurisdiction.
        jurisdiction: String,
        /// Your operator key file: the decision is signed with it and
        /// recorded in the legal desk's audit log.
        #[arg(long, env = "REDOUBT_OPERATOR_KEY")]
        operator_key: PathBuf,
    },
    /// Show one jurisdiction's state.
    Status {
        /// The jurisdiction.
        jurisdiction: String,
    },
    /// List every announced or completed exit.
    List,
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
        config.data_dir =
            std::path::absolute(dir).with_context(|| format!("--data-dir {}", dir.display()))?;
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

fn parse_day_or_time(text: &str) -> anyhow::Result<time::OffsetDateTime> {
    let day = time::macros::format_description!("[year]-[month]-[day]");
    match time::Date::parse(text, day) {
        Ok(date) => Ok(date.midnight().assume_utc()),
        Err(_) => parse_time(text),
    }
}

async fn market(config: Config, command: &MarketCommand) -> anyhow::Result<()> {
    use redoubt_legal::markets::{MarketBook, MarketState};
    let now = time::OffsetDateTime::now_utc();
    let path = config.data_dir.join("legal").join("markets.json");
    let mut book = MarketBook::load(&path)?;
    match command {
        MarketCommand::AnnounceExit {
            jurisdiction,
            effective,
            notice,
            grace_days,
            operator_key,
        } => {
            let text = std::fs::read_to_string(notice)
                .with_context(|| format!("cannot read {}", notice.display()))?;
            let exit = book.announce_exit(
                jurisdiction,
                parse_day_or_time(effective)?,
                time::Duration::days(i64::from(*grace_days)),
                &text,
                now,
            )?;
            // Recorded (signed) first: a decision the log cannot record is
            // not made.
            cli_legal::record_market(
                &config,
                operator_key,
                serde_json::json!({
                    "announced_exit": exit.jurisdiction,
                    "effective_at": exit.effective_at.to_string(),
                    "purge_at": exit.purge_at.to_string(),
                }),
            )
            .await?;
            book.save(&path)?;
            println!(
                "Exit from {} announced: effective {}, purge {}.",
                exit.jurisdiction,
                exit.effective_at.date(),
                exit.purge_at.date()
            );
        }
        MarketCommand::CancelExit {
            jurisdiction,
            operator_key,
        } => {
            let exit = book.cancel_exit(jurisdiction, now)?;
            cli_legal::record_market(
                &config,
                operator_key,
                serde_json::json!({ "cancelled_exit": exit.jurisdiction }),
            )
            .await?;
            book.save(&path)?;
            println!("Exit from {} cancelled.", exit.jurisdiction);
        }
        MarketCommand::Status { jurisdiction } => {
            let code = redoubt_legal::markets::known_country(jurisdiction)?;
            match book.state(&code, now) {
                MarketState::Active => println!("{code}: active"),
                MarketState::ExitAnnounced(e) => {
                    println!(
                        "{code}: exit announced, effective {}, purge {}",
                        e.effective_at.date(),
                        e.purge_at.date()
                    )
                }
                MarketState::Exited(e) => println!(
                    "{code}: exited on {}, purge {}",
                    e.effective_at.date(),
                    e.purge_at.date()
                ),
            }
        }
        MarketCommand::List => {
            if book.exits.is_empty() {
                println!("No market exits.");
            }
            for e in &book.exits {
                let state = if e.effective_at <= now {
                    "exited"
                } else {
                    "announced"
                };
                println!(
                    "{}  {state}  announced {}  effective {}  purge {}",
                    e.jurisdiction,
                    e.announced_at.date(),
                    e.effective_at.date(),
                    e.purge_at.date()
                );
            }
        }
    }
    Ok(())
}

fn parse_time(text: &str) -> anyhow::Result<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).map_err(
        |_| anyhow::anyhow!("{text:?} is not an RFC 3339 time such as 2027-01-15T00:00:00Z"),
    )
}

/// An error and its causes on one line, each cause once: database errors
/// repeat their cause in their own message, which `{:#}` then printed
/// again, three times over.
fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let message = cause.to_string();
        if text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
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
                // The IP table and market book are part of what the server
                // needs to start; check them too.
                redoubt_server::markets::Markets::open(&config)?;
                print!("{}", config.to_toml());
                let warnings = config.production_warnings();
                for warning in &warnings {
                    eprintln!("warning: {warning}");
                }
                if warnings.is_empty() {
                    eprintln!("configuration is valid; nothing unsafe for production found");
                } else {
                    eprintln!(
                        "configuration is valid, with {} warning(s) to fix before serving real users",
                        warnings.len()
                    );
                }
                Ok(())
            }
            Some(Command::Market(command)) => {
                let config = load_config(&cli)?;
                tokio::runtime::Runtime::new()?.block_on(market(config, command))
            }
            Some(Command::Legal(command)) => {
                let config = load_config(&cli)?;
                tokio::runtime::Runtime::new()?.block_on(cli_legal::legal(config, command))
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
            eprintln!("redoubtd: error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}
