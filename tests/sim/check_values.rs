//! Property: no read returns a value that was never written. Serializable reads may be stale,
//! so they are left out of the linearizability check, but each must return the initial value
//! or one some write or CAS (acknowledged or in doubt, never a definitely failed one) wrote.

use std::collections::BTreeSet;

use super::check_linearizable::INITIAL;
use super::history::{Call, History, Outcome};

pub fn check(history: &History) -> Result<(), String> {
    let mut written: BTreeSet<(u64, i64)> = BTreeSet::new();
    for op in &history.ops {
        if let (
            Call::Write { key, value } | Call::Cas { key, value, .. },
            Outcome::Ok(_) | Outcome::Unknown(_),
        ) = (&op.call, &op.outcome)
        {
            written.insert((*key, *value));
        }
    }
    for op in &history.ops {
        if let (Call::Read { key, .. }, Outcome::Ok(v)) = (&op.call, &op.outcome) {
            match v {
                Some(v) if *v == INITIAL || written.contains(&(*key, *v)) => {}
                _ => {
                    return Err(format!(
                        "values: a read returned {v:?}, which no write to key {key} could have \
                         produced:\n  {op}"
                    ));
                }
            }
        }
    }
    Ok(())
}
