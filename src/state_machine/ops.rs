//! Graph operations of one write request, applied to a transaction.

use std::collections::BTreeSet;
use std::io;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::keys;
use super::txn::{Cf, Fail, Txn, fatal};
use crate::codec;
use crate::command::{
    ApplyError, ClusterLimits, NodeRef, Op, OpResult, Precondition, WriteRequest,
};
use crate::command::{
    EdgeRecord, LABELS_MAX, NodeRecord, PROPERTIES_MAX, Properties, RECORD_BYTES_MAX,
};
use crate::tenant::TenantCounters;

pub(crate) fn corrupt(what: impl std::fmt::Display) -> Fail {
    fatal(io::Error::new(io::ErrorKind::InvalidData, what.to_string()))
}

/// Reads and decodes a stored value; undecodable bytes are corruption (fatal).
pub(crate) fn load<T: DeserializeOwned>(
    txn: &Txn,
    which: Cf,
    key: &[u8],
) -> Result<Option<T>, Fail> {
    match txn.get(which, key)? {
        None => Ok(None),
        Some(b) => codec::decode(&b)
            .map(Some)
            .map_err(|e| corrupt(format_args!("stored value under {key:?}: {e}"))),
    }
}

pub(crate) fn save<T: Serialize>(
    txn: &mut Txn,
    which: Cf,
    key: &[u8],
    value: &T,
) -> Result<(), Fail> {
    let bytes = codec::encode(value).map_err(|e| corrupt(format_args!("encode: {e}")))?;
    txn.put(which, key, bytes)
}

/// Whether a record's id was just allocated from the tenant's counters (so the database has
/// never held its keys: no old value to read for the storage count) or names a stored one.
#[derive(Clone, Copy)]
enum IdIs {
    Fresh,
    Existing,
}
use IdIs::{Existing, Fresh};

/// Applies the operations of `req` (already validated, tenant bound) for entry `index`.
pub(crate) struct Writer<'t, 'a> {
    pub txn: &'t mut Txn<'a>,
    pub tenant: &'t str,
    pub index: u64,
    pub counters: TenantCounters,
    limits: &'t ClusterLimits,
    /// Edges cascaded by this entry's node deletes so far.
    cascaded: u64,
    created: Vec<Option<u64>>,
}

impl<'t, 'a> Writer<'t, 'a> {
    pub fn new(
        txn: &'t mut Txn<'a>,
        tenant: &'t str,
        index: u64,
        counters: TenantCounters,
        limits: &'t ClusterLimits,
    ) -> Self {
        Writer {
            txn,
            tenant,
            index,
            counters,
            limits,
            cascaded: 0,
            created: Vec::new(),
        }
    }

    pub fn run(&mut self, req: &WriteRequest) -> Result<Vec<OpResult>, Fail> {
        for (i, p) in req.preconditions.iter().enumerate() {
            self.check(i, p)?;
        }
        let mut results = Vec::with_capacity(req.operations.len());
        for op in &req.operations {
            let r = self.op(op)?;
            self.created.push(match r {
                OpResult::NodeCreated(id) => Some(id),
                _ => None,
            });
            results.push(r);
        }
        Ok(results)
    }

    fn node_missing(&self, node: u64) -> Fail {
        Fail::Refused(ApplyError::NodeNotFound {
            tenant: self.tenant.to_string(),
            node,
        })
    }

    fn edge_missing(&self, edge: u64) -> Fail {
        Fail::Refused(ApplyError::EdgeNotFound {
            tenant: self.tenant.to_string(),
            edge,
        })
    }

    fn resolve(&self, r: NodeRef) -> u64 {
        match r {
            NodeRef::Id(id) => id,
            // validate() checked that operation j is an earlier CreateNode.
            NodeRef::Created(j) => self.created[j as usize].expect("validated: a node create"),
        }
    }

    fn node(&self, id: u64) -> Result<NodeRecord, Fail> {
        load(self.txn, Cf::Data, &keys::node(id))?.ok_or_else(|| self.node_missing(id))
    }

    fn edge(&self, id: u64) -> Result<EdgeRecord, Fail> {
        load(self.txn, Cf::Data, &keys::edge(id))?.ok_or_else(|| self.edge_missing(id))
    }

