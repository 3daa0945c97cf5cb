//! What a client or a relay reads off the wire: the binary WebSocket
//! frames (which must re-encode to the same bytes when they decode), the
//! JSON WebSocket frames and the JSON request bodies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redoubt_proto::api::{AckRequest, SendRequest, SendResponse, VerifyCodeRequest};
use redoubt_proto::ws::binary::{ClientMessage, ServerMessage};
use redoubt_proto::ws::{ClientFrame, ServerFrame};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(message) = ClientMessage::decode(bytes) {
        assert_eq!(message.encode(), bytes, "one spelling per client frame");
    }
    if let Ok(message) = ServerMessage::decode(bytes) {
        // A refusal carries JSON, whose spacing is free.
        if !matches!(message, ServerMessage::Refused { .. }) {
            assert_eq!(message.encode(), bytes, "one spelling per server frame");
        }
    }
    let _ = serde_json::from_slice::<ClientFrame>(bytes);
    let _ = serde_json::from_slice::<ServerFrame>(bytes);
    let _ = serde_json::from_slice::<SendRequest>(bytes);
    let _ = serde_json::from_slice::<SendResponse>(bytes);
    let _ = serde_json::from_slice::<AckRequest>(bytes);
    let _ = serde_json::from_slice::<VerifyCodeRequest>(bytes);
});
