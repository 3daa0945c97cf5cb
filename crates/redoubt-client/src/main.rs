//! `redoubt`: the Redoubt command-line client.
//!
//! Every command opens the profile, syncs with the relay where it needs
//! fresh state, does its work, and exits 0 on success or 1 with a message
//! on stderr. `--json` prints machine-readable output for scripts, errors
//! included (`{"error": {"code", "message"}}` on stdout).
//!
//! Without the relay, `chats` and `read` show what this device has, and
//! `send` keeps the encrypted message in the outbox until a later command
//! reaches the relay. Text written by others is shown through
//! `redoubt_client::text`, so it cannot forge lines or drive the terminal.

use std::io::{BufRead, IsTerminal, Read as _, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use redoubt_client::client::{hex, MAX_TEXT_BYTES};
use redoubt_client::model::{Author, ChatKind, ChatRecord, ChatState, Delivery, MessageRecord};
use redoubt_client::text::one_line;
use redoubt_client::{Client, ClientConfig, ClientError};
use redoubt_proto::{ErrorCode, PhoneNumber};
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

    /// Print JSON instead of text. Errors are JSON too:
    /// {"error": {"code", "message"}} on stdout, with exit code 1.
    #[arg(long, global = true)]
    json: bool,

    /// The operator's service key (base64), if you got it from somewhere
    /// you trust more than the relay. Notices from the service are trusted
    /// only under this key, or else under the key pinned at registration.
    #[arg(long, global = true, env = "REDOUBT_SERVICE_KEY")]
    service_key: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Register this device: the relay sends a code to the number, which you
    /// type in (or pipe on stdin; a wrong code asks again). Creates the
    /// profile, protected by the passphrase (8 characters or more) in
    /// $REDOUBT_PASSPHRASE or typed at the prompt.
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
    /// Link this new device to your account: shows a code to type on a
    /// device the account already has (`redoubt devices link CODE`). The
    /// code never reaches the relay in a form it can use.
    Link {
        /// The relay's URL.
        #[arg(long, default_value = "http://127.0.0.1:8080", env = "REDOUBT_SERVER")]
        server: String,
        /// A name for this device in your device list.
        #[arg(long, default_value = "redoubt cli")]
        device_name: String,
    },
    /// List chats.
    Chats,
    /// Send a message of up to 16 KiB (16384 bytes of UTF-8). CHAT is a
    /// chat's name, a contact's number (a direct chat is started if there
    /// is none) or a prefix of a chat id. The text comes from TEXT, from
    /// --file, or from standard input when TEXT is "-" or missing. When the
    /// relay is unreachable the message waits, encrypted, in this device's
    /// outbox, and the next command that reaches the relay sends it.
    Send {
        /// The chat.
        chat: String,
        /// The text; "-" or nothing reads standard input.
        text: Option<String>,
        /// Read the text from this file instead.
        #[arg(long, conflicts_with = "text")]
        file: Option<PathBuf>,
        /// Accept the new identity keys of contacts in the chat (after
        /// comparing safety numbers) and send.
        #[arg(long)]
        accept_changes: bool,
    },
    /// Show a chat's messages (fetching new ones first; without the relay,
    /// what this device has).
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
        /// Revoke the device with this id (a lost phone, say): it leaves
        /// the signed device list, and so every chat.
        #[arg(long)]
        revoke: Option<String>,
        #[command(subcommand)]
        action: Option<DevicesCommand>,
    },
    /// Show the safety number with a contact, to compare in person. It is
    /// made from both accounts' identity keys and numbers as this device
    /// pinned them, so it stays the same as devices come and go.
    Verify {
        /// The contact's number.
        contact: String,
        /// Mark the contact verified: you compared the numbers and they
        /// match.
        #[arg(long)]
        mark: bool,
    },
    /// Fetch and process waiting messages, and send what waits in the outbox.
    Sync,
    /// Delete this device's profile (keys, chats, history) for good, so the
    /// directory can be registered again: for a device that was revoked,
    /// or whose passphrase is lost. Asks for confirmation unless --yes.
    Reset {
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
    /// The interactive chat screen: chat list, live messages, input line.
    Chat,
    /// The relay's key-transparency directory.
    #[command(subcommand)]
    Kt(KtCommand),
}

