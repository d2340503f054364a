//! Property: the history of register writes, CASes and linearizable reads is linearizable,
//! key by key (Wing–Gong search with memoisation of (linearized set, register value)).
//!
//! - An acknowledged write or CAS must take effect between its invocation and completion.
//! - A CAS refused by its precondition is an observation: the register differed from `expect`
//!   at some point in its interval.
//! - A write or CAS with an unknown outcome may take effect at any point after its invocation,
//!   or never (Jepsen's treatment). One whose value nobody ever observed, on a key with no
//!   refused CAS that could depend on it, cannot change the verdict and is left out.
//! - Reads with unknown outcomes and serializable reads are not part of this check (see
//!   `check_values` for the latter).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::history::{Call, History, Key, Op, Outcome};

/// Every register starts at this value (set by the setup before the workload).
pub const INITIAL: i64 = 0;
/// States the search may visit per key before it gives up (reported as a failure).
const BUDGET: u64 = 20_000_000;
/// Memo entries kept per key before the memo is cleared. The memo only prunes states already
/// shown to fail, so clearing it costs time (bounded by `BUDGET`), never the verdict; it bounds
/// memory to a few hundred MB where `BUDGET` states could take gigabytes.
const MEMO_MAX: usize = 2_000_000;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Write(i64),
    Cas(i64, i64),
    CasRefused(i64),
    Read(Option<i64>),
}

#[derive(Clone, Debug)]
struct Entry {
    kind: Kind,
    invoked: u64,
    /// `u64::MAX` for optional (unknown-outcome) operations.
    completed: u64,
    required: bool,
    op: usize,
}

impl Kind {
    /// The register value after this operation at `state`, or `None` if it cannot be
    /// linearized there.
    fn step(self, state: i64) -> Option<i64> {
        match self {
            Kind::Write(v) => Some(v),
            Kind::Cas(e, v) => (state == e).then_some(v),
            Kind::CasRefused(e) => (state != e).then_some(state),
            Kind::Read(r) => (r == Some(state)).then_some(state),
        }
    }
}

fn is_precondition(reason: &str) -> bool {
    reason.starts_with("precondition")
}

/// Splits the history into one list of entries per key.
fn per_key(history: &History) -> BTreeMap<Key, Vec<Entry>> {
    let mut keys: BTreeMap<Key, Vec<Entry>> = BTreeMap::new();
    for (i, op) in history.ops.iter().enumerate() {
        let (key, kind, required) = match (&op.call, &op.outcome) {
            (Call::Write { key, value }, Outcome::Ok(_)) => (*key, Kind::Write(*value), true),
            (Call::Write { key, value }, Outcome::Unknown(_)) => (*key, Kind::Write(*value), false),
            (Call::Cas { key, expect, value }, Outcome::Ok(_)) => {
                (*key, Kind::Cas(*expect, *value), true)
            }
            (Call::Cas { key, expect, value }, Outcome::Unknown(_)) => {
                (*key, Kind::Cas(*expect, *value), false)
            }
            (Call::Cas { key, expect, .. }, Outcome::Fail(r)) if is_precondition(r) => {
                (*key, Kind::CasRefused(*expect), true)
            }
            (
                Call::Read {
                    key,
                    linearizable: true,
                    ..
                },
                Outcome::Ok(v),
            ) => (*key, Kind::Read(*v), true),
            _ => continue,
        };
        keys.entry(key).or_default().push(Entry {
            kind,
            invoked: op.invoked,
            completed: if required { op.completed } else { u64::MAX },
            required,
            op: i,
        });
    }
    for entries in keys.values_mut() {
        prune_unobserved(entries);
    }
    keys
}

/// Drops optional writes whose value was never observed, unless a refused CAS could need them.
fn prune_unobserved(entries: &mut Vec<Entry>) {
    let observed: BTreeSet<i64> = entries
        .iter()
        .filter_map(|e| match e.kind {
            Kind::Read(Some(v)) => Some(v),
            Kind::Cas(expect, _) => Some(expect),
            _ => None,
        })
        .collect();
    let refused_last = entries
        .iter()
        .filter(|e| matches!(e.kind, Kind::CasRefused(_)))
        .map(|e| e.completed)
        .max();
    entries.retain(|e| {
        let value = match e.kind {
            Kind::Write(v) | Kind::Cas(_, v) => v,
            _ => return true,
        };
        e.required || observed.contains(&value) || refused_last.is_some_and(|last| last > e.invoked)
    });
}

struct Search<'a> {
    entries: &'a [Entry],
    memo: HashSet<(Vec<u64>, i64)>,
    visited: u64,
    budget: u64,
}

