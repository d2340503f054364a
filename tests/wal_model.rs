//! Property test: random append / truncate / purge / vote / reopen / injected-fault-and-power-cut
//! sequences against a simple in-memory model; every read is compared.

mod helpers;

use std::collections::BTreeMap;

use helpers::wal_log::*;
use openraft::storage::RaftLogStorage;
use proptest::prelude::*;
use raftgraph::wal::{MemFs, Wal, WalConfig};
use rand::SeedableRng;

#[derive(Debug, Clone)]
enum Op {
    Append(u64),
    /// Truncate keeping all but the last `n` entries.
    Truncate(u64),
    /// Purge the first `n` live entries.
    Purge(u64),
    Vote(u64),
    Reopen,
    /// Append a batch whose fsync fails, then a power cut with random fates (seeded).
    FailedAppendThenCrash(u64, u64),
    /// Truncate or purge with the `j`-th sync failing, then a power cut: old or new state only.
    FaultyTruncateThenCrash(u64, u64, u64),
    FaultyPurgeThenCrash(u64, u64, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u64..6).prop_map(Op::Append),
        1 => (0u64..8).prop_map(Op::Truncate),
        1 => (0u64..8).prop_map(Op::Purge),
        1 => (1u64..50).prop_map(Op::Vote),
        1 => Just(Op::Reopen),
        1 => (1u64..4, any::<u64>()).prop_map(|(n, s)| Op::FailedAppendThenCrash(n, s)),
        1 => (0u64..8, 0u64..5, any::<u64>()).prop_map(|(n, j, s)| Op::FaultyTruncateThenCrash(n, j, s)),
        1 => (0u64..8, 0u64..5, any::<u64>()).prop_map(|(n, j, s)| Op::FaultyPurgeThenCrash(n, j, s)),
    ]
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Model {
    entries: BTreeMap<u64, (u64, u64, String)>,
    purged: Option<(u64, u64)>,
    term: u64,
    vote: Option<u64>,
}

impl Model {
    fn next(&self) -> u64 {
        self.entries
            .keys()
            .next_back()
            .map(|i| i + 1)
            .or(self.purged.map(|p| p.1 + 1))
            .unwrap_or(0)
    }
    fn keys(&self) -> Vec<(u64, u64, String)> {
        self.entries.values().cloned().collect()
    }
    fn last(&self) -> Option<(u64, u64)> {
        self.entries
            .values()
            .next_back()
            .map(|k| (k.1, k.0))
            .or(self.purged)
    }
    /// Index to keep after dropping the last `n` live entries (None = drop everything).
    fn truncate_point(&self, n: u64) -> Option<Option<(u64, u64)>> {
        let len = self.entries.len() as u64;
        if n == 0 || len == 0 {
            return None;
        }
        let keep = len.saturating_sub(n);
        Some(if keep == 0 {
            self.purged
        } else {
            self.entries
                .values()
                .nth(keep as usize - 1)
                .map(|k| (k.1, k.0))
        })
    }
    fn apply_truncate(&mut self, kept: Option<(u64, u64)>) {
        let keep_upto = kept.map(|k| k.1);
        self.entries
            .retain(|i, _| keep_upto.is_some_and(|k| *i <= k));
        self.term += 1;
    }
    fn purge_point(&self, n: u64) -> Option<(u64, u64)> {
        if n == 0 {
            return None;
        }
        self.entries
            .values()
            .nth((n as usize).min(self.entries.len()).checked_sub(1)?)
            .map(|k| (k.1, k.0))
    }
    fn apply_purge(&mut self, at: (u64, u64)) {
        self.entries.retain(|i, _| *i > at.1);
        self.purged = Some(at);
    }
}

async fn check(wal: &mut Wal<TC>, m: &Model, ctx: &str) {
    assert_eq!(read_all(wal).await, m.keys(), "{ctx}: entries");
    let st = wal.get_log_state().await.unwrap();
    assert_eq!(
        st.last_purged_log_id,
        m.purged.map(|(t, i)| log_id(t, i)),
        "{ctx}: purged"
    );
    assert_eq!(
        st.last_log_id,
        m.last().map(|(t, i)| log_id(t, i)),
        "{ctx}: last"
    );
    assert_eq!(
        read_vote(wal).await,
        m.vote.map(|t| openraft::Vote::new(t, 0)),
        "{ctx}: vote"
    );
}

/// Lets the WAL reach whatever it can (a sync may fail), cuts the power with seeded random fates,
/// clears injected faults and reopens.
async fn crash_and_reopen(
    wal: Wal<TC>,
    fs: &MemFs,
    c: &WalConfig,
    seed: u64,
    ctx: &str,
) -> Wal<TC> {
    let _ = wal.sync().await;
    drop(wal);
    fs.crash_random(&mut rand::rngs::SmallRng::seed_from_u64(seed));
    fs.clear_faults();
    open(fs, c)
        .await
        .unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"))
}

