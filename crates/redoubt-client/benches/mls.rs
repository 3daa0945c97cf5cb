//! MLS costs on this device: encrypting and decrypting a 200-byte message,
//! a text message with and without what the client adds inside the
//! encryption (its place in the sender's stream and the sender's newest
//! key-directory epoch), and a commit that adds one member to groups of
//! 10, 100 and 1000.
//! Run with `cargo bench -p redoubt-client --bench mls`; figures go to
//! BENCHMARKS.md.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use redoubt_client::identity::IdentityKey;
use redoubt_client::mls::{self, Provider};
use redoubt_proto::{AccountId, DeviceId, PhoneNumber};

struct Device {
    provider: Provider,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
}

fn device() -> Device {
    let signer = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
    let certificate = IdentityKey::generate().certify(
        AccountId::random(),
        DeviceId::random(),
        &PhoneNumber::parse("+33612345678").unwrap(),
        signer.public(),
        0,
    );
    let credential = mls::credential(&certificate, &signer).unwrap();
    Device {
        provider: Provider::default(),
        signer,
        credential,
    }
}

fn key_package(d: &Device) -> KeyPackage {
    let fresh = mls::key_package(&d.provider, &d.signer, d.credential.clone(), false).unwrap();
    mls::parse_key_package(&d.provider, &fresh.bytes).unwrap()
}

/// A key package of a new joiner: its own signature key (MLS forbids two
/// members sharing one), its private keys kept in `store`'s provider.
fn joiner_key_package(store: &Device) -> KeyPackage {
    let joiner = device();
    let fresh =
        mls::key_package(&store.provider, &joiner.signer, joiner.credential, false).unwrap();
    mls::parse_key_package(&store.provider, &fresh.bytes).unwrap()
}

/// Alice's group with Bob in it, and Bob's copy of it.
fn pair() -> (Device, MlsGroup, Device, MlsGroup) {
    let alice = device();
    let bob = device();
    let mut group = MlsGroup::new(
        &alice.provider,
        &alice.signer,
        &mls::create_config(),
        alice.credential.clone(),
    )
    .unwrap();
    let (_, welcome, _) = group
        .add_members(&alice.provider, &alice.signer, &[key_package(&bob)])
        .unwrap();
    group.merge_pending_commit(&alice.provider).unwrap();
    let welcome = match MlsMessageIn::from(welcome).extract() {
        MlsMessageBodyIn::Welcome(w) => w,
        _ => unreachable!(),
    };
    let bob_group =
        StagedWelcome::new_from_welcome(&bob.provider, &mls::join_config(), welcome, None)
            .unwrap()
            .into_group(&bob.provider)
            .unwrap();
    (alice, group, bob, bob_group)
}

fn application_messages(c: &mut Criterion) {
    let payload = [0x42u8; 200];
    let (alice, mut group, _, _) = pair();
    c.bench_function("encrypt 200-byte message", |b| {
        b.iter(|| {
            black_box(
                group
                    .create_message(&alice.provider, &alice.signer, black_box(&payload))
                    .unwrap(),
            )
        })
    });
    // A fresh pair: the encryption benchmark moved the first sender's
    // ratchet further ahead than a receiver will skip.
    let (alice, mut group, bob, mut bob_group) = pair();
    c.bench_function("decrypt 200-byte message", |b| {
        b.iter_batched(
            || {
                let out = group
                    .create_message(&alice.provider, &alice.signer, &payload)
                    .unwrap();
                MlsMessageIn::from(out).try_into_protocol_message().unwrap()
            },
            |message| black_box(bob_group.process_message(&bob.provider, message).unwrap()),
            BatchSize::SmallInput,
        )
    });
}

