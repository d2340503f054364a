//! Property: a quota is never exceeded on any replica — every usage a replica reported during
//! the run, and at the end, is within the quota tenant's limit, and the final usage matches
//! what the replica actually holds.

use std::collections::BTreeMap;

use super::workload::{QUOTA_NODES, Replica};
use raftgraph::proto::v1 as pb;

pub fn check(
    usage: &[(u64, String, pb::Usage)],
    replicas: &BTreeMap<String, Replica>,
) -> Result<(), String> {
    for (t, node, u) in usage {
        if u.nodes > QUOTA_NODES {
            return Err(format!(
                "quota: at {t} ms {node} reported {} nodes in the quota tenant; limit {QUOTA_NODES}",
                u.nodes
            ));
        }
    }
    for (name, r) in replicas {
        let held = r.quota_tags.len() as u64;
        match &r.usage {
            Some(u) if u.nodes == held && held <= QUOTA_NODES => {}
            other => {
                return Err(format!(
                    "quota: {name} holds {held} nodes in the quota tenant, reports usage \
                     {other:?}, limit {QUOTA_NODES}"
                ));
            }
        }
    }
    Ok(())
}
