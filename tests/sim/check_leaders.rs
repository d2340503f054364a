//! Property: at most one leader per term (election safety), as every node's own Raft metrics
//! reported it.

use std::collections::{BTreeMap, BTreeSet};

pub fn check(leaders: &BTreeMap<u64, BTreeSet<u64>>) -> Result<(), String> {
    for (term, nodes) in leaders {
        if nodes.len() > 1 {
            return Err(format!("leaders: term {term} had leaders {nodes:?}"));
        }
    }
    if leaders.is_empty() {
        return Err("leaders: no node ever led".into());
    }
    Ok(())
}
