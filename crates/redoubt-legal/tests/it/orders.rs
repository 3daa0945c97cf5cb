//! Court-order verification, one test per rejection reason, plus malformed
//! documents of every kind.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey};
use redoubt_legal::order::*;
use redoubt_legal::trust::*;
use redoubt_legal::verify::*;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

const NOW: OffsetDateTime = datetime!(2026-11-20 12:00 UTC);

struct Fixture {
    trust: TrustStore,
    court_key: SigningKey,
    prosecutor_key: SigningKey,
}

fn authority(id: &str, jurisdiction: &str, kind: AuthorityKind, key: &SigningKey) -> Authority {
    Authority {
        id: id.into(),
        name: format!("{id} (test)"),
        jurisdiction: jurisdiction.into(),
        kind,
        keys: vec![AuthorityKey {
            key_id: format!("{id}#1"),
            public_key: STANDARD.encode(key.verifying_key().as_bytes()),
        }],
        valid_from: datetime!(2026-01-01 0:00 UTC),
        valid_until: datetime!(2027-12-31 0:00 UTC),
        revoked_at: None,
    }
}

fn fixture() -> Fixture {
    let court_key = SigningKey::generate(&mut rand::rngs::OsRng);
    let prosecutor_key = SigningKey::generate(&mut rand::rngs::OsRng);
    let mut trust = TrustStore::default();
    trust
        .add(authority(
            "fr-tj-paris",
            "FR",
            AuthorityKind::Court,
            &court_key,
        ))
        .unwrap();
    trust
        .add(authority(
            "fr-pr-paris",
            "FR",
            AuthorityKind::Prosecutor,
            &prosecutor_key,
        ))
        .unwrap();
    trust
        .add(authority(
            "de-ag-berlin",
            "DE",
            AuthorityKind::Court,
            &court_key,
        ))
        .unwrap();
    Fixture {
        trust,
        court_key,
        prosecutor_key,
    }
}

fn order() -> CourtOrder {
    CourtOrder {
        order_id: "FR-2026-000123".into(),
        issuing_authority: "fr-tj-paris".into(),
        validating_authority: None,
        jurisdiction: "FR".into(),
        legal_instrument: "national".into(),
        legal_basis: "Code de procédure pénale, art. 60-1".into(),
        case_reference: "PARQUET-26-4411".into(),
        offence: "Extortion".into(),
        target: Target::Phone("+33612345678".into()),
        categories: vec![DataCategory::Subscriber, DataCategory::IpIdentification],
        window: TimeWindow {
            from: datetime!(2026-11-01 0:00 UTC),
            to: datetime!(2026-11-19 0:00 UTC),
        },
        issued_at: datetime!(2026-11-20 9:00 UTC),
        deadline: datetime!(2026-12-20 0:00 UTC),
        emergency: false,
        notify_user_after: Some(datetime!(2027-02-01 0:00 UTC)),
        reasons: "The suspect's number was used in the extortion messages.".into(),
    }
}

fn sign(order: CourtOrder, key: &SigningKey, key_id: &str) -> Vec<u8> {
    let signature = key.sign(&canonical_json(&order));
    let signed = SignedOrder {
        order,
        signature: OrderSignature {
            alg: "Ed25519".into(),
            key_id: key_id.into(),
            value: STANDARD.encode(signature.to_bytes()),
        },
        validation: None,
    };
    serde_json::to_vec_pretty(&signed).unwrap()
}

fn check(document: &[u8], f: &Fixture) -> Result<SignedOrder, Rejection> {
    verify_document(document, &f.trust, &MarketPolicy::default(), NOW)
}

#[test]
fn a_valid_order_verifies() {
    let f = fixture();
    let signed = check(&sign(order(), &f.court_key, "fr-tj-paris#1"), &f).unwrap();
    assert_eq!(signed.order.order_id, "FR-2026-000123");
}

#[test]
fn any_one_byte_change_breaks_the_signature() {
    let f = fixture();
    let document = sign(order(), &f.court_key, "fr-tj-paris#1");
    let text = String::from_utf8(document).unwrap();
    let tampered = text.replace("Extortion", "Extortiom");
    assert_eq!(
        check(tampered.as_bytes(), &f).unwrap_err(),
        Rejection::BadSignature
    );
    let widened = text.replace("2026-11-01T00:00:00Z", "2026-10-01T00:00:00Z");
    assert_eq!(
        check(widened.as_bytes(), &f).unwrap_err(),
        Rejection::BadSignature
    );
}