impl Search<'_> {
    fn run(&mut self, done: &mut Vec<u64>, state: i64, left: usize) -> Result<bool, ()> {
        if left == 0 {
            return Ok(true);
        }
        self.visited += 1;
        if self.visited > self.budget {
            return Err(());
        }
        if self.memo.len() >= MEMO_MAX {
            self.memo.clear();
        }
        if !self.memo.insert((done.clone(), state)) {
            return Ok(false);
        }
        let is_done = |done: &Vec<u64>, i: usize| done[i / 64] & (1 << (i % 64)) != 0;
        let horizon = self
            .entries
            .iter()
            .enumerate()
            .filter(|(i, e)| e.required && !is_done(done, *i))
            .map(|(_, e)| e.completed)
            .min()
            .unwrap_or(u64::MAX);
        for (i, e) in self.entries.iter().enumerate() {
            if e.invoked >= horizon {
                break; // sorted by invocation
            }
            if is_done(done, i) {
                continue;
            }
            if let Some(next) = e.kind.step(state) {
                done[i / 64] |= 1 << (i % 64);
                let r = self.run(done, next, left - usize::from(e.required));
                done[i / 64] &= !(1 << (i % 64));
                if r? {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

/// `Err(report)` naming the first key whose history is not linearizable.
pub fn check(history: &History) -> Result<CheckStats, String> {
    check_within(history, BUDGET)
}

/// [`check`], visiting at most `budget` states per key (past it: a failure).
pub fn check_within(history: &History, budget: u64) -> Result<CheckStats, String> {
    let mut stats = CheckStats::default();
    for (key, mut entries) in per_key(history) {
        entries.sort_by_key(|e| e.invoked);
        let required = entries.iter().filter(|e| e.required).count();
        stats.keys += 1;
        stats.ops += entries.len();
        let mut search = Search {
            entries: &entries,
            memo: HashSet::new(),
            visited: 0,
            budget,
        };
        let mut done = vec![0u64; entries.len().div_ceil(64)];
        let verdict = search.run(&mut done, INITIAL, required);
        stats.visited += search.visited;
        let why = match verdict {
            Ok(true) => continue,
            Ok(false) => "no linearization exists",
            Err(()) => "the search exceeded its budget (treated as a failure; shrink the run)",
        };
        let ops: Vec<&Op> = entries.iter().map(|e| &history.ops[e.op]).collect();
        let mut report = format!(
            "linearizability: key {key}: {why} ({} operations, initial value {INITIAL}):\n",
            ops.len()
        );
        for op in ops {
            report.push_str(&format!("  {op}\n"));
        }
        return Err(report);
    }
    Ok(stats)
}

#[derive(Debug, Default)]
pub struct CheckStats {
    pub keys: usize,
    pub ops: usize,
    pub visited: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A history from (process, call, outcome, invoked, completed) tuples.
    fn h(ops: &[(Call, Outcome, u64, u64)]) -> History {
        let mut history = History::default();
        for (call, outcome, inv, comp) in ops {
            history.ops.push(Op {
                process: 0,
                call: call.clone(),
                outcome: outcome.clone(),
                invoked: *inv,
                completed: *comp,
                invoked_ms: *inv,
                completed_ms: *comp,
            });
        }
        history
    }
    fn w(value: i64) -> Call {
        Call::Write { key: 1, value }
    }
    fn cas(expect: i64, value: i64) -> Call {
        Call::Cas {
            key: 1,
            expect,
            value,
        }
    }
    fn r() -> Call {
        Call::Read {
            key: 1,
            linearizable: true,
            via: None,
        }
    }
    fn ok(v: i64) -> Outcome {
        Outcome::Ok(Some(v))
    }
    fn done() -> Outcome {
        Outcome::Ok(None)
    }
    fn unknown() -> Outcome {
        Outcome::Unknown("timeout".into())
    }

    #[test]
    fn sequential_and_overlapping_histories_pass() {
        let hist = h(&[
            (w(1), done(), 1, 2),
            (r(), ok(1), 3, 4),
            // Overlapping write and read: the read may see either value.
            (w(2), done(), 5, 8),
            (r(), ok(1), 6, 7),
            (r(), ok(2), 9, 10),
            (cas(2, 3), done(), 11, 12),
            (
                cas(2, 4),
                Outcome::Fail("precondition failed".into()),
                13,
                14,
            ),
            (r(), ok(3), 15, 16),
        ]);
        check(&hist).unwrap();
    }

    #[test]
    fn a_stale_read_is_rejected() {
        let hist = h(&[
            (w(1), done(), 1, 2),
            (w(2), done(), 3, 4),
            (r(), ok(1), 5, 6),
        ]);
        let e = check(&hist).unwrap_err();
        assert!(e.contains("key 1: no linearization"), "{e}");
    }

    #[test]
    fn a_lost_acknowledged_write_is_rejected() {
        let hist = h(&[(w(7), done(), 1, 2), (r(), ok(INITIAL), 3, 4)]);
        assert!(check(&hist).is_err());
    }

    #[test]
    fn a_value_never_written_is_rejected() {
        let hist = h(&[(w(1), done(), 1, 2), (r(), ok(99), 3, 4)]);
        assert!(check(&hist).is_err());
    }

    #[test]
    fn reads_going_back_in_time_are_rejected() {
        // 1 was written before 2 began; once a read saw 2, no later read may see 1.
        let hist = h(&[
            (w(1), done(), 1, 2),
            (w(2), done(), 3, 10),
            (r(), ok(2), 4, 5),
            (r(), ok(1), 6, 7),
        ]);
        assert!(check(&hist).is_err());
        // With the writes concurrent, 2 then 1 is fine: w(2), read, w(1), read.
        let concurrent = h(&[
            (w(1), done(), 1, 10),
            (w(2), done(), 2, 10),
            (r(), ok(2), 3, 4),
            (r(), ok(1), 5, 6),
        ]);
        check(&concurrent).unwrap();
    }

    #[test]
    fn a_cas_that_applied_twice_is_rejected() {
        // cas 0->1 succeeded, then a write of 2, then the register reads 1 again.
        let hist = h(&[
            (cas(0, 1), done(), 1, 2),
            (w(2), done(), 3, 4),
            (r(), ok(1), 5, 6),
        ]);
        assert!(check(&hist).is_err());
    }

    #[test]
    fn a_refused_cas_whose_precondition_held_is_rejected() {
        let hist = h(&[
            (w(5), done(), 1, 2),
            (cas(5, 6), Outcome::Fail("precondition failed".into()), 3, 4),
            (r(), ok(5), 5, 6),
        ]);
        assert!(check(&hist).is_err());
    }

    #[test]
    fn unknown_writes_may_or_may_not_have_happened() {
        // Seen: it happened (after its invocation, even long after).
        let seen = h(&[
            (w(1), unknown(), 1, 2),
            (r(), ok(INITIAL), 3, 4),
            (r(), ok(1), 5, 6),
        ]);
        check(&seen).unwrap();
        // Never seen: it did not happen, or was overwritten.
        let unseen = h(&[(w(1), unknown(), 1, 2), (r(), ok(INITIAL), 3, 4)]);
        check(&unseen).unwrap();
        // But it cannot take effect before it was invoked.
        let early = h(&[(r(), ok(1), 1, 2), (w(1), unknown(), 3, 4)]);
        assert!(check(&early).is_err());
        // An unknown CAS applies only where its expectation holds.
        let cas_seen = h(&[
            (w(3), done(), 1, 2),
            (cas(4, 5), unknown(), 3, 4),
            (r(), ok(5), 5, 6),
        ]);
        assert!(check(&cas_seen).is_err());
    }

    #[test]
    fn an_unknown_write_can_explain_a_refused_cas() {
        let hist = h(&[
            (w(1), done(), 1, 2),
            (w(9), unknown(), 3, 4),
            (cas(1, 2), Outcome::Fail("precondition failed".into()), 5, 6),
        ]);
        check(&hist).unwrap();
    }

    /// Twelve overlapping writes and a read of a value none wrote: no linearization, found
    /// within the budget; with a budget of 1,000 states the search gives up, and says so.
    #[test]
    fn a_search_past_its_budget_fails_and_says_so() {
        let mut ops: Vec<_> = (1..=12).map(|v| (w(v), done(), v as u64, 100)).collect();
        ops.push((r(), ok(99), 101, 102));
        let hist = h(&ops);
        let e = check(&hist).unwrap_err();
        assert!(e.contains("no linearization exists"), "{e}");
        let e = check_within(&hist, 1_000).unwrap_err();
        assert!(e.contains("exceeded its budget"), "{e}");
        // And a linearizable history that needs more states than the budget is not passed.
        let mut fine = ops.clone();
        fine.pop();
        fine.push((r(), ok(7), 101, 102));
        let stats = check(&h(&fine)).unwrap();
        assert!(stats.visited > 12, "{stats:?}");
        assert!(check_within(&h(&fine), 5).is_err());
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut hist = h(&[(w(1), done(), 1, 2), (r(), ok(1), 3, 4)]);
        hist.ops.push(Op {
            process: 1,
            call: Call::Read {
                key: 2,
                linearizable: true,
                via: None,
            },
            outcome: ok(1),
            invoked: 5,
            completed: 6,
            invoked_ms: 5,
            completed_ms: 6,
        });
        let e = check(&hist).unwrap_err();
        assert!(e.contains("key 2"), "{e}");
    }
}
