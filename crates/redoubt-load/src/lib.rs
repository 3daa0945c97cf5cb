//! `redoubt-load`: drives a Redoubt relay through its real API with many
//! simulated devices and measures what one node (or several) holds:
//! delivered messages per second, end-to-end delivery latency, server CPU
//! and peak memory, bytes, errors, and whether every accepted message was
//! delivered exactly once. The same workload can run against an MQTT broker
//! (Mosquitto, QoS 1, persistent sessions) so the numbers have a peer.
//!
//! It is a measuring tool, never part of the relay: it must never weaken
//! what it measures (no shortcuts around registration or authentication),
//! and the test suite runs it only to check delivery, never timings.

pub mod cluster;
pub mod e2e;
pub mod mqtt;
pub mod procstat;
pub mod relay;
pub mod report;
pub mod workload;

/// Why a load run failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A process (relay node or broker) could not be started.
    #[error("cannot start {what}: {detail}")]
    Spawn {
        /// Which program.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// The relay refused or failed a call the workload needs.
    #[error("relay call failed: {0}")]
    Relay(String),
    /// The broker failed.
    #[error("broker failed: {0}")]
    Broker(String),
    /// The MLS client failed (e2e mode).
    #[error("client failed: {0}")]
    Client(#[from] redoubt_client::ClientError),
    /// Local I/O failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
