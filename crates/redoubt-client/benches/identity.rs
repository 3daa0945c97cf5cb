//! What account identity costs a client: checking the certificates of a
//! group's leaves when joining it (groups of 10, 100 and 1000 devices),
//! one leaf when a commit adds a device, and a device list of 10, 100 and
//! 1000 devices. Run with `cargo bench -p redoubt-client --bench identity`;
//! figures go to BENCHMARKS.md.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use redoubt_client::identity::{self, IdentityKey};
use redoubt_proto::identity::CredentialDocument;
use redoubt_proto::{AccountId, DeviceId, PhoneNumber};

fn phone() -> PhoneNumber {
    PhoneNumber::parse("+33612345678").unwrap()
}

/// A leaf's credential bytes and signature key, certified by `key`.
fn leaf(key: &IdentityKey) -> (Vec<u8>, Vec<u8>) {
    let signature_key = IdentityKey::generate().public();
    let signature_key = base64_decode(&signature_key);
    let certificate = key.certify(
        AccountId::random(),
        DeviceId::random(),
        &phone(),
        &signature_key,
        0,
    );
    (
        serde_json::to_vec(&CredentialDocument { certificate }).unwrap(),
        signature_key,
    )
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

fn certificates(c: &mut Criterion) {
    let key = IdentityKey::generate();
    let mut group = c.benchmark_group("join: check every leaf's certificate");
    for n in [10usize, 100, 1000] {
        let leaves: Vec<_> = (0..n).map(|_| leaf(&key)).collect();
        group.bench_with_input(BenchmarkId::from_parameter(n), &leaves, |b, leaves| {
            b.iter(|| {
                for (credential, signature_key) in leaves {
                    black_box(identity::check_leaf(credential, signature_key).unwrap());
                }
            })
        });
    }
    group.finish();
    let one = leaf(&key);
    c.bench_function("commit: check the added leaf's certificate", |b| {
        b.iter(|| black_box(identity::check_leaf(&one.0, &one.1).unwrap()))
    });
}

fn device_lists(c: &mut Criterion) {
    let key = IdentityKey::generate();
    let account = AccountId::random();
    let mut group = c.benchmark_group("verify the next device list");
    for n in [10usize, 100, 1000] {
        let devices: Vec<_> = (0..n)
            .map(|_| (DeviceId::random(), vec![7u8; 32]))
            .collect();
        let (_, pinned) = key.sign_list(account, &phone(), 1, None, &devices, 0);
        let (next, _) = key.sign_list(account, &phone(), 2, Some(&pinned), &devices, 1);
        group.bench_with_input(BenchmarkId::from_parameter(n), &next, |b, next| {
            b.iter(|| {
                black_box(
                    identity::advance(Some(&pinned), account, &phone(), std::slice::from_ref(next))
                        .unwrap(),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, certificates, device_lists);
criterion_main!(benches);
