//! Property: no read returns a value that was never written. Serializable reads may be stale,
//! so they are left out of the linearizability check, but each must return the initial value
//! or one some write or CAS (acknowledged or in doubt, never a definitely failed one) wrote —
//! and was invoked before the read completed. A serializable read may find no register at all
//! (a replica that has not applied the setup yet); a linearizable one may not.

use std::collections::BTreeMap;

use super::check_linearizable::INITIAL;
use super::history::{Call, History, Outcome};

pub fn check(history: &History) -> Result<(), String> {
    // (key, value) -> when the write that could have produced it was invoked.
    let mut written: BTreeMap<(u64, i64), u64> = BTreeMap::new();
    for op in &history.ops {
        if let (
            Call::Write { key, value } | Call::Cas { key, value, .. },
            Outcome::Ok(_) | Outcome::Unknown(_),
        ) = (&op.call, &op.outcome)
        {
            written.insert((*key, *value), op.invoked);
        }
    }
    for op in &history.ops {
        let (
            Call::Read {
                key, linearizable, ..
            },
            Outcome::Ok(v),
        ) = (&op.call, &op.outcome)
        else {
            continue;
        };
        let fine = match v {
            Some(v) if *v == INITIAL => true,
            Some(v) => written
                .get(&(*key, *v))
                .is_some_and(|invoked| *invoked < op.completed),
            None => !linearizable,
        };
        if !fine {
            return Err(format!(
                "values: a read returned {v:?}, which no write to key {key} invoked before the \
                 read completed could have produced:\n  {op}"
            ));
        }
    }
    Ok(())
}
