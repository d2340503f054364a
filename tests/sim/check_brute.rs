//! The linearizability checker checked: on random small histories its verdict equals that of a
//! brute-force search written from the definition, sharing none of the checker's shortcuts
//! (no split by key, no memo, no pruning of unobserved writes, no horizon).
//!
//! The reference: a history is linearizable if some subset of its unknown-outcome writes and
//! CASes, with every operation that completed (acknowledged writes and CASes, CASes refused by
//! their precondition, linearizable reads), can be put in one total order that respects real
//! time (an operation never follows one invoked after it completed; an unknown one has no
//! completion) and in which every operation is legal on a map of registers that all start at
//! [`INITIAL`].

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::check_linearizable::{INITIAL, check};
use super::history::{Call, History, Key, Op, Outcome};

const PRECONDITION: &str = "precondition failed";

/// One operation as the reference sees it.
#[derive(Clone, Copy, Debug)]
struct Ref {
    key: Key,
    effect: Effect,
    invoked: u64,
    /// `None`: unknown outcome, no completion.
    completed: Option<u64>,
}

#[derive(Clone, Copy, Debug)]
enum Effect {
    Write(i64),
    Cas(i64, i64),
    CasRefused(i64),
    Read(Option<i64>),
}

/// The history's operations that constrain it, each with whether it must be in the order.
fn reference_ops(history: &History) -> Vec<Ref> {
    let mut ops = Vec::new();
    for op in &history.ops {
        let (key, effect) = match &op.call {
            Call::Write { key, value } => (*key, Effect::Write(*value)),
            Call::Cas { key, expect, value } => match &op.outcome {
                Outcome::Fail(r) if r.starts_with("precondition") => {
                    (*key, Effect::CasRefused(*expect))
                }
                _ => (*key, Effect::Cas(*expect, *value)),
            },
            Call::Read {
                key,
                linearizable: true,
                ..
            } => match &op.outcome {
                Outcome::Ok(v) => (*key, Effect::Read(*v)),
                _ => continue,
            },
            _ => continue,
        };
        let completed = match (&op.outcome, effect) {
            (Outcome::Ok(_), _) | (Outcome::Fail(_), Effect::CasRefused(_)) => Some(op.completed),
            (Outcome::Unknown(_) | Outcome::Pending, _) => None,
            // Any other refusal had no effect and observed nothing.
            (Outcome::Fail(_), _) => continue,
        };
        ops.push(Ref {
            key,
            effect,
            invoked: op.invoked,
            completed,
        });
    }
    ops
}

/// Whether `ops` (only those in `chosen`) have a legal order respecting real time.
fn orderable(
    ops: &[Ref],
    chosen: &[usize],
    placed: &mut Vec<usize>,
    regs: &mut Vec<(Key, i64)>,
) -> bool {
    if placed.len() == chosen.len() {
        return true;
    }
    for &b in chosen {
        if placed.contains(&b) {
            continue;
        }
        // Every operation already placed comes before b: none may have been invoked after b
        // completed.
        if let Some(done) = ops[b].completed
            && placed.iter().any(|&a| ops[a].invoked > done)
        {
            continue;
        }
        let state = regs
            .iter()
            .rev()
            .find(|(k, _)| *k == ops[b].key)
            .map_or(INITIAL, |(_, v)| *v);
        let next = match ops[b].effect {
            Effect::Write(v) => Some(v),
            Effect::Cas(e, v) => (state == e).then_some(v),
            Effect::CasRefused(e) => (state != e).then_some(state),
            Effect::Read(r) => (r == Some(state)).then_some(state),
        };
        let Some(next) = next else { continue };
        placed.push(b);
        regs.push((ops[b].key, next));
        let found = orderable(ops, chosen, placed, regs);
        placed.pop();
        regs.pop();
        if found {
            return true;
        }
    }
    false
}

/// The reference verdict: every subset of the unknown operations tried.
fn brute_force(history: &History) -> bool {
    let ops = reference_ops(history);
    let required: Vec<usize> = (0..ops.len())
        .filter(|&i| ops[i].completed.is_some())
        .collect();
    let optional: Vec<usize> = (0..ops.len())
        .filter(|&i| ops[i].completed.is_none())
        .collect();
    (0u32..1 << optional.len()).any(|mask| {
        let mut chosen = required.clone();
        chosen.extend(
            optional
                .iter()
                .enumerate()
                .filter(|(bit, _)| mask & (1 << bit) != 0)
                .map(|(_, &i)| i),
        );
        orderable(&ops, &chosen, &mut Vec::new(), &mut Vec::new())
    })
}

