//! A consistency check of one tenant (an fsck): recounts usage from the column family and
//! checks every index against the records. O(tenant size) in time and memory: for tests and
//! operators, not for the request path.

use std::collections::{BTreeMap, BTreeSet};

use rocksdb::IteratorMode;

use super::keys;
use super::read::{GraphReader, ReadError};
use super::store::rocks_err;
use crate::codec;
use crate::command::{EdgeRecord, NodeRecord};
use crate::tenant::Usage;

/// What [`GraphReader::verify_tenant`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantCheck {
    /// Nodes, edges and key + value bytes counted from the column family.
    pub recount: Usage,
    /// The usage the tenant's counters record.
    pub recorded: Usage,
    /// Every inconsistency between records and indexes, described (empty when consistent).
    pub problems: Vec<String>,
}

#[derive(Default)]
struct Seen {
    nodes: BTreeMap<u64, BTreeSet<String>>,
    edges: BTreeMap<u64, (u64, u64, String)>,
    out: BTreeSet<Vec<u8>>,
    inn: BTreeSet<Vec<u8>>,
    labels: BTreeSet<Vec<u8>>,
    problems: Vec<String>,
}

impl GraphReader {
    /// Recounts a tenant and cross-checks its indexes (see [`TenantCheck`]).
    pub fn verify_tenant(&self, tenant: &str) -> Result<TenantCheck, ReadError> {
        let recorded = self.tenant(tenant)?.usage;
        let store = self.shared_store();
        let cf = store.cf(&keys::tenant_cf(tenant)).ok_or_else(|| {
            ReadError::Io(std::io::Error::other(format!(
                "tenant {tenant}: no column family"
            )))
        })?;
        let snap = store.db().snapshot();
        let mut recount = Usage::default();
        let mut seen = Seen::default();
        for kv in snap.iterator_cf(&cf, IteratorMode::Start) {
            let (k, v) = kv.map_err(|e| rocks_err("verify", e))?;
            recount.storage_bytes += (k.len() + v.len()) as u64;
            seen.record(&k, &v, &mut recount);
        }
        seen.cross_check();
        Ok(TenantCheck {
            recount,
            recorded,
            problems: seen.problems,
        })
    }
}

impl Seen {
    fn record(&mut self, k: &[u8], v: &[u8], usage: &mut Usage) {
        let id = keys::trailing_id(k);
        match (k.first(), id) {
            (Some(&keys::NODE), Some(id)) if k.len() == 9 => {
                usage.nodes += 1;
                match codec::decode::<NodeRecord>(v) {
                    Ok(r) => {
                        self.nodes.insert(id, r.labels);
                    }
                    Err(e) => self.problems.push(format!("node {id}: undecodable: {e}")),
                }
            }
            (Some(&keys::EDGE), Some(id)) if k.len() == 9 => {
                usage.edges += 1;
                match codec::decode::<EdgeRecord>(v) {
                    Ok(r) => {
                        self.edges.insert(id, (r.source, r.target, r.edge_type));
                    }
                    Err(e) => self.problems.push(format!("edge {id}: undecodable: {e}")),
                }
            }
            (Some(&keys::OUT), Some(_)) => {
                self.out.insert([k, v].concat());
            }
            (Some(&keys::IN), Some(_)) => {
                self.inn.insert([k, v].concat());
            }
            (Some(&keys::LABEL), Some(_)) => {
                self.labels.insert(k.to_vec());
            }
            _ => self.problems.push(format!("unknown key {k:?}")),
        }
    }

    fn cross_check(&mut self) {
        let mut want_out = BTreeSet::new();
        let mut want_in = BTreeSet::new();
        for (&id, (s, t, ty)) in &self.edges {
            for end in [s, t] {
                if !self.nodes.contains_key(end) {
                    self.problems
                        .push(format!("edge {id}: end node {end} missing"));
                }
            }
            want_out.insert(
                [
                    keys::adjacency(keys::OUT, *s, ty, id),
                    t.to_be_bytes().to_vec(),
                ]
                .concat(),
            );
            want_in.insert(
                [
                    keys::adjacency(keys::IN, *t, ty, id),
                    s.to_be_bytes().to_vec(),
                ]
                .concat(),
            );
        }
        let want_labels: BTreeSet<Vec<u8>> = self
            .nodes
            .iter()
            .flat_map(|(&id, ls)| ls.iter().map(move |l| keys::label(l, id)))
            .collect();
        for (what, want, got) in [
            ("out-adjacency", &want_out, &self.out),
            ("in-adjacency", &want_in, &self.inn),
            ("label index", &want_labels, &self.labels),
        ] {
            for missing in want.difference(got) {
                self.problems.push(format!("{what}: missing {missing:?}"));
            }
            for extra in got.difference(want) {
                self.problems.push(format!("{what}: stray {extra:?}"));
            }
        }
    }
}