    fn check(&self, index: usize, p: &Precondition) -> Result<(), Fail> {
        let failed = |reason: String| {
            Err(Fail::Refused(ApplyError::PreconditionFailed {
                tenant: self.tenant.to_string(),
                index,
                reason,
            }))
        };
        let node = |id| load::<NodeRecord>(self.txn, Cf::Data, &keys::node(id));
        let edge = |id| load::<EdgeRecord>(self.txn, Cf::Data, &keys::edge(id));
        match p {
            Precondition::NodeExists { node: id, exists } => {
                if node(*id)?.is_some() != *exists {
                    return failed(format!("node {id} exists: expected {exists}"));
                }
            }
            Precondition::EdgeExists { edge: id, exists } => {
                if edge(*id)?.is_some() != *exists {
                    return failed(format!("edge {id} exists: expected {exists}"));
                }
            }
            Precondition::NodePropertyEquals {
                node: id,
                key,
                value,
            } => {
                let rec = node(*id)?.ok_or_else(|| self.node_missing(*id))?;
                if rec.properties.get(key) != value.as_ref() {
                    return failed(format!("node {id} property {key:?} differs"));
                }
            }
            Precondition::EdgePropertyEquals {
                edge: id,
                key,
                value,
            } => {
                let rec = edge(*id)?.ok_or_else(|| self.edge_missing(*id))?;
                if rec.properties.get(key) != value.as_ref() {
                    return failed(format!("edge {id} property {key:?} differs"));
                }
            }
            Precondition::NodeVersion { node: id, version } => {
                let rec = node(*id)?.ok_or_else(|| self.node_missing(*id))?;
                if rec.version != *version {
                    return failed(format!("node {id} version {} != {version}", rec.version));
                }
            }
            Precondition::EdgeVersion { edge: id, version } => {
                let rec = edge(*id)?.ok_or_else(|| self.edge_missing(*id))?;
                if rec.version != *version {
                    return failed(format!("edge {id} version {} != {version}", rec.version));
                }
            }
        }
        Ok(())
    }

    fn op(&mut self, op: &Op) -> Result<OpResult, Fail> {
        match op {
            Op::CreateNode { labels, properties } => self.create_node(labels, properties),
            Op::UpdateNode { node, set, remove } => {
                let id = self.resolve(*node);
                let mut rec = self.node(id)?;
                update_properties(&mut rec.properties, set, remove);
                self.put_node(id, rec, Existing)
            }
            Op::AddLabels { node, labels } => {
                let id = self.resolve(*node);
                let mut rec = self.node(id)?;
                for l in labels {
                    if rec.labels.insert(l.clone()) {
                        self.txn.put(Cf::Data, &keys::label(l, id), Vec::new())?;
                    }
                }
                self.put_node(id, rec, Existing)
            }
            Op::RemoveLabels { node, labels } => {
                let id = self.resolve(*node);
                let mut rec = self.node(id)?;
                for l in labels {
                    if rec.labels.remove(l) {
                        self.txn.delete(Cf::Data, &keys::label(l, id))?;
                    }
                }
                self.put_node(id, rec, Existing)
            }
            Op::DeleteNode { node } => self.delete_node(self.resolve(*node)),
            Op::CreateEdge {
                source,
                target,
                edge_type,
                properties,
            } => {
                let (source, target) = (self.resolve(*source), self.resolve(*target));
                self.create_edge(source, target, edge_type, properties)
            }
            Op::UpdateEdge { edge, set, remove } => {
                let mut rec = self.edge(*edge)?;
                update_properties(&mut rec.properties, set, remove);
                self.put_edge(*edge, rec, Existing)?;
                Ok(OpResult::Done)
            }
            Op::DeleteEdge { edge } => {
                let rec = self.edge(*edge)?;
                self.delete_edge(*edge, &rec)?;
                Ok(OpResult::Done)
            }
        }
    }

    fn create_node(
        &mut self,
        labels: &BTreeSet<String>,
        properties: &Properties,
    ) -> Result<OpResult, Fail> {
        let id = self.counters.next_node_id;
        self.counters.next_node_id += 1;
        for l in labels {
            self.txn
                .put_new(Cf::Data, &keys::label(l, id), Vec::new())?;
        }
        let rec = NodeRecord {
            labels: labels.clone(),
            properties: properties.clone(),
            version: self.index,
        };
        self.put_node(id, rec, Fresh)?;
        self.counters.usage.nodes += 1;
        Ok(OpResult::NodeCreated(id))
    }

    /// Stores a node at this entry's version, refusing one past the record limits.
    fn put_node(&mut self, id: u64, mut rec: NodeRecord, id_is: IdIs) -> Result<OpResult, Fail> {
        rec.version = self.index;
        self.check_record(
            format_args!("node {id}"),
            rec.properties.len(),
            rec.labels.len(),
        )?;
        let bytes = codec::encode(&rec).map_err(|e| corrupt(format_args!("encode: {e}")))?;
        self.check_bytes(format_args!("node {id}"), bytes.len())?;
        let key = keys::node(id);
        match id_is {
            Fresh => self.txn.put_new(Cf::Data, &key, bytes)?,
            Existing => self.txn.put(Cf::Data, &key, bytes)?,
        }
        Ok(OpResult::Done)
    }

    fn put_edge(&mut self, id: u64, mut rec: EdgeRecord, id_is: IdIs) -> Result<(), Fail> {
        rec.version = self.index;
        self.check_record(format_args!("edge {id}"), rec.properties.len(), 0)?;
        let bytes = codec::encode(&rec).map_err(|e| corrupt(format_args!("encode: {e}")))?;
        self.check_bytes(format_args!("edge {id}"), bytes.len())?;
        let key = keys::edge(id);
        match id_is {
            Fresh => self.txn.put_new(Cf::Data, &key, bytes),
            Existing => self.txn.put(Cf::Data, &key, bytes),
        }
    }

