//! Frames on the delivery WebSocket (`GET /v1/ws`).
//!
//! Two encodings, chosen when the socket opens. Without a subprotocol, both
//! directions are JSON text frames tagged by `type` ([`ServerFrame`],
//! [`ClientFrame`]): the relay pushes envelopes and the client acks them.
//! A client that offers [`binary::PROTOCOL`] gets the compact binary
//! encoding of [`binary`], which can also *send* envelopes on the open
//! socket: the fast path the CLI, the TUI and the load tool use.

use serde::{Deserialize, Serialize};

use crate::api::Envelope;
use crate::ids::EnvelopeId;

pub mod binary;

/// What the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// A queued envelope. It is sent again on a later connection until acked.
    Envelope(Envelope),
    /// The mailbox had nothing more to send when this was written; later
    /// envelopes are pushed as they arrive.
    Drained,
}

/// What the client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// These envelopes are processed and stored; delete them.
    Ack {
        /// The envelopes.
        ids: Vec<EnvelopeId>,
    },
}

/// WebSocket close codes the server uses beyond the standard ones.
pub mod close {
    /// The device's token was revoked while it was connected.
    pub const REVOKED: u16 = 4001;
    /// Another connection of the same device replaced this one.
    pub const REPLACED: u16 = 4002;
    /// The client broke the protocol (a frame that does not parse).
    pub const PROTOCOL: u16 = 4003;
    /// The service has left the device's market (the WebSocket twin of
    /// HTTP 451); the reason names the market.
    pub const MARKET_EXITED: u16 = 4451;
}
