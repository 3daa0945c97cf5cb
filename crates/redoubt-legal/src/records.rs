//! The legal desk's only view of the relay's storage: a read-only trait with
//! exactly two queries, the subscriber behind a target and that account's
//! IP-log records in a window. There is deliberately no way to ask it for
//! mailboxes, envelopes, key packages, devices or group membership.

use std::future::Future;
use std::net::IpAddr;

use redoubt_proto::{AccountId, PhoneNumber};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::order::Target;

/// The account behind a target, as the records report it. Only its
/// `phone` and `account_created_at` are ever disclosed (see
/// [`crate::disclosure::SubscriberData`]); the id is for the IP-log query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscriber {
    /// The account.
    pub account_id: AccountId,
    /// Its phone number.
    pub phone: PhoneNumber,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub account_created_at: OffsetDateTime,
}

/// One row of the IP-address log, as `ip_identification` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpRecord {
    /// The client address.
    pub ip: IpAddr,
    /// The client's source port (needed to tell CGNAT users apart).
    pub port: u16,
    /// First seen.
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen: OffsetDateTime,
    /// Last seen.
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
}

/// Why a records query failed.
#[derive(Debug, thiserror::Error)]
#[error("the subscriber records could not be read: {0}")]
pub struct RecordsError(pub String);

/// Read-only access to the subscriber and IP-log records.
pub trait SubscriberRecords: Send + Sync {
    /// The account a target names, if it exists.
    fn subscriber(
        &self,
        target: &Target,
    ) -> impl Future<Output = Result<Option<Subscriber>, RecordsError>> + Send;

    /// The account's IP-log rows that overlap `[from, to]`, oldest first.
    fn ip_records(
        &self,
        account: AccountId,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> impl Future<Output = Result<Vec<IpRecord>, RecordsError>> + Send;
}
