//! The binary encoding of the delivery WebSocket, version 1.
//!
//! Chosen by the WebSocket subprotocol [`PROTOCOL`]; a client that does not
//! offer it gets the JSON frames of [`super`]. Every frame is one WebSocket
//! binary message that starts with the encoding's version byte ([`VERSION`])
//! and a type byte; integers are big-endian, identifiers their 16 raw bytes.
//! A later version gets a new subprotocol name, so a relay can speak several.
//!
//! Why binary: a 256-byte message sent as JSON over HTTP costs about 935
//! application bytes (base64, field names, headers) and a request of its
//! own; here it costs 256 bytes plus 41 (for one recipient) and rides the
//! open socket.
//!
//! | type | direction | body |
//! | --- | --- | --- |
//! | `0x01` send | client | id, flags (bit 0: commit), [group (32), epoch (u64)], recipient count (u16), recipients, payload length (u32), payload |
//! | `0x02` ack | client | id count (u16), ids |
//! | `0x81` envelopes | server | count (u16), then each: id, kind (u8), received at (i64 ms), payload length (u32), payload |
//! | `0x82` drained | server | nothing |
//! | `0x83` accepted | server | id, duplicate (u8: 0 or 1) |
//! | `0x84` refused | server | id, HTTP status (u16), the JSON [`ErrorBody`] an HTTP send would have got |
//! | `0x85` accepted in part | server | id, duplicate (u8), full count (u16), the devices it was not queued for |
//!
//! Subprotocol [`PROTOCOL_V2`] is version 1 plus the `0x85` frame: a send
//! is queued for the recipients whose mailboxes take it, and the others are
//! named (issue 16: one flooded member no longer silences a whole group).
//! A session on [`PROTOCOL`] gets a plain `0x83` for such a send, as a
//! client of that version cannot read `0x85`.

use crate::api::{Envelope, EnvelopeKind, COMMIT_GROUP_LEN};
use crate::error::ErrorBody;
use crate::ids::{DeviceId, EnvelopeId};
use crate::time::Timestamp;

/// The WebSocket subprotocol that selects this encoding.
pub const PROTOCOL: &str = "redoubt.bin.1";

/// The subprotocol of this encoding with partial acceptance (`0x85`).
pub const PROTOCOL_V2: &str = "redoubt.bin.2";

/// The first byte of every frame of this encoding.
pub const VERSION: u8 = 1;

const SEND: u8 = 0x01;
const ACK: u8 = 0x02;
const ENVELOPES: u8 = 0x81;
const DRAINED: u8 = 0x82;
const ACCEPTED: u8 = 0x83;
const REFUSED: u8 = 0x84;
const ACCEPTED_PART: u8 = 0x85;

const FLAG_COMMIT: u8 = 0x01;

/// Why a frame does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame ends before its fields do.
    #[error("the frame is truncated")]
    Truncated,
    /// The frame is of another version of the encoding.
    #[error("unsupported frame version {0}")]
    Version(u8),
    /// The type byte names no frame of this direction.
    #[error("unknown frame type {0:#04x}")]
    Type(u8),
    /// Bytes follow the last field.
    #[error("the frame has trailing bytes")]
    Trailing,
    /// A field holds a value no frame may carry.
    #[error("the frame has an invalid {0}")]
    Invalid(&'static str),
}

/// Which group a commit changes and from which epoch (the binary twin of
/// [`crate::api::CommitTag`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitPosition {
    /// SHA-256 of the MLS group id.
    pub group: [u8; COMMIT_GROUP_LEN],
    /// The epoch the commit was made in.
    pub epoch: u64,
}

/// A send on the open socket: the same as `POST /v1/messages`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    /// Chosen by the sender; a retry with the same id and bytes is accepted once.
    pub id: EnvelopeId,
    /// Every device that should receive it.
    pub recipients: Vec<DeviceId>,
    /// Set when the payload is an MLS commit.
    pub commit: Option<CommitPosition>,
    /// The MLS message.
    pub payload: Vec<u8>,
}