/// A random small history: operations on one or two keys with random overlapping intervals,
/// their outcomes from a hidden linearization (some made unknown, applied or not), then, four
/// times in five, one outcome or interval corrupted (which often leaves it linearizable).
fn random_history(rng: &mut SmallRng) -> History {
    let n = rng.random_range(1..=7usize);
    let keys = rng.random_range(1..=2u64);
    // Distinct event numbers: each operation gets two, invocation before completion.
    let mut events: Vec<u64> = (1..=2 * n as u64).collect();
    events.shuffle(rng);
    let mut next_value = 1i64;
    let mut written: Vec<i64> = vec![INITIAL];
    let mut ops = Vec::new();
    for i in 0..n {
        let (a, b) = (events[2 * i], events[2 * i + 1]);
        let key = rng.random_range(1..=keys);
        let call = match rng.random_range(0..10) {
            0..=3 => {
                next_value += 1;
                written.push(next_value);
                Call::Write {
                    key,
                    value: next_value,
                }
            }
            4..=5 => {
                next_value += 1;
                written.push(next_value);
                Call::Cas {
                    key,
                    expect: written[rng.random_range(0..written.len())],
                    value: next_value,
                }
            }
            _ => Call::Read {
                key,
                linearizable: rng.random_range(0..8) != 0,
                via: None,
            },
        };
        ops.push(Op {
            process: i as u64,
            call,
            outcome: Outcome::Pending,
            invoked: a.min(b),
            completed: a.max(b),
            invoked_ms: a.min(b),
            completed_ms: a.max(b),
        });
    }
    // The hidden order: each operation takes effect at a point inside its interval (an unknown
    // one anywhere after its invocation, or not at all).
    let mut points: Vec<(f64, usize, bool)> = Vec::new();
    for (i, op) in ops.iter_mut().enumerate() {
        let unknown = rng.random_range(0..4) == 0;
        let end = if unknown {
            2.0 * n as f64 + 2.0
        } else {
            op.completed as f64
        };
        let applies = !unknown || rng.random_bool(0.5);
        points.push((rng.random_range(op.invoked as f64..end), i, applies));
        if unknown {
            op.outcome = Outcome::Unknown("timeout".into());
        }
    }
    points.sort_by(|x, y| x.0.total_cmp(&y.0));
    let mut regs = std::collections::BTreeMap::new();
    for (_, i, applies) in points {
        let state = *regs.get(&key_of(&ops[i])).unwrap_or(&INITIAL);
        let unknown = matches!(ops[i].outcome, Outcome::Unknown(_));
        let outcome = match ops[i].call {
            Call::Write { key, value } => {
                if applies {
                    regs.insert(key, value);
                }
                Outcome::Ok(None)
            }
            Call::Cas { key, expect, value } => {
                if state == expect {
                    if applies {
                        regs.insert(key, value);
                    }
                    Outcome::Ok(None)
                } else {
                    Outcome::Fail(PRECONDITION.into())
                }
            }
            Call::Read { .. } => Outcome::Ok(Some(state)),
            _ => unreachable!("the generator makes registers only"),
        };
        if !unknown {
            ops[i].outcome = outcome;
        }
    }
    if rng.random_bool(0.8) {
        let i = rng.random_range(0..n);
        let op = &mut ops[i];
        match rng.random_range(0..3) {
            0 => {
                op.outcome = match &op.outcome {
                    Outcome::Ok(Some(_)) => {
                        Outcome::Ok(Some(written[rng.random_range(0..written.len())]))
                    }
                    Outcome::Ok(None) if matches!(op.call, Call::Cas { .. }) => {
                        Outcome::Fail(PRECONDITION.into())
                    }
                    Outcome::Fail(_) => Outcome::Ok(None),
                    other => other.clone(),
                }
            }
            1 => op.outcome = Outcome::Ok(Some(99)),
            _ => {
                // Moved to the end: completed after every other operation, invoked just before.
                op.invoked = 2 * n as u64 + 1;
                op.completed = 2 * n as u64 + 2;
                if matches!(op.outcome, Outcome::Pending) {
                    op.outcome = Outcome::Unknown("timeout".into());
                }
            }
        }
        // A read's value on a write or CAS is meaningless: such a corruption is undone.
        if !matches!(op.call, Call::Read { .. }) && matches!(op.outcome, Outcome::Ok(Some(_))) {
            op.outcome = Outcome::Ok(None);
        }
    }
    let mut history = History::default();
    history.ops = ops;
    history
}

fn key_of(op: &Op) -> Key {
    match op.call {
        Call::Write { key, .. } | Call::Cas { key, .. } | Call::Read { key, .. } => key,
        _ => unreachable!("the generator makes registers only"),
    }
}

/// 10,000 random histories (`CHECKER_HISTORIES` for more, `CHECKER_SEED` for others): the
/// checker and the brute force agree on each, and both verdicts are well represented.
#[test]
fn the_checker_agrees_with_brute_force() {
    let count: u64 = std::env::var("CHECKER_HISTORIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let seed: u64 = std::env::var("CHECKER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let mut rng = SmallRng::seed_from_u64(seed);
    let (mut yes, mut no, mut with_unknown, mut refused_cas) = (0u64, 0u64, 0u64, 0u64);
    for i in 0..count {
        let history = random_history(&mut rng);
        let expected = brute_force(&history);
        let got = check(&history);
        assert_eq!(
            got.is_ok(),
            expected,
            "history {i} (seed {seed}): the checker says {got:?}, brute force {expected}:\n{}",
            history.render()
        );
        if expected {
            yes += 1;
        } else {
            no += 1;
        }
        let ops = &history.ops;
        with_unknown += u64::from(ops.iter().any(|o| matches!(o.outcome, Outcome::Unknown(_))));
        refused_cas +=
            u64::from(ops.iter().any(|o| {
                matches!(o.call, Call::Cas { .. }) && matches!(o.outcome, Outcome::Fail(_))
            }));
    }
    eprintln!(
        "{count} histories: {yes} linearizable, {no} not; {with_unknown} with an unknown \
         outcome, {refused_cas} with a refused CAS"
    );
    for (what, n) in [
        ("linearizable", yes),
        ("not linearizable", no),
        ("with an unknown outcome", with_unknown),
        ("with a refused CAS", refused_cas),
    ] {
        assert!(n * 5 >= count, "only {n} of {count} histories {what}");
    }
}