#[derive(Subcommand, Debug)]
enum KtCommand {
    /// Audit the directory, with no account: every epoch from --from to
    /// the newest must be signed by the directory key and only add to the
    /// one before. Prints the newest verified epoch, or the first range
    /// that fails (exit code 1).
    Audit {
        /// The relay's URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
        /// The first epoch to check.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// The directory key (base64) as published elsewhere than by the
        /// relay; default: the one the relay presents.
        #[arg(long)]
        directory_key: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum DevicesCommand {
    /// Link a new device: type the code it shows.
    Link {
        /// The code, such as 0A1B-2C3D-4E5F-6G7H.
        code: String,
    },
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

/// The shortest passphrase a new profile accepts, typed or from the
/// environment alike.
const MIN_PASSPHRASE_CHARS: usize = 8;

fn passphrase(new_profile: bool) -> anyhow::Result<String> {
    let chosen = match std::env::var("REDOUBT_PASSPHRASE") {
        Ok(p) => p,
        Err(_) => {
            if !std::io::stdin().is_terminal() {
                bail!("no passphrase: set REDOUBT_PASSPHRASE or run in a terminal");
            }
            let first = rpassword::prompt_password("Profile passphrase: ")?;
            if new_profile {
                let again = rpassword::prompt_password("Repeat the passphrase: ")?;
                if again != first {
                    bail!("the passphrases differ");
                }
            }
            first
        }
    };
    if new_profile && chosen.chars().count() < MIN_PASSPHRASE_CHARS {
        bail!("choose a passphrase of at least {MIN_PASSPHRASE_CHARS} characters");
    }
    Ok(chosen)
}

fn config(cli: &Cli) -> ClientConfig {
    ClientConfig {
        service_key: cli.service_key.clone(),
        ..ClientConfig::default()
    }
}

fn phone(text: &str) -> anyhow::Result<PhoneNumber> {
    PhoneNumber::parse(text).with_context(|| format!("{text:?} is not a phone number"))
}

fn short(id: &[u8]) -> String {
    hex(&id[..id.len().min(4)])
}

fn author(m: &MessageRecord) -> String {
    match &m.author {
        Author::Member { me: true, .. } => "you".into(),
        Author::Member { phone, .. } => one_line(phone).into_owned(),
        Author::System => "*".into(),
    }
}

fn delivery(m: &MessageRecord) -> &'static str {
    match m.delivery {
        Delivery::Sent => "",
        Delivery::Queued => "  (queued: not sent yet)",
        Delivery::Failed => "  (not delivered)",
    }
}

/// A message as scripts see it: the stored record, with the chat id in hex.
fn message_json(m: &MessageRecord) -> serde_json::Value {
    let mut value = serde_json::to_value(m).unwrap_or_default();
    value["group_id"] = json!(hex(&m.group_id));
    value["delivery"] = json!(m.delivery);
    value
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
    let client = Client::open(&dir, &passphrase(false)?, config(cli)).await?;
    market_banner(&client).await?;
    Ok(client)
}

/// Syncs with the relay; without it (unreachable, or this device revoked),
/// says so and carries on with what this device has.
async fn sync_or_local(client: &mut Client) -> anyhow::Result<()> {
    let synced = client.sync().await;
    announce(client);
    match synced {
        Ok(report) => {
            if report.queued > 0 {
                eprintln!(
                    "{} message(s) still wait in the outbox: the relay at {} did not take them yet.",
                    report.queued,
                    client.server()
                );
            }
            Ok(())
        }
        Err(e @ ClientError::Unreachable { .. }) => {
            eprintln!("offline: {e}\nShowing what this device has.");
            Ok(())
        }
        Err(
            e @ ClientError::Server {
                code: ErrorCode::TokenRevoked,
                ..
            },
        ) => {
            eprintln!("{e}\nShowing what this device has.");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Prints what the last operation met that the user must see (new devices
/// of contacts, identity changes, refused lists), on stderr so `--json`
/// output stays parseable.
fn announce(client: &mut Client) {
    for text in client.take_announcements() {
        eprintln!("{}", one_line(&text));
    }
}

/// `redoubt link`: shows the code, waits for the other device, creates the
/// profile.
async fn link(cli: &Cli, server: &str, device_name: &str) -> anyhow::Result<()> {
    let dir = cli.profile.clone().unwrap_or_else(default_profile);
    if redoubt_client::store::ProfileStore::exists(&dir) {
        bail!(
            "a profile already exists in {}; use --profile for another",
            dir.display()
        );
    }
    let pass = passphrase(true)?;
    let client = Client::link_new(&dir, &pass, server, device_name, config(cli), |code| {
        eprintln!(
            "On a device of your account, run:\n\n    redoubt devices link {code}\n\nWaiting (the code works for 10 minutes)…"
        );
    })
    .await?;
    print_out(
        cli,
        format!(
            "Linked to {} as device {}.\nProfile: {}",
            client.phone(),
            client.device_id(),
            dir.display()
        ),
        json!({ "account_id": client.account_id(), "device_id": client.device_id(), "profile": dir }),
    );
    Ok(())
}

/// The text to send: the argument, a file, or standard input.
fn message_text(text: Option<&str>, file: Option<&PathBuf>) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    match (text, file) {
        (Some(text), _) if text != "-" => return Ok(text.to_owned()),
        (_, Some(path)) => {
            bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        }
        _ => {
            if std::io::stdin().is_terminal() {
                eprintln!("Type the message; end it with Ctrl-D.");
            }
            // One byte over the limit is enough to refuse it.
            std::io::stdin()
                .lock()
                .take(MAX_TEXT_BYTES as u64 + 1)
                .read_to_end(&mut bytes)?;
        }
    }
    if bytes.len() > MAX_TEXT_BYTES {
        bail!("message too long: over {MAX_TEXT_BYTES} bytes, the limit");
    }
    let text =
        String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("the message is not UTF-8 text"))?;
    // A trailing newline is how files and `echo` end text, not part of it.
    Ok(text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text)
        .to_owned())
}

/// Shows a market-exit notice on every command, on stderr (so `--json`
/// output stays parseable): losing service must never come as a surprise.
async fn market_banner(client: &Client) -> anyhow::Result<()> {
    if let Some(m) = client.market_notice().await? {
        eprintln!(
            "!! Redoubt is leaving {}: service there ends {}, and everything it holds for \
             accounts there is deleted {}.\n!! {}{}",
            one_line(&m.jurisdiction),
            one_line(&m.effective_at),
            one_line(&m.purge_at),
            one_line(&m.notice),
            m.link
                .map(|l| format!("\n!! More: {}", one_line(&l)))
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

/// `redoubt register`: asks the relay for a code, reads it (again after a
/// wrong one, while there is input), and creates the profile.
async fn register(cli: &Cli, number: &str, server: &str, device_name: &str) -> anyhow::Result<()> {
    let dir = cli.profile.clone().unwrap_or_else(default_profile);
    if redoubt_client::store::ProfileStore::exists(&dir) {
        bail!(
            "a profile already exists in {}; use --profile for another, or `redoubt reset` to delete it",
            dir.display()
        );
    }
    let number = phone(number)?;
    let pass = passphrase(true)?;
    let request = Client::request_code(server, &number, &config(cli)).await?;
    let interactive = std::io::stdin().is_terminal();
    let mut input = std::io::stdin().lock();
    let client = loop {
        if interactive {
            eprint!("Enter the code sent to {number}: ");
            std::io::stderr().flush()?;
        }
        let mut code = String::new();
        if input.read_line(&mut code)? == 0 {
            bail!("no verification code was given");
        }
        match Client::register(&dir, &pass, &request, code.trim(), device_name, config(cli)).await {
            Ok(client) => break client,
            Err(ClientError::Server {
                code: ErrorCode::CodeIncorrect,
                ..
            }) => {
                eprintln!("That code is not the one sent to {number}; try again.");
            }
            Err(e) => return Err(e.into()),
        }
    };
    let mut client = client;
    announce(&mut client);
    let text = format!(
        "Registered {number} on {server}.\nProfile: {}\nTo use this account on another device, run `redoubt link` there.",
        dir.display()
    );
    print_out(
        cli,
        text,
        json!({ "account_id": client.account_id(), "device_id": client.device_id(), "profile": dir }),
    );
    Ok(())
}

/// `redoubt reset`: deletes the profile's files while holding its lock, so
/// a running `redoubt chat` is not pulled from under its feet mid-write.
async fn reset(cli: &Cli, yes: bool) -> anyhow::Result<()> {
    let dir = cli.profile.clone().unwrap_or_else(default_profile);
    if !redoubt_client::store::ProfileStore::exists(&dir) {
        return Err(ClientError::NoProfile(dir).into());
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!("`redoubt reset` deletes this device's keys, chats and history for good; pass --yes to confirm");
        }
        eprint!(
            "This deletes the profile in {} (keys, chats, history) for good.\nType RESET to confirm: ",
            dir.display()
        );
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != "RESET" {
            bail!("not confirmed; nothing was deleted");
        }
    }
    let lock = redoubt_client::lock::ProfileLock::open(&dir)?;
    let _held = lock.hold(std::time::Duration::from_secs(10)).await?;
    redoubt_client::store::ProfileStore::delete_files(&dir)?;
    print_out(
        cli,
        format!(
            "Deleted the profile in {}. `redoubt register` sets this device up again.\n\
             If the device was not revoked, revoke it from another device: `redoubt devices --revoke ID`.",
            dir.display()
        ),
        json!({ "reset": dir }),
    );
    Ok(())
}

fn print_out(cli: &Cli, text: String, value: serde_json::Value) {
    if cli.json {
        println!("{value}");
    } else if !text.is_empty() {
        println!("{text}");
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let out = |text: String, value: serde_json::Value| print_out(&cli, text, value);
    match &cli.command {
        Command::Register {
            phone: number,
            server,
            device_name,
        } => register(&cli, number, server, device_name).await?,
        Command::Reset { yes } => reset(&cli, *yes).await?,
        Command::Kt(KtCommand::Audit {
            server,
            from,
            directory_key,
        }) => {
            let audited =
                redoubt_client::kt_audit::audit(server, directory_key.as_deref(), *from).await?;
            out(
                format!(
                    "Key directory verified from epoch {} to {}: every epoch signed by the \
                     directory key, each only adding to the one before. Newest root: {}",
                    audited.from, audited.to, audited.root
                ),
                serde_json::json!({
                    "from": audited.from,
                    "to": audited.to,
                    "root": audited.root,
                }),
            );
        }
        Command::Link {
            server,
            device_name,
        } => link(&cli, server, device_name).await?,
        Command::Chats => {
            let mut client = open(&cli).await?;
            sync_or_local(&mut client).await?;
            let chats = client.chats().await?;
            let mut lines = Vec::new();
            for c in &chats {
                let last = client.messages(c, 1).await?.pop();
                let preview = last
                    .map(|m| format!("{}: {}{}", author(&m), one_line(&m.text), delivery(&m)))
                    .unwrap_or_default();
                let kind = if c.kind == ChatKind::Direct {
                    "direct"
                } else {
                    "group "
                };
                lines.push(format!(
                    "{}  {kind}  {}{}  {preview}",
                    short(&c.group_id),
                    one_line(&c.name),
                    state(c)
                ));
            }
            if chats.is_empty() {
                lines.push("No chats yet. Start one with `redoubt send +NUMBER \"hello\"`.".into());
            }
            out(
                lines.join("\n"),
                json!(chats
                    .iter()
                    .map(|c| json!({
                        "id": hex(&c.group_id), "name": c.name, "kind": c.kind, "state": c.state
                    }))
                    .collect::<Vec<_>>()),
            );
        }
        Command::Send {
            chat,
            text,
            file,
            accept_changes,
        } => {
            // Read the text first: a message that is too long or unreadable
            // is refused before anything touches the network.
            let text = message_text(text.as_deref(), file.as_ref())?;
            let mut client = open(&cli).await?;
            sync_or_local(&mut client).await?;
            let chat = chat_for(&mut client, chat).await?;
            // Changes to the chat's devices (a contact linked a device, an
            // identity changed) are shown before the message goes.
            if chat.kind == ChatKind::Direct {
                match client.reconcile(&chat).await {
                    Err(e) if !e.is_transient() => return Err(e.into()),
                    _ => announce(&mut client),
                }
            }
            let sent = match client.send_text(&chat, &text).await {
                Err(ClientError::IdentityChanged(phones)) if *accept_changes => {
                    announce(&mut client);
                    client.accept_changes(&phones).await?;
                    eprintln!("Accepted the new identity of {}.", phones.join(", "));
                    client.send_text(&chat, &text).await
                }
                other => other,
            };
            // What changed in the chat is shown before the outcome, sent or
            // refused.
            announce(&mut client);
            let sent = sent?;
            if sent.delivery == Delivery::Queued {
                eprintln!(
                    "Queued: the relay at {} cannot take the message now. It waits, encrypted, \
                     in this device's outbox; the next command that reaches the relay sends it \
                     (`redoubt sync`, say).",
                    client.server()
                );
            }
            out(
                String::new(),
                json!({ "chat": hex(&chat.group_id), "message_id": sent.message_id, "delivery": sent.delivery }),
            );
        }
        Command::Read { chat, limit } => {
            let mut client = open(&cli).await?;
            sync_or_local(&mut client).await?;
            let chat = client.find_chat(chat).await?;
            let messages = client.messages(&chat, *limit).await?;
            let text = messages
                .iter()
                .map(|m| {
                    format!(
                        "[{}] {}: {}{}",
                        time(m.sent_at),
                        author(m),
                        one_line(&m.text),
                        delivery(m)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            out(
                text,
                json!(messages.iter().map(message_json).collect::<Vec<_>>()),
            );
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
                        json!({ "id": hex(&chat.group_id) }),
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
                        json!({ "left": chat.name, "id": hex(&chat.group_id) }),
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
                                one_line(&m.phone),
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
        Command::Devices { revoke, action } => {
            let mut client = open(&cli).await?;
            if let Some(DevicesCommand::Link { code }) = action {
                eprintln!("Linking; keep `redoubt link` running on the new device…");
                let device = client.approve_link(code).await?;
                announce(&mut client);
                out(
                    format!(
                        "Linked device {device}. It can now read new messages for this account."
                    ),
                    json!({ "linked": device }),
                );
            } else if let Some(id) = revoke {
                let id = id
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{id:?} is not a device id"))?;
                client.revoke_device(id).await?;
                out(format!("Revoked {id}."), json!({ "revoked": id }));
            } else {
                let devices = client.api().own_devices().await?.devices;
                let text = devices
                    .iter()
                    .map(|d| {
                        format!(
                            "{}  {}{}",
                            d.device_id,
                            one_line(&d.name),
                            if d.current { "  (this device)" } else { "" }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                out(text, json!(devices.iter().map(|d| json!({ "device_id": d.device_id, "name": d.name, "current": d.current, "created_at": d.created_at })).collect::<Vec<_>>()));
            }
        }
        Command::Verify { contact, mark } => {
            let mut client = open(&cli).await?;
            let number = phone(contact)?;
            let (safety, devices) = client.safety_number(&number).await?;
            announce(&mut client);
            if *mark {
                client.mark_verified(&number).await?;
                eprintln!("Marked {number} as verified: if their identity changes, sending stops until you accept it.");
            }
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
            let report = client.sync().await;
            announce(&mut client);
            let report = report?;
            if !had_notice {
                market_banner(&client).await?;
            }
            let mut text = format!(
                "{} new envelope(s), {} message(s).",
                report.processed,
                report.messages.len()
            );
            if report.sent > 0 {
                text.push_str(&format!(" {} queued message(s) sent.", report.sent));
            }
            if report.queued > 0 {
                text.push_str(&format!(" {} still queued.", report.queued));
            }
            out(
                text,
                json!({ "processed": report.processed, "messages": report.messages.len(), "sent": report.sent, "queued": report.queued }),
            );
        }
        Command::Chat => {
            let client = open(&cli).await?;
            tui::run(client).await?;
        }
    }
    Ok(())
}

/// The stable code of a failure, for `--json`: the client's own codes, the
/// relay's codes for its refusals, `invalid_input` for the rest (bad
/// arguments, unreadable files).
fn error_code(e: &anyhow::Error) -> String {
    if let Some(client) = e.downcast_ref::<ClientError>() {
        return client.code();
    }
    if e.downcast_ref::<redoubt_proto::PhoneError>().is_some() {
        return "invalid_phone_number".into();
    }
    "invalid_input".into()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("redoubt: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if json => {
            println!(
                "{}",
                json!({ "error": { "code": error_code(&e), "message": format!("{e:#}") } })
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("redoubt: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
