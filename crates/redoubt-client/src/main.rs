//! `redoubt`: the Redoubt command-line client.
//!
//! Every command opens the profile, syncs with the relay where it needs
//! fresh state, does its work, and exits 0 on success or 1 with a message
//! on stderr. `--json` prints machine-readable output for scripts.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use redoubt_client::model::{Author, ChatKind, ChatRecord, ChatState, MessageRecord};
use redoubt_client::{Client, ClientConfig, ClientError};
use redoubt_proto::PhoneNumber;
use serde_json::json;

mod tui;

/// Redoubt: end-to-end-encrypted chats (MLS) on a relay that cannot read them.
#[derive(Parser, Debug)]
#[command(name = "redoubt", version, about, long_about)]
struct Cli {
    /// The profile directory: this device's keys, chats and history.
    /// Defaults to $XDG_DATA_HOME/redoubt/default (~/.local/share/redoubt/default).
    #[arg(long, global = true, env = "REDOUBT_PROFILE")]
    profile: Option<PathBuf>,

    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Register this device: the relay sends a code to the number, which you
    /// type in (or pipe on stdin). Creates the profile, protected by the
    /// passphrase in $REDOUBT_PASSPHRASE or typed at the prompt.
    Register {
        /// Your phone number in international form, such as +33612345678.
        #[arg(long)]
        phone: String,
        /// The relay's URL.
        #[arg(long, default_value = "http://127.0.0.1:8080", env = "REDOUBT_SERVER")]
        server: String,
        /// A name for this device in your device list.
        #[arg(long, default_value = "redoubt cli")]
        device_name: String,
    },
    /// List chats.
    Chats,
    /// Send a message. CHAT is a chat's name, a contact's number (a direct
    /// chat is started if there is none) or a prefix of a chat id.
    Send {
        /// The chat.
        chat: String,
        /// The text.
        text: String,
    },
    /// Show a chat's messages (fetching new ones first).
    Read {
        /// The chat.
        chat: String,
        /// How many of the latest messages.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Manage groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// List this account's devices, or revoke one.
    Devices {
        /// Revoke the device with this id (a lost phone, say).
        #[arg(long)]
        revoke: Option<String>,
    },
    /// Show the safety number with a contact, to compare in person.
    Verify {
        /// The contact's number.
        contact: String,
    },
    /// Fetch and process waiting messages.
    Sync,
    /// The interactive chat screen: chat list, live messages, input line.
    Chat,
}

#[derive(Subcommand, Debug)]
enum GroupCommand {
    /// Create a group with these members.
    Create {
        /// The group's name.
        name: String,
        /// Members' numbers.
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Add a member (all of their devices).
    Add {
        /// The group.
        chat: String,
        /// The member's number.
        member: String,
    },
    /// Remove a member (all of their devices).
    Remove {
        /// The group.
        chat: String,
        /// The member's number.
        member: String,
    },
    /// Leave a group.
    Leave {
        /// The group.
        chat: String,
    },
    /// List members, device by device.
    Members {
        /// The group (or direct chat).
        chat: String,
    },
}

fn default_profile() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("redoubt").join("default")
}

fn passphrase(confirm: bool) -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("REDOUBT_PASSPHRASE") {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        bail!("no passphrase: set REDOUBT_PASSPHRASE or run in a terminal");
    }
    let first = rpassword::prompt_password("Profile passphrase: ")?;
    if confirm {
        let again = rpassword::prompt_password("Repeat the passphrase: ")?;
        if again != first {
            bail!("the passphrases differ");
        }
        if first.chars().count() < 8 {
            bail!("choose a passphrase of at least 8 characters");
        }
    }
    Ok(first)
}

fn phone(text: &str) -> anyhow::Result<PhoneNumber> {
    PhoneNumber::parse(text).with_context(|| format!("{text:?} is not a phone number"))
}

fn short(id: &[u8]) -> String {
    redoubt_client::client::hex(&id[..id.len().min(4)])
}

fn author(m: &MessageRecord) -> String {
    match &m.author {
        Author::Member { me: true, .. } => "you".into(),
        Author::Member { phone, .. } => phone.clone(),
        Author::System => "*".into(),
    }
}

