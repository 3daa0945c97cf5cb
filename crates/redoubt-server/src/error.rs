//! The crate's two error boundaries: [`ServerError`] for whoever embeds the
//! server (start-up, configuration, storage) and [`ApiError`] for HTTP
//! clients. An `ApiError` turns into a status and the JSON body
//! `{"error": {"code", "message"}}`; internal detail goes to the log, never
//! to the client, and never carries user data.

use std::path::PathBuf;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use redoubt_proto::{DeviceId, ErrorBody, ErrorCode, ErrorDetail, MarketNotice, PhoneError};

use crate::storage::StoreError;

/// Errors from starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration does not parse or breaks a rule.
    #[error("invalid configuration: {0}")]
    ConfigInvalid(String),
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The storage backend failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// Serving failed (the listener broke).
    #[error("server I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The key-transparency directory could not be opened.
    #[error(transparent)]
    Kt(#[from] crate::kt::KtError),
}

/// Everything an HTTP call can fail with. Each variant maps to one stable
/// [`ErrorCode`] and status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not syntactically valid JSON.
    #[error("the request body is not valid JSON")]
    InvalidJson,
    /// A field is missing, mistyped or breaks a rule. The text describes the
    /// caller's own input and is safe to return to them, but is never logged.
    #[error("{0}")]
    InvalidRequest(String),
    /// The body lacks `Content-Type: application/json`.
    #[error("expected a body with Content-Type: application/json")]
    UnsupportedMediaType,
    /// The body exceeds the configured limit.
    #[error("the request body is larger than the server accepts")]
    PayloadTooLarge,
    /// No such route.
    #[error("no such route")]
    NotFound,
    /// The route does not take this method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// A phone number failed validation.
    #[error("{0}")]
    InvalidPhoneNumber(#[from] PhoneError),
    /// A rate limit was hit.
    #[error("too many requests; retry in {retry_after_secs} seconds")]
    RateLimited {
        /// Seconds until a request would be accepted.
        retry_after_secs: u64,
    },
    /// No code is pending for the number.
    #[error("no verification code is pending for this number; request one first")]
    NoCodePending,
    /// The code is wrong.
    #[error("the verification code is incorrect")]
    CodeIncorrect,
    /// The code expired.
    #[error("the verification code has expired; request a new one")]
    CodeExpired,
    /// Too many wrong guesses.
    #[error("too many incorrect attempts; request a new code")]
    CodeAttemptsExceeded,
    /// The signature key is not an Ed25519 public key.
    #[error("signature_key must be a 32-byte Ed25519 public key")]
    InvalidSignatureKey,
    /// The proof signature does not verify.
    #[error("proof is not a valid signature of the registration challenge by signature_key")]
    InvalidProof,
    /// No bearer token.
    #[error("this call needs an Authorization: Bearer token")]
    MissingToken,
    /// A malformed or unknown token.
    #[error("the token is invalid")]
    InvalidToken,
    /// The device was revoked.
    #[error("this device has been revoked; register again")]
    TokenRevoked,
    /// No such device for this caller.
    #[error("no such device")]
    UnknownDevice,
    /// No such account.
    #[error("no such account")]
    UnknownAccount,
    /// Some target devices have no key package left.
    #[error("some devices have no key package left to claim; nothing was claimed")]
    KeyPackagesExhausted(Vec<DeviceId>),
    /// The device stores the maximum number of key packages.
    #[error("this upload would exceed the {max} key packages a device may store")]
    KeyPackageLimit {
        /// The limit.
        max: u64,
    },
    /// Some recipients are unknown or revoked.
    #[error("some recipient devices do not exist or were revoked; nothing was queued")]
    UnknownRecipients(Vec<DeviceId>),
    /// Every recipient's mailbox is full (or over the sender's quota).
    #[error("every recipient mailbox is full; nothing was queued")]
    MailboxFull(Vec<DeviceId>),
    /// The envelope id was used for different bytes.
    #[error("an envelope with this id and different content was already accepted")]
    EnvelopeIdConflict,
    /// Another commit to the group was accepted from this epoch first.
    #[error("another commit to this group was accepted from this epoch first; process it and commit again")]
    StaleCommit,
    /// Too many recipients.
    #[error("a send may name at most {max} recipient devices")]
    TooManyRecipients {
        /// The limit.
        max: usize,
    },
    /// The legal desk refused an order.
    #[error("order rejected ({code}): {reason}")]
    OrderRejected {
        /// The rejection's stable code.
        code: &'static str,
        /// The explanation.
        reason: String,
    },
    /// No such order.
    #[error("no such order is on file")]
    UnknownOrder,
    /// Not allowed for this operator.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The server cannot serve this now (a code sender failed, shutdown).
    #[error("{0}")]
    Unavailable(&'static str),
    /// The service has left the caller's market (451).
    #[error(
        "Redoubt is not available in {} since {}: {}",
        .0.jurisdiction, .0.effective_at, .0.notice
    )]
    MarketExited(Box<MarketNotice>),
    /// New accounts from a market being left are refused (451).
    #[error(
        "Redoubt takes no new accounts in {}; it leaves on {}: {}",
        .0.jurisdiction, .0.effective_at, .0.notice
    )]
    RegistrationClosed(Box<MarketNotice>),
    /// A request to the WebSocket endpoint that is not a WebSocket handshake.
    #[error("this endpoint speaks WebSocket: send a GET with Upgrade: websocket")]
    UpgradeRequired,
    /// The device list is not the account's next version.
    #[error("this is not the account's next device list (the latest is version {latest}); fetch it and sign again")]
    DeviceListConflict {
        /// The latest version stored.
        latest: u64,
    },
    /// No such link, or it expired.
    #[error("no such link; it may have expired (links last 10 minutes)")]
    UnknownLink,
    /// The link message was already sent.
    #[error("this message of the link was already sent")]
    LinkSlotTaken,
    /// The link is not approved yet, or was claimed.
    #[error("the link is not approved yet, or its device was already claimed")]
    LinkNotReady,
    /// A bug or an infrastructure failure. The source is logged, not returned.
    #[error("internal server error; quote the x-request-id response header when reporting it")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// Wraps an unexpected failure.
    pub fn internal(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Internal(Box::new(err))
    }

    fn status_and_code(&self) -> (StatusCode, ErrorCode) {
        use ApiError as E;
        match self {
            E::InvalidJson => (StatusCode::BAD_REQUEST, ErrorCode::InvalidJson),
            E::InvalidRequest(_) => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidRequest),
            E::UpgradeRequired => (StatusCode::UPGRADE_REQUIRED, ErrorCode::InvalidRequest),
            E::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
            ),
            E::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge),
            E::NotFound => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            E::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed),
            E::InvalidPhoneNumber(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidPhoneNumber),
            E::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited),
            E::NoCodePending => (StatusCode::BAD_REQUEST, ErrorCode::NoCodePending),
            E::CodeIncorrect => (StatusCode::UNAUTHORIZED, ErrorCode::CodeIncorrect),
            E::CodeExpired => (StatusCode::GONE, ErrorCode::CodeExpired),
            E::CodeAttemptsExceeded => (
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::CodeAttemptsExceeded,
            ),
            E::InvalidSignatureKey => (StatusCode::BAD_REQUEST, ErrorCode::InvalidSignatureKey),
            E::InvalidProof => (StatusCode::BAD_REQUEST, ErrorCode::InvalidProof),
            E::MissingToken => (StatusCode::UNAUTHORIZED, ErrorCode::MissingToken),
            E::InvalidToken => (StatusCode::UNAUTHORIZED, ErrorCode::InvalidToken),
            E::TokenRevoked => (StatusCode::UNAUTHORIZED, ErrorCode::TokenRevoked),
            E::UnknownDevice => (StatusCode::NOT_FOUND, ErrorCode::UnknownDevice),
            E::UnknownAccount => (StatusCode::NOT_FOUND, ErrorCode::UnknownAccount),
            E::KeyPackagesExhausted(_) => (StatusCode::CONFLICT, ErrorCode::KeyPackagesExhausted),
            E::KeyPackageLimit { .. } => (StatusCode::CONFLICT, ErrorCode::KeyPackageLimit),
            E::UnknownRecipients(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::UnknownRecipients,
            ),
            E::MailboxFull(_) => (StatusCode::INSUFFICIENT_STORAGE, ErrorCode::MailboxFull),
            E::EnvelopeIdConflict => (StatusCode::CONFLICT, ErrorCode::EnvelopeIdConflict),
            E::StaleCommit => (StatusCode::CONFLICT, ErrorCode::StaleCommit),
            E::TooManyRecipients { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::TooManyRecipients,
            ),
            E::OrderRejected { .. } => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::OrderRejected),
            E::UnknownOrder => (StatusCode::NOT_FOUND, ErrorCode::UnknownOrder),
            E::Forbidden(_) => (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
            E::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
            E::MarketExited(_) => (
                StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS,
                ErrorCode::MarketExited,
            ),
            E::RegistrationClosed(_) => (
                StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS,
                ErrorCode::RegistrationClosed,
            ),
            E::DeviceListConflict { .. } => (StatusCode::CONFLICT, ErrorCode::DeviceListConflict),
            E::UnknownLink => (StatusCode::NOT_FOUND, ErrorCode::UnknownLink),
            E::LinkSlotTaken => (StatusCode::CONFLICT, ErrorCode::LinkSlotTaken),
            E::LinkNotReady => (StatusCode::CONFLICT, ErrorCode::LinkNotReady),
            E::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
        }
    }
}

