//! Property: members at the same applied index hold the same whole state — not only the nodes
//! the replica check reads, but every column family: the registry, counters, sessions (so an
//! exactly-once answer is the same on whichever member serves the retry), tokens, the
//! membership and the applied id.

use std::collections::BTreeMap;

use super::world::NODES;

/// `digests`: member id → (applied index, digest of its state there). Returns the index at
/// which every member's digest was compared.
pub fn check(digests: &BTreeMap<u64, (u64, [u8; 32])>) -> Result<u64, String> {
    if digests.len() != NODES.len() {
        let got: Vec<&u64> = digests.keys().collect();
        return Err(format!(
            "digests: only members {got:?} reported a state digest after converging"
        ));
    }
    let mut it = digests.iter();
    let (first_id, (index, digest)) = it.next().expect("three members");
    for (id, (i, d)) in it {
        if i != index {
            return Err(format!(
                "digests: n{first_id} was at applied index {index} and n{id} at {i} when they \
                 reported their state"
            ));
        }
        if d != digest {
            return Err(format!(
                "digests: n{first_id} and n{id} hold different states at applied index {index} \
                 (digests {} and {})",
                hex(digest),
                hex(d)
            ));
        }
    }
    Ok(*index)
}

fn hex(d: &[u8; 32]) -> String {
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_different_state_at_the_same_index_fails() {
        let same: BTreeMap<u64, (u64, [u8; 32])> = (1..=3).map(|id| (id, (40, [7; 32]))).collect();
        assert_eq!(check(&same), Ok(40));
        let mut other = same.clone();
        other.insert(2, (40, [8; 32]));
        let err = check(&other).unwrap_err();
        assert!(
            err.contains("different states at applied index 40"),
            "{err}"
        );
        let mut behind = same.clone();
        behind.insert(3, (39, [7; 32]));
        assert!(check(&behind).is_err());
        let mut missing = same;
        missing.remove(&1);
        assert!(check(&missing).is_err());
    }
}
