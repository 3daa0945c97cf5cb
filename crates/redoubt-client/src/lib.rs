//! The Redoubt client core.
//!
//! Every chat, one-to-one or group, is an MLS group (RFC 9420) run by
//! OpenMLS on this device. Keys, group state, contacts and history live only
//! in the profile directory, in a SQLite database whose sensitive values are
//! sealed with a key derived from the user's passphrase (Argon2id,
//! XChaCha20-Poly1305).
//!
//! What it must never do: send plaintext, a private key or a group secret to
//! the server, or write them to disk unsealed; acknowledge an envelope
//! before what it carried is stored; trust any relay answer about keys or
//! membership (a device is used only if the account's pinned identity key
//! vouches for it, and chats change only through signed device lists or
//! MLS commits whose leaves were checked); or send to a changed identity
//! before the user accepted it.

pub mod api;
pub mod client;
pub mod error;
pub mod identity;
pub mod kt;
pub mod kt_audit;
pub mod lock;
pub mod mls;
pub mod model;
pub mod safety;
pub mod seal;
pub mod store;
pub mod text;
pub mod transcript;

pub use client::{Client, ClientConfig, CodeRequest};
pub use error::{ClientError, Result};
