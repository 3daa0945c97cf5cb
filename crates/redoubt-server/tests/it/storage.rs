//! The storage suite. Every backend runs these same bodies (see the
//! `storage_suite!` invocations at the bottom), so backends cannot drift.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use redoubt_proto::api::EnvelopeKind;
use redoubt_proto::{AccountId, DeviceId, EnvelopeId, KeyPackageRef, PhoneNumber, Timestamp};
use redoubt_server::storage::*;

const T0: Timestamp = Timestamp(1_800_000_000_000);

fn digest(seed: &str) -> Digest {
    use sha2::Digest as _;
    sha2::Sha256::digest(seed.as_bytes()).into()
}

/// The phone keyer of these tests.
fn keyer() -> PhoneKeyer {
    PhoneKeyer::new([7; 32])
}

fn phone() -> PhoneNumber {
    PhoneNumber::parse(&test_support::fresh_phone()).unwrap()
}

/// Registers a device through the code flow and returns its auth.
async fn device(store: &dyn Store, phone: &PhoneNumber) -> DeviceAuth {
    let key = keyer().key(phone);
    let session = digest(&DeviceId::random().to_string());
    let issued = store
        .issue_code(CodeIssue {
            session_hash: session,
            phone_key: key,
            code_hash: digest("code"),
            now: T0,
            expires_at: T0.plus(Duration::from_secs(600)),
            limits: Vec::new(),
        })
        .await
        .unwrap();
    assert_eq!(issued, IssueOutcome::Issued);
    let id = DeviceId::random();
    let token = digest(&id.to_string());
    let outcome = store
        .verify_code(Verification {
            session_hash: session,
            phone: phone.clone(),
            phone_key: key,
            code_hash: digest("code"),
            now: T0,
            max_attempts: 3,
            new_account_id: AccountId::random(),
            device: NewDevice {
                id,
                name: "d".into(),
                signature_key: vec![1; 32],
                token_hash: token,
            },
        })
        .await
        .unwrap();
    let VerifyOutcome::Registered { .. } = outcome else {
        panic!("registered: {outcome:?}")
    };
    match store.token_status(&token).await.unwrap() {
        TokenStatus::Active(auth) => auth,
        other => panic!("active token expected, got {other:?}"),
    }
}

fn envelope(recipients: Vec<DeviceId>, payload: &[u8], max_queued: u64) -> NewEnvelope {
    NewEnvelope {
        id: EnvelopeId::random(),
        kind: EnvelopeKind::Mls,
        payload: payload.to_vec(),
        recipients,
        now: T0,
        expires_at: T0.plus(Duration::from_secs(3600)),
        max_queued,
        commit: None,
    }
}

fn kp(last_resort: bool) -> NewKeyPackage {
    NewKeyPackage {
        id: KeyPackageRef::new(EnvelopeId::random().as_bytes().to_vec()).unwrap(),
        data: vec![7; 100],
        last_resort,
    }
}

pub async fn codes_are_single_use_and_limited(store: Arc<dyn Store>) {
    let phone = phone();
    let key = digest(phone.e164());
    let limit = |key: Digest, max: u32| RateKey {
        key,
        max,
        window: Duration::from_secs(900),
        cost: 1,
    };
    // Each request its own session; codes verify only with theirs.
    let issue = |session: &str, now: Timestamp| CodeIssue {
        session_hash: digest(session),
        phone_key: key,
        code_hash: digest("right"),
        now,
        expires_at: now.plus(Duration::from_secs(600)),
        limits: vec![limit(digest("per number"), 2), limit(digest("per ip"), 100)],
    };
    assert_eq!(
        store.issue_code(issue("s1", T0)).await.unwrap(),
        IssueOutcome::Issued
    );
    assert_eq!(
        store.issue_code(issue("s2", T0)).await.unwrap(),
        IssueOutcome::Issued
    );
    let IssueOutcome::RateLimited { retry_after } =
        store.issue_code(issue("s3", T0)).await.unwrap()
    else {
        panic!("third request in the window must be limited");
    };
    assert_eq!(retry_after, Duration::from_secs(900));
    let verify_in = |session: &str, code: &str, now: Timestamp| Verification {
        session_hash: digest(session),
        phone: phone.clone(),
        phone_key: key,
        code_hash: digest(code),
        now,
        max_attempts: 2,
        new_account_id: AccountId::random(),
        device: NewDevice {
            id: DeviceId::random(),
            name: "x".into(),
            signature_key: vec![2; 32],
            token_hash: digest(&format!("{session}{code}{}", now.millis())),
        },
    };
    // The right code under a session that did not ask for it (or for
    // another number's code) finds nothing, and spends no attempt.
    for stranger in ["s3", "nobody"] {
        assert_eq!(
            store
                .verify_code(verify_in(stranger, "right", T0))
                .await
                .unwrap(),
            VerifyOutcome::NoCodePending
        );
    }
    let verify = |code: &str, now: Timestamp| verify_in("s2", code, now);
    assert_eq!(
        store.verify_code(verify("wrong", T0)).await.unwrap(),
        VerifyOutcome::Incorrect
    );
    let VerifyOutcome::Registered { new_account, .. } =
        store.verify_code(verify("right", T0)).await.unwrap()
    else {
        panic!("right code registers");
    };
    assert!(new_account);
    // Single use: the same code again finds nothing pending, and the
    // number's other sessions went with it.
    assert_eq!(
        store.verify_code(verify("right", T0)).await.unwrap(),
        VerifyOutcome::NoCodePending
    );
    assert_eq!(
        store
            .verify_code(verify_in("s1", "right", T0))
            .await
            .unwrap(),
        VerifyOutcome::NoCodePending
    );
    // After the window, a new code can be issued; it expires on time.
    let later = T0.plus(Duration::from_secs(901));
    assert_eq!(
        store.issue_code(issue("s2", later)).await.unwrap(),
        IssueOutcome::Issued
    );
    let expired = later.plus(Duration::from_secs(601));
    assert_eq!(
        store.verify_code(verify("right", expired)).await.unwrap(),
        VerifyOutcome::Expired
    );
    // Attempts run out.
    let even_later = later.plus(Duration::from_secs(2000));
    assert_eq!(
        store.issue_code(issue("s4", even_later)).await.unwrap(),
        IssueOutcome::Issued
    );
    let verify = |code: &str, now: Timestamp| verify_in("s4", code, now);
    assert_eq!(
        store.verify_code(verify("a", even_later)).await.unwrap(),
        VerifyOutcome::Incorrect
    );
    assert_eq!(
        store.verify_code(verify("b", even_later)).await.unwrap(),
        VerifyOutcome::Incorrect
    );
    assert_eq!(
        store
            .verify_code(verify("right", even_later))
            .await
            .unwrap(),
        VerifyOutcome::AttemptsExceeded
    );
}