/// What the client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// Queue an envelope; the relay answers [`ServerMessage::Accepted`] or
    /// [`ServerMessage::Refused`] with its id.
    Send(Send),
    /// These envelopes are processed and stored; delete them.
    Ack(Vec<EnvelopeId>),
}

/// What the server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    /// Queued envelopes, oldest first; each is sent again on a later
    /// connection until acked.
    Envelopes(Vec<Envelope>),
    /// The mailbox had nothing more to send when this was written.
    Drained,
    /// A send was stored (or had been, for a retry: `duplicate`).
    Accepted {
        /// The send's id.
        id: EnvelopeId,
        /// Whether it had been accepted before.
        duplicate: bool,
        /// Recipients it was not queued for: their mailboxes were full, or
        /// held as much from this sender as the relay takes for now.
        /// Empty when it went to everyone.
        full: Vec<DeviceId>,
    },
    /// A send was refused; nothing was stored.
    Refused {
        /// The send's id.
        id: EnvelopeId,
        /// The HTTP status `POST /v1/messages` would have answered.
        status: u16,
        /// The error body it would have carried.
        error: ErrorBody,
    },
}

impl ClientMessage {
    /// Encodes the frame.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Send(send) => {
                let mut out = Vec::with_capacity(
                    2 + 16 + 1 + 40 + 2 + 16 * send.recipients.len() + 4 + send.payload.len(),
                );
                out.extend([VERSION, SEND]);
                out.extend(send.id.as_bytes());
                match &send.commit {
                    Some(c) => {
                        out.push(FLAG_COMMIT);
                        out.extend(c.group);
                        out.extend(c.epoch.to_be_bytes());
                    }
                    None => out.push(0),
                }
                put_ids(&mut out, send.recipients.iter().map(DeviceId::as_bytes));
                put_bytes(&mut out, &send.payload);
                out
            }
            Self::Ack(ids) => {
                let mut out = Vec::with_capacity(4 + 16 * ids.len());
                out.extend([VERSION, ACK]);
                put_ids(&mut out, ids.iter().map(EnvelopeId::as_bytes));
                out
            }
        }
    }

    /// Decodes a frame.
    pub fn decode(frame: &[u8]) -> Result<Self, FrameError> {
        let mut r = Reader::open(frame)?;
        let message = match r.u8()? {
            SEND => {
                let id = EnvelopeId::from_bytes(r.array()?);
                let commit = match r.u8()? {
                    0 => None,
                    FLAG_COMMIT => Some(CommitPosition {
                        group: r.array()?,
                        epoch: u64::from_be_bytes(r.array()?),
                    }),
                    _ => return Err(FrameError::Invalid("flags")),
                };
                let recipients = r.ids()?.map(DeviceId::from_bytes).collect();
                let payload = r.bytes()?.to_vec();
                Self::Send(Send {
                    id,
                    recipients,
                    commit,
                    payload,
                })
            }
            ACK => Self::Ack(r.ids()?.map(EnvelopeId::from_bytes).collect()),
            other => return Err(FrameError::Type(other)),
        };
        r.finish()?;
        Ok(message)
    }
}

