//! Property: a write of several operations is applied whole or not at all. Transfers move
//! money between accounts in one write of two updates, so the accounts' sum never changes:
//! every read of all the accounts (one label page, one point in time) and every replica at the
//! end must hold `ACCOUNTS * BALANCE`. A half-applied transfer — one update applied, or
//! applied on one replica and not another — changes a sum somewhere.

use std::collections::BTreeMap;

use super::history::{Call, History, Outcome};
use super::workload::{ACCOUNTS, BALANCE, Replica};

pub const TOTAL: i64 = ACCOUNTS as i64 * BALANCE;

/// Returns how many reads of all the accounts were checked.
pub fn check(history: &History, replicas: &BTreeMap<String, Replica>) -> Result<usize, String> {
    let mut reads = 0;
    for op in &history.ops {
        let Call::Accounts { linearizable, .. } = &op.call else {
            continue;
        };
        let Outcome::Ok(sum) = &op.outcome else {
            continue;
        };
        reads += 1;
        match sum {
            Some(TOTAL) => {}
            // A serializable read may reach a replica that has not applied the setup yet.
            None if !linearizable => {}
            other => {
                return Err(format!(
                    "accounts: a read saw the accounts sum to {other:?}, not {TOTAL}:\n  {op}"
                ));
            }
        }
    }
    for (name, r) in replicas {
        let sum: i64 = r.accounts.values().sum();
        if r.accounts.len() != ACCOUNTS || sum != TOTAL {
            return Err(format!(
                "accounts: {name} holds accounts {:?} (sum {sum}), expected {ACCOUNTS} summing \
                 to {TOTAL}",
                r.accounts
            ));
        }
    }
    Ok(reads)
}
