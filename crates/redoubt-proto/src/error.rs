//! The JSON error body every failing HTTP call returns:
//! `{"error": {"code": "...", "message": "..."}}`.

use serde::{Deserialize, Serialize};

use crate::ids::DeviceId;

/// A stable, machine-readable error code. Clients branch on the code; the
/// message is for people and may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not syntactically valid JSON.
    InvalidJson,
    /// The body is JSON but a field is missing, has the wrong type or breaks a rule.
    InvalidRequest,
    /// The request needs `Content-Type: application/json`.
    UnsupportedMediaType,
    /// The body is larger than the server accepts.
    PayloadTooLarge,
    /// The request's headers (or its target) are larger than the server
    /// reads (HTTP 431).
    HeadersTooLarge,
    /// No such route.
    NotFound,
    /// The route exists but not with this method.
    MethodNotAllowed,
    /// The phone number is not in E.164 form or not valid for its country.
    InvalidPhoneNumber,
    /// Too many requests; retry after the number of seconds in `Retry-After`.
    RateLimited,
    /// No verification code is pending for this number (never requested, used or expired and purged).
    NoCodePending,
    /// The verification code is wrong.
    CodeIncorrect,
    /// The verification code has expired; request a new one.
    CodeExpired,
    /// Too many wrong guesses for this code; request a new one.
    CodeAttemptsExceeded,
    /// The signature key is not a valid Ed25519 public key.
    InvalidSignatureKey,
    /// The proof-of-possession signature does not verify.
    InvalidProof,
    /// The request has no `Authorization: Bearer` token.
    MissingToken,
    /// The token is malformed or unknown.
    InvalidToken,
    /// The token belonged to a device that has been revoked.
    TokenRevoked,
    /// No such device (or not one the caller may see).
    UnknownDevice,
    /// No such account.
    UnknownAccount,
    /// A target device has no key package left to claim.
    KeyPackagesExhausted,
    /// The device already stores as many key packages as the server allows.
    KeyPackageLimit,
    /// Some recipient devices do not exist or were revoked; nothing was queued.
    UnknownRecipients,
    /// Every recipient's mailbox is full, or holds as much from this sender
    /// as the relay takes for now; nothing was queued.
    MailboxFull,
    /// An envelope with this id but different content was already accepted.
    EnvelopeIdConflict,
    /// Another commit to this group was accepted from the same epoch first:
    /// process it, then make the change again on the new state.
    StaleCommit,
    /// Too many recipients in one send.
    TooManyRecipients,
    /// The legal desk refused a court order; the message gives the reason and its code.
    OrderRejected,
    /// No such court order is on file.
    UnknownOrder,
    /// The operator may not do this (four-eyes: the intake operator cannot approve).
    Forbidden,
    /// The service has left the caller's market (HTTP 451); `market` says
    /// which, since when, and carries the operator's notice.
    MarketExited,
    /// New accounts from this market are refused: the service announced it
    /// is leaving (HTTP 451); `market` carries the notice.
    RegistrationClosed,
    /// A device list is not the account's next version (another device
    /// published one first); fetch the latest and sign again.
    DeviceListConflict,
    /// No such link rendezvous, or it expired.
    UnknownLink,
    /// That message of the link was already sent.
    LinkSlotTaken,
    /// The link is not approved by a device of the account yet, or was
    /// already claimed.
    LinkNotReady,
    /// The server failed; the detail is in its log, under the request id.
    Internal,
    /// The server is shutting down or overloaded; retry shortly.
    Unavailable,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong, for programs (`code`) and people (`message`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// The stable error code.
    pub code: ErrorCode,
    /// A human-readable explanation. It never contains another user's data.
    pub message: String,
    /// The devices the error is about, where it concerns some of several
    /// (unknown recipients, full mailboxes, exhausted key packages).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceId>,
    /// The market exit behind a 451 answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub market: Option<MarketNotice>,
}

/// A market exit as users are told of it: in 451 answers and in the
/// notices queued to every account of the market.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MarketNotice {
    /// The market, an ISO 3166-1 alpha-2 code.
    pub jurisdiction: String,
    /// From when the service refuses the market, RFC 3339.
    pub effective_at: String,
    /// When what the service holds for the market's accounts is deleted,
    /// RFC 3339.
    pub purge_at: String,
    /// The operator's notice, for people.
    pub notice: String,
    /// Where to read more, if the operator gave an address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:?})", self.error.message, self.error.code)
    }
}