#[test]
fn each_rejection_reason_is_distinct() {
    let f = fixture();
    let other_key = SigningKey::generate(&mut rand::rngs::OsRng);
    let cases: Vec<(Vec<u8>, TrustStore, MarketPolicy, &str)> = vec![
        (
            sign(order(), &other_key, "fr-tj-paris#1"),
            f.trust.clone(),
            MarketPolicy::default(),
            "bad_signature",
        ),
        (
            sign(order(), &f.court_key, "fr-tj-paris#9"),
            f.trust.clone(),
            MarketPolicy::default(),
            "bad_signature",
        ),
        (
            sign(
                CourtOrder {
                    issuing_authority: "xx-unknown".into(),
                    ..order()
                },
                &f.court_key,
                "xx-unknown#1",
            ),
            f.trust.clone(),
            MarketPolicy::default(),
            "unknown_authority",
        ),
        (
            sign(order(), &f.court_key, "fr-tj-paris#1"),
            {
                let mut t = f.trust.clone();
                t.revoke("fr-tj-paris", datetime!(2026-11-01 0:00 UTC))
                    .unwrap();
                t
            },
            MarketPolicy::default(),
            "authority_revoked",
        ),
        (
            sign(order(), &f.court_key, "fr-tj-paris#1"),
            {
                let mut t = f.trust.clone();
                t.authorities[0].valid_until = datetime!(2026-06-30 0:00 UTC);
                t
            },
            MarketPolicy::default(),
            "authority_expired",
        ),
        (
            sign(
                CourtOrder {
                    issuing_authority: "de-ag-berlin".into(),
                    ..order()
                },
                &f.court_key,
                "de-ag-berlin#1",
            ),
            f.trust.clone(),
            MarketPolicy::default(),
            "not_competent",
        ),
        (
            sign(
                CourtOrder {
                    issuing_authority: "fr-pr-paris".into(),
                    ..order()
                },
                &f.prosecutor_key,
                "fr-pr-paris#1",
            ),
            f.trust.clone(),
            MarketPolicy::default(),
            "validation_required",
        ),
        (
            sign(
                CourtOrder {
                    issuing_authority: "fr-pr-paris".into(),
                    validating_authority: Some("fr-pr-paris".into()),
                    ..order()
                },
                &f.prosecutor_key,
                "fr-pr-paris#1",
            ),
            f.trust.clone(),
            MarketPolicy::default(),
            "validation_required",
        ),
        (
            sign(order(), &f.court_key, "fr-tj-paris#1"),
            f.trust.clone(),
            MarketPolicy {
                served: vec![],
                exited: vec!["FR".into()],
            },
            "jurisdiction_exited",
        ),
        (
            sign(order(), &f.court_key, "fr-tj-paris#1"),
            f.trust.clone(),
            MarketPolicy {
                served: vec!["DE".into()],
                exited: vec![],
            },
            "jurisdiction_not_served",
        ),
        (
            sign(
                CourtOrder {
                    deadline: datetime!(2026-11-20 10:00 UTC),
                    ..order()
                },
                &f.court_key,
                "fr-tj-paris#1",
            ),
            f.trust.clone(),
            MarketPolicy::default(),
            "expired",
        ),
        (
            sign(
                CourtOrder {
                    issued_at: NOW + Duration::hours(2),
                    deadline: NOW + Duration::days(30),
                    ..order()
                },
                &f.court_key,
                "fr-tj-paris#1",
            ),
            f.trust.clone(),
            MarketPolicy::default(),
            "issued_in_future",
        ),
    ];
    for (i, (document, trust, markets, code)) in cases.into_iter().enumerate() {
        let rejection = verify_document(&document, &trust, &markets, NOW).unwrap_err();
        assert_eq!(rejection.code(), code, "case {i}: {rejection}");
        assert!(!rejection.to_string().is_empty());
    }
    // A prosecutor's order that merely names a court is not validated: the
    // court must sign it too.
    let prosecutors = CourtOrder {
        issuing_authority: "fr-pr-paris".into(),
        validating_authority: Some("fr-tj-paris".into()),
        ..order()
    };
    let named_only = sign(prosecutors.clone(), &f.prosecutor_key, "fr-pr-paris#1");
    assert_eq!(
        check(&named_only, &f).unwrap_err().code(),
        "validation_required"
    );
    // Co-signed by the prosecutor instead of the court: still refused.
    let self_cosigned = cosign(&named_only, &f.prosecutor_key, "fr-tj-paris#1");
    assert_eq!(
        check(&self_cosigned, &f).unwrap_err().code(),
        "validation_required"
    );
    // Co-signed by the court of the same state: it passes.
    let validated = cosign(&named_only, &f.court_key, "fr-tj-paris#1");
    assert!(check(&validated, &f).is_ok());
}