async fn run(ops: Vec<Op>, prealloc: bool) {
    let fs = MemFs::new();
    let c = cfg_prealloc(300, prealloc);
    let mut wal = open(&fs, &c).await.unwrap();
    let mut m = Model {
        term: 1,
        ..Model::default()
    };
    for (step, op) in ops.into_iter().enumerate() {
        let ctx = format!("step {step}: {op:?}");
        match op {
            Op::Append(n) => {
                let start = m.next();
                let es: Vec<Entry> = (start..start + n).map(|i| ent(m.term, i)).collect();
                for e in &es {
                    m.entries.insert(key(e).0, key(e));
                }
                append_acked(&mut wal, es).await.unwrap();
            }
            Op::Truncate(n) => {
                if let Some(kept) = m.truncate_point(n) {
                    wal.truncate_after(kept.map(|(t, i)| log_id(t, i)))
                        .await
                        .unwrap();
                    m.apply_truncate(kept);
                }
            }
            Op::Purge(n) => {
                if let Some(at) = m.purge_point(n) {
                    wal.purge(log_id(at.0, at.1)).await.unwrap();
                    m.apply_purge(at);
                }
            }
            Op::Vote(t) => {
                let t = t.max(m.vote.unwrap_or(0));
                wal.save_vote(&openraft::Vote::new(t, 0)).await.unwrap();
                m.vote = Some(t);
            }
            Op::Reopen => {
                wal.sync().await.unwrap();
                drop(wal);
                fs.kill();
                wal = open(&fs, &c).await.unwrap();
            }
            Op::FailedAppendThenCrash(n, seed) => {
                wal.sync().await.unwrap();
                let start = m.next();
                let es: Vec<Entry> = (start..start + n).map(|i| ent(m.term, i)).collect();
                let failed: Vec<_> = es.iter().map(key).collect();
                fs.fail_sync_after(0);
                assert!(append_acked(&mut wal, es).await.is_err(), "{ctx}");
                drop(wal);
                fs.crash_random(&mut rand::rngs::SmallRng::seed_from_u64(seed));
                wal = open(&fs, &c)
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
                let got = read_all(&mut wal).await;
                let mut written = m.keys();
                written.extend(failed);
                assert_prefix(&got, &written, m.entries.len(), &ctx);
                for k in &got[m.entries.len()..] {
                    m.entries.insert(k.0, k.clone());
                }
            }
            Op::FaultyTruncateThenCrash(n, j, seed) => {
                let Some(kept) = m.truncate_point(n) else {
                    continue;
                };
                wal.sync().await.unwrap();
                fs.fail_sync_after(j);
                wal.truncate_after(kept.map(|(t, i)| log_id(t, i)))
                    .await
                    .unwrap();
                wal = crash_and_reopen(wal, &fs, &c, seed, &ctx).await;
                let got = read_all(&mut wal).await;
                let old = m.keys();
                let mut new = m.clone();
                new.apply_truncate(kept);
                assert!(
                    got == old || got == new.keys(),
                    "{ctx}: neither old nor new log: {got:?}"
                );
                if got == new.keys() {
                    m = new;
                } else {
                    m.term += 1; // entries written from now on must differ from the old suffix
                }
            }
            Op::FaultyPurgeThenCrash(n, j, seed) => {
                let Some(at) = m.purge_point(n) else { continue };
                wal.sync().await.unwrap();
                fs.fail_sync_after(j);
                wal.purge(log_id(at.0, at.1)).await.unwrap();
                wal = crash_and_reopen(wal, &fs, &c, seed, &ctx).await;
                let st = wal.get_log_state().await.unwrap();
                let mut new = m.clone();
                new.apply_purge(at);
                if st.last_purged_log_id == new.purged.map(|(t, i)| log_id(t, i)) {
                    m = new;
                } else {
                    assert_eq!(
                        st.last_purged_log_id,
                        m.purged.map(|(t, i)| log_id(t, i)),
                        "{ctx}: purge point"
                    );
                }
            }
        }
        check(&mut wal, &m, &ctx).await;
    }
    // Finally everything must survive a clean reopen too.
    wal.sync().await.unwrap();
    drop(wal);
    fs.crash_drop_unsynced();
    let mut wal = open(&fs, &c).await.unwrap();
    check(&mut wal, &m, "final reopen").await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]
    #[test]
    fn wal_matches_model(ops in proptest::collection::vec(op(), 1..40), prealloc in any::<bool>()) {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run(ops, prealloc));
    }
}