impl ApiError {
    /// The status and the body a client is told: the one answer of an HTTP
    /// call and of a send refused on the WebSocket. Internal detail goes
    /// to the log here, never into the body.
    pub fn to_body(&self) -> (StatusCode, ErrorBody) {
        let (status, code) = self.status_and_code();
        if let ApiError::Internal(source) = self {
            // The source names tables and operations, never values: sqlx and
            // the standard library do not put bound parameters in errors.
            tracing::error!(error = %source, "request failed");
        }
        let devices = match self {
            ApiError::KeyPackagesExhausted(d)
            | ApiError::UnknownRecipients(d)
            | ApiError::MailboxFull(d) => d.clone(),
            _ => Vec::new(),
        };
        let market = match self {
            ApiError::MarketExited(m) | ApiError::RegistrationClosed(m) => Some((**m).clone()),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message: self.to_string(),
                devices,
                market,
            },
        };
        (status, body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.to_body();
        let link = body.error.market.as_ref().and_then(|m| m.link.clone());
        let mut response = (status, axum::Json(body)).into_response();
        // RFC 7725: a 451 may name, in a Link header, who asked for or
        // caused the blocking; here that is the operator's page on the exit.
        if let Some(link) =
            link.and_then(|l| HeaderValue::from_str(&format!("<{l}>; rel=\"blocked-by\"")).ok())
        {
            response.headers_mut().insert(header::LINK, link);
        }
        if let ApiError::RateLimited { retry_after_secs } = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        Self::internal(err)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonSyntaxError(_) => Self::InvalidJson,
            // The serde message describes the caller's own input, which is
            // fine to send back to them (it is never logged).
            JsonRejection::JsonDataError(e) => Self::InvalidRequest(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => Self::UnsupportedMediaType,
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::PayloadTooLarge
            }
            JsonRejection::BytesRejection(_) => {
                Self::InvalidRequest("the request body could not be read".into())
            }
            _ => Self::InvalidRequest("the request body was rejected".into()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::InvalidRequest(rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::InvalidRequest(rejection.body_text())
    }
}
