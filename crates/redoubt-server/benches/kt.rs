//! What key transparency costs: publishing an epoch of 1,000 and 10,000
//! changes into the directory on SQLite and PostgreSQL (the real backends,
//! a fresh database each time), and into a directory of 100,000 numbers;
//! on the client side verifying a lookup proof and a key-history proof of
//! 10 changes, and linking one epoch of 1,000 changes (the append-only
//! proof a device checks as it moves forward), with the proofs' sizes.
//! Run with `cargo bench -p redoubt-server --bench kt`; figures go to
//! BENCHMARKS.md. PostgreSQL is skipped with a note when unreachable.

use std::hint::black_box;
use std::time::{Duration, Instant};

use akd::ecvrf::HardCodedAkdVRF;
use akd::storage::StorageManager;
use akd::{AkdLabel, AkdValue, Directory, HistoryParams, HistoryVerificationParams};
use criterion::{criterion_group, criterion_main, Criterion};
use protobuf::Message as _;
use redoubt_server::storage::postgres::PgStore;
use redoubt_server::storage::sqlite::SqliteStore;

type Config = akd::WhatsAppV1Configuration;

fn updates(n: usize, round: usize) -> Vec<(AkdLabel, AkdValue)> {
    (0..n)
        .map(|i| {
            (
                AkdLabel(format!("+336{:08}", i).into_bytes()),
                AkdValue(format!("value {i} round {round}").into_bytes()),
            )
        })
        .collect()
}

async fn sqlite() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("kt.db"), &Default::default())
        .await
        .unwrap();
    (store, dir)
}

/// A store in a fresh schema of its own (dropped by the guard).
async fn postgres() -> Option<(PgStore, SchemaGuard)> {
    let url = std::env::var("REDOUBT_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("kt_bench_{}", rand::random::<u32>());
    let config = redoubt_server::config::PostgresConfig {
        url: url.clone(),
        schema: Some(schema.clone()),
        max_connections: 16,
    };
    let store = PgStore::open(&config).await.ok()?;
    Some((store, SchemaGuard(url, schema)))
}

struct SchemaGuard(String, String);

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        redoubt_server::storage::postgres::drop_schema_blocking(&self.0, &self.1);
    }
}

async fn directory<S: akd::storage::Database + 'static>(
    store: S,
) -> Directory<Config, S, HardCodedAkdVRF> {
    Directory::new(
        StorageManager::new_no_cache(store),
        HardCodedAkdVRF,
        Default::default(),
    )
    .await
    .unwrap()
}

/// Times publishing `n` changes into a fresh directory made by `fresh`
/// (which returns the store and whatever must live as long).
fn bench_fresh_publish<S, G, F, Fut>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    name: String,
    n: usize,
    fresh: F,
) where
    S: akd::storage::Database + 'static,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = (S, G)>,
{
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (store, _keep) = fresh().await;
                    let akd = directory(store).await;
                    let start = Instant::now();
                    akd.publish(updates(n, 0)).await.unwrap();
                    total += start.elapsed();
                }
                total
            })
        })
    });
}

fn publish(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("kt_publish");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    let pg = rt.block_on(postgres()).is_some();
    if !pg {
        eprintln!("PostgreSQL unreachable: skipping kt_publish/postgres");
    }
    for n in [1_000usize, 10_000] {
        bench_fresh_publish(&mut group, &rt, format!("sqlite/{n}"), n, sqlite);
        if pg {
            bench_fresh_publish(&mut group, &rt, format!("postgres/{n}"), n, || async {
                postgres().await.unwrap()
            });
        }
    }
    group.finish();
}

/// The number of accounts in the large directory.
const LARGE: usize = 100_000;

/// A directory of 100,000 numbers on each backend: publishing an epoch of
/// 1,000 changes into it, and on the client side a lookup in it and the
/// link over one such epoch.
fn large(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("kt_large");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(30));
    {
        let (store, _dir) = rt.block_on(sqlite());
        bench_large(&mut group, &rt, "sqlite", store);
    }
    match rt.block_on(postgres()) {
        Some((store, _guard)) => bench_large(&mut group, &rt, "postgres", store),
        None => eprintln!("PostgreSQL unreachable: skipping kt_large/postgres"),
    }
    group.finish();
}

