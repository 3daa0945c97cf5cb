//! What the legal desk's design costs: every operation replays the whole
//! audit log (hash chain, one Ed25519 signature and the desk's rules per
//! entry), or, in the relay, catches up from its cached replay; a checkpoint
//! hashes the Merkle tree. Measured for logs of 1,000 and 10,000 entries. Run with
//! `cargo bench -p redoubt-legal --bench replay`; figures go to
//! BENCHMARKS.md.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use redoubt_legal::audit::{merkle_root, AuditEntry, NewEntry, GENESIS};
use redoubt_legal::operators::{ActionKind, OperatorKey};
use redoubt_legal::state::DeskState;
use time::OffsetDateTime;

/// A log of a bootstrap and `n - 1` market decisions, as stored.
fn log(n: usize) -> Vec<String> {
    let now = OffsetDateTime::now_utc();
    let olga = OperatorKey::generate("olga").unwrap();
    let pierre = OperatorKey::generate("pierre").unwrap();
    let bootstrap = OperatorKey::bootstrap(&olga, &pierre, now);
    let mut entries: Vec<AuditEntry> = vec![NewEntry {
        event: "bootstrap",
        actor: "olga, pierre".into(),
        issuer: None,
        order_id: None,
        detail: serde_json::json!({}),
        action: bootstrap,
    }
    .seal(1, GENESIS, now)];
    for i in 1..n {
        let decision = serde_json::json!({ "announced_exit": "FR", "i": i });
        let entry = NewEntry {
            event: "market",
            actor: "olga".into(),
            issuer: None,
            order_id: None,
            detail: decision.clone(),
            action: olga.sign(ActionKind::Market { decision }, now),
        }
        .seal(i as u64 + 1, &entries[i - 1].hash, now);
        entries.push(entry);
    }
    entries
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect()
}

fn replay(c: &mut Criterion) {
    let service = redoubt_legal::disclosure::ServiceKey::generate().public_key();
    let mut group = c.benchmark_group("desk");
    group.sample_size(10);
    for n in [1_000, 10_000] {
        let lines = log(n);
        assert_eq!(
            DeskState::replay(&lines, &service).unwrap().entries.len(),
            n
        );
        group.bench_with_input(BenchmarkId::new("replay", n), &lines, |b, lines| {
            b.iter(|| DeskState::replay(black_box(lines), &service).unwrap())
        });
        // What the relay's cached replay does per operation: check and
        // apply the one entry appended since.
        let (head, last) = lines.split_at(n - 1);
        let before = DeskState::replay(head, &service).unwrap();
        group.bench_with_input(BenchmarkId::new("catch_up_one", n), &before, |b, before| {
            b.iter_batched(
                || before.clone(),
                |mut state| state.extend(black_box(last), &service).unwrap(),
                criterion::BatchSize::LargeInput,
            )
        });
        let entries = DeskState::replay(&lines, &service).unwrap().entries;
        group.bench_with_input(BenchmarkId::new("merkle_root", n), &entries, |b, e| {
            b.iter(|| merkle_root(black_box(e)))
        });
    }
    group.finish();
}

criterion_group!(benches, replay);
criterion_main!(benches);
