//! The Redoubt legal desk.
//!
//! It verifies court orders against the operator's authority trust store,
//! takes every decision on operators' signed actions (two operators for an
//! approval or a trust change), records each step in a signed, hash-chained
//! audit log with Merkle checkpoints, and produces signed disclosure
//! packages and transparency reports. Its state is the replay of that log
//! (`state`), kept in the relay's database behind `store::DeskStore`, so
//! every writer, on any node, is serialised by the database.
//!
//! What it must never do: read, hold or disclose anything but an account's
//! phone number and its IP-log records. It has no type for message content,
//! contacts or group membership, and no code path to the relay's mailbox or
//! message tables; its only view of server storage is a read-only trait with
//! exactly the subscriber and IP-log queries. Requests for traffic or
//! content data are answered "not held", because the service does not have
//! them.

pub mod audit;
pub mod desk;
pub mod disclosure;
pub mod jurisdiction;
pub mod markets;
pub mod operators;
pub mod order;
pub mod records;
pub mod report;
pub mod state;
pub mod store;
pub mod trust;
pub mod verify;

/// Errors at the legal desk's boundary (files, storage).
#[derive(Debug, thiserror::Error)]
pub enum LegalError {
    /// A file could not be read or written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The desk's database failed.
    #[error("the desk's storage failed: {0}")]
    Store(String),
    /// A file does not parse.
    #[error("{what} is malformed: {detail}")]
    Malformed {
        /// Which file.
        what: &'static str,
        /// Why.
        detail: String,
    },
}

/// SHA-256 of `bytes`, lower-case hex: how the log names documents and
/// packages it commits to.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
