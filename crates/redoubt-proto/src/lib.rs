//! Wire types shared by the Redoubt client and the relay server.
//!
//! This crate is pure data: identifiers, request and response bodies, WebSocket
//! frames and the JSON error body. It performs no I/O and holds no keys.
//!
//! It must never grow a type that carries plaintext to the server: every
//! message body crossing this boundary is an opaque [`bytes::OpaqueBytes`]
//! produced by MLS on the client. Types that wrap personal data or secrets
//! ([`phone::PhoneNumber`], [`auth::AuthToken`]) redact themselves in `Debug`
//! so that a stray `{:?}` in a log line cannot leak them.

pub mod api;
pub mod auth;
pub mod bytes;
pub mod error;
pub mod identity;
pub mod ids;
pub mod kt;
pub mod merkle;
pub mod notice;
pub mod phone;
pub mod time;
pub mod ws;

pub use auth::{AuthToken, VerificationSession};
pub use bytes::OpaqueBytes;
pub use error::{ErrorBody, ErrorCode, ErrorDetail, MarketNotice};
pub use identity::{DeviceCertificate, DeviceList, ListedDevice, SignedDocument};
pub use ids::{AccountId, DeviceId, EnvelopeId, IdError, KeyPackageRef};
pub use notice::{NoticeKind, ServiceNotice, SignedNotice};
pub use phone::{PhoneError, PhoneNumber};
pub use time::Timestamp;

/// The version prefix of every HTTP route, so that a future incompatible API
/// can live beside this one.
pub const API_PREFIX: &str = "/v1";

/// The domain-separation prefix a device signs, with its phone number and the
/// verification code, to prove it holds the private half of the signature key
/// it registers. See [`api::VerifyCodeRequest::registration_challenge`].
pub const REGISTRATION_CONTEXT: &[u8] = b"redoubt/v1/device-registration";