impl ServerMessage {
    /// Encodes the frame.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Envelopes(envelopes) => {
                let size: usize = envelopes.iter().map(|e| 29 + e.payload.len()).sum();
                let mut out = Vec::with_capacity(4 + size);
                out.extend([VERSION, ENVELOPES]);
                out.extend(count(envelopes.len()).to_be_bytes());
                for e in envelopes.iter().take(usize::from(u16::MAX)) {
                    out.extend(e.id.as_bytes());
                    out.push(match e.kind {
                        EnvelopeKind::Mls => 0,
                        EnvelopeKind::ServerNotice => 1,
                    });
                    out.extend(e.received_at.millis().to_be_bytes());
                    put_bytes(&mut out, e.payload.as_slice());
                }
                out
            }
            Self::Drained => vec![VERSION, DRAINED],
            Self::Accepted {
                id,
                duplicate,
                full,
            } if full.is_empty() => {
                let mut out = Vec::with_capacity(19);
                out.extend([VERSION, ACCEPTED]);
                out.extend(id.as_bytes());
                out.push(u8::from(*duplicate));
                out
            }
            Self::Accepted {
                id,
                duplicate,
                full,
            } => {
                let mut out = Vec::with_capacity(21 + 16 * full.len());
                out.extend([VERSION, ACCEPTED_PART]);
                out.extend(id.as_bytes());
                out.push(u8::from(*duplicate));
                put_ids(&mut out, full.iter().map(|d| d.as_bytes()));
                out
            }
            Self::Refused { id, status, error } => {
                let mut out = vec![VERSION, REFUSED];
                out.extend(id.as_bytes());
                out.extend(status.to_be_bytes());
                // An error body always serialises (plain strings and enums).
                out.extend(serde_json::to_vec(error).unwrap_or_default());
                out
            }
        }
    }

    /// Decodes a frame.
    pub fn decode(frame: &[u8]) -> Result<Self, FrameError> {
        let mut r = Reader::open(frame)?;
        let message = match r.u8()? {
            ENVELOPES => {
                let n = r.u16()?;
                let mut envelopes = Vec::with_capacity(usize::from(n).min(frame.len() / 29));
                for _ in 0..n {
                    let id = EnvelopeId::from_bytes(r.array()?);
                    let kind = match r.u8()? {
                        0 => EnvelopeKind::Mls,
                        1 => EnvelopeKind::ServerNotice,
                        _ => return Err(FrameError::Invalid("envelope kind")),
                    };
                    let received_at = Timestamp(i64::from_be_bytes(r.array()?));
                    let payload = r.bytes()?.to_vec().into();
                    envelopes.push(Envelope {
                        id,
                        kind,
                        received_at,
                        payload,
                    });
                }
                Self::Envelopes(envelopes)
            }
            DRAINED => Self::Drained,
            kind @ (ACCEPTED | ACCEPTED_PART) => {
                let id = EnvelopeId::from_bytes(r.array()?);
                let duplicate = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(FrameError::Invalid("duplicate flag")),
                };
                let mut full = Vec::new();
                if kind == ACCEPTED_PART {
                    let n = r.u16()?;
                    if n == 0 {
                        // Partial acceptance with nobody left out is 0x83.
                        return Err(FrameError::Invalid("full count"));
                    }
                    for _ in 0..n {
                        full.push(DeviceId::from_bytes(r.array()?));
                    }
                }
                Self::Accepted {
                    id,
                    duplicate,
                    full,
                }
            }
            REFUSED => {
                let id = EnvelopeId::from_bytes(r.array()?);
                let status = r.u16()?;
                let error = serde_json::from_slice(r.rest())
                    .map_err(|_| FrameError::Invalid("error body"))?;
                Self::Refused { id, status, error }
            }
            other => return Err(FrameError::Type(other)),
        };
        r.finish()?;
        Ok(message)
    }
}

