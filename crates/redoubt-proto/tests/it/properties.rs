//! Canonical encodings: decode(encode(v)) == v for every value, and
//! encode(decode(b)) == b for every byte string that decodes, so a value
//! has one spelling (what a signature or a deduplication key relies on).

use proptest::prelude::*;
use redoubt_proto::api::{Envelope, EnvelopeKind};
use redoubt_proto::ws::binary::{ClientMessage, CommitPosition, Send, ServerMessage};
use redoubt_proto::{AccountId, DeviceId, EnvelopeId, PhoneNumber, Timestamp};

fn id16() -> impl Strategy<Value = [u8; 16]> {
    any::<[u8; 16]>()
}

fn device() -> impl Strategy<Value = DeviceId> {
    id16().prop_map(DeviceId::from_bytes)
}

fn envelope_id() -> impl Strategy<Value = EnvelopeId> {
    id16().prop_map(EnvelopeId::from_bytes)
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    let send = (
        envelope_id(),
        prop::collection::vec(device(), 0..8),
        prop::option::of((any::<[u8; 32]>(), any::<u64>())),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(id, recipients, commit, payload)| {
            ClientMessage::Send(Send {
                id,
                recipients,
                commit: commit.map(|(group, epoch)| CommitPosition { group, epoch }),
                payload,
            })
        });
    let ack = prop::collection::vec(envelope_id(), 0..8).prop_map(ClientMessage::Ack);
    prop_oneof![send, ack]
}

fn server_message() -> impl Strategy<Value = ServerMessage> {
    let envelope = (
        envelope_id(),
        any::<bool>(),
        any::<i64>(),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(id, notice, at, payload)| Envelope {
            id,
            kind: if notice {
                EnvelopeKind::ServerNotice
            } else {
                EnvelopeKind::Mls
            },
            received_at: Timestamp(at),
            payload: payload.into(),
        });
    prop_oneof![
        prop::collection::vec(envelope, 0..4).prop_map(ServerMessage::Envelopes),
        Just(ServerMessage::Drained),
        (
            envelope_id(),
            any::<bool>(),
            prop::collection::vec(device(), 0..4)
        )
            .prop_map(|(id, duplicate, full)| ServerMessage::Accepted {
                id,
                duplicate,
                full
            }),
    ]
}

proptest! {
    #[test]
    fn client_frames_round_trip(message in client_message()) {
        let bytes = message.encode();
        prop_assert_eq!(ClientMessage::decode(&bytes), Ok(message));
    }

    #[test]
    fn server_frames_round_trip(message in server_message()) {
        let bytes = message.encode();
        prop_assert_eq!(ServerMessage::decode(&bytes), Ok(message));
    }

    /// Any bytes: no panic, and what decodes has the same bytes encoded.
    #[test]
    fn client_frames_have_one_spelling(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(message) = ClientMessage::decode(&bytes) {
            prop_assert_eq!(message.encode(), bytes);
        }
    }

    /// The same for the frames without a JSON part (a refusal's error body
    /// is JSON, whose spacing is free).
    #[test]
    fn server_frames_have_one_spelling(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(message) = ServerMessage::decode(&bytes) {
            if !matches!(message, ServerMessage::Refused { .. }) {
                prop_assert_eq!(message.encode(), bytes);
            }
        }
    }

    /// Mutations of a valid frame: no panic, and a decoded one re-encodes
    /// to the same bytes.
    #[test]
    fn mutated_frames_decode_or_fail_cleanly(
        message in client_message(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut bytes = message.encode();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        if let Ok(decoded) = ClientMessage::decode(&bytes) {
            prop_assert_eq!(decoded.encode(), bytes);
        }
    }

    /// An id has one spelling: whatever parses prints back the same.
    #[test]
    fn ids_have_one_spelling(bytes in id16(), upper in any::<u64>(), braces in any::<bool>()) {
        // Spellings a UUID parser may take: any letter case, braces.
        let plain = AccountId::from_bytes(bytes).to_string();
        let mut s: String = plain
            .chars()
            .enumerate()
            .map(|(i, c)| if upper >> (i % 64) & 1 == 1 { c.to_ascii_uppercase() } else { c })
            .collect();
        if braces {
            s = format!("{{{s}}}");
        }
        if let Ok(id) = s.parse::<AccountId>() {
            prop_assert_eq!(id.to_string(), s);
        }
    }

    #[test]
    fn ids_round_trip(bytes in id16()) {
        let id = DeviceId::from_bytes(bytes);
        prop_assert_eq!(id.to_string().parse::<DeviceId>(), Ok(id));
    }

    /// A number in E.164 form parses to itself; anything that parses is
    /// kept in that one form.
    #[test]
    fn phone_numbers_have_one_form(digits in "[0-9]{6,15}", plus in any::<bool>()) {
        let s = if plus { format!("+{digits}") } else { digits };
        if let Ok(number) = PhoneNumber::parse(&s) {
            let again = PhoneNumber::parse(number.e164()).expect("its own form parses");
            prop_assert_eq!(again.e164(), number.e164());
        }
    }
}
