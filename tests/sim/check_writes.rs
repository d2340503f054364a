//! Property: no acknowledged write is lost, none appears that was never written, and a retried
//! write never applies twice — checked on the quota tenant's creates and deletes, whose effects
//! are counted, against every replica's final state.
//!
//! - A create acknowledged with id `i` and not (possibly) deleted since must be present on
//!   every replica, with its tag.
//! - Every node present must carry the tag of a create that was acknowledged or in doubt.
//! - No tag appears on two nodes, nor on a node other than the one its acknowledged create
//!   returned (one request applied twice, even if one copy was deleted since).
//! - A node acknowledged as deleted is absent.

use std::collections::{BTreeMap, BTreeSet};

use super::history::{Call, History, Outcome};
use super::workload::Replica;

pub fn check(history: &History, replicas: &BTreeMap<String, Replica>) -> Result<(), String> {
    let mut acked: BTreeMap<i64, u64> = BTreeMap::new(); // tag -> id
    let mut possible: BTreeSet<i64> = BTreeSet::new();
    let mut deleted: BTreeSet<u64> = BTreeSet::new();
    let mut maybe_deleted: BTreeSet<u64> = BTreeSet::new();
    for op in &history.ops {
        match (&op.call, &op.outcome) {
            (Call::Create { tag, .. }, Outcome::Ok(Some(id))) => {
                acked.insert(*tag, *id as u64);
                possible.insert(*tag);
            }
            (Call::Create { tag, .. }, Outcome::Unknown(_)) => {
                possible.insert(*tag);
            }
            (Call::Delete { id, .. }, Outcome::Ok(_)) => {
                deleted.insert(*id);
            }
            (Call::Delete { id, .. }, Outcome::Unknown(_)) => {
                maybe_deleted.insert(*id);
            }
            _ => {}
        }
    }
    for (name, r) in replicas {
        let mut tags_seen: BTreeMap<i64, u64> = BTreeMap::new();
        for (id, tag) in &r.quota_tags {
            if !possible.contains(tag) {
                return Err(format!(
                    "writes: {name} holds node {id} with tag {tag}, which no create that could \
                     have succeeded wrote (invented)"
                ));
            }
            if let Some(first) = acked.get(tag).filter(|first| *first != id) {
                return Err(format!(
                    "writes: {name} holds node {id} with tag {tag}, whose create was acknowledged \
                     as node {first}: one create applied twice"
                ));
            }
            if let Some(other) = tags_seen.insert(*tag, *id) {
                return Err(format!(
                    "writes: {name} holds nodes {other} and {id} with the same tag {tag}: one \
                     create applied twice"
                ));
            }
            if deleted.contains(id) {
                return Err(format!(
                    "writes: {name} still holds node {id}, whose delete was acknowledged"
                ));
            }
        }
        for (tag, id) in &acked {
            if deleted.contains(id) || maybe_deleted.contains(id) {
                continue;
            }
            match r.quota_tags.get(id) {
                Some(t) if t == tag => {}
                other => {
                    return Err(format!(
                        "writes: {name} lost the acknowledged create of node {id} (tag {tag}); \
                         it holds {other:?}"
                    ));
                }
            }
        }
    }
    Ok(())
}