/// A count field; callers never hold more than `u16::MAX` items in a frame
/// (acks and recipients are capped far lower, pushes by the window).
fn count(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

fn put_ids<'a>(out: &mut Vec<u8>, ids: impl ExactSizeIterator<Item = &'a [u8; 16]>) {
    out.extend(count(ids.len()).to_be_bytes());
    for id in ids.take(usize::from(u16::MAX)) {
        out.extend(id);
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend(u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend(bytes);
}

/// Reads fields off a frame, failing on truncation.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn open(frame: &'a [u8]) -> Result<Self, FrameError> {
        let mut r = Self { rest: frame };
        match r.u8()? {
            VERSION => Ok(r),
            other => Err(FrameError::Version(other)),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.rest.len() < n {
            return Err(FrameError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn ids(&mut self) -> Result<impl Iterator<Item = [u8; 16]> + 'a, FrameError> {
        let n = usize::from(self.u16()?);
        let raw = self.take(n * 16)?;
        Ok(raw.chunks_exact(16).map(|c| {
            let mut id = [0; 16];
            id.copy_from_slice(c);
            id
        }))
    }

    fn bytes(&mut self) -> Result<&'a [u8], FrameError> {
        let n = u32::from_be_bytes(self.array()?);
        self.take(usize::try_from(n).map_err(|_| FrameError::Truncated)?)
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    fn finish(self) -> Result<(), FrameError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Trailing)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ErrorCode, ErrorDetail};

    fn round_trip_client(m: ClientMessage) {
        assert_eq!(ClientMessage::decode(&m.encode()), Ok(m));
    }

    fn round_trip_server(m: ServerMessage) {
        assert_eq!(ServerMessage::decode(&m.encode()), Ok(m));
    }

    #[test]
    fn every_frame_round_trips() {
        let send = Send {
            id: EnvelopeId::random(),
            recipients: vec![DeviceId::random(), DeviceId::random()],
            commit: None,
            payload: vec![7; 256],
        };
        // 256 payload bytes cost 25 of framing plus 16 per recipient.
        assert_eq!(
            ClientMessage::Send(send.clone()).encode().len(),
            256 + 25 + 16 * 2
        );
        round_trip_client(ClientMessage::Send(send.clone()));
        round_trip_client(ClientMessage::Send(Send {
            commit: Some(CommitPosition {
                group: [3; 32],
                epoch: u64::MAX,
            }),
            ..send
        }));
        round_trip_client(ClientMessage::Ack(vec![]));
        round_trip_client(ClientMessage::Ack(vec![EnvelopeId::random(); 3]));
        round_trip_server(ServerMessage::Envelopes(vec![
            Envelope {
                id: EnvelopeId::random(),
                kind: EnvelopeKind::Mls,
                received_at: Timestamp(1_700_000_000_123),
                payload: vec![1, 2, 3].into(),
            },
            Envelope {
                id: EnvelopeId::random(),
                kind: EnvelopeKind::ServerNotice,
                received_at: Timestamp(-5),
                payload: vec![].into(),
            },
        ]));
        round_trip_server(ServerMessage::Drained);
        round_trip_server(ServerMessage::Accepted {
            id: EnvelopeId::random(),
            duplicate: true,
            full: vec![],
        });
        round_trip_server(ServerMessage::Accepted {
            id: EnvelopeId::random(),
            duplicate: false,
            full: vec![DeviceId::random(), DeviceId::random()],
        });
        round_trip_server(ServerMessage::Refused {
            id: EnvelopeId::random(),
            status: 507,
            error: ErrorBody {
                error: ErrorDetail {
                    code: ErrorCode::MailboxFull,
                    message: "full".into(),
                    devices: vec![DeviceId::random()],
                    market: None,
                },
            },
        });
    }

    #[test]
    fn bad_frames_are_refused_not_misread() {
        let good = ClientMessage::Ack(vec![EnvelopeId::random()]).encode();
        assert_eq!(ClientMessage::decode(&[]), Err(FrameError::Truncated));
        assert_eq!(
            ClientMessage::decode(&[2, 0x02, 0, 0]),
            Err(FrameError::Version(2))
        );
        assert_eq!(
            ClientMessage::decode(&[VERSION, 0x81]),
            Err(FrameError::Type(0x81))
        );
        assert_eq!(
            ClientMessage::decode(&good[..good.len() - 1]),
            Err(FrameError::Truncated)
        );
        let mut long = good.clone();
        long.push(0);
        assert_eq!(ClientMessage::decode(&long), Err(FrameError::Trailing));
        // A length field larger than the frame is truncation, not a huge
        // allocation.
        let mut huge = vec![VERSION, SEND];
        huge.extend([0; 16]);
        huge.push(0);
        huge.extend([0, 0]);
        huge.extend(u32::MAX.to_be_bytes());
        assert_eq!(ClientMessage::decode(&huge), Err(FrameError::Truncated));
        let mut flags = vec![VERSION, SEND];
        flags.extend([0; 16]);
        flags.push(2);
        assert_eq!(
            ClientMessage::decode(&flags),
            Err(FrameError::Invalid("flags"))
        );
        let mut many = vec![VERSION, ENVELOPES];
        many.extend(u16::MAX.to_be_bytes());
        assert_eq!(ServerMessage::decode(&many), Err(FrameError::Truncated));
    }
}