    /// `what` is formatted only for an error (these run for every record written).
    fn check_record(
        &self,
        what: std::fmt::Arguments<'_>,
        properties: usize,
        labels: usize,
    ) -> Result<(), Fail> {
        let reason = if properties > PROPERTIES_MAX {
            format!("would have {properties} properties, limit {PROPERTIES_MAX}")
        } else if labels > LABELS_MAX {
            format!("would have {labels} labels, limit {LABELS_MAX}")
        } else {
            return Ok(());
        };
        Err(Fail::Refused(ApplyError::InvalidArgument {
            field: format!("tenant {}: {what}", self.tenant),
            reason,
        }))
    }

    fn check_bytes(&self, what: std::fmt::Arguments<'_>, len: usize) -> Result<(), Fail> {
        if len <= RECORD_BYTES_MAX {
            return Ok(());
        }
        Err(Fail::Refused(ApplyError::InvalidArgument {
            field: format!("tenant {}: {what}", self.tenant),
            reason: format!("record would be {len} bytes, limit {RECORD_BYTES_MAX}"),
        }))
    }

    fn create_edge(
        &mut self,
        source: u64,
        target: u64,
        edge_type: &str,
        properties: &Properties,
    ) -> Result<OpResult, Fail> {
        self.node(source)?;
        self.node(target)?;
        let id = self.counters.next_edge_id;
        self.counters.next_edge_id += 1;
        let rec = EdgeRecord {
            source,
            target,
            edge_type: edge_type.to_string(),
            properties: properties.clone(),
            version: self.index,
        };
        self.put_edge(id, rec, Fresh)?;
        let out = keys::adjacency(keys::OUT, source, edge_type, id);
        self.txn
            .put_new(Cf::Data, &out, target.to_be_bytes().to_vec())?;
        let inn = keys::adjacency(keys::IN, target, edge_type, id);
        self.txn
            .put_new(Cf::Data, &inn, source.to_be_bytes().to_vec())?;
        self.counters.usage.edges += 1;
        Ok(OpResult::EdgeCreated(id))
    }

    fn delete_edge(&mut self, id: u64, rec: &EdgeRecord) -> Result<(), Fail> {
        self.txn.delete(Cf::Data, &keys::edge(id))?;
        let out = keys::adjacency(keys::OUT, rec.source, &rec.edge_type, id);
        self.txn.delete(Cf::Data, &out)?;
        let inn = keys::adjacency(keys::IN, rec.target, &rec.edge_type, id);
        self.txn.delete(Cf::Data, &inn)?;
        self.counters.usage.edges =
            self.counters.usage.edges.checked_sub(1).ok_or_else(|| {
                corrupt(format_args!("tenant {}: edge count below 0", self.tenant))
            })?;
        Ok(())
    }

    /// Deletes a node and, in the same entry, every edge into or out of it (all the node
    /// deletes of one entry together cascade to at most `cascade_edges_max` edges, so one
    /// entry's batch stays bounded).
    fn delete_node(&mut self, id: u64) -> Result<OpResult, Fail> {
        let rec = self.node(id)?;
        let left = self.limits.cascade_edges_max.saturating_sub(self.cascaded);
        // Reading one past what is left is enough to know the limit is exceeded.
        let cap = usize::try_from(left.saturating_add(1)).unwrap_or(usize::MAX);
        let mut edges = BTreeSet::new();
        for dir in [keys::OUT, keys::IN] {
            let prefix = keys::adjacency_prefix(dir, id, None);
            for (k, _) in self.txn.scan(Cf::Data, &prefix, cap)? {
                let edge = keys::adjacency_edge(&k)
                    .ok_or_else(|| corrupt(format_args!("adjacency key {k:?}")))?;
                edges.insert(edge);
            }
        }
        let n = edges.len() as u64;
        if n > left {
            return Err(Fail::Refused(ApplyError::CascadeTooLarge {
                tenant: self.tenant.to_string(),
                node: id,
                edges: self.cascaded + n,
                limit: self.limits.cascade_edges_max,
            }));
        }
        self.cascaded += n;
        for e in edges {
            let erec = self.edge(e).map_err(|_| {
                corrupt(format_args!(
                    "tenant {}: adjacency names missing edge {e}",
                    self.tenant
                ))
            })?;
            self.delete_edge(e, &erec)?;
        }
        for l in &rec.labels {
            self.txn.delete(Cf::Data, &keys::label(l, id))?;
        }
        self.txn.delete(Cf::Data, &keys::node(id))?;
        self.counters.usage.nodes =
            self.counters.usage.nodes.checked_sub(1).ok_or_else(|| {
                corrupt(format_args!("tenant {}: node count below 0", self.tenant))
            })?;
        Ok(OpResult::Done)
    }
}

fn update_properties(props: &mut Properties, set: &Properties, remove: &BTreeSet<String>) {
    for (k, v) in set {
        props.insert(k.clone(), v.clone());
    }
    for k in remove {
        props.remove(k);
    }
}