pub async fn second_device_joins_the_account(store: Arc<dyn Store>) {
    let phone = phone();
    let first = device(&*store, &phone).await;
    let second = device(&*store, &phone).await;
    assert_eq!(first.account_id, second.account_id);
    assert_ne!(first.device_id, second.device_id);
    assert_eq!(
        store.account_by_phone(&phone).await.unwrap(),
        Some(first.account_id)
    );
    let devices = store.devices(first.account_id).await.unwrap();
    let mut listed: Vec<DeviceId> = devices.iter().map(|d| d.device_id).collect();
    let mut expected = vec![first.device_id, second.device_id];
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected);
}

pub async fn revocation_clears_a_device(store: Arc<dyn Store>) {
    let phone = phone();
    let a = device(&*store, &phone).await;
    let b = device(&*store, &phone).await;
    store
        .add_key_packages(b.device_id, vec![kp(false)], T0, 10)
        .await
        .unwrap();
    assert_eq!(
        store
            .enqueue(envelope(vec![a.device_id, b.device_id], b"x", 10))
            .await
            .unwrap(),
        EnqueueOutcome::Queued
    );
    let other = device(&*store, &self::phone()).await;
    assert!(
        !store
            .revoke_device(other.account_id, b.device_id, T0)
            .await
            .unwrap(),
        "not the owner"
    );
    assert!(store
        .revoke_device(a.account_id, b.device_id, T0)
        .await
        .unwrap());
    assert!(
        !store
            .revoke_device(a.account_id, b.device_id, T0)
            .await
            .unwrap(),
        "already revoked"
    );
    assert_eq!(
        store
            .token_status(&digest(&b.device_id.to_string()))
            .await
            .unwrap(),
        TokenStatus::Revoked
    );
    assert_eq!(store.pending(b.device_id, T0, 10).await.unwrap(), vec![]);
    assert_eq!(
        store
            .key_package_count(b.device_id)
            .await
            .unwrap()
            .remaining,
        0
    );
    // The other recipient keeps its copy.
    assert_eq!(store.pending(a.device_id, T0, 10).await.unwrap().len(), 1);
    assert_eq!(
        store
            .enqueue(envelope(vec![b.device_id], b"y", 10))
            .await
            .unwrap(),
        EnqueueOutcome::UnknownRecipients(vec![b.device_id])
    );
}

pub async fn key_packages_are_claimed_once(store: Arc<dyn Store>) {
    let owner = device(&*store, &phone()).await;
    let count = store
        .add_key_packages(
            owner.device_id,
            vec![kp(false), kp(false), kp(true)],
            T0,
            10,
        )
        .await
        .unwrap();
    assert_eq!(
        count,
        AddKeyPackagesOutcome::Stored(KeyPackageCount {
            remaining: 2,
            last_resort: true
        })
    );
    let mut seen = std::collections::HashSet::new();
    for _ in 0..2 {
        let ClaimOutcome::Claimed(c) = store.claim_key_packages(&[owner.device_id]).await.unwrap()
        else {
            panic!("claim");
        };
        assert!(!c[0].last_resort);
        assert!(
            seen.insert(c[0].id.clone()),
            "a one-time package was handed out twice"
        );
    }
    // Then the last-resort package, again and again, never deleted.
    for _ in 0..2 {
        let ClaimOutcome::Claimed(c) = store.claim_key_packages(&[owner.device_id]).await.unwrap()
        else {
            panic!("claim");
        };
        assert!(c[0].last_resort);
    }
    assert_eq!(
        store.key_package_count(owner.device_id).await.unwrap(),
        KeyPackageCount {
            remaining: 0,
            last_resort: true
        }
    );
    // All or nothing: one exhausted device means nothing is claimed.
    let empty = device(&*store, &phone()).await;
    store
        .add_key_packages(owner.device_id, vec![kp(false)], T0, 10)
        .await
        .unwrap();
    assert_eq!(
        store
            .claim_key_packages(&[owner.device_id, empty.device_id])
            .await
            .unwrap(),
        ClaimOutcome::Exhausted(vec![empty.device_id])
    );
    assert_eq!(
        store
            .key_package_count(owner.device_id)
            .await
            .unwrap()
            .remaining,
        1
    );
    let ghost = DeviceId::random();
    assert_eq!(
        store.claim_key_packages(&[ghost]).await.unwrap(),
        ClaimOutcome::UnknownDevices(vec![ghost])
    );
    // The per-device limit refuses the whole batch.
    let batch = (0..10).map(|_| kp(false)).collect();
    assert_eq!(
        store
            .add_key_packages(owner.device_id, batch, T0, 10)
            .await
            .unwrap(),
        AddKeyPackagesOutcome::LimitExceeded
    );
    assert_eq!(
        store
            .key_package_count(owner.device_id)
            .await
            .unwrap()
            .remaining,
        1
    );
}

