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
    /// The server could not be reached.
    #[error("cannot reach the server: {0}")]
    Unreachable(String),
    /// The server refused the request.
    #[error("server refused the request: {message} ({code:?}, HTTP {status})")]
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
}

impl ClientError {
    /// Wraps an OpenMLS error, keeping only its description.
    pub fn mls(err: impl std::fmt::Display) -> Self {
        Self::Mls(err.to_string())
    }
}

/// The client's result type.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
