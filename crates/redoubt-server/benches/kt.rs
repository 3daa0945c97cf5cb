//! What key transparency costs: publishing an epoch of 1,000 and 10,000
//! changes into the directory on SQLite and PostgreSQL (the real backends,
//! a fresh database each time), and on the client side verifying a lookup
//! proof and a key-history proof of 10 changes, with the proofs' sizes.
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

fn publish(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("kt_publish");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for n in [1_000usize, 10_000] {
        group.bench_function(format!("sqlite/{n}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let (store, _dir) = sqlite().await;
                        let akd = Directory::<Config, _, _>::new(
                            StorageManager::new_no_cache(store),
                            HardCodedAkdVRF,
                            Default::default(),
                        )
                        .await
                        .unwrap();
                        let start = Instant::now();
                        akd.publish(updates(n, 0)).await.unwrap();
                        total += start.elapsed();
                    }
                    total
                })
            })
        });
        if rt.block_on(postgres()).is_none() {
            eprintln!("PostgreSQL unreachable: skipping kt_publish/postgres/{n}");
            continue;
        }
        group.bench_function(format!("postgres/{n}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let (store, _guard) = postgres().await.unwrap();
                        let akd = Directory::<Config, _, _>::new(
                            StorageManager::new_no_cache(store),
                            HardCodedAkdVRF,
                            Default::default(),
                        )
                        .await
                        .unwrap();
                        let start = Instant::now();
                        akd.publish(updates(n, 0)).await.unwrap();
                        total += start.elapsed();
                    }
                    total
                })
            })
        });
    }
    group.finish();
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

criterion_group!(benches, verify, publish);
criterion_main!(benches);
