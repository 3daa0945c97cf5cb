//! Conversions between the domain types and the column types both SQL
//! backends use (ids as 16-byte blobs, times as milliseconds, envelope kinds
//! as text), so the backends cannot disagree on them.

use std::time::Duration;

use redoubt_proto::api::EnvelopeKind;
use std::net::IpAddr;

use redoubt_proto::{AccountId, DeviceId, EnvelopeId, Timestamp};

use super::{DeviceAuth, DeviceRecord, IpLogEntry, QueuedEnvelope, StoreError, TokenStatus};

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

/// Active recipient devices with their queue lengths, as both backends read
/// them in one query when checking a send.
pub(crate) type QueueLengths = std::collections::HashMap<DeviceId, i64>;

/// Which recipients a send is queued for, read before anything is
/// written: refused whole if a recipient does not exist or was revoked (in
/// the order given) or if every mailbox is full; otherwise the recipients
/// whose mailboxes are full (sorted), left out while the others get it.
///
/// Why not all or nothing, as before issue 16: one member's flooded mailbox
/// then silenced the whole group for the message TTL.
pub(crate) fn admit_recipients(
    recipients: &[DeviceId],
    active: &QueueLengths,
    max_queued: u64,
) -> Result<Vec<DeviceId>, super::EnqueueOutcome> {
    let unknown: Vec<DeviceId> = recipients
        .iter()
        .filter(|d| !active.contains_key(d))
        .copied()
        .collect();
    if !unknown.is_empty() {
        return Err(super::EnqueueOutcome::UnknownRecipients(unknown));
    }
    let mut full: Vec<DeviceId> = active
        .iter()
        .filter(|(_, &queued)| u64::try_from(queued).unwrap_or(0) >= max_queued)
        .map(|(d, _)| *d)
        .collect();
    full.sort();
    if !full.is_empty() && full.len() == active.len() {
        return Err(super::EnqueueOutcome::MailboxFull(full));
    }
    Ok(full)
}

/// What a token resolves to, from its device row (id, account, revocation
/// time) and the account's region.
pub(crate) fn token_status(
    id: Vec<u8>,
    account: Vec<u8>,
    revoked_at: Option<i64>,
    region: Option<String>,
) -> Result<TokenStatus, StoreError> {
    if revoked_at.is_some() {
        return Ok(TokenStatus::Revoked);
    }
    Ok(TokenStatus::Active(DeviceAuth {
        device_id: device_id(id)?,
        account_id: account_id(account)?,
        region: region.filter(|r| !r.is_empty()),
    }))
}

/// A device from its row (id, name, signature key, creation time).
pub(crate) fn device_record(
    id: Vec<u8>,
    name: String,
    signature_key: Vec<u8>,
    created_at: i64,
) -> Result<DeviceRecord, StoreError> {
    Ok(DeviceRecord {
        device_id: device_id(id)?,
        name,
        signature_key,
        created_at: Timestamp(created_at),
    })
}

/// A queued envelope from its row (id, kind, received time, payload).
pub(crate) fn queued_envelope(
    seq: i64,
    id: Vec<u8>,
    kind: &str,
    received_at: i64,
    payload: Vec<u8>,
) -> Result<QueuedEnvelope, StoreError> {
    Ok(QueuedEnvelope {
        seq,
        id: EnvelopeId::from_bytes(id16(id)?),
        kind: kind_from_str(kind)?,
        received_at: Timestamp(received_at),
        payload,
    })
}

/// An address stored as text.
pub(crate) fn ip_addr(text: &str) -> Result<IpAddr, StoreError> {
    text.parse().map_err(|_| StoreError::Corrupt("ip address"))
}

/// An IP-log row (ip, port, first seen, last seen).
pub(crate) fn ip_log_entry(
    ip: &str,
    port: i64,
    first_seen: i64,
    last_seen: i64,
) -> Result<IpLogEntry, StoreError> {
    Ok(IpLogEntry {
        ip: ip_addr(ip)?,
        port: u16::try_from(port).map_err(|_| StoreError::Corrupt("port"))?,
        first_seen: Timestamp(first_seen),
        last_seen: Timestamp(last_seen),
    })
}
