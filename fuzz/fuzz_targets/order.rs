//! A court order document, as the legal desk takes it in: parse, shape
//! checks, trust-store lookup, signature and competence, against a trust
//! store that knows one authority (so that well-formed orders get deep).
#![no_main]

use libfuzzer_sys::fuzz_target;
use redoubt_legal::trust::TrustStore;
use redoubt_legal::verify::{verify_document, MarketPolicy};

fuzz_target!(|document: &[u8]| {
    let trust: TrustStore = serde_json::from_str(
        r#"{"authorities": [{
            "id": "fr-tj-paris", "name": "Tribunal judiciaire de Paris",
            "jurisdiction": "FR", "kind": "court",
            "keys": [{"key_id": "k1", "public_key": "11qYAYKxCrfVS/7TyWQHOg7hcvPaoiMlrwIaaPcHURo="}],
            "valid_from": "2020-01-01T00:00:00Z", "valid_until": "2040-01-01T00:00:00Z"
        }]}"#,
    )
    .expect("the fixed trust store parses");
    let markets = MarketPolicy::default();
    let now = time::macros::datetime!(2026-12-08 12:00 UTC);
    let _ = verify_document(document, &trust, &markets, now);
});