pub async fn concurrent_claims_never_share_a_package(store: Arc<dyn Store>) {
    let owner = device(&*store, &phone()).await;
    let batch = (0..25).map(|_| kp(false)).collect();
    store
        .add_key_packages(owner.device_id, batch, T0, 100)
        .await
        .unwrap();
    let claims = (0..60).map(|_| {
        let store = store.clone();
        let device = owner.device_id;
        tokio::spawn(async move { store.claim_key_packages(&[device]).await.unwrap() })
    });
    let results = futures::future::join_all(claims).await;
    let mut ids = std::collections::HashSet::new();
    let mut exhausted = 0;
    for r in results {
        match r.unwrap() {
            ClaimOutcome::Claimed(c) => assert!(ids.insert(c[0].id.clone()), "handed out twice"),
            ClaimOutcome::Exhausted(_) => exhausted += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(ids.len(), 25);
    assert_eq!(exhausted, 35);
}

pub async fn envelopes_queue_in_order_and_leave_on_ack(store: Arc<dyn Store>) {
    let a = device(&*store, &phone()).await;
    let b = device(&*store, &phone()).await;
    let mut ids = Vec::new();
    for i in 0..5u8 {
        let e = envelope(vec![a.device_id, b.device_id], &[i; 10], 100);
        ids.push(e.id);
        assert_eq!(store.enqueue(e).await.unwrap(), EnqueueOutcome::Queued);
    }
    let pending = store.pending(a.device_id, T0, 100).await.unwrap();
    assert_eq!(pending.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    assert_eq!(pending[3].payload, vec![3; 10]);
    assert_eq!(store.pending(a.device_id, T0, 2).await.unwrap().len(), 2);
    assert_eq!(store.ack(a.device_id, &ids[..2]).await.unwrap(), 2);
    assert_eq!(
        store.ack(a.device_id, &ids[..2]).await.unwrap(),
        0,
        "acking twice removes nothing"
    );
    assert_eq!(store.pending(a.device_id, T0, 100).await.unwrap().len(), 3);
    // b's copies are untouched by a's acks.
    assert_eq!(store.pending(b.device_id, T0, 100).await.unwrap().len(), 5);
}

pub async fn retries_are_recognised(store: Arc<dyn Store>) {
    let a = device(&*store, &phone()).await;
    let e = envelope(vec![a.device_id], b"once", 100);
    assert_eq!(
        store.enqueue(e.clone()).await.unwrap(),
        EnqueueOutcome::Queued
    );
    assert_eq!(
        store.enqueue(e.clone()).await.unwrap(),
        EnqueueOutcome::Duplicate
    );
    let mut other = e.clone();
    other.payload = b"twice".to_vec();
    assert_eq!(
        store.enqueue(other).await.unwrap(),
        EnqueueOutcome::Conflict
    );
    // Even after delivery and deletion, a retry is not delivered again.
    assert_eq!(store.ack(a.device_id, &[e.id]).await.unwrap(), 1);
    assert_eq!(store.enqueue(e).await.unwrap(), EnqueueOutcome::Duplicate);
    assert!(store.pending(a.device_id, T0, 10).await.unwrap().is_empty());
}

pub async fn rate_limits_count_all_or_nothing_and_forget_old_events(store: Arc<dyn Store>) {
    let a = keyer().bucket("test-a", EnvelopeId::random().as_bytes());
    let b = keyer().bucket("test-b", EnvelopeId::random().as_bytes());
    let minute = Duration::from_secs(60);
    let both = |cost_b| {
        [
            RateKey {
                key: a,
                max: 3,
                window: minute,
                cost: 1,
            },
            RateKey {
                key: b,
                max: 6,
                window: minute,
                cost: cost_b,
            },
        ]
    };
    for _ in 0..3 {
        assert_eq!(store.rate_limit(&both(1), T0).await.unwrap(), None);
    }
    let wait = store.rate_limit(&both(1), T0).await.unwrap();
    assert!(
        wait.is_some_and(|w| w > Duration::ZERO && w <= minute),
        "{wait:?}"
    );
    // The refused request counted against neither: b has room for 3 more.
    let only_b = [RateKey {
        key: b,
        max: 6,
        window: minute,
        cost: 3,
    }];
    assert_eq!(store.rate_limit(&only_b, T0).await.unwrap(), None);
    assert!(store.rate_limit(&only_b, T0).await.unwrap().is_some());
    // A window later, a is free again.
    let later = T0.plus(minute + Duration::from_secs(1));
    assert_eq!(store.rate_limit(&both(1), later).await.unwrap(), None);
}

pub async fn full_mailboxes_are_left_out_of_a_send(store: Arc<dyn Store>) {
    let a = device(&*store, &phone()).await;
    let b = device(&*store, &phone()).await;
    for _ in 0..2 {
        assert_eq!(
            store
                .enqueue(envelope(vec![a.device_id], b"x", 2))
                .await
                .unwrap(),
            EnqueueOutcome::Queued
        );
    }
    assert_eq!(
        store
            .enqueue(envelope(vec![b.device_id, a.device_id], b"y", 2))
            .await
            .unwrap(),
        EnqueueOutcome::Partial(vec![a.device_id]),
        "queued for b, not for a whose queue is full"
    );
    assert_eq!(store.pending(b.device_id, T0, 10).await.unwrap().len(), 1);
    assert_eq!(store.pending(a.device_id, T0, 10).await.unwrap().len(), 2);
    assert_eq!(
        store
            .enqueue(envelope(vec![a.device_id], b"y2", 2))
            .await
            .unwrap(),
        EnqueueOutcome::MailboxFull(vec![a.device_id]),
        "nothing at all when every queue is full"
    );
    store
        .ack(
            b.device_id,
            &[store.pending(b.device_id, T0, 10).await.unwrap()[0].id],
        )
        .await
        .unwrap();
    let ghost = DeviceId::random();
    assert_eq!(
        store
            .enqueue(envelope(vec![b.device_id, ghost], b"z", 2))
            .await
            .unwrap(),
        EnqueueOutcome::UnknownRecipients(vec![ghost])
    );
    assert!(store.pending(b.device_id, T0, 10).await.unwrap().is_empty());

    // The cap follows the queue as it shrinks: by ack, and by expiry.
    let queued = store.pending(a.device_id, T0, 10).await.unwrap();
    assert_eq!(store.ack(a.device_id, &[queued[0].id]).await.unwrap(), 1);
    let short_lived = NewEnvelope {
        expires_at: T0.plus(Duration::from_secs(1)),
        ..envelope(vec![a.device_id], b"soon gone", 2)
    };
    assert_eq!(
        store.enqueue(short_lived).await.unwrap(),
        EnqueueOutcome::Queued
    );
    assert_eq!(
        store
            .enqueue(envelope(vec![a.device_id], b"w", 2))
            .await
            .unwrap(),
        EnqueueOutcome::MailboxFull(vec![a.device_id])
    );
    let later = T0.plus(Duration::from_secs(2));
    store
        .purge(PurgeCutoffs {
            now: later,
            ip_log_before: T0,
            receipts_before: T0,
            commit_positions_before: T0,
        })
        .await
        .unwrap();
    assert_eq!(
        store
            .enqueue(envelope(vec![a.device_id], b"w", 2))
            .await
            .unwrap(),
        EnqueueOutcome::Queued
    );
}

pub async fn purge_removes_only_what_expired(store: Arc<dyn Store>) {
    let a = device(&*store, &phone()).await;
    let old = envelope(vec![a.device_id], b"old", 100);
    let mut fresh = envelope(vec![a.device_id], b"fresh", 100);
    fresh.expires_at = T0.plus(Duration::from_secs(86_400 * 60));
    store.enqueue(old.clone()).await.unwrap();
    store.enqueue(fresh.clone()).await.unwrap();
    let ip: IpAddr = "127.0.0.5".parse().unwrap();
    let seen = |port, at| IpObservation {
        account_id: a.account_id,
        ip,
        port,
        at,
    };
    store.record_ip(seen(1000, T0)).await.unwrap();
    store
        .record_ip(seen(1000, T0.plus(Duration::from_secs(10))))
        .await
        .unwrap();
    store
        .record_ip(seen(2000, T0.plus(Duration::from_secs(86_400 * 20))))
        .await
        .unwrap();
    let log = store.ip_log(a.account_id).await.unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].first_seen, T0);
    assert_eq!(log[0].last_seen, T0.plus(Duration::from_secs(10)));

    let now = T0.plus(Duration::from_secs(86_400 * 31));
    // Expired envelopes are invisible even before the purge runs.
    assert_eq!(
        store
            .pending(a.device_id, now, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect::<Vec<_>>(),
        vec![fresh.id]
    );
    let counts = store
        .purge(PurgeCutoffs {
            now,
            ip_log_before: now.minus(Duration::from_secs(86_400 * 30)),
            receipts_before: now.minus(Duration::from_secs(86_400 * 7)),
            commit_positions_before: now.minus(Duration::from_secs(86_400 * 7)),
        })
        .await
        .unwrap();
    assert!(counts.envelopes >= 1 && counts.ip_log >= 1, "{counts:?}");
    let log = store.ip_log(a.account_id).await.unwrap();
    assert_eq!(log.iter().map(|e| e.port).collect::<Vec<_>>(), vec![2000]);
    assert_eq!(store.pending(a.device_id, now, 10).await.unwrap().len(), 1);
}

/// Enqueues every envelope at once, each on its own task; their outcomes
/// in the same order.
async fn enqueue_all(store: &Arc<dyn Store>, envelopes: &[NewEnvelope]) -> Vec<EnqueueOutcome> {
    let tasks = envelopes.iter().cloned().map(|e| {
        let store = store.clone();
        tokio::spawn(async move { store.enqueue(e).await.unwrap() })
    });
    futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

/// Sends and acks that arrive together share the writer's batches: every
/// rule still holds per job. A retry in the same batch is a duplicate, an
/// id reused for other bytes is refused, an unknown recipient refuses only
/// its own send, the cap counts the batch's own envelopes, and what was
/// accepted is exactly what the mailboxes hold.
pub async fn sends_and_acks_arriving_together_keep_every_rule(store: Arc<dyn Store>) {
    let b = device(&*store, &phone()).await;
    let c = device(&*store, &phone()).await;
    let old: Vec<NewEnvelope> = (0..2u8)
        .map(|i| envelope(vec![b.device_id], &[i], 5))
        .collect();
    for e in &old {
        assert_eq!(
            store.enqueue(e.clone()).await.unwrap(),
            EnqueueOutcome::Queued
        );
    }
    let mut sends: Vec<NewEnvelope> = (0..10u8)
        .map(|i| envelope(vec![b.device_id, c.device_id], &[100 + i], 5))
        .collect();
    let retried = sends[0].clone();
    let reused = NewEnvelope {
        payload: b"other bytes".to_vec(),
        ..sends[1].clone()
    };
    let unknown = DeviceId::random();
    sends.extend([
        retried,
        reused,
        envelope(vec![c.device_id, unknown], b"to nobody", 5),
    ]);
    let ack = {
        let store = store.clone();
        let ids: Vec<EnvelopeId> = old.iter().map(|e| e.id).collect();
        tokio::spawn(async move { store.ack(b.device_id, &ids).await.unwrap() })
    };
    let outcomes = enqueue_all(&store, &sends).await;
    assert_eq!(ack.await.unwrap(), 2, "the ack removed both old envelopes");
    assert_eq!(
        outcomes[12],
        EnqueueOutcome::UnknownRecipients(vec![unknown])
    );
    // What each device was given: the sends accepted whole, and those
    // accepted in part that do not name it as full.
    let given = |d: DeviceId| -> Vec<EnvelopeId> {
        (0..12)
            .filter(|&i| match &outcomes[i] {
                EnqueueOutcome::Queued => true,
                EnqueueOutcome::Partial(full) => !full.contains(&d),
                _ => false,
            })
            .map(|i| sends[i].id)
            .collect()
    };
    for device in [b.device_id, c.device_id] {
        let queued = given(device);
        let distinct: std::collections::HashSet<EnvelopeId> = queued.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            queued.len(),
            "one id is queued once: {outcomes:?}"
        );
        assert!(queued.len() <= 5, "the cap holds: {outcomes:?}");
        let held: std::collections::HashSet<EnvelopeId> = store
            .pending(device, T0, 100)
            .await
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(
            held, distinct,
            "the mailboxes hold exactly what was accepted for them"
        );
    }
    // Two old envelopes, a cap of five: three to five new ones fit in b's
    // queue, depending on whether the ack ran before them; c (empty) took
    // five, the rest left it out.
    assert!((3..=5).contains(&given(b.device_id).len()), "{outcomes:?}");
    assert_eq!(given(c.device_id).len(), 5, "{outcomes:?}");
    for (i, outcome) in outcomes.iter().enumerate().take(12) {
        assert!(
            matches!(
                outcome,
                EnqueueOutcome::Queued
                    | EnqueueOutcome::MailboxFull(_)
                    | EnqueueOutcome::Partial(_)
                    | EnqueueOutcome::Duplicate
                    | EnqueueOutcome::Conflict
            ),
            "send {i}: {outcome:?}"
        );
    }
    if outcomes[10] == EnqueueOutcome::Duplicate || outcomes[11] == EnqueueOutcome::Conflict {
        // Recognised only against an envelope that was stored.
        let stored = given(c.device_id);
        assert!(stored.contains(&sends[10].id) || stored.contains(&sends[11].id));
    }
}

pub async fn one_commit_is_accepted_per_group_and_epoch(store: Arc<dyn Store>) {
    let a = device(&*store, &phone()).await;
    let b = device(&*store, &phone()).await;
    let commit = |group: u8, epoch: u64, payload: &[u8]| NewEnvelope {
        commit: Some(CommitPosition {
            group: [group; 32],
            epoch,
        }),
        ..envelope(vec![a.device_id, b.device_id], payload, 1000)
    };
    let racing: Vec<NewEnvelope> = (0..8u8).map(|i| commit(1, 4, &[i])).collect();
    let outcomes = enqueue_all(&store, &racing).await;
    let accepted: Vec<usize> = (0..outcomes.len())
        .filter(|i| outcomes[*i] == EnqueueOutcome::Queued)
        .collect();
    assert_eq!(accepted.len(), 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, EnqueueOutcome::Queued | EnqueueOutcome::StaleCommit)),
        "{outcomes:?}"
    );
    let winner = &racing[accepted[0]];
    let queued = store.pending(a.device_id, T0, 100).await.unwrap();
    assert_eq!(
        queued.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![winner.id],
        "refused commits queue nothing"
    );
    // The winner's retry (its answer was lost) is a duplicate, not stale.
    assert_eq!(
        store.enqueue(winner.clone()).await.unwrap(),
        EnqueueOutcome::Duplicate
    );
    // An older epoch is stale; the next one, another group, and a plain
    // message are accepted.
    assert_eq!(
        store.enqueue(commit(1, 3, b"old")).await.unwrap(),
        EnqueueOutcome::StaleCommit
    );
    assert_eq!(
        store.enqueue(commit(1, 5, b"next")).await.unwrap(),
        EnqueueOutcome::Queued
    );
    assert_eq!(
        store.enqueue(commit(2, 4, b"other group")).await.unwrap(),
        EnqueueOutcome::Queued
    );
    assert_eq!(
        store
            .enqueue(envelope(vec![a.device_id], b"text", 1000))
            .await
            .unwrap(),
        EnqueueOutcome::Queued
    );
    // A group quiet for longer than the cutoff forgets its position.
    let counts = store
        .purge(PurgeCutoffs {
            now: T0,
            ip_log_before: T0,
            receipts_before: T0,
            commit_positions_before: T0.plus(Duration::from_secs(1)),
        })
        .await
        .unwrap();
    assert_eq!(counts.receipts, 2, "the two groups' positions: {counts:?}");
    assert_eq!(
        store.enqueue(commit(1, 3, b"after purge")).await.unwrap(),
        EnqueueOutcome::Queued
    );
}

