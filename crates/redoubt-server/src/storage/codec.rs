//! Conversions between the domain types and the column types both SQL
//! backends use (ids as 16-byte blobs, times as milliseconds, envelope kinds
//! as text), so the backends cannot disagree on them.

use std::time::Duration;

use redoubt_proto::api::EnvelopeKind;
use redoubt_proto::{AccountId, DeviceId, Timestamp};

use super::StoreError;

pub(crate) fn ms(t: Timestamp) -> i64 {
    t.millis()
}

pub(crate) fn dur_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn id16(bytes: Vec<u8>) -> Result<[u8; 16], StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("identifier is not 16 bytes"))
}

pub(crate) fn device_id(bytes: Vec<u8>) -> Result<DeviceId, StoreError> {
    Ok(DeviceId::from_bytes(id16(bytes)?))
}

pub(crate) fn account_id(bytes: Vec<u8>) -> Result<AccountId, StoreError> {
    Ok(AccountId::from_bytes(id16(bytes)?))
}

pub(crate) fn kind_to_str(kind: EnvelopeKind) -> &'static str {
    match kind {
        EnvelopeKind::Mls => "mls",
        EnvelopeKind::ServerNotice => "server_notice",
    }
}

pub(crate) fn kind_from_str(kind: &str) -> Result<EnvelopeKind, StoreError> {
    match kind {
        "mls" => Ok(EnvelopeKind::Mls),
        "server_notice" => Ok(EnvelopeKind::ServerNotice),
        _ => Err(StoreError::Corrupt("unknown envelope kind")),
    }
}

pub(crate) fn retry_after(oldest: Option<i64>, window: Duration, now: Timestamp) -> Duration {
    let free_at = oldest
        .unwrap_or(now.millis())
        .saturating_add(dur_ms(window));
    let wait = free_at.saturating_sub(now.millis()).max(1000);
    Duration::from_millis(u64::try_from(wait).unwrap_or(u64::MAX))
}