/// A 200-character text as sent before transcript integrity and split-view
/// detection (the bare payload), and as sent now (in its envelope, with
/// the stream bookkeeping on both sides).
fn text_envelopes(c: &mut Criterion) {
    use redoubt_client::model::{AppEnvelope, AppMessage};
    use redoubt_client::transcript::{message_hash, ChatTranscript};
    let body = || AppMessage::Text {
        id: uuid::Uuid::new_v4(),
        text: "x".repeat(200),
        sent_at: 1_795_000_000_000,
    };
    let b64 = |n: usize| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(vec![7u8; n])
    };
    let epoch = redoubt_proto::kt::SignedEpoch {
        epoch: 1_234_567,
        root: b64(32),
        published_at: 1_795_000_000,
        log_root: b64(32),
        signature: b64(64),
    };
    let me = DeviceId::random();
    let mut sender = ChatTranscript::joined_in(3);
    let first = sender.next_order(me, 3);
    sender.sent(3, &first, message_hash(b"first"));
    let bare = serde_json::to_vec(&body()).unwrap();
    let wrapped = serde_json::to_vec(&AppEnvelope {
        body: body(),
        directory: Some(epoch.clone()),
        order: Some(sender.next_order(me, 3)),
    })
    .unwrap();
    let (alice, mut group, _, _) = pair();
    let ciphertext = |payload: &[u8], group: &mut MlsGroup| {
        use openmls::prelude::tls_codec::Serialize as _;
        group
            .create_message(&alice.provider, &alice.signer, payload)
            .unwrap()
            .tls_serialize_detached()
            .unwrap()
            .len()
    };
    eprintln!(
        "payload {} -> {} bytes; MLS ciphertext {} -> {} bytes",
        bare.len(),
        wrapped.len(),
        ciphertext(&bare, &mut group),
        ciphertext(&wrapped, &mut group)
    );
    // What a digest adds to the message carrying it (one in DIGEST_EVERY,
    // and each device's first in an epoch): per device that wrote in the
    // epoch, its id and count, plus the epoch and its authenticator.
    let plain = sender.next_order(me, 3);
    let without = serde_json::to_vec(&plain).unwrap().len();
    // Past DIGEST_MAX_DEVICES the rest wait for the next digest.
    for writers in [1u64, 10, 100, 1000] {
        let told = writers.min(redoubt_client::transcript::DIGEST_MAX_DEVICES as u64);
        let digest = redoubt_client::transcript::Digest {
            epoch: 3,
            counts: (0..told).map(|i| (DeviceId::random(), 40 + i)).collect(),
            auth: "ab".repeat(redoubt_client::transcript::AUTH_BYTES),
        };
        let with = serde_json::to_vec(&redoubt_client::transcript::SenderOrder {
            digest: Some(digest),
            ..plain.clone()
        })
        .unwrap()
        .len();
        eprintln!(
            "a digest of {writers} writing devices adds {} bytes",
            with - without
        );
    }
    let mut g = c.benchmark_group("text");
    g.bench_function("encrypt before", |b| {
        b.iter(|| {
            let payload = serde_json::to_vec(&body()).unwrap();
            black_box(
                group
                    .create_message(&alice.provider, &alice.signer, &payload)
                    .unwrap(),
            )
        })
    });
    g.bench_function("encrypt after", |b| {
        b.iter(|| {
            let order = sender.next_order(me, 3);
            let payload = serde_json::to_vec(&AppEnvelope {
                body: body(),
                directory: Some(epoch.clone()),
                order: Some(order.clone()),
            })
            .unwrap();
            sender.sent(3, &order, message_hash(&payload));
            black_box(
                group
                    .create_message(&alice.provider, &alice.signer, &payload)
                    .unwrap(),
            )
        })
    });
    let (alice, mut group, bob, mut bob_group) = pair();
    let sealed = |payload: &[u8], group: &mut MlsGroup| {
        let out = group
            .create_message(&alice.provider, &alice.signer, payload)
            .unwrap();
        MlsMessageIn::from(out).try_into_protocol_message().unwrap()
    };
    g.bench_function("decrypt before", |b| {
        b.iter_batched(
            || sealed(&bare, &mut group),
            |message| {
                let processed = bob_group.process_message(&bob.provider, message).unwrap();
                let ProcessedMessageContent::ApplicationMessage(app) = processed.into_content()
                else {
                    unreachable!()
                };
                black_box(serde_json::from_slice::<AppMessage>(&app.into_bytes()).unwrap())
            },
            BatchSize::SmallInput,
        )
    });
    let mut receiver = ChatTranscript::joined_in(3);
    let from = DeviceId::random();
    let mut n = 0u64;
    g.bench_function("decrypt after", |b| {
        b.iter_batched(
            || {
                n += 1;
                let mut order = sender.next_order(me, 3);
                order.n = n;
                let payload = serde_json::to_vec(&AppEnvelope {
                    body: body(),
                    directory: Some(epoch.clone()),
                    order: Some(order),
                })
                .unwrap();
                sealed(&payload, &mut group)
            },
            |message| {
                let processed = bob_group.process_message(&bob.provider, message).unwrap();
                let ProcessedMessageContent::ApplicationMessage(app) = processed.into_content()
                else {
                    unreachable!()
                };
                let payload = app.into_bytes();
                let envelope: AppEnvelope = serde_json::from_slice(&payload).unwrap();
                let order = envelope.order.unwrap();
                black_box(receiver.receive(
                    from,
                    3,
                    &order,
                    message_hash(&payload),
                    uuid::Uuid::new_v4,
                ))
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn add_one_member(c: &mut Criterion) {
    let mut bench = c.benchmark_group("commit adding one member");
    bench
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    for size in [10usize, 100, 1000] {
        let admin = device();
        // One provider holds every other member's key material: only the
        // committer's work is measured.
        let others = device();
        let packages: Vec<KeyPackage> = (1..size).map(|_| joiner_key_package(&others)).collect();
        let mut group = MlsGroup::new(
            &admin.provider,
            &admin.signer,
            &mls::create_config(),
            admin.credential.clone(),
        )
        .unwrap();
        group
            .add_members(&admin.provider, &admin.signer, &packages)
            .unwrap();
        group.merge_pending_commit(&admin.provider).unwrap();
        assert_eq!(group.members().count(), size);
        bench.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let kp = joiner_key_package(&others);
                    let start = Instant::now();
                    group
                        .add_members(&admin.provider, &admin.signer, &[kp])
                        .unwrap();
                    group.merge_pending_commit(&admin.provider).unwrap();
                    total += start.elapsed();
                    // Remove the newcomer again (untimed) so every sample
                    // measures a group of the same size.
                    let last = group.members().last().unwrap().index;
                    group
                        .remove_members(&admin.provider, &admin.signer, &[last])
                        .unwrap();
                    group.merge_pending_commit(&admin.provider).unwrap();
                }
                total
            })
        });
    }
    bench.finish();
}

criterion_group!(
    benches,
    application_messages,
    text_envelopes,
    add_one_member
);
criterion_main!(benches);