pub async fn concurrent_sends_and_acks_each_get_their_own_answer(store: Arc<dyn Store>) {
    let a = device(&*store, &phone()).await;
    let b = device(&*store, &phone()).await;
    // Many sends at once (the SQLite writer commits them in shared
    // transactions), a retry of one of them, and a conflicting reuse of
    // another's id.
    let envelopes: Vec<NewEnvelope> = (0..40u8)
        .map(|i| envelope(vec![a.device_id, b.device_id], &[i], 1000))
        .collect();
    let retry = envelopes[3].clone();
    let conflict = NewEnvelope {
        payload: b"different".to_vec(),
        ..envelopes[5].clone()
    };
    let outcomes = enqueue_all(&store, &envelopes).await;
    assert!(
        outcomes.iter().all(|o| *o == EnqueueOutcome::Queued),
        "{outcomes:?}"
    );
    let (r, c) = tokio::join!(store.enqueue(retry), store.enqueue(conflict));
    assert_eq!(r.unwrap(), EnqueueOutcome::Duplicate);
    assert_eq!(c.unwrap(), EnqueueOutcome::Conflict);
    // Concurrent acks by both devices, each answered with its own count.
    let ids: Vec<EnvelopeId> = envelopes.iter().map(|e| e.id).collect();
    let mut acks = Vec::new();
    for d in [a.device_id, b.device_id] {
        for chunk in ids.chunks(7) {
            let (store, chunk) = (store.clone(), chunk.to_vec());
            acks.push(tokio::spawn(
                async move { store.ack(d, &chunk).await.unwrap() },
            ));
        }
    }
    let removed: u64 = futures::future::join_all(acks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .sum();
    assert_eq!(removed, 80);
    assert!(store
        .pending(a.device_id, T0, 100)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .pending(b.device_id, T0, 100)
        .await
        .unwrap()
        .is_empty());
}

fn german_phone() -> PhoneNumber {
    PhoneNumber::parse(&test_support::fresh_phone_with_prefix("+49151", 8)).unwrap()
}

pub async fn accounts_are_found_by_region_and_told_once(store: Arc<dyn Store>) {
    let fr = device(&*store, &phone()).await;
    let de = device(&*store, &german_phone()).await;
    assert_eq!(fr.region.as_deref(), Some("FR"));
    assert_eq!(de.region.as_deref(), Some("DE"));
    let in_de = store.accounts_in_region("DE").await.unwrap();
    assert!(in_de.contains(&de.account_id) && !in_de.contains(&fr.account_id));
    store
        .record_ip(IpObservation {
            account_id: fr.account_id,
            ip: "127.0.0.3".parse().unwrap(),
            port: 1,
            at: T0,
        })
        .await
        .unwrap();
    assert!(store
        .recent_addresses()
        .await
        .unwrap()
        .contains(&(fr.account_id, "127.0.0.3".parse().unwrap())));

    assert!(store
        .market_notified("DE@1", "announced")
        .await
        .unwrap()
        .is_empty());
    for _ in 0..2 {
        store
            .mark_market_notified("DE@1", "announced", de.account_id, T0)
            .await
            .unwrap();
    }
    assert_eq!(
        store.market_notified("DE@1", "announced").await.unwrap(),
        vec![de.account_id]
    );
    assert!(store
        .market_notified("DE@1", "reminder")
        .await
        .unwrap()
        .is_empty());
    // An account that no longer exists is not recorded.
    store
        .mark_market_notified("DE@1", "reminder", AccountId::random(), T0)
        .await
        .unwrap();
    assert!(store
        .market_notified("DE@1", "reminder")
        .await
        .unwrap()
        .is_empty());
}

pub async fn purging_a_region_leaves_other_markets_alone(store: Arc<dyn Store>) {
    let fr = device(&*store, &phone()).await;
    let de = device(&*store, &german_phone()).await;
    let de_phone_devices = store.devices(de.account_id).await.unwrap();
    assert_eq!(de_phone_devices.len(), 1);
    for (who, port) in [(&fr, 1), (&de, 2)] {
        store
            .record_ip(IpObservation {
                account_id: who.account_id,
                ip: "127.0.0.1".parse().unwrap(),
                port,
                at: T0,
            })
            .await
            .unwrap();
        let added = store
            .add_key_packages(
                who.device_id,
                vec![NewKeyPackage {
                    id: KeyPackageRef::new(vec![port as u8; 16]).unwrap(),
                    data: vec![port as u8; 8],
                    last_resort: false,
                }],
                T0,
                100,
            )
            .await
            .unwrap();
        assert!(
            matches!(added, AddKeyPackagesOutcome::Stored(_)),
            "{added:?}"
        );
    }
    // One envelope for both, one for the German device only.
    let shared = envelope(vec![fr.device_id, de.device_id], b"both", 100);
    assert_eq!(store.enqueue(shared).await.unwrap(), EnqueueOutcome::Queued);
    let only = envelope(vec![de.device_id], b"de only", 100);
    assert_eq!(store.enqueue(only).await.unwrap(), EnqueueOutcome::Queued);
    store
        .mark_market_notified("DE@1", "announced", de.account_id, T0)
        .await
        .unwrap();

    let counts = store.purge_region("DE", &keyer()).await.unwrap();
    assert_eq!(
        counts,
        RegionPurgeCounts {
            accounts: 1,
            devices: 1,
            queued: 2,
            key_packages: 1,
            ip_log: 1,
        }
    );
    assert!(store.accounts_in_region("DE").await.unwrap().is_empty());
    assert!(!store.account_exists(de.account_id).await.unwrap());
    assert!(store.ip_log(de.account_id).await.unwrap().is_empty());
    assert!(store
        .market_notified("DE@1", "announced")
        .await
        .unwrap()
        .is_empty());
    // The French account keeps everything, including the shared envelope.
    assert!(store.account_exists(fr.account_id).await.unwrap());
    assert_eq!(store.ip_log(fr.account_id).await.unwrap().len(), 1);
    assert_eq!(
        store
            .key_package_count(fr.device_id)
            .await
            .unwrap()
            .remaining,
        1
    );
    let pending = store.pending(fr.device_id, T0, 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].payload, b"both");
    // A second purge finds nothing.
    assert_eq!(
        store.purge_region("DE", &keyer()).await.unwrap(),
        RegionPurgeCounts::default()
    );
}

