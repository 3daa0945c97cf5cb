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
    /// The legal desk: court orders, the authority trust store, disclosure
    /// (phone number and IP records only) and the audit log. Its files live
    /// in <data_dir>/legal.
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
        /// The operator making the change.
        #[arg(long, env = "REDOUBT_OPERATOR")]
        operator: String,
    },
    /// Cancel an announced exit that has not taken effect.
    CancelExit {
        /// The jurisdiction.
        jurisdiction: String,
        /// The operator making the change.
        #[arg(long, env = "REDOUBT_OPERATOR")]
        operator: String,
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
enum LegalCommand {
    /// Manage the authorities whose orders are considered.
    #[command(subcommand)]
    Authority(AuthorityCommand),
    /// Verify a signed court order (JSON, see docs/court-order.md) and file
    /// it as pending review, or reject it with the reason.
    Intake {
        /// The order document.
        file: PathBuf,
        /// The operator taking it in.
        #[arg(long, env = "REDOUBT_OPERATOR")]
        operator: String,
    },
    /// Approve a pending order (a different operator from the one who took
    /// it in) and write the signed disclosure package.
    Approve {
        /// The order id.
        order_id: String,
        /// The approving operator.
        #[arg(long, env = "REDOUBT_OPERATOR")]
        operator: String,
        /// Where to write the package (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List the orders on file and where each stands.
    Orders,
    /// Check the audit log's hash chain; names the first broken entry.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print the service's public key, which authorities use to verify
    /// disclosure packages and reports.
    ServiceKey,
    /// Verify a signed disclosure package against the service key.
    VerifyPackage {
        /// The package file.
        file: PathBuf,
    },
    /// Write the signed transparency report for a period, as JSON and as a
    /// readable HTML page.
    Report {
        /// The period: 2026, 2026-H2 or 2026-Q3.
        #[arg(long)]
        period: String,
        /// The directory to write transparency-<period>.json and .html into.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
    },
    /// Issue an admin-API token for an operator (replacing any earlier one).
    /// The token is printed once; only its hash is kept.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Deliver the notices now due to users whose data was disclosed (the
    /// running relay also does this on its maintenance interval).
    Notify,
    /// Verify a signed transparency report (JSON) against the service key.
    VerifyReport {
        /// The report file.
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum AuthorityCommand {
    /// Add an authority.
    Add {
        /// Its id, as orders name it (such as fr-tj-paris).
        #[arg(long)]
        id: String,
        /// Its name.
        #[arg(long)]
        name: String,
        /// ISO 3166-1 alpha-2 code of the state it acts for.
        #[arg(long)]
        jurisdiction: String,
        /// court, judge, prosecutor or other (prosecutors and others need a
        /// validating court or judge).
        #[arg(long)]
        kind: String,
        /// The key's id, as orders name it in signature.key_id.
        #[arg(long)]
        key_id: String,
        /// The Ed25519 public key, standard base64.
        #[arg(long)]
        public_key: String,
        /// Trusted from (RFC 3339); default now. Orders are checked against
        /// the validity period both now and at their issue time, so set this
        /// back to when the authority's key came into use.
        #[arg(long)]
        valid_from: Option<String>,
        /// Trusted until (RFC 3339).
        #[arg(long)]
        valid_until: String,
        /// The operator making the change.
        #[arg(long, env = "REDOUBT_OPERATOR")]
        operator: String,
    },
    /// List authorities.
    List,
    /// Revoke an authority from now on.
    Revoke {
        /// Its id.
        id: String,
        /// The operator making the change.
        #[arg(long, env = "REDOUBT_OPERATOR")]
        operator: String,
    },
}

#[derive(Subcommand, Debug)]
enum OperatorCommand {
    /// Add an operator, or give one a new token.
    Add {
        /// The operator's name, as the audit log will record it.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Check the hash chain, and that it still holds the history a
    /// transparency report vouched for.
    Verify {
        /// A signed transparency report (JSON) whose audit checkpoint the
        /// log must extend: entries up to it unchanged, none removed.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Check this copy of the log (an export handed to an auditor)
        /// instead of the desk's own.
        #[arg(long)]
        log: Option<PathBuf>,
    },
    /// After a crash in the middle of an append: drop a last line that was
    /// cut short, recording what was dropped. Any other break is refused.
    Repair {
        /// The operator doing it, as the audit log records it.
        #[arg(long)]
        operator: String,
    },
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

type Desk = redoubt_legal::desk::Desk<redoubt_server::storage::legal_view::RelayRecords>;

async fn open_desk(config: &Config) -> anyhow::Result<Desk> {
    let store = redoubt_server::storage::legal_view::RelayRecords::open(config).await?;
    let retention = time::Duration::try_from(config.ip_log.retention)?;
    let legal_dir = config.data_dir.join("legal");
    // Orders from markets the service has left are refused with that reason.
    let markets = redoubt_legal::markets::MarketBook::load(&legal_dir.join("markets.json"))?;
    Ok(redoubt_legal::desk::Desk::open(
        &legal_dir,
        store,
        config
            .markets
            .policy(&markets, time::OffsetDateTime::now_utc()),
        retention,
    )?)
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
    let desk = open_desk(&config).await?;
    match command {
        MarketCommand::AnnounceExit {
            jurisdiction,
            effective,
            notice,
            grace_days,
            operator,
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
            book.save(&path)?;
            desk.audit().append(
                "market",
                operator,
                None,
                serde_json::json!({
                    "announced_exit": exit.jurisdiction,
                    "effective_at": exit.effective_at.to_string(),
                    "purge_at": exit.purge_at.to_string(),
                }),
                now,
            )?;
            println!(
                "Exit from {} announced: effective {}, purge {}.",
                exit.jurisdiction,
                exit.effective_at.date(),
                exit.purge_at.date()
            );
        }
        MarketCommand::CancelExit {
            jurisdiction,
            operator,
        } => {
            let exit = book.cancel_exit(jurisdiction, now)?;
            book.save(&path)?;
            desk.audit().append(
                "market",
                operator,
                None,
                serde_json::json!({ "cancelled_exit": exit.jurisdiction }),
                now,
            )?;
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

async fn legal(config: Config, command: &LegalCommand) -> anyhow::Result<()> {
    use redoubt_legal::desk::Intake;
    let now = time::OffsetDateTime::now_utc();
    let mut desk = open_desk(&config).await?;
    match command {
        LegalCommand::Authority(AuthorityCommand::Add {
            id,
            name,
            jurisdiction,
            kind,
            key_id,
            public_key,
            valid_from,
            valid_until,
            operator,
        }) => {
            let kind = match kind.as_str() {
                "court" => redoubt_legal::trust::AuthorityKind::Court,
                "judge" => redoubt_legal::trust::AuthorityKind::Judge,
                "prosecutor" => redoubt_legal::trust::AuthorityKind::Prosecutor,
                "other" => redoubt_legal::trust::AuthorityKind::Other,
                other => anyhow::bail!(
                    "{other:?} is not an authority kind (court, judge, prosecutor, other)"
                ),
            };
            let authority = redoubt_legal::trust::Authority {
                id: id.clone(),
                name: name.clone(),
                jurisdiction: jurisdiction.clone(),
                kind,
                keys: vec![redoubt_legal::trust::AuthorityKey {
                    key_id: key_id.clone(),
                    public_key: public_key.clone(),
                }],
                valid_from: valid_from
                    .as_deref()
                    .map(parse_time)
                    .transpose()?
                    .unwrap_or(now),
                valid_until: parse_time(valid_until)?,
                revoked_at: None,
            };
            desk.trust.add(authority)?;
            desk.save_trust(
                operator,
                serde_json::json!({ "added": id, "jurisdiction": jurisdiction }),
                now,
            )?;
            println!("Added authority {id} ({jurisdiction}).");
        }
        LegalCommand::Authority(AuthorityCommand::List) => {
            for a in &desk.trust.authorities {
                let state = if a.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!(
                    "{}  {}  {:?}  {}  {}",
                    a.id, a.jurisdiction, a.kind, state, a.name
                );
            }
        }
        LegalCommand::Authority(AuthorityCommand::Revoke { id, operator }) => {
            desk.trust.revoke(id, now)?;
            desk.save_trust(operator, serde_json::json!({ "revoked": id }), now)?;
            println!("Revoked authority {id}.");
        }
        LegalCommand::Intake { file, operator } => {
            // Read at most one byte past the limit: an oversized file is
            // refused without being read whole.
            let mut document = Vec::new();
            std::io::Read::read_to_end(
                &mut std::io::Read::take(
                    std::fs::File::open(file)
                        .with_context(|| format!("cannot read {}", file.display()))?,
                    redoubt_legal::order::limits::MAX_DOCUMENT_BYTES as u64 + 1,
                ),
                &mut document,
            )
            .with_context(|| format!("cannot read {}", file.display()))?;
            match desk.intake(&document, operator, now).await? {
                Intake::Pending { order_id } => {
                    println!("Order {order_id} verified and filed: pending approval by a second operator.");
                }
                Intake::Rejected {
                    order_id,
                    rejection,
                } => {
                    anyhow::bail!(
                        "order {} rejected ({}): {rejection}",
                        order_id.unwrap_or_else(|| "(unreadable)".into()),
                        rejection.code()
                    );
                }
            }
        }
        LegalCommand::Approve {
            order_id,
            operator,
            out,
        } => {
            let package = desk.approve(order_id, operator, now).await?;
            let text = serde_json::to_string_pretty(&package)?;
            match out {
                Some(path) => {
                    std::fs::write(path, text)?;
                    eprintln!(
                        "Disclosure package for {order_id} written to {}.",
                        path.display()
                    );
                }
                None => println!("{text}"),
            }
        }
        LegalCommand::Orders => {
            for r in desk.orders()? {
                let status = match &r.status {
                    redoubt_legal::desk::OrderStatus::Pending => "pending".to_owned(),
                    redoubt_legal::desk::OrderStatus::Rejected { code, .. } => {
                        format!("rejected ({code})")
                    }
                    redoubt_legal::desk::OrderStatus::Fulfilled { approved_by, .. } => {
                        format!("fulfilled (approved by {approved_by})")
                    }
                };
                println!(
                    "{}  {}  {}  {status}",
                    r.order.order.order_id,
                    r.order.order.jurisdiction,
                    r.order.order.issuing_authority
                );
            }
        }
        LegalCommand::Audit(AuditCommand::Repair { operator }) => {
            redoubt_legal::desk::check_operator(operator)?;
            match desk.audit().repair_torn_tail(operator, now)? {
                Some(n) => println!("Dropped a torn last line of {n} bytes; the log is intact again (recorded as audit_repaired)."),
                None => println!("The audit log is intact; nothing to repair."),
            }
        }
        LegalCommand::Audit(AuditCommand::Verify { checkpoint, log }) => {
            let exported = log.as_deref().map(redoubt_legal::audit::AuditLog::new);
            let audit = exported.as_ref().unwrap_or(desk.audit());
            match checkpoint {
                None => match audit.verify() {
                    Ok(n) => println!("Audit log intact: {n} entries."),
                    Err(e) => anyhow::bail!("audit log broken: {e}"),
                },
                Some(report) => {
                    let bytes = std::fs::read(report)
                        .with_context(|| format!("cannot read {}", report.display()))?;
                    let signed = redoubt_legal::report::verify(&bytes, &desk.public_key())
                        .map_err(|e| anyhow::anyhow!("the report does not verify: {e}"))?;
                    let point = signed.audit_checkpoint.ok_or_else(|| {
                        anyhow::anyhow!(
                            "the report carries no audit checkpoint (made before checkpoints)"
                        )
                    })?;
                    match audit.verify_against(&point) {
                        Ok(n) => println!(
                            "Audit log intact: {n} entries, extending the report's checkpoint ({} entries).",
                            point.size
                        ),
                        Err(e) => anyhow::bail!("audit log fails the report's checkpoint: {e}"),
                    }
                }
            }
        }
        LegalCommand::ServiceKey => println!("{}", desk.public_key()),
        LegalCommand::Report { period, out_dir } => {
            let markets = redoubt_legal::markets::MarketBook::load(
                &config.data_dir.join("legal").join("markets.json"),
            )?;
            let signed = desk.report(period, markets.report_lines(), now)?;
            std::fs::create_dir_all(out_dir)?;
            let json_path = out_dir.join(format!("transparency-{period}.json"));
            let html_path = out_dir.join(format!("transparency-{period}.html"));
            std::fs::write(&json_path, serde_json::to_string_pretty(&signed)?)?;
            std::fs::write(&html_path, redoubt_legal::report::html(&signed))?;
            println!(
                "Wrote {} and {} ({} orders received, {} fulfilled; message content disclosed: 0 bytes).",
                json_path.display(),
                html_path.display(),
                signed.report.total.received,
                signed.report.total.fulfilled
            );
        }
        LegalCommand::Operator(OperatorCommand::Add { name }) => {
            let token = redoubt_legal::operators::Operators::issue(
                &config.data_dir.join("legal"),
                name,
                now,
            )?;
            desk.audit().append(
                "operator",
                name,
                None,
                serde_json::json!({ "token_issued": true }),
                now,
            )?;
            println!("{token}");
            eprintln!("Token for operator {name} (shown once; keep it secret).");
        }
        LegalCommand::Notify => {
            let state =
                redoubt_server::AppState::open(config, redoubt_server::Clock::system()).await?;
            let n = redoubt_server::legal_notices::deliver_due(&state).await?;
            println!("Delivered {n} disclosure notice(s).");
        }
        LegalCommand::VerifyReport { file } => {
            let bytes =
                std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            let report = redoubt_legal::report::verify(&bytes, &desk.public_key())?;
            println!("Report {} verifies with the service key.", report.period);
        }
        LegalCommand::VerifyPackage { file } => {
            let bytes =
                std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            let package = redoubt_legal::disclosure::verify_package(&bytes, &desk.public_key())?;
            println!(
                "Package for order {} verifies with the service key.",
                package.order_id
            );
        }
    }
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
                // The IP table and market book are part of what the server
                // needs to start; check them too.
                redoubt_server::markets::Markets::open(&config)?;
                print!("{}", config.to_toml());
                eprintln!("configuration is valid");
                Ok(())
            }
            Some(Command::Market(command)) => {
                let config = load_config(&cli)?;
                tokio::runtime::Runtime::new()?.block_on(market(config, command))
            }
            Some(Command::Legal(command)) => {
                let config = load_config(&cli)?;
                tokio::runtime::Runtime::new()?.block_on(legal(config, command))
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
