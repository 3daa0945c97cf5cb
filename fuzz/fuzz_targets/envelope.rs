//! What a client does first with an envelope from the relay, whose bytes
//! the relay (or anyone who sends) chooses: read it as an MLS message and
//! take its body apart, or as a service notice and check it against the
//! pinned key, and read an application envelope's JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{MlsMessageBodyIn, MlsMessageIn};
use redoubt_client::client::verify_notice;
use redoubt_client::model::AppEnvelope;
use redoubt_proto::SignedNotice;

/// A service key a profile could have pinned.
const PINNED: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPaoiMlrwIaaPcHURo=";

fuzz_target!(|payload: &[u8]| {
    if let Ok(message) = MlsMessageIn::tls_deserialize_exact(payload) {
        match message.extract() {
            MlsMessageBodyIn::PrivateMessage(m) => {
                let _ = (m.group_id().as_slice().len(), m.epoch().as_u64());
            }
            MlsMessageBodyIn::PublicMessage(m) => {
                let _ = (m.group_id().as_slice().len(), m.epoch().as_u64());
            }
            _ => {}
        }
    }
    if let Ok(signed) = serde_json::from_slice::<SignedNotice>(payload) {
        let _ = verify_notice(&signed, Some(PINNED));
        let _ = verify_notice(&signed, None);
    }
    let _ = serde_json::from_slice::<AppEnvelope>(payload);
});
