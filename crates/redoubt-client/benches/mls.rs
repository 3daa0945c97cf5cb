//! MLS costs on this device: encrypting and decrypting a 200-byte message,
//! and a commit that adds one member to groups of 10, 100 and 1000.
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

criterion_group!(benches, application_messages, add_one_member);
criterion_main!(benches);