pub async fn device_lists_grow_one_version_at_a_time(store: Arc<dyn Store>) {
    let a = device(&*store, &phone()).await;
    let b = device(&*store, &phone()).await;
    assert_eq!(
        store
            .put_device_list(a.account_id, 2, b"v2".to_vec(), T0)
            .await
            .unwrap(),
        DeviceListOutcome::Conflict { latest: 0 },
        "the first list is version 1"
    );
    for v in 1..=3u64 {
        let body = format!("v{v}").into_bytes();
        assert_eq!(
            store
                .put_device_list(a.account_id, v, body, T0)
                .await
                .unwrap(),
            DeviceListOutcome::Stored
        );
    }
    // A second list for a version already taken (two devices publishing
    // at once) is refused, and nothing changes.
    assert_eq!(
        store
            .put_device_list(a.account_id, 3, b"other".to_vec(), T0)
            .await
            .unwrap(),
        DeviceListOutcome::Conflict { latest: 3 }
    );
    assert_eq!(
        store.device_lists(a.account_id, 0, 10).await.unwrap(),
        vec![b"v1".to_vec(), b"v2".to_vec(), b"v3".to_vec()]
    );
    assert_eq!(
        store.device_lists(a.account_id, 1, 1).await.unwrap(),
        vec![b"v2".to_vec()]
    );
    assert!(store
        .device_lists(b.account_id, 0, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.latest_device_list(a.account_id).await.unwrap(),
        Some(b"v3".to_vec())
    );
    assert_eq!(store.latest_device_list(b.account_id).await.unwrap(), None);
}

pub async fn a_link_is_written_once_approved_once_and_claimed_once(store: Arc<dyn Store>) {
    let existing = device(&*store, &phone()).await;
    let id = [1u8, 2, 3, 4, rand_byte()];
    let later = T0.plus(Duration::from_secs(600));
    assert!(store.open_link(&id, later).await.unwrap());
    assert!(
        !store.open_link(&id, later).await.unwrap(),
        "ids are unique"
    );
    assert_eq!(
        store.get_link(&id, LinkSlot::Offer, T0).await.unwrap(),
        Some(None)
    );
    assert_eq!(
        store
            .put_link(&id, LinkSlot::Offer, b"offer".to_vec(), T0)
            .await
            .unwrap(),
        LinkPut::Stored
    );
    assert_eq!(
        store
            .put_link(&id, LinkSlot::Offer, b"swap".to_vec(), T0)
            .await
            .unwrap(),
        LinkPut::Taken,
        "a message cannot be replaced"
    );
    assert_eq!(
        store.get_link(&id, LinkSlot::Offer, T0).await.unwrap(),
        Some(Some(b"offer".to_vec()))
    );
    assert_eq!(
        store
            .put_link(&[9; 5], LinkSlot::Offer, b"x".to_vec(), T0)
            .await
            .unwrap(),
        LinkPut::Unknown
    );
    assert!(store.link_approval(&id, T0).await.unwrap().is_none());
    assert!(!store.claim_link(&id, &digest("early"), T0).await.unwrap());

    let new_device = DeviceId::random();
    let approve = |id: DeviceId| NewDevice {
        id,
        name: "linked".into(),
        signature_key: vec![5; 32],
        token_hash: digest(&format!("placeholder {id}")),
    };
    assert!(store
        .approve_link(&id, existing.account_id, approve(new_device), T0)
        .await
        .unwrap());
    assert!(
        !store
            .approve_link(&id, existing.account_id, approve(DeviceId::random()), T0)
            .await
            .unwrap(),
        "approved once"
    );
    let approval = store.link_approval(&id, T0).await.unwrap().unwrap();
    assert_eq!(
        (approval.account, approval.device, approval.claimed),
        (existing.account_id, new_device, false)
    );
    assert_eq!(approval.signature_key, vec![5; 32]);
    assert!(store.claim_link(&id, &digest("token"), T0).await.unwrap());
    assert!(!store.claim_link(&id, &digest("again"), T0).await.unwrap());
    match store.token_status(&digest("token")).await.unwrap() {
        TokenStatus::Active(auth) => {
            assert_eq!(
                (auth.account_id, auth.device_id),
                (existing.account_id, new_device)
            )
        }
        other => panic!("the claimed token works: {other:?}"),
    }
    assert!(matches!(
        store.token_status(&digest("again")).await.unwrap(),
        TokenStatus::Unknown
    ));
    // Expired links are gone for every call, and purged.
    assert_eq!(
        store.get_link(&id, LinkSlot::Offer, later).await.unwrap(),
        None
    );
    store
        .purge(PurgeCutoffs {
            now: later,
            ip_log_before: T0,
            receipts_before: T0,
            commit_positions_before: T0,
        })
        .await
        .unwrap();
    assert!(store
        .open_link(&id, later.plus(Duration::from_secs(1)))
        .await
        .unwrap());
}

fn rand_byte() -> u8 {
    EnvelopeId::random().as_bytes()[0]
}

/// Instantiates every suite body for one backend. `$make` is an async
/// expression producing an `Arc<dyn Store>` (and whatever guard keeps it
/// alive, as the second tuple element).
macro_rules! storage_suite {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;
            storage_suite!(@tests $make;
                rate_limits_count_all_or_nothing_and_forget_old_events,
                codes_are_single_use_and_limited,
                second_device_joins_the_account,
                revocation_clears_a_device,
                key_packages_are_claimed_once,
                concurrent_claims_never_share_a_package,
                envelopes_queue_in_order_and_leave_on_ack,
                retries_are_recognised,
                full_mailboxes_are_left_out_of_a_send,
                purge_removes_only_what_expired,
                accounts_are_found_by_region_and_told_once,
                purging_a_region_leaves_other_markets_alone,
                concurrent_sends_and_acks_each_get_their_own_answer,
                one_commit_is_accepted_per_group_and_epoch,
                sends_and_acks_arriving_together_keep_every_rule,
                device_lists_grow_one_version_at_a_time,
                a_link_is_written_once_approved_once_and_claimed_once,
            );
        }
    };
    (@tests $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some((store, _guard)) = $make.await else {
                    return;
                };
                super::$name(store).await;
            }
        )*
    };
}