fn time(ms: i64) -> String {
    let secs = ms / 1000;
    let (h, m) = ((secs / 3600) % 24, (secs / 60) % 60);
    format!("{h:02}:{m:02} UTC")
}

fn state(c: &ChatRecord) -> &'static str {
    match c.state {
        ChatState::Active => "",
        ChatState::Left => " (left)",
        ChatState::Removed => " (removed)",
    }
}

async fn open(cli: &Cli) -> anyhow::Result<Client> {
    let dir = cli.profile.clone().unwrap_or_else(default_profile);
    let client = Client::open(&dir, &passphrase(false)?, ClientConfig::default()).await?;
    market_banner(&client).await?;
    Ok(client)
}

/// Shows a market-exit notice on every command, on stderr (so `--json`
/// output stays parseable): losing service must never come as a surprise.
async fn market_banner(client: &Client) -> anyhow::Result<()> {
    if let Some(m) = client.market_notice().await? {
        eprintln!(
            "!! Redoubt is leaving {}: service there ends {}, and everything it holds for \
             accounts there is deleted {}.\n!! {}{}",
            m.jurisdiction,
            m.effective_at,
            m.purge_at,
            m.notice,
            m.link
                .map(|l| format!("\n!! More: {l}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// Finds a chat; a number with no chat yet starts a direct chat.
async fn chat_for(client: &mut Client, query: &str) -> anyhow::Result<ChatRecord> {
    match client.find_chat(query).await {
        Ok(chat) => Ok(chat),
        Err(ClientError::UnknownChat(_)) if PhoneNumber::parse(query).is_ok() => {
            Ok(client.start_direct(&phone(query)?).await?)
        }
        Err(e) => Err(e.into()),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let out = |text: String, value: serde_json::Value| {
        if cli.json {
            println!("{value}");
        } else if !text.is_empty() {
            println!("{text}");
        }
    };
    match &cli.command {
        Command::Register {
            phone: number,
            server,
            device_name,
        } => {
            let dir = cli.profile.clone().unwrap_or_else(default_profile);
            if redoubt_client::store::ProfileStore::exists(&dir) {
                bail!(
                    "a profile already exists in {}; use --profile for another",
                    dir.display()
                );
            }
            let number = phone(number)?;
            let pass = passphrase(true)?;
            Client::request_code(server, &number, &ClientConfig::default()).await?;
            if std::io::stdin().is_terminal() {
                eprint!("Enter the code sent to {number}: ");
                std::io::stderr().flush()?;
            }
            let mut code = String::new();
            std::io::stdin().lock().read_line(&mut code)?;
            let client = Client::register(
                &dir,
                &pass,
                server,
                &number,
                code.trim(),
                device_name,
                ClientConfig::default(),
            )
            .await?;
            out(
                format!(
                    "Registered {number} on {server}.\nProfile: {}",
                    dir.display()
                ),
                json!({ "account_id": client.account_id(), "device_id": client.device_id(), "profile": dir }),
            );
        }
        Command::Chats => {
            let mut client = open(&cli).await?;
            client.sync().await?;
            let chats = client.chats().await?;
            let mut lines = Vec::new();
            for c in &chats {
                let last = client.messages(c, 1).await?.pop();
                let preview = last
                    .map(|m| format!("{}: {}", author(&m), m.text))
                    .unwrap_or_default();
                let kind = if c.kind == ChatKind::Direct {
                    "direct"
                } else {
                    "group "
                };
                lines.push(format!(
                    "{}  {kind}  {}{}  {preview}",
                    short(&c.group_id),
                    c.name,
                    state(c)
                ));
            }
            if chats.is_empty() {
                lines.push("No chats yet. Start one with `redoubt send +NUMBER \"hello\"`.".into());
            }
            out(lines.join("\n"), json!(chats.iter().map(|c| json!({
                "id": redoubt_client::client::hex(&c.group_id), "name": c.name, "kind": c.kind, "state": c.state
            })).collect::<Vec<_>>()));
        }
        Command::Send { chat, text } => {
            let mut client = open(&cli).await?;
            client.sync().await?;
            let chat = chat_for(&mut client, chat).await?;
            let sent = client.send_text(&chat, text).await?;
            out(
                String::new(),
                json!({ "chat": redoubt_client::client::hex(&chat.group_id), "message_id": sent.message_id }),
            );
        }
        Command::Read { chat, limit } => {
            let mut client = open(&cli).await?;
            client.sync().await?;
            let chat = client.find_chat(chat).await?;
            let messages = client.messages(&chat, *limit).await?;
            let text = messages
                .iter()
                .map(|m| format!("[{}] {}: {}", time(m.sent_at), author(m), m.text))
                .collect::<Vec<_>>()
                .join("\n");
            out(text, serde_json::to_value(&messages)?);
        }
        Command::Group(group) => {
            let mut client = open(&cli).await?;
            client.sync().await?;
            match group {
                GroupCommand::Create { name, members } => {
                    let phones = members
                        .iter()
                        .map(|m| phone(m))
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    let chat = client.create_group(name, &phones).await?;
                    out(
                        format!("Created group {:?} ({}).", chat.name, short(&chat.group_id)),
                        json!({ "id": redoubt_client::client::hex(&chat.group_id) }),
                    );
                }
                GroupCommand::Add { chat, member } => {
                    let chat = client.find_chat(chat).await?;
                    client.add_member(&chat, &phone(member)?).await?;
                    out(format!("Added {member}."), json!({ "added": member }));
                }
                GroupCommand::Remove { chat, member } => {
                    let chat = client.find_chat(chat).await?;
                    client.remove_member(&chat, &phone(member)?).await?;
                    out(format!("Removed {member}."), json!({ "removed": member }));
                }
                GroupCommand::Leave { chat } => {
                    let chat = client.find_chat(chat).await?;
                    client.leave(&chat).await?;
                    out(
                        format!("You left {:?}.", chat.name),
                        json!({ "left": chat.name }),
                    );
                }
                GroupCommand::Members { chat } => {
                    let chat = client.find_chat(chat).await?;
                    let members = client.members(&chat)?;
                    let text = members
                        .iter()
                        .map(|m| {
                            format!(
                                "{}  device {}{}",
                                m.phone,
                                m.device,
                                if m.this_device { "  (this device)" } else { "" }
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n");
                    out(text, serde_json::to_value(&members)?);
                }
            }
        }
        Command::Devices { revoke } => {
            let client = open(&cli).await?;
            if let Some(id) = revoke {
                let id = id
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{id:?} is not a device id"))?;
                client.api().revoke_device(id).await?;
                out(format!("Revoked {id}."), json!({ "revoked": id }));
            } else {
                let devices = client.api().own_devices().await?.devices;
                let text = devices
                    .iter()
                    .map(|d| {
                        format!(
                            "{}  {}{}",
                            d.device_id,
                            d.name,
                            if d.current { "  (this device)" } else { "" }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                out(text, json!(devices.iter().map(|d| json!({ "device_id": d.device_id, "name": d.name, "current": d.current, "created_at": d.created_at })).collect::<Vec<_>>()));
            }
        }
        Command::Verify { contact } => {
            let client = open(&cli).await?;
            let number = phone(contact)?;
            let (safety, devices) = client.safety_number(&number).await?;
            let groups: Vec<&str> = safety.split(' ').collect();
            let text = format!(
                "Safety number with {number} ({devices} device{}):\n\n  {}\n  {}\n  {}\n\nCompare it with theirs in person or on a call. If it differs, someone may be intercepting.",
                if devices == 1 { "" } else { "s" },
                groups[..4].join(" "),
                groups[4..8].join(" "),
                groups[8..].join(" ")
            );
            out(
                text,
                json!({ "contact": number, "safety_number": safety, "devices": devices }),
            );
        }
        Command::Sync => {
            let mut client = open(&cli).await?;
            let had_notice = client.market_notice().await?.is_some();
            let report = client.sync().await?;
            if !had_notice {
                market_banner(&client).await?;
            }
            out(
                format!(
                    "{} new envelope(s), {} message(s).",
                    report.processed,
                    report.messages.len()
                ),
                json!({ "processed": report.processed, "messages": report.messages.len() }),
            );
        }
        Command::Chat => {
            let client = open(&cli).await?;
            tui::run(client).await?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("redoubt: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("redoubt: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
