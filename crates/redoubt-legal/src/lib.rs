//! The Redoubt legal desk.
//!
//! It verifies court orders against the operator's authority trust store,
//! records every step in a hash-chained audit log, and (in later work)
//! produces signed disclosure packages and transparency reports.
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
pub mod trust;
pub mod verify;

/// Errors at the legal desk's boundary (files, storage).
#[derive(Debug, thiserror::Error)]
pub enum LegalError {
    /// A file could not be read or written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A file does not parse.
    #[error("{what} is malformed: {detail}")]
    Malformed {
        /// Which file.
        what: &'static str,
        /// Why.
        detail: String,
    },
}