/// Adds a validating authority's signature over the same canonical order.
fn cosign(document: &[u8], key: &SigningKey, key_id: &str) -> Vec<u8> {
    let mut signed: SignedOrder = serde_json::from_slice(document).unwrap();
    signed.validation = Some(OrderSignature {
        alg: "Ed25519".into(),
        key_id: key_id.into(),
        value: STANDARD.encode(key.sign(&canonical_json(&signed.order)).to_bytes()),
    });
    serde_json::to_vec_pretty(&signed).unwrap()
}

#[test]
fn malformed_documents_are_rejected_with_a_reason() {
    let f = fixture();
    let good = String::from_utf8(sign(order(), &f.court_key, "fr-tj-paris#1")).unwrap();
    let value: serde_json::Value = serde_json::from_str(&good).unwrap();
    let with = |path: &[&str], v: serde_json::Value| {
        let mut doc = value.clone();
        let mut cursor = &mut doc;
        for key in &path[..path.len() - 1] {
            cursor = cursor.get_mut(*key).unwrap();
        }
        cursor[path[path.len() - 1]] = v;
        serde_json::to_vec(&doc).unwrap()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good.as_bytes()[..good.len() / 2].to_vec()),
        ("empty", Vec::new()),
        ("not an object", b"[1,2,3]".to_vec()),
        (
            "wrong type",
            with(&["order", "emergency"], serde_json::json!("yes")),
        ),
        (
            "unknown category",
            with(
                &["order", "categories"],
                serde_json::json!(["subscriber", "everything"]),
            ),
        ),
        (
            "no category",
            with(&["order", "categories"], serde_json::json!([])),
        ),
        (
            "repeated category",
            with(
                &["order", "categories"],
                serde_json::json!(["content", "content"]),
            ),
        ),
        (
            "unknown field",
            with(&["order", "priority"], serde_json::json!("high")),
        ),
        (
            "huge field",
            with(&["order", "reasons"], serde_json::json!("x".repeat(20_000))),
        ),
        (
            "huge document",
            with(&["order", "reasons"], serde_json::json!("x".repeat(70_000))),
        ),
        (
            "cyrillic in id",
            with(
                &["order", "order_id"],
                serde_json::json!("FR-2026-0001\u{0410}"),
            ),
        ),
        (
            "bidi override",
            with(
                &["order", "offence"],
                serde_json::json!("fraud \u{202E}dnuof"),
            ),
        ),
        (
            "zero-width in authority",
            with(
                &["order", "issuing_authority"],
                serde_json::json!("fr-tj-\u{200B}paris"),
            ),
        ),
        (
            "bad country",
            with(&["order", "jurisdiction"], serde_json::json!("France")),
        ),
        (
            "bad phone",
            with(
                &["order", "target"],
                serde_json::json!({ "phone": "0612345678" }),
            ),
        ),
        (
            "bad account",
            with(
                &["order", "target"],
                serde_json::json!({ "account_id": "nobody" }),
            ),
        ),
        (
            "bad date",
            with(&["order", "issued_at"], serde_json::json!("yesterday")),
        ),
        (
            "inverted window",
            with(
                &["order", "window"],
                serde_json::json!({ "from": "2026-11-19T00:00:00Z", "to": "2026-11-01T00:00:00Z" }),
            ),
        ),
        (
            "other algorithm",
            with(&["signature", "alg"], serde_json::json!("RS256")),
        ),
    ];
    for (what, document) in cases {
        match check(&document, &f) {
            Err(Rejection::Malformed(reason)) => assert!(!reason.is_empty(), "{what}"),
            other => panic!("{what}: expected a malformed-order rejection, got {other:?}"),
        }
    }
}

#[test]
fn only_subscriber_and_ip_data_can_ever_be_produced() {
    assert!(producible(DataCategory::Subscriber).is_ok());
    assert!(producible(DataCategory::IpIdentification).is_ok());
    assert!(producible(DataCategory::Traffic)
        .unwrap_err()
        .starts_with("not held"));
    assert!(producible(DataCategory::Content)
        .unwrap_err()
        .contains("end-to-end encrypted"));
}