async fn sqlite_store() -> Option<(Arc<dyn Store>, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite::SqliteStore::open(&dir.path().join("t.db"), &Default::default())
        .await
        .unwrap();
    Some((Arc::new(store), dir))
}

/// A store in a schema of its own in this machine's PostgreSQL, or `None`
/// (the test is skipped with a printed reason) when it is unreachable
/// outside CI.
async fn postgres_store() -> Option<(Arc<dyn Store>, test_support::services::PgSchema)> {
    let schema = test_support::services::pg_schema().await?;
    let store = postgres::PgStore::open(&schema.config).await.unwrap();
    Some((Arc::new(store), schema))
}

storage_suite!(sqlite_backend, sqlite_store());

/// SQLite's writer keeps queue lengths and the next sequence number in
/// memory (migration 0010): a reopened store must count the queues it finds
/// and number new envelopes after the ones already stored.
#[tokio::test]
async fn a_reopened_sqlite_store_counts_its_queues_and_numbers_after_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = sqlite::SqliteStore::open(&path, &Default::default())
        .await
        .unwrap();
    let a = device(&store, &phone()).await;
    let first = envelope(vec![a.device_id], b"1", 2);
    for e in [first.clone(), envelope(vec![a.device_id], b"2", 2)] {
        assert_eq!(store.enqueue(e).await.unwrap(), EnqueueOutcome::Queued);
    }
    let before = store.pending(a.device_id, T0, 10).await.unwrap();
    store.close().await;

    let store = sqlite::SqliteStore::open(&path, &Default::default())
        .await
        .unwrap();
    assert_eq!(
        store
            .enqueue(envelope(vec![a.device_id], b"3", 2))
            .await
            .unwrap(),
        EnqueueOutcome::MailboxFull(vec![a.device_id]),
        "the queue stored before the restart counts against the cap"
    );
    assert_eq!(store.ack(a.device_id, &[first.id]).await.unwrap(), 1);
    let third = envelope(vec![a.device_id], b"3", 2);
    assert_eq!(
        store.enqueue(third.clone()).await.unwrap(),
        EnqueueOutcome::Queued
    );
    let after = store.pending(a.device_id, T0, 10).await.unwrap();
    assert_eq!(
        after.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![before[1].id, third.id],
        "the new envelope is queued after the old one"
    );
    assert!(after[1].seq > before[1].seq, "sequence numbers only grow");
}
storage_suite!(postgres_backend, postgres_store());

