//! Property: the server refused only what the workload provokes (CAS preconditions, the quota
//! tenant's node limit), and the run provoked both — a run without a refused CAS or a quota
//! refusal would say nothing about how they are applied and replicated.

use super::world::Refused;

pub fn check(refused: &Refused) -> Result<(), String> {
    if let Some(first) = refused.unexpected.first() {
        return Err(format!(
            "refusals: {} calls were refused in a way the workload never provokes; the first: {first}",
            refused.unexpected.len()
        ));
    }
    if refused.precondition == 0 {
        return Err("refusals: no CAS was refused by its precondition (coverage)".into());
    }
    if refused.quota == 0 {
        return Err("refusals: no create was refused by the quota (coverage)".into());
    }
    Ok(())
}
