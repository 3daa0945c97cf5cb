//! The client's error type. Messages name what went wrong and what to do;
//! they never contain message text, keys or tokens.

use std::path::PathBuf;

use redoubt_proto::{ErrorCode, PhoneError};

/// Everything the client core can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No profile exists in the directory.
    #[error("no profile in {0}; run `redoubt register` first")]
    NoProfile(PathBuf),
    /// A profile already exists where a new one was to be created.
    #[error("a profile already exists in {0}")]
    ProfileExists(PathBuf),
    /// The passphrase does not unlock the profile. Nothing was changed.
    #[error("wrong passphrase for this profile")]
    WrongPassphrase,
    /// The profile's files do not decode: corruption or tampering.
    #[error("the profile store is damaged: {0}")]
    Corrupt(&'static str),
    /// The local database failed.
    #[error("local database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The local database schema could not be applied.
    #[error("local database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A file could not be read or written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Another process on this profile holds it (a long operation in
    /// `redoubt chat`, say) and did not finish in time. Nothing was changed.
    #[error("the profile in {0} is busy in another redoubt process; try again")]
    ProfileBusy(PathBuf),
    /// The relay could not be reached. Its URL is named so a wrong
    /// `--server` or a relay that is down is obvious.
    #[error("cannot reach the relay at {url}: {cause}")]
    Unreachable {
        /// The relay's base URL.
        url: String,
        /// What failed (connection refused, time-out, ...).
        cause: String,
    },
    /// The server refused the request.
    #[error("the relay refused the request: {message} ({code:?}, HTTP {status}){}", revoked_hint(*code))]
    Server {
        /// HTTP status.
        status: u16,
        /// The server's stable error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
        /// The devices the error concerns, when it names some.
        devices: Vec<redoubt_proto::DeviceId>,
    },
    /// The service has left (or, for a new account, is leaving) the user's
    /// market: HTTP 451 with the operator's notice. Shown in full, because
    /// it is what the user most needs to know.
    #[error(
        "Redoubt is unavailable for legal reasons in {} (HTTP 451, {code:?}).\n\n{}\n\nService there ends {}; everything the service holds for accounts there is deleted {}.{}",
        notice.jurisdiction,
        notice.notice,
        notice.effective_at,
        notice.purge_at,
        notice.link.as_deref().map(|l| format!(" More: {l}")).unwrap_or_default()
    )]
    MarketExited {
        /// `market_exited` or `registration_closed`.
        code: ErrorCode,
        /// The operator's notice.
        notice: Box<redoubt_proto::MarketNotice>,
    },
    /// The server answered with something that is not the API.
    #[error("unexpected answer from the server (HTTP {0})")]
    BadResponse(u16),
    /// A phone number is malformed.
    #[error("{0}")]
    Phone(#[from] PhoneError),
    /// No account is registered under the number.
    #[error("{0} is not on Redoubt")]
    UnknownContact(String),
    /// No chat matches what the user typed.
    #[error("no chat matches {0:?}; `redoubt chats` lists them")]
    UnknownChat(String),
    /// The user is not (or no longer) a member of the chat.
    #[error("you are not a member of this chat any more")]
    NotAMember,
    /// The member named is not in the chat.
    #[error("{0} is not a member of this chat")]
    NotInChat(String),
    /// The message is over the size limit.
    #[error("message too long: {len} bytes, the limit is {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The input makes no sense for the operation.
    #[error("{0}")]
    Invalid(String),
    /// An MLS operation failed.
    #[error("MLS error: {0}")]
    Mls(String),
    /// The profile was made before account identity keys.
    #[error(
        "this profile was made before account identity keys; `redoubt reset` and register again"
    )]
    ProfileTooOld,
    /// Contacts in the chat have a new identity key since messages last
    /// went there; nothing was sent.
    #[error(
        "not sent: {} {} a new identity key (an account reset, or the number now belongs to \
         another account). Compare safety numbers (`redoubt verify`) and send again with \
         --accept-changes to go on.",
        .0.join(", "),
        if .0.len() == 1 { "has" } else { "have" }
    )]
    IdentityChanged(Vec<String>),
    /// A key, device list or member the relay served is not vouched for by
    /// the account's identity key; it was refused.
    #[error("refused: {0}")]
    Untrusted(String),
    /// Linking a device failed; nothing was linked.
    #[error("linking failed: {0}")]
    LinkFailed(String),
    /// The chat has changed (a member added or removed) and the change has
    /// not reached this device, though messages written after it have:
    /// sending now could reach someone no longer in it.
    #[error(
        "not sent: this chat has changed and the change has not reached this device yet (the \
         relay may be withholding it). Nothing is sent to the chat until it arrives."
    )]
    ChatBehind,
    /// Another member changed the chat at the same moment and the relay
    /// took their change first; this device's change was not made.
    #[error(
        "not changed: another member changed this chat at the same moment. Sync and try again."
    )]
    ChatChanged,
}

fn revoked_hint(code: ErrorCode) -> &'static str {
    if code == ErrorCode::TokenRevoked {
        "\nThis device was revoked from its account. `redoubt reset` removes this \
         profile from the device so you can register it again."
    } else {
        ""
    }
}

impl ClientError {
    /// Wraps an OpenMLS error, keeping only its description.
    pub fn mls(err: impl std::fmt::Display) -> Self {
        Self::Mls(err.to_string())
    }

    /// A stable, machine-readable code for scripts (`redoubt --json`
    /// prints it with the message). Refusals by the relay keep the relay's
    /// own code.
    pub fn code(&self) -> String {
        let code = match self {
            Self::NoProfile(_) => "no_profile",
            Self::ProfileExists(_) => "profile_exists",
            Self::WrongPassphrase => "wrong_passphrase",
            Self::Corrupt(_) | Self::Database(_) | Self::Migration(_) => "profile_damaged",
            Self::Io(_) => "io",
            Self::ProfileBusy(_) => "profile_busy",
            Self::Unreachable { .. } => "relay_unreachable",
            Self::Server { code, .. } | Self::MarketExited { code, .. } => {
                return serde_json::to_value(code)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| "server".into())
            }
            Self::BadResponse(_) => "bad_response",
            Self::Phone(_) => "invalid_phone_number",
            Self::UnknownContact(_) => "unknown_contact",
            Self::UnknownChat(_) => "unknown_chat",
            Self::NotAMember => "not_a_member",
            Self::NotInChat(_) => "not_in_chat",
            Self::TooLarge { .. } => "too_large",
            Self::Invalid(_) => "invalid_input",
            Self::Mls(_) => "mls",
            Self::ProfileTooOld => "profile_too_old",
            Self::IdentityChanged(_) => "identity_changed",
            Self::Untrusted(_) => "untrusted",
            Self::LinkFailed(_) => "link_failed",
            Self::ChatBehind => "chat_behind",
            Self::ChatChanged => "chat_changed",
        };
        code.to_owned()
    }
}

/// The client's result type.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
