//! Log matching and monotonic progress, every seed.
//!
//! - At each index, every member that applied an entry applied the same one: a fingerprint of
//!   the whole entry (term, payload) is compared across members and across one member's boots,
//!   so a committed entry that changed, or a replica that applied a different one, fails.
//! - A member starts only at an applied index it finished applying (in an earlier boot) or
//!   installed a snapshot of: an entry's effects and its applied id are written together.
//! - On each member the term never goes back, across restarts and power loss too (the vote is
//!   durable); within one boot the commit point and the applied point never go back.

use super::world::Applies;

/// Returns how many indexes were applied and compared.
pub fn check(applies: &Applies, backwards: &[String]) -> Result<usize, String> {
    if let Some(first) = applies.violations.first() {
        return Err(format!(
            "log matching: {} of {} applications disagreed with the first at their index; \
             the first:\n  {first}",
            applies.violations.len(),
            applies.count
        ));
    }
    if let Some(first) = applies.unfinished.first() {
        return Err(format!(
            "atomic apply: {} boots started half-way through an entry; the first:\n  {first}",
            applies.unfinished.len()
        ));
    }
    if let Some(first) = backwards.first() {
        return Err(format!(
            "monotonic: {} regressions; the first:\n  {first}",
            backwards.len()
        ));
    }
    if applies.first.is_empty() {
        // A run always applies entries (setup writes); none means the observer is not wired.
        return Err("log matching: no application was observed".into());
    }
    Ok(applies.first.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_different_entry_at_one_index_fails() {
        let mut a = Applies::default();
        a.first.insert(5, (2, 0xaa, "n1 boot 1".into()));
        a.violations
            .push("n2 boot 1 applied entry 5 of term 2 (fingerprint bb)".into());
        a.count = 2;
        let err = check(&a, &[]).unwrap_err();
        assert!(err.starts_with("log matching: 1 of 2"), "{err}");
        assert!(check(&Applies::default(), &[]).is_err());
        let mut ok = Applies::default();
        ok.first.insert(1, (1, 1, "n1 boot 1".into()));
        assert_eq!(check(&ok, &[]), Ok(1));
        assert!(check(&ok, &["n1 boot 2: term 3 after term 4".into()]).is_err());
    }
}