/// The legal desk's storage on each backend: the conformance checks, then
/// the desk's whole workflow with two desks (two nodes, or a node and the
/// CLI) on the one database.
mod desk_store {
    use super::*;
    use redoubt_legal::desk::{Desk, Intake};
    use redoubt_legal::order::DataCategory;
    use redoubt_legal::records::SubscriberRecords;
    use redoubt_legal::store::DeskStore;
    use test_support::legal::{court, order, signed_order, Staff};

    async fn workflow<S>(store: S, other: S)
    where
        S: Store + DeskStore + SubscriberRecords + Clone + 'static,
    {
        let phone = phone();
        device(&store, &phone).await;
        let now = time::OffsetDateTime::now_utc();
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let service = redoubt_legal::disclosure::ServiceKey::generate();
        let desk = |s: S| {
            Desk::new(
                s.clone(),
                s,
                service.clone(),
                Default::default(),
                time::Duration::days(30),
            )
        };
        let (one, two) = (desk(store), desk(other));
        let staff = Staff::new();
        staff.open_with(&one, court("Paris", &key, now), now).await;
        let document = signed_order(
            &key,
            order("FR-DB-1", phone.e164(), vec![DataCategory::Subscriber], now),
        );
        assert!(matches!(
            staff.intake(&two, &document, "olga", now).await.unwrap(),
            Intake::Pending { .. }
        ));
        let package = staff.approve(&one, "FR-DB-1", "pierre", now).await.unwrap();
        assert_eq!(
            package.package.produced.subscriber.unwrap().phone.e164(),
            phone.e164()
        );
        // Both desks see one log, which replays.
        let a = one.state().await.unwrap();
        let b = two.state().await.unwrap();
        assert_eq!(a.entries, b.entries);
        assert_eq!(a.entries.len(), 6);
        let record = a.order("fr-tj-paris", "FR-DB-1").unwrap();
        assert!(two.package(record).await.unwrap().is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_backend() {
        let dir = tempfile::tempdir().unwrap();
        let config = Default::default();
        let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
        let store = sqlite::SqliteStore::open(&a, &config).await.unwrap();
        redoubt_legal::store::conformance::check(&store).await;
        workflow(
            sqlite::SqliteStore::open(&b, &config).await.unwrap(),
            sqlite::SqliteStore::open(&b, &config).await.unwrap(),
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_backend() {
        let Some(schema) = test_support::services::pg_schema().await else {
            return;
        };
        let store = postgres::PgStore::open(&schema.config).await.unwrap();
        redoubt_legal::store::conformance::check(&store).await;
        let Some(schema) = test_support::services::pg_schema().await else {
            return;
        };
        let open = || postgres::PgStore::open(&schema.config);
        workflow(open().await.unwrap(), open().await.unwrap()).await;
    }
}

/// The key-transparency directory's storage on each backend: akd's own
/// storage tests, then a real directory over it (two epochs, a lookup, a
/// key history and an append-only proof, each verified as a client or an
/// auditor would), reopened as after a restart.
mod kt_store {
    use super::*;
    use akd::ecvrf::HardCodedAkdVRF;
    use akd::storage::{Database, StorageManager};
    use akd::{AkdLabel, AkdValue, Directory, HistoryParams, HistoryVerificationParams};

    type Config = akd::WhatsAppV1Configuration;

    async fn directory<S: Database + 'static>(db: S) -> Directory<Config, S, HardCodedAkdVRF> {
        Directory::new(
            StorageManager::new_no_cache(db),
            HardCodedAkdVRF,
            Default::default(),
        )
        .await
        .unwrap()
    }

    async fn a_directory_publishes_proves_and_persists<S: Database + Clone + 'static>(db: S) {
        let akd = directory(db.clone()).await;
        let alice = AkdLabel::from("+33612345678");
        let bob = AkdLabel::from("+33698765432");
        let first = akd
            .publish(vec![
                (alice.clone(), AkdValue::from("alice key 1")),
                (bob.clone(), AkdValue::from("bob key 1")),
            ])
            .await
            .unwrap();
        let second = akd
            .publish(vec![(alice.clone(), AkdValue::from("alice key 2"))])
            .await
            .unwrap();
        assert_eq!((first.epoch(), second.epoch()), (1, 2));
        let vrf = akd.get_public_key().await.unwrap();
        let (proof, root) = akd.lookup(alice.clone()).await.unwrap();
        assert_eq!(root, second);
        let found = akd::client::lookup_verify::<Config>(
            vrf.as_bytes(),
            root.hash(),
            root.epoch(),
            alice.clone(),
            proof,
        )
        .unwrap();
        assert_eq!(found.value, AkdValue::from("alice key 2"));
        // Bob's proof does not pass for Alice: a relay cannot hand out one
        // account's keys as another's.
        let (proof, root) = akd.lookup(bob.clone()).await.unwrap();
        assert!(akd::client::lookup_verify::<Config>(
            vrf.as_bytes(),
            root.hash(),
            root.epoch(),
            alice.clone(),
            proof,
        )
        .is_err());
        let (history, root) = akd
            .key_history(&alice, HistoryParams::default())
            .await
            .unwrap();
        let versions = akd::client::key_history_verify::<Config>(
            vrf.as_bytes(),
            root.hash(),
            root.epoch(),
            alice.clone(),
            history,
            HistoryVerificationParams::Default {
                history_params: HistoryParams::default(),
            },
        )
        .unwrap();
        let values: Vec<AkdValue> = versions.into_iter().map(|v| v.value).collect();
        assert_eq!(
            values,
            vec![AkdValue::from("alice key 2"), AkdValue::from("alice key 1")]
        );
        let proof = akd.audit(first.epoch(), second.epoch()).await.unwrap();
        akd::auditor::audit_verify::<Config>(vec![first.hash(), second.hash()], proof)
            .await
            .unwrap();
        // A new directory over the same database (a restart, another node)
        // is at the same epoch with the same root.
        let reopened = directory(db).await;
        assert_eq!(reopened.get_epoch_hash().await.unwrap(), second);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_backend() {
        let dir = tempfile::tempdir().unwrap();
        let config = Default::default();
        let store = sqlite::SqliteStore::open(&dir.path().join("a.db"), &config)
            .await
            .unwrap();
        akd::storage::tests::run_test_cases_for_storage_impl(store).await;
        let store = sqlite::SqliteStore::open(&dir.path().join("b.db"), &config)
            .await
            .unwrap();
        a_directory_publishes_proves_and_persists(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_backend() {
        let Some(schema) = test_support::services::pg_schema().await else {
            return;
        };
        let store = postgres::PgStore::open(&schema.config).await.unwrap();
        akd::storage::tests::run_test_cases_for_storage_impl(store).await;
        let Some(schema) = test_support::services::pg_schema().await else {
            return;
        };
        let store = postgres::PgStore::open(&schema.config).await.unwrap();
        a_directory_publishes_proves_and_persists(store).await;
    }
}

/// One step of the queue model.
#[derive(Debug, Clone)]
enum QueueOp {
    /// Send to the devices whose bits are set (at least one), with a cap.
    Send { to: u8, cap: u64, retry: bool },
    /// A device acks the envelope at this place of its queue (if any).
    Ack { device: usize, at: usize },
}

fn queue_op() -> impl proptest::strategy::Strategy<Value = QueueOp> {
    use proptest::prelude::*;
    prop_oneof![
        3 => (1u8..8, 1u64..5, any::<bool>())
            .prop_map(|(to, cap, retry)| QueueOp::Send { to, cap, retry }),
        2 => (0usize..3, 0usize..5).prop_map(|(device, at)| QueueOp::Ack { device, at }),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// The queue invariants, against the real SQLite store and a model:
    /// each device's queue holds what was queued for it, in acceptance
    /// order, each envelope once; a send goes to exactly the recipients
    /// below the cap (refused whole when none is); a retry queues nothing;
    /// an ack removes only what it names.
    #[test]
    fn mailboxes_keep_the_queue_invariants(ops in proptest::collection::vec(queue_op(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = sqlite::SqliteStore::open(&dir.path().join("q.db"), &Default::default())
                .await
                .unwrap();
            let mut devices = Vec::new();
            for _ in 0..3 {
                devices.push(device(&store, &phone()).await.device_id);
            }
            let mut model: Vec<Vec<EnvelopeId>> = vec![Vec::new(); 3];
            let mut last: Option<NewEnvelope> = None;
            for op in ops {
                match op {
                    QueueOp::Send { to, cap, retry } => {
                        if let (true, Some(previous)) = (retry, &last) {
                            let outcome = store.enqueue(previous.clone()).await.unwrap();
                            assert_eq!(outcome, EnqueueOutcome::Duplicate);
                            continue;
                        }
                        let chosen: Vec<usize> = (0..3).filter(|i| to >> i & 1 == 1).collect();
                        let e = envelope(chosen.iter().map(|&i| devices[i]).collect(), b"m", cap);
                        let room: Vec<usize> = chosen
                            .iter()
                            .copied()
                            .filter(|&i| (model[i].len() as u64) < cap)
                            .collect();
                        let mut full: Vec<DeviceId> = chosen
                            .iter()
                            .filter(|i| !room.contains(i))
                            .map(|&i| devices[i])
                            .collect();
                        full.sort();
                        let want = if room.is_empty() {
                            EnqueueOutcome::MailboxFull(full)
                        } else if full.is_empty() {
                            EnqueueOutcome::Queued
                        } else {
                            EnqueueOutcome::Partial(full)
                        };
                        assert_eq!(store.enqueue(e.clone()).await.unwrap(), want);
                        if !room.is_empty() {
                            // Only an accepted id is remembered.
                            for i in room {
                                model[i].push(e.id);
                            }
                            last = Some(e);
                        }
                    }
                    QueueOp::Ack { device, at } => {
                        let Some(&id) = model[device].get(at) else { continue };
                        assert_eq!(store.ack(devices[device], &[id]).await.unwrap(), 1);
                        model[device].remove(at);
                        assert_eq!(store.ack(devices[device], &[id]).await.unwrap(), 0, "once");
                    }
                }
                for (i, d) in devices.iter().enumerate() {
                    let queued: Vec<EnvelopeId> =
                        store.pending(*d, T0, 100).await.unwrap().iter().map(|e| e.id).collect();
                    assert_eq!(queued, model[i], "device {i}");
                }
            }
            store.close().await;
        });
    }
}