fn bench_large<S: akd::storage::Database + 'static>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    backend: &str,
    store: S,
) {
    let akd = rt.block_on(directory(store));
    let start = Instant::now();
    rt.block_on(akd.publish(updates(LARGE, 0))).unwrap();
    eprintln!(
        "{backend}: a directory of {LARGE} numbers published in one epoch in {:.1?}",
        start.elapsed()
    );
    let mut round = 0;
    group.bench_function(format!("{backend}/publish_1000_into_{LARGE}"), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    round += 1;
                    // A thousand numbers spread over the directory change.
                    let changes: Vec<_> = updates(LARGE, round)
                        .into_iter()
                        .step_by(LARGE / 1_000)
                        .collect();
                    let start = Instant::now();
                    akd.publish(changes).await.unwrap();
                    total += start.elapsed();
                }
                total
            })
        })
    });
    if backend != "sqlite" {
        return;
    }
    // The client's side is the same on either backend.
    let vrf = rt
        .block_on(akd.get_public_key())
        .unwrap()
        .as_bytes()
        .to_vec();
    // Two more epochs of 1,000 changes each: the link between them is
    // what a device checks for every epoch it moves forward.
    let spread = |round| -> Vec<_> {
        updates(LARGE, round)
            .into_iter()
            .step_by(LARGE / 1_000)
            .collect()
    };
    let first = rt.block_on(akd.publish(spread(round + 1))).unwrap();
    let second = rt.block_on(akd.publish(spread(round + 2))).unwrap();
    let previous = rt
        .block_on(akd.audit(first.epoch(), second.epoch()))
        .unwrap();
    let hashes = vec![first.hash(), second.hash()];
    let label = AkdLabel(b"+33600000007".to_vec());
    let (lookup, root) = rt.block_on(akd.lookup(label.clone())).unwrap();
    let epoch = root.epoch();
    let lookup_bytes = akd::proto::specs::types::LookupProof::from(&lookup)
        .write_to_bytes()
        .unwrap();
    let audit_bytes = akd::proto::specs::types::AppendOnlyProof::from(&previous)
        .write_to_bytes()
        .unwrap();
    eprintln!(
        "in a directory of {LARGE}: lookup proof {} bytes; append-only proof over one epoch of 1,000 changes {} bytes",
        lookup_bytes.len(),
        audit_bytes.len()
    );
    group.bench_function(format!("verify_lookup_in_{LARGE}"), |b| {
        b.iter(|| {
            akd::client::lookup_verify::<Config>(
                &vrf,
                root.hash(),
                epoch,
                label.clone(),
                black_box(lookup.clone()),
            )
            .unwrap()
        })
    });
    group.bench_function(format!("link_one_epoch_of_1000_in_{LARGE}"), |b| {
        b.iter(|| {
            rt.block_on(akd::auditor::audit_verify::<Config>(
                hashes.clone(),
                black_box(previous.clone()),
            ))
            .unwrap()
        })
    });
}

fn verify(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A directory of 1,000 numbers, one of which changed 10 times.
    let (akd, _dir, vrf) = rt.block_on(async {
        let (store, dir) = sqlite().await;
        let akd = Directory::<Config, _, _>::new(
            StorageManager::new_no_cache(store),
            HardCodedAkdVRF,
            Default::default(),
        )
        .await
        .unwrap();
        akd.publish(updates(1_000, 0)).await.unwrap();
        let watched = AkdLabel(b"+33600000007".to_vec());
        for round in 1..10 {
            akd.publish(vec![(
                watched.clone(),
                AkdValue(format!("round {round}").into_bytes()),
            )])
            .await
            .unwrap();
        }
        let vrf = akd.get_public_key().await.unwrap().as_bytes().to_vec();
        (akd, dir, vrf)
    });
    let label = AkdLabel(b"+33600000007".to_vec());
    let (lookup, root) = rt.block_on(akd.lookup(label.clone())).unwrap();
    let (history, hroot) = rt
        .block_on(akd.key_history(&label, HistoryParams::Complete))
        .unwrap();
    let lookup_bytes = akd::proto::specs::types::LookupProof::from(&lookup)
        .write_to_bytes()
        .unwrap();
    let history_bytes = akd::proto::specs::types::HistoryProof::from(&history)
        .write_to_bytes()
        .unwrap();
    eprintln!(
        "proof sizes: lookup {} bytes, history of 10 changes {} bytes",
        lookup_bytes.len(),
        history_bytes.len()
    );
    let mut group = c.benchmark_group("kt_verify");
    group.bench_function("lookup", |b| {
        b.iter(|| {
            akd::client::lookup_verify::<Config>(
                &vrf,
                root.hash(),
                root.epoch(),
                label.clone(),
                black_box(lookup.clone()),
            )
            .unwrap()
        })
    });
    group.bench_function("history_of_10", |b| {
        b.iter(|| {
            akd::client::key_history_verify::<Config>(
                &vrf,
                hroot.hash(),
                hroot.epoch(),
                label.clone(),
                black_box(history.clone()),
                HistoryVerificationParams::Default {
                    history_params: HistoryParams::Complete,
                },
            )
            .unwrap()
        })
    });
    group.finish();
}

/// What a device checks instead of akd's append-only proof: that the log
/// of epoch roots of a newer epoch extends the one it saw, in a log of a
/// million epochs (a year and more of two-second epochs).
fn link(c: &mut Criterion) {
    use redoubt_proto::merkle::{self, MerkleLog};
    const EPOCHS: u64 = 1_000_000;
    let mut log = MerkleLog::new();
    for i in 0..EPOCHS {
        log.push(redoubt_proto::kt::epoch_leaf(i, &[(i % 251) as u8; 32]));
    }
    let (old, new) = (EPOCHS - 1_000, EPOCHS);
    let (old_root, new_root) = (log.root(old).unwrap(), log.root(new).unwrap());
    let consistency = log.consistency_proof(old, new).unwrap();
    let inclusion = log.inclusion_proof(new - 1, new).unwrap();
    let leaf = log.leaf(new - 1).unwrap();
    eprintln!(
        "log of {EPOCHS} epochs: consistency proof over 1,000 epochs {} hashes, inclusion proof {} hashes ({} bytes together)",
        consistency.len(),
        inclusion.len(),
        32 * (consistency.len() + inclusion.len())
    );
    let mut group = c.benchmark_group("kt_link");
    group.bench_function("serve_proofs_in_1000000", |b| {
        b.iter(|| {
            (
                log.consistency_proof(black_box(old), new).unwrap(),
                log.inclusion_proof(new - 1, new).unwrap(),
            )
        })
    });
    group.bench_function("verify_in_1000000", |b| {
        b.iter(|| {
            assert!(merkle::verify_consistency(
                old,
                new,
                &old_root,
                &new_root,
                black_box(&consistency)
            ));
            assert!(merkle::verify_inclusion(
                new - 1,
                new,
                &leaf,
                black_box(&inclusion),
                &new_root
            ));
        })
    });
    group.finish();
}

criterion_group!(benches, verify, link, publish, large);
criterion_main!(benches);