#[test]
fn the_trust_store_refuses_bad_entries_and_round_trips() {
    let f = fixture();
    let mut trust = f.trust.clone();
    let dup = trust.authorities[0].clone();
    assert_eq!(
        trust.add(dup),
        Err(TrustError::Duplicate("fr-tj-paris".into()))
    );
    let mut bad = authority("it-trib-roma", "Italy", AuthorityKind::Court, &f.court_key);
    assert!(matches!(
        trust.add(bad.clone()),
        Err(TrustError::Invalid(_))
    ));
    bad.jurisdiction = "IT".into();
    bad.keys[0].public_key = "not a key".into();
    assert!(matches!(trust.add(bad), Err(TrustError::Invalid(_))));
    assert!(matches!(
        trust.revoke("nobody", NOW),
        Err(TrustError::Unknown(_))
    ));
    let text = serde_json::to_string(&trust).unwrap();
    assert_eq!(serde_json::from_str::<TrustStore>(&text).unwrap(), trust);
}

#[test]
fn invisible_characters_and_loose_numbers_are_refused() {
    let f = fixture();
    for c in [
        '\u{061C}',
        '\u{2060}',
        '\u{FEFF}',
        '\u{00AD}',
        '\u{180E}',
        '\u{2062}',
        '\u{E0041}',
        '\u{202E}',
        '\u{200B}',
    ] {
        let mut o = order();
        o.offence = format!("Extor{c}tion");
        let document = sign(o, &f.court_key, "fr-tj-paris#1");
        assert!(
            matches!(check(&document, &f), Err(Rejection::Malformed(_))),
            "U+{:04X} must be refused",
            u32::from(c)
        );
    }
    for target in [
        "+33 6 12 34 56 78",
        "+33-612345678",
        "+33(0)612345678",
        "+33612345678\u{200B}",
    ] {
        let mut o = order();
        o.target = Target::Phone(target.into());
        let document = sign(o, &f.court_key, "fr-tj-paris#1");
        assert!(
            matches!(check(&document, &f), Err(Rejection::Malformed(_))),
            "{target:?} must be refused"
        );
    }
    // The strict form itself still passes.
    assert!(check(&sign(order(), &f.court_key, "fr-tj-paris#1"), &f).is_ok());
}

#[test]
fn a_window_that_ends_in_the_future_is_refused() {
    let f = fixture();
    let mut o = order();
    o.window.to = NOW + Duration::hours(1);
    let document = sign(o, &f.court_key, "fr-tj-paris#1");
    assert_eq!(check(&document, &f), Err(Rejection::WindowInFuture));
}

#[test]
fn small_order_keys_are_refused_by_the_trust_store() {
    let mut trust = TrustStore::default();
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let mut weak = authority("fr-weak", "FR", AuthorityKind::Court, &key);
    // The neutral point: every signature with R = identity and s = 0
    // "verifies" under it for any message.
    let mut neutral = [0u8; 32];
    neutral[0] = 1;
    weak.keys[0].public_key = STANDARD.encode(neutral);
    assert!(trust.add(weak).is_err());
    assert!(decode_key(&STANDARD.encode(neutral)).is_none());
}

/// Signs an order given as JSON, exactly as an authority's own software
/// would: over the canonical form of the value it sends.
fn sign_value(order: serde_json::Value, key: &SigningKey) -> Vec<u8> {
    let signature = key.sign(&canonical_json(&order));
    serde_json::to_vec(&serde_json::json!({
        "order": order,
        "signature": {
            "alg": "Ed25519",
            "key_id": "fr-tj-paris#1",
            "value": STANDARD.encode(signature.to_bytes()),
        },
    }))
    .unwrap()
}

#[test]
fn orders_are_judged_as_signed_not_as_re_encoded() {
    let f = fixture();
    let mut value = serde_json::to_value(order()).unwrap();
    let map = value.as_object_mut().unwrap();
    // Optional fields left out, and times written another valid way.
    map.remove("emergency");
    map.remove("validating_authority");
    map.remove("notify_user_after");
    map.insert("issued_at".into(), "2026-11-20T09:00:00.000+00:00".into());
    let document = sign_value(value.clone(), &f.court_key);
    let verified = check(&document, &f).expect("a validly signed order is accepted");
    assert!(!verified.order.emergency);
    assert_eq!(verified.order.issued_at, datetime!(2026-11-20 9:00 UTC));
    // And a change to what was signed is still caught.
    let tampered = String::from_utf8(document)
        .unwrap()
        .replace("Extortion", "Extorsion");
    assert_eq!(check(tampered.as_bytes(), &f), Err(Rejection::BadSignature));
}

#[test]
fn a_made_up_country_is_no_jurisdiction() {
    let f = fixture();
    for jurisdiction in ["XX", "fr", "ZZ"] {
        let document = sign(
            CourtOrder {
                jurisdiction: jurisdiction.into(),
                ..order()
            },
            &f.court_key,
            "fr-tj-paris#1",
        );
        assert!(
            matches!(check(&document, &f), Err(Rejection::Malformed(_))),
            "{jurisdiction}"
        );
    }
}
