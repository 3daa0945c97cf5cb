//! `redoubtd legal ...` and the market commands' desk side (a module of the
//! `redoubtd` binary, not of the library). Every change is signed with the
//! operator's key file (`--operator-key`, or `REDOUBT_OPERATOR_KEY`); the
//! desk's state is in the relay's database.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;
use redoubt_legal::desk::{Desk, Intake, OrderStatus};
use redoubt_legal::operators::{ActionKind, Change, OperatorKey};
use redoubt_server::config::Config;
use redoubt_server::storage::legal_view::RelayRecords;

#[derive(Subcommand, Debug)]
pub enum LegalCommand {
    /// The authorities whose orders are considered. Adding or revoking one
    /// is a proposal a second operator confirms.
    #[command(subcommand)]
    Authority(AuthorityCommand),
    /// Operators: key files, the first two, adding and revoking (each a
    /// proposal a second operator confirms).
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// List proposals and whether each was confirmed.
    Proposals,
    /// Confirm another operator's proposal, which then takes effect.
    Confirm {
        /// The proposal's number.
        proposal: u64,
        /// Your operator key file.
        #[arg(long, env = "REDOUBT_OPERATOR_KEY")]
        operator_key: PathBuf,
    },
    /// Verify a signed court order (JSON, see docs/court-order.md) and file
    /// it as pending review, or reject it with the reason.
    Intake {
        /// The order document.
        file: PathBuf,
        /// Your operator key file.
        #[arg(long, env = "REDOUBT_OPERATOR_KEY")]
        operator_key: PathBuf,
    },
    /// Approve a pending order (another operator than the one who took it
    /// in) and write the signed disclosure package.
    Approve {
        /// The order id.
        order_id: String,
        /// The issuing authority, when several sent an order with this id.
        #[arg(long)]
        issuer: Option<String>,
        /// Your operator key file.
        #[arg(long, env = "REDOUBT_OPERATOR_KEY")]
        operator_key: PathBuf,
        /// Where to write the package (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the package released for an answered order, as stored with
    /// its approval.
    Package {
        /// The order id.
        order_id: String,
        /// The issuing authority, when several sent an order with this id.
        #[arg(long)]
        issuer: Option<String>,
        /// Where to write it (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List the orders on file and where each stands.
    Orders,
    /// The audit log: verify it (against a report's checkpoint), export it,
    /// print its signed checkpoint.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print the service's public key, which authorities use to verify
    /// disclosure packages, and anyone to verify reports and checkpoints.
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
pub enum AuthorityCommand {
    /// Propose adding an authority (a second operator confirms).
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
        /// validating court or judge, whose signature the order must carry).
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
        /// Your operator key file.
        #[arg(long, env = "REDOUBT_OPERATOR_KEY")]
        operator_key: PathBuf,
    },
    /// List authorities.
    List,
    /// Propose revoking an authority (a second operator confirms).
    Revoke {
        /// Its id.
        id: String,
        /// Your operator key file.
        #[arg(long, env = "REDOUBT_OPERATOR_KEY")]
        operator_key: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum OperatorCommand {
    /// Make a new operator key file (readable by you only). Run it on the
    /// operator's own machine; give the printed public key to the desk.
    Keygen {
        /// Your name, as the audit log will record it.
        #[arg(long)]
        name: String,
        /// Where to write the key file (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Register the first two operators of a desk that has none. Both sign:
    /// pass both key files (then keep each on its owner's machine).
    Bootstrap {
        /// The two operators' key files.
        #[arg(long = "key", num_args = 1, required = true)]
        keys: Vec<PathBuf>,
    },
    /// Propose adding an operator (a second operator confirms).
    Add {
        /// Their name.
        #[arg(long)]
        name: String,
        /// Their public key, as `operator keygen` printed it.
        #[arg(long)]
        public_key: String,
        /// Your operator key file.
        #[arg(long, env = "REDOUBT_OPERATOR_KEY")]
        operator_key: PathBuf,
    },
    /// Propose revoking an operator's key (a second operator confirms).
    Revoke {
        /// Their public key.
        public_key: String,
        /// Your operator key file.
        #[arg(long, env = "REDOUBT_OPERATOR_KEY")]
        operator_key: PathBuf,
    },
    /// List operators.
    List,
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Replay the log: the hash chain, every operator's signature and every
    /// rule; with --checkpoint, also that it still holds the history a
    /// report (or a published checkpoint) vouched for.
    Verify {
        /// A signed transparency report, or a checkpoint from `audit
        /// checkpoint`, whose checkpoint the log must extend.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Check this export (from `audit export`) instead of the desk's
        /// own log.
        #[arg(long)]
        log: Option<PathBuf>,
        /// The service's public key (base64), for checking an export away
        /// from the relay; default: this desk's.
        #[arg(long)]
        service_key: Option<String>,
    },
    /// Write the log, one JSON entry per line, for an outside auditor.
    Export {
        /// Where (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the log's signed checkpoint now (JSON with the C2SP note), for
    /// anyone to keep and check the log against later.
    Checkpoint,
}

type RelayDesk = Desk<RelayRecords, RelayRecords>;

/// The desk over the configured relay database, with the market policy in
/// force now.
pub async fn open_desk(config: &Config) -> anyhow::Result<RelayDesk> {
    let store = RelayRecords::open(config).await?;
    let retention = time::Duration::try_from(config.ip_log.retention)?;
    let legal_dir = config.data_dir.join("legal");
    // Orders from markets the service has left are refused with that reason.
    let markets = redoubt_legal::markets::MarketBook::load(&legal_dir.join("markets.json"))?;
    // A desk from before its state moved into the database kept it in
    // files here. Those are not read any more; say so rather than start an
    // empty desk beside them.
    let old_files = [
        "audit.jsonl",
        "trust.json",
        "orders",
        "disclosures",
        "operators.json",
    ]
    .into_iter()
    .filter(|name| legal_dir.join(name).exists())
    .collect::<Vec<_>>();
    if !old_files.is_empty()
        && redoubt_legal::store::DeskStore::entries(&store)
            .await?
            .is_empty()
    {
        anyhow::bail!(
            "{} holds a file-based legal desk from an earlier version ({}); its state is not read \
             any more. Archive those files (they stay verifiable with the version that wrote them), \
             then bootstrap this desk (see docs/legal-desk.md, Upgrading)",
            legal_dir.display(),
            old_files.join(", ")
        );
    }
    let key =
        redoubt_legal::disclosure::ServiceKey::load_or_create(&legal_dir.join("service_key"))?;
    Ok(Desk::new(
        store.clone(),
        store,
        key,
        config
            .markets
            .policy(&markets, time::OffsetDateTime::now_utc()),
        retention,
    )
    // A command's first look at the log replays all of it; a second one in
    // the same command (`approve` finds the issuer, then approves) only
    // catches up on what was appended since.
    .with_cache(Default::default()))
}

fn key(path: &Path) -> anyhow::Result<OperatorKey> {
    OperatorKey::load(path).with_context(|| format!("operator key {}", path.display()))
}

fn write_out(out: Option<&Path>, text: &str, what: &str) -> anyhow::Result<()> {
    match out {
        Some(path) => {
            std::fs::write(path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("{what} written to {}.", path.display());
        }
        None => println!("{text}"),
    }
    Ok(())
}

async fn propose(desk: &RelayDesk, operator_key: &Path, change: Change) -> anyhow::Result<()> {
    let now = time::OffsetDateTime::now_utc();
    let op = key(operator_key)?;
    let number = desk
        .propose(&op.sign(ActionKind::Propose { change }, now), now)
        .await?;
    println!(
        "Proposal {number} recorded. It takes effect when another operator runs: redoubtd legal confirm {number}"
    );
    Ok(())
}

/// Checks an export or the desk's own log, and against a checkpoint.
async fn verify(
    config: &Config,
    checkpoint: Option<&Path>,
    log: Option<&Path>,
    service_key: Option<&str>,
) -> anyhow::Result<()> {
    let (lines, public) = match (log, service_key) {
        (Some(path), Some(key)) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            (redoubt_legal::audit::read_export(&bytes)?, key.to_owned())
        }
        _ => {
            let desk = open_desk(config).await?;
            let lines = match log {
                Some(path) => {
                    let bytes = std::fs::read(path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    redoubt_legal::audit::read_export(&bytes)?
                }
                None => desk.export().await?,
            };
            (
                lines,
                service_key.map_or_else(|| desk.public_key(), str::to_owned),
            )
        }
    };
    let state = redoubt_legal::state::DeskState::replay(&lines, &public)
        .map_err(|e| anyhow::anyhow!("audit log broken: {e}"))?;
    let n = state.entries.len();
    match checkpoint {
        None => println!(
            "Audit log intact: {n} entries, each signed by an operator or the service and within the desk's rules."
        ),
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let value: serde_json::Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            let point: redoubt_legal::audit::Checkpoint = if value.get("report").is_some() {
                let signed = redoubt_legal::report::verify(&bytes, &public)
                    .map_err(|e| anyhow::anyhow!("the report does not verify: {e}"))?;
                signed.audit_checkpoint.ok_or_else(|| {
                    anyhow::anyhow!("the report carries no audit checkpoint (made before checkpoints)")
                })?
            } else {
                serde_json::from_value(value)
                    .with_context(|| format!("{} is neither a report nor a checkpoint", path.display()))?
            };
            point
                .verify_signature(&public)
                .map_err(|e| anyhow::anyhow!("the checkpoint: {e}"))?;
            point
                .check_log(&state.entries)
                .map_err(|e| anyhow::anyhow!("audit log fails the checkpoint: {e}"))?;
            println!(
                "Audit log intact: {n} entries, extending the checkpoint's {} entries (root {}).",
                point.size, point.root
            );
        }
    }
    Ok(())
}

pub async fn legal(config: Config, command: &LegalCommand) -> anyhow::Result<()> {
    let now = time::OffsetDateTime::now_utc();
    match command {
        LegalCommand::Operator(OperatorCommand::Keygen { name, out }) => {
            let op = OperatorKey::generate(name)?;
            op.save(out)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!("{}", op.public_key());
            eprintln!(
                "Key for operator {name} written to {} (keep it to yourself). Its public key is above.",
                out.display()
            );
            return Ok(());
        }
        LegalCommand::Audit(AuditCommand::Verify {
            checkpoint,
            log,
            service_key,
        }) => {
            return verify(
                &config,
                checkpoint.as_deref(),
                log.as_deref(),
                service_key.as_deref(),
            )
            .await;
        }
        _ => {}
    }
    let desk = open_desk(&config).await?;
    match command {
        LegalCommand::Operator(OperatorCommand::Keygen { .. })
        | LegalCommand::Audit(AuditCommand::Verify { .. }) => {}
        LegalCommand::Operator(OperatorCommand::Bootstrap { keys }) => {
            let keys = keys
                .iter()
                .map(|k| key(k))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let [first, second] = keys.as_slice() else {
                anyhow::bail!("a desk starts with exactly two operators: pass --key twice");
            };
            let action = OperatorKey::bootstrap(first, second, now);
            desk.bootstrap(&action, now).await?;
            println!(
                "The desk's first operators are {} and {}.",
                first.name(),
                second.name()
            );
        }
        LegalCommand::Operator(OperatorCommand::Add {
            name,
            public_key,
            operator_key,
        }) => {
            let change = Change::AddOperator {
                name: name.clone(),
                public_key: public_key.clone(),
            };
            propose(&desk, operator_key, change).await?;
        }
        LegalCommand::Operator(OperatorCommand::Revoke {
            public_key,
            operator_key,
        }) => {
            let change = Change::RevokeOperator {
                public_key: public_key.clone(),
            };
            propose(&desk, operator_key, change).await?;
        }
        LegalCommand::Operator(OperatorCommand::List) => {
            let operators = desk.state().await?.operators;
            if operators.is_empty() {
                println!(
                    "No operators yet. Make two key files with `redoubtd legal operator keygen`, \
                     then register both with `redoubtd legal operator bootstrap`."
                );
            }
            for o in operators {
                let state = match o.revoked_at {
                    Some(at) => format!("revoked {}", at.date()),
                    None => "active".into(),
                };
                println!("{}  {}  {state}", o.public_key, o.name);
            }
        }
        LegalCommand::Authority(AuthorityCommand::Add {
            id,
            name,
            jurisdiction,
            kind,
            key_id,
            public_key,
            valid_from,
            valid_until,
            operator_key,
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
                    .map(crate::parse_time)
                    .transpose()?
                    .unwrap_or(now),
                valid_until: crate::parse_time(valid_until)?,
                revoked_at: None,
            };
            propose(&desk, operator_key, Change::AddAuthority { authority }).await?;
        }
        LegalCommand::Authority(AuthorityCommand::List) => {
            for a in &desk.state().await?.trust.authorities {
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
        LegalCommand::Authority(AuthorityCommand::Revoke { id, operator_key }) => {
            propose(
                &desk,
                operator_key,
                Change::RevokeAuthority { id: id.clone() },
            )
            .await?;
        }
        LegalCommand::Proposals => {
            for p in desk.state().await?.proposals {
                let state = if p.confirmed {
                    "confirmed"
                } else {
                    "waiting for a second operator"
                };
                println!(
                    "{}  by {}  {}  {}  {state}",
                    p.number,
                    p.by,
                    p.at.date(),
                    serde_json::to_string(&p.change)?
                );
            }
        }
        LegalCommand::Confirm {
            proposal,
            operator_key,
        } => {
            let op = key(operator_key)?;
            let change = desk
                .confirm(
                    &op.sign(
                        ActionKind::Confirm {
                            proposal: *proposal,
                        },
                        now,
                    ),
                    now,
                )
                .await?;
            println!(
                "Proposal {proposal} confirmed and in effect: {}",
                serde_json::to_string(&change)?
            );
        }
        LegalCommand::Intake { file, operator_key } => {
            let op = key(operator_key)?;
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
            match desk
                .intake(&document, &op.intake(&document, now), now)
                .await?
            {
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
            issuer,
            operator_key,
            out,
        } => {
            let op = key(operator_key)?;
            let state = desk.state().await?;
            let issuer = RelayDesk::resolve(&state, issuer.as_deref(), order_id)?
                .issuer
                .clone();
            let package = desk
                .approve(&op.approve(&issuer, order_id, now), now)
                .await?;
            let text = serde_json::to_string_pretty(&package)?;
            write_out(
                out.as_deref(),
                &text,
                &format!("Disclosure package for {order_id}"),
            )?;
        }
        LegalCommand::Package {
            order_id,
            issuer,
            out,
        } => {
            let state = desk.state().await?;
            let record = RelayDesk::resolve(&state, issuer.as_deref(), order_id)?;
            let package = desk
                .package(record)
                .await?
                .ok_or_else(|| anyhow::anyhow!("order {order_id} was not answered"))?;
            write_out(
                out.as_deref(),
                &serde_json::to_string_pretty(&package)?,
                &format!("Disclosure package for {order_id}"),
            )?;
        }
        LegalCommand::Orders => {
            let orders = desk.state().await?.orders;
            if orders.is_empty() {
                println!("No orders on file.");
            }
            for r in orders {
                let status = match &r.status {
                    OrderStatus::Pending => "pending".to_owned(),
                    OrderStatus::Rejected { code, .. } => format!("rejected ({code})"),
                    OrderStatus::Fulfilled { approved_by, .. } => {
                        format!("fulfilled (approved by {approved_by})")
                    }
                };
                println!(
                    "{}  {}  {}  {status}",
                    r.order_id, r.summary.jurisdiction, r.issuer
                );
            }
        }
        LegalCommand::Audit(AuditCommand::Export { out }) => {
            let mut text = desk.export().await?.join("\n");
            text.push('\n');
            match out {
                Some(path) => {
                    std::fs::write(path, text)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!("Audit log exported to {}.", path.display());
                }
                None => print!("{text}"),
            }
        }
        LegalCommand::Audit(AuditCommand::Checkpoint) => {
            let checkpoint = desk.checkpoint().await?;
            println!("{}", serde_json::to_string_pretty(&checkpoint)?);
        }
        LegalCommand::ServiceKey => println!("{}", desk.public_key()),
        LegalCommand::Report { period, out_dir } => {
            let markets = redoubt_legal::markets::MarketBook::load(
                &config.data_dir.join("legal").join("markets.json"),
            )?;
            let directory = redoubt_server::kt::latest_in(
                &redoubt_server::storage::legal_view::RelayRecords::open(&config).await?,
            )
            .await;
            let signed = desk
                .report(period, markets.report_lines(), directory, now)
                .await?;
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

/// Records an operator's market decision in the desk's log, signed with
/// their key; the caller changes the market book only after it is recorded.
pub async fn record_market(
    config: &Config,
    operator_key: &Path,
    decision: serde_json::Value,
) -> anyhow::Result<()> {
    let now = time::OffsetDateTime::now_utc();
    let desk = open_desk(config).await?;
    let op = key(operator_key)?;
    desk.record_market(&op.sign(ActionKind::Market { decision }, now), now)
        .await?;
    Ok(())
}
