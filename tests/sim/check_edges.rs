//! Property: edges and the deletes that cascade them, against every replica's final state.
//!
//! - No edge is left dangling: both ends of every edge in the quota tenant are nodes the replica
//!   holds (a node delete removes its edges in the same entry).
//! - A create acknowledged with its edge, whose two nodes are both still held, still has that
//!   edge (only a cascade removes one).
//! - The replica's edge usage equals the edges it holds, within the tenant's quota.
//! - Every replica holds the same edges.

use std::collections::BTreeMap;

use super::history::{Call, History, Outcome};
use super::workload::{QUOTA_EDGES, Replica};

/// An edge as a replica holds it: (id, source, target).
type EdgeRow = (u64, u64, u64);

/// Returns how many edges the first replica holds.
pub fn check(history: &History, replicas: &BTreeMap<String, Replica>) -> Result<usize, String> {
    let mut first: Option<(&String, &[EdgeRow])> = None;
    for (name, r) in replicas {
        for (id, source, target) in &r.quota_edges {
            for end in [source, target] {
                if !r.quota_tags.contains_key(end) {
                    return Err(format!(
                        "edges: {name} holds edge {id} ({source} -> {target}), but not node {end}"
                    ));
                }
            }
        }
        let held = r.quota_edges.len() as u64;
        let used = r.usage.as_ref().map(|u| u.edges);
        if used != Some(held) || held > QUOTA_EDGES {
            return Err(format!(
                "edges: {name} holds {held} edges in the quota tenant and reports {used:?}; \
                 limit {QUOTA_EDGES}"
            ));
        }
        for op in &history.ops {
            if let (
                Call::Create {
                    edge_to: Some(to), ..
                },
                Outcome::Ok(Some(id)),
            ) = (&op.call, &op.outcome)
            {
                let id = *id as u64;
                let both = r.quota_tags.contains_key(&id) && r.quota_tags.contains_key(to);
                if both && !r.quota_edges.iter().any(|e| e.1 == id && e.2 == *to) {
                    return Err(format!(
                        "edges: {name} holds nodes {id} and {to} but not the edge an \
                         acknowledged create made between them"
                    ));
                }
            }
        }
        match first {
            None => first = Some((name, &r.quota_edges)),
            Some((other, edges)) if edges != r.quota_edges.as_slice() => {
                return Err(format!(
                    "edges: {other} holds {edges:?} and {name} holds {:?}",
                    r.quota_edges
                ));
            }
            Some(_) => {}
        }
    }
    Ok(first.map_or(0, |f| f.1.len()))
}
