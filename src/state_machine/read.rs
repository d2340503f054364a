//! Reads for the server: tenants, nodes, edges, neighbors, label lookups and scans — every list
//! paginated — and the state digests.

use std::io;
use std::sync::{Arc, Weak};

use rocksdb::{Direction as ScanDir, IteratorMode, ReadOptions};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::keys;
use super::shared::Shared;
use super::snapshot::{Item, cf_handles, registered_cfs, walk};
use super::store::{Rocks, Store, rocks_err};
use super::stream::StateHasher;
use crate::auth::{Credential, TokenInfo, TokenRecord};
use crate::codec;
use crate::command::{ApplyError, ClusterLimits};
use crate::command::{Direction, Edge, EdgeRecord, Node, NodeRecord, validate_name};
use crate::raft::LogId;
use crate::tenant::{
    RateLimits, TenantConfig, TenantCounters, TenantInfo, TenantRecord, validate_tenant_id,
};

type RawPair = (Box<[u8]>, Box<[u8]>);

/// Items one page may hold.
pub const PAGE_ITEMS_MAX: usize = 1_000;
/// A page stops early once its records reach this many bytes (always holding at least one):
/// at most 8 MiB + one 4 MiB node of records, which stays within the 64 MiB answer limit
/// (`wire::CLIENT_ANSWER_BYTES_MAX`) even where protobuf encodes larger than the stored form
/// (e.g. 4 bytes per null in a list against 1). Its `next` cursor continues where it stopped.
pub const PAGE_BYTES_MAX: usize = 8 << 20;

/// A read failed: a deterministic refusal (bad argument, no such tenant) or local I/O.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Refused(#[from] ApplyError),
    #[error("state machine read: {0}")]
    Io(#[from] io::Error),
}

/// One page of a list; pass `next` back as `after` to continue. `next` is None on the last page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Vec<u8>>,
}

/// One adjacency entry: the edge and the node at its other end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neighbor {
    pub edge: u64,
    pub edge_type: String,
    pub node: u64,
}

/// A client's exactly-once session: its last applied sequence and the entry that applied it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub sequence: u64,
    pub last_index: u64,
}

/// Whether the state machine's database has closed (see [`GraphReader::closing`]): its
/// RocksDB lock released, so the directory can be opened again.
pub struct Closing {
    shared: Weak<Shared>,
    store: Weak<Store>,
}

impl Closing {
    /// Handles on the state machine or its current database still alive (0 once closed).
    pub fn holders(&self) -> usize {
        self.shared.strong_count() + self.store.strong_count()
    }
}

/// A cheap, cloneable read handle on the state machine's current database.
#[derive(Clone)]
pub struct GraphReader {
    shared: Arc<Shared>,
}

fn corrupt(what: String) -> ReadError {
    ReadError::Io(io::Error::new(io::ErrorKind::InvalidData, what))
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ReadError> {
    codec::decode(bytes).map_err(|e| corrupt(format!("{what}: {e}")))
}

fn invalid(field: &str, reason: String) -> ReadError {
    ReadError::Refused(ApplyError::InvalidArgument {
        field: field.into(),
        reason,
    })
}

fn check_limit(limit: usize) -> Result<(), ReadError> {
    if limit == 0 || limit > PAGE_ITEMS_MAX {
        return Err(invalid(
            "limit",
            format!("{limit} outside 1..={PAGE_ITEMS_MAX}"),
        ));
    }
    Ok(())
}

impl GraphReader {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        GraphReader { shared }
    }

    fn store(&self) -> Arc<Store> {
        self.shared.store()
    }

    pub(crate) fn shared_store(&self) -> Arc<Store> {
        self.shared.store()
    }

    /// Watches for the database to close: once every handle on the state machine is gone and
    /// no task holds the current database any more. Take it after Raft has stopped (no
    /// install can then replace the database).
    pub fn closing(&self) -> Closing {
        Closing {
            shared: Arc::downgrade(&self.shared),
            store: Arc::downgrade(&self.shared.store()),
        }
    }

    fn meta_get(&self, store: &Store, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        let cf = store.meta()?;
        Ok(store
            .db()
            .get_cf(&cf, key)
            .map_err(|e| rocks_err("read", e))?)
    }

    /// The applied log id of the database readers see.
    pub fn applied(&self) -> Result<Option<LogId>, ReadError> {
        let store = self.store();
        match self.meta_get(&store, keys::APPLIED)? {
            Some(b) => Ok(Some(decode(&b, "applied id")?)),
            None => Ok(None),
        }
    }

    /// The replicated cluster limits this replica has applied (the defaults before any were
    /// set).
    pub fn limits(&self) -> Result<ClusterLimits, ReadError> {
        let store = self.store();
        match self.meta_get(&store, keys::GLOBALS)? {
            Some(b) => Ok(decode::<super::apply::Globals>(&b, "globals")?.limits),
            None => Ok(ClusterLimits::default()),
        }
    }

    /// The session of `client_id` in `owner`'s space, if the table holds one.
    pub fn session(
        &self,
        owner: Credential,
        client_id: u64,
    ) -> Result<Option<SessionInfo>, ReadError> {
        let store = self.store();
        let Some(bytes) = self.meta_get(&store, &keys::session(owner, client_id))? else {
            return Ok(None);
        };
        let s: super::apply::Session = decode(&bytes, "session")?;
        Ok(Some(SessionInfo {
            sequence: s.sequence,
            last_index: s.last_index,
        }))
    }

    fn record(&self, store: &Store, tenant: &str) -> Result<TenantRecord, ReadError> {
        validate_tenant_id(tenant).map_err(ApplyError::from)?;
        let bytes = self
            .meta_get(store, &keys::tenant_record(tenant))?
            .ok_or_else(|| ApplyError::TenantNotFound {
                tenant: tenant.to_string(),
            })?;
        decode(&bytes, &format!("tenant {tenant} record"))
    }

    fn counters(&self, store: &Store, tenant: &str) -> Result<TenantCounters, ReadError> {
        let bytes = self
            .meta_get(store, &keys::tenant_counters(tenant))?
            .ok_or_else(|| corrupt(format!("tenant {tenant}: counters missing")))?;
        decode(&bytes, &format!("tenant {tenant} counters"))
    }

    /// A tenant with its usage; secrets redacted.
    pub fn tenant(&self, tenant: &str) -> Result<TenantInfo, ReadError> {
        let store = self.store();
        let rec = self.record(&store, tenant)?;
        Ok(rec.info(&self.counters(&store, tenant)?))
    }

    /// `tenant`'s throughput limits (unlimited when none are set); `None` when there is no such
    /// tenant. Remembered until the next admin entry applies.
    pub fn rate_limits(&self, tenant: &str) -> Result<Option<RateLimits>, ReadError> {
        let store = self.store();
        store.rate_limits.get(tenant, || {
            // Only a valid id can name a tenant.
            if validate_tenant_id(tenant).is_err() {
                return Ok(None);
            }
            if let Some(b) = self.meta_get(&store, &keys::tenant_rate_limits(tenant))? {
                return Ok(Some(decode(&b, &format!("tenant {tenant} rate limits"))?));
            }
            let exists = self
                .meta_get(&store, &keys::tenant_record(tenant))?
                .is_some();
            Ok(exists.then_some(RateLimits::UNLIMITED))
        })
    }

    /// `tenant`'s config as stored: its secrets sealed, never plain. For re-sealing them under
    /// a new key; never for an answer (answers carry [`TenantConfig::redacted`]).
    pub fn sealed_config(&self, tenant: &str) -> Result<TenantConfig, ReadError> {
        Ok(self.record(&self.store(), tenant)?.config)
    }

    /// Tenants in id order, after `after` (exclusive).
    pub fn tenants(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<TenantInfo>, ReadError> {
        check_limit(limit)?;
        let store = self.store();
        let cf = store.meta()?;
        let start = match after {
            Some(a) => {
                let mut k = keys::tenant_record(a);
                k.push(0); // just past `a`'s own key
                k
            }
            None => vec![keys::TENANT],
        };
        let mut items = Vec::new();
        // Records' bytes (configs can be large): the page stops once they reach the budget.
        let mut bytes = 0usize;
        let mut full = false;
        let mode = IteratorMode::From(&start, ScanDir::Forward);
        for kv in store.db().iterator_cf(&cf, mode) {
            let (k, v) = kv.map_err(|e| rocks_err("list tenants", e))?;
            if k.first() != Some(&keys::TENANT) {
                break;
            }
            if items.len() == limit || bytes >= PAGE_BYTES_MAX {
                full = true;
                break;
            }
            bytes += v.len();
            let rec: TenantRecord = decode(&v, "tenant record")?;
            let counters = self.counters(&store, &rec.id)?;
            items.push(rec.info(&counters));
        }
        let next = full.then(|| items.last().map(|t| t.id.clone().into_bytes()));
        Ok(Page {
            items,
            next: next.flatten(),
        })
    }

    /// The record of token `id`, if it exists (revoked tokens do not). Remembered until the
    /// next admin entry applies.
    pub fn token(&self, id: u64) -> Result<Option<Arc<TokenRecord>>, ReadError> {
        let store = self.store();
        store
            .tokens
            .get(&id, || match self.meta_get(&store, &keys::token(id))? {
                Some(b) => Ok(Some(Arc::new(decode(&b, "token record")?))),
                None => Ok(None),
            })
    }

    /// Tokens in id order after `after` (exclusive); with `tenant`, only that tenant's. At most
    /// [`TOKENS_MAX`](crate::auth::TOKENS_MAX) records are read per page.
    pub fn tokens(
        &self,
        tenant: Option<&str>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<TokenInfo>, ReadError> {
        check_limit(limit)?;
        let store = self.store();
        let cf = store.meta()?;
        let start = match after {
            Some(u64::MAX) => {
                return Ok(Page {
                    items: Vec::new(),
                    next: None,
                });
            }
            Some(a) => keys::token(a + 1).to_vec(),
            None => vec![keys::TOKEN],
        };
        let mut items = Vec::new();
        let mut full = false;
        let mode = IteratorMode::From(&start, ScanDir::Forward);
        for kv in store.db().iterator_cf(&cf, mode) {
            let (k, v) = kv.map_err(|e| rocks_err("list tokens", e))?;
            if k.first() != Some(&keys::TOKEN) || k.len() != 9 {
                break;
            }
            let rec: TokenRecord = decode(&v, "token record")?;
            if tenant.is_some() && rec.scope.tenant() != tenant {
                continue;
            }
            if items.len() == limit {
                full = true;
                break;
            }
            items.push(rec.info());
        }
        let next = full.then(|| {
            items
                .last()
                .map(|t: &TokenInfo| t.id.to_be_bytes().to_vec())
        });
        Ok(Page {
            items,
            next: next.flatten(),
        })
    }

    /// Runs `f` with the store and the column family of an enabled tenant.
    fn with_tenant<T>(
        &self,
        tenant: &str,
        f: impl FnOnce(&Store, &Arc<rocksdb::BoundColumnFamily<'_>>) -> Result<T, ReadError>,
    ) -> Result<T, ReadError> {
        let store = self.store();
        let disabled = || {
            Err(ApplyError::TenantDisabled {
                tenant: tenant.to_string(),
            }
            .into())
        };
        let enabled = store
            .tenants
            .enabled(tenant, || self.record(&store, tenant).map(|r| r.enabled))?;
        if !enabled {
            return disabled();
        }
        let Some(cf) = store.cf(&keys::tenant_cf(tenant)) else {
            // Deleted since the cache learned of it: answer as the record now says.
            if !self.record(&store, tenant)?.enabled {
                return disabled();
            }
            return Err(corrupt(format!("tenant {tenant}: column family missing")));
        };
        f(&store, &cf)
    }

    pub fn node(&self, tenant: &str, id: u64) -> Result<Option<Node>, ReadError> {
        self.get_record(tenant, &keys::node(id), id, NodeRecord::into_node)
    }

    pub fn edge(&self, tenant: &str, id: u64) -> Result<Option<Edge>, ReadError> {
        self.get_record(tenant, &keys::edge(id), id, EdgeRecord::into_edge)
    }

    /// One stored record of an enabled tenant, decoded as `R` and shown as `T`.
    fn get_record<R: DeserializeOwned, T>(
        &self,
        tenant: &str,
        key: &[u8],
        id: u64,
        view: fn(R, u64) -> T,
    ) -> Result<Option<T>, ReadError> {
        self.with_tenant(tenant, |store, cf| {
            let v = store
                .db()
                .get_cf(cf, key)
                .map_err(|e| rocks_err("read record", e))?;
            v.map(|b| decode::<R>(&b, &format!("record {key:?}")).map(|r| view(r, id)))
                .transpose()
        })
    }

    /// Pairs under `prefix` after the cursor `after` (a `next` from an earlier page).
    fn page(
        store: &Store,
        cf: &Arc<rocksdb::BoundColumnFamily<'_>>,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<RawPair>, Option<Vec<u8>>), ReadError> {
        Self::page_at(store, cf, prefix, after, limit, None)
    }

    /// [`GraphReader::page`] at `snapshot` (`None`: the latest state).
    fn page_at(
        store: &Store,
        cf: &Arc<rocksdb::BoundColumnFamily<'_>>,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
        snapshot: Option<&rocksdb::SnapshotWithThreadMode<'_, Rocks>>,
    ) -> Result<(Vec<RawPair>, Option<Vec<u8>>), ReadError> {
        check_limit(limit)?;
        let start = match after {
            Some(a) if !a.starts_with(prefix) => {
                return Err(invalid(
                    "after",
                    "cursor does not belong to this list".into(),
                ));
            }
            Some(a) => {
                let mut k = a.to_vec();
                k.push(0); // the first key after the cursor
                k
            }
            None => prefix.to_vec(),
        };
        let mut opts = ReadOptions::default();
        if let Some(end) = keys::prefix_end(prefix) {
            opts.set_iterate_upper_bound(end);
        }
        if let Some(snap) = snapshot {
            opts.set_snapshot(snap);
        }
        let mode = IteratorMode::From(&start, ScanDir::Forward);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut full = false;
        for kv in store.db().iterator_cf_opt(cf, opts, mode) {
            let (k, v) = kv.map_err(|e| rocks_err("scan", e))?;
            bytes += k.len() + v.len();
            out.push((k, v));
            if out.len() == limit || bytes >= PAGE_BYTES_MAX {
                full = true;
                break;
            }
        }
        let next = full.then(|| out.last().map(|(k, _)| k.to_vec()));
        Ok((out, next.flatten()))
    }

    /// Edges out of or into `node`, optionally of one type, with the node at the other end.
    pub fn neighbors(
        &self,
        tenant: &str,
        node: u64,
        direction: Direction,
        edge_type: Option<&str>,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Page<Neighbor>, ReadError> {
        let dir = match direction {
            Direction::Out => keys::OUT,
            Direction::In => keys::IN,
        };
        if let Some(t) = edge_type {
            validate_name(t).map_err(|r| invalid("edge_type", r))?;
        }
        self.with_tenant(tenant, |store, cf| {
            let prefix = keys::adjacency_prefix(dir, node, edge_type);
            let (pairs, next) = Self::page(store, cf, &prefix, after, limit)?;
            let items = pairs
                .iter()
                .map(|(k, v)| {
                    let bad = || corrupt(format!("adjacency entry {k:?}"));
                    let ty_len = u16::from_be_bytes(
                        k.get(9..11).ok_or_else(bad)?.try_into().expect("2 bytes"),
                    ) as usize;
                    let ty = k.get(11..11 + ty_len).ok_or_else(bad)?;
                    Ok(Neighbor {
                        edge: keys::adjacency_edge(k).ok_or_else(bad)?,
                        edge_type: String::from_utf8(ty.to_vec()).map_err(|_| bad())?,
                        node: keys::u64_value(v).ok_or_else(bad)?,
                    })
                })
                .collect::<Result<_, ReadError>>()?;
            Ok(Page { items, next })
        })
    }

    /// Nodes carrying `label`, in id order: the index and the nodes read at one point (a
    /// RocksDB snapshot), so a page never mixes states on either side of an apply.
    pub fn nodes_by_label(
        &self,
        tenant: &str,
        label: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Page<Node>, ReadError> {
        self.nodes_by_label_between(tenant, label, after, limit, || {})
    }

    /// [`GraphReader::nodes_by_label`], calling `between` after the label index is read and
    /// before the nodes are (the `testing` feature only: a test applies an entry there).
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn nodes_by_label_with(
        &self,
        tenant: &str,
        label: &str,
        after: Option<&[u8]>,
        limit: usize,
        between: impl FnOnce(),
    ) -> Result<Page<Node>, ReadError> {
        self.nodes_by_label_between(tenant, label, after, limit, between)
    }

    fn nodes_by_label_between(
        &self,
        tenant: &str,
        label: &str,
        after: Option<&[u8]>,
        limit: usize,
        between: impl FnOnce(),
    ) -> Result<Page<Node>, ReadError> {
        validate_name(label).map_err(|r| invalid("label", r))?;
        self.with_tenant(tenant, |store, cf| {
            let snap = store.db().snapshot();
            let (pairs, mut next) = Self::page_at(
                store,
                cf,
                &keys::label_prefix(label),
                after,
                limit,
                Some(&snap),
            )?;
            between();
            let mut items = Vec::with_capacity(pairs.len());
            let mut bytes = 0usize;
            for (i, (k, _)) in pairs.iter().enumerate() {
                if bytes >= PAGE_BYTES_MAX {
                    // The byte budget is spent: continue after the last node returned.
                    next = Some(pairs[i - 1].0.to_vec());
                    break;
                }
                let id = keys::trailing_id(k).ok_or_else(|| corrupt(format!("label key {k:?}")))?;
                let record = snap
                    .get_cf(cf, keys::node(id))
                    .map_err(|e| rocks_err("read node", e))?
                    .ok_or_else(|| corrupt(format!("label index names missing node {id}")))?;
                bytes += record.len();
                items.push(decode::<NodeRecord>(&record, "node")?.into_node(id));
            }
            Ok(Page { items, next })
        })
    }

    /// Every node of a tenant, in id order.
    pub fn scan_nodes(
        &self,
        tenant: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Page<Node>, ReadError> {
        self.scan_records(tenant, keys::NODE, after, limit, NodeRecord::into_node)
    }

    /// Every edge of a tenant, in id order.
    pub fn scan_edges(
        &self,
        tenant: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Page<Edge>, ReadError> {
        self.scan_records(tenant, keys::EDGE, after, limit, EdgeRecord::into_edge)
    }

    /// A page of the records of one kind (`keys::NODE` or `keys::EDGE`), decoded as `R`.
    fn scan_records<R: DeserializeOwned, T>(
        &self,
        tenant: &str,
        kind: u8,
        after: Option<&[u8]>,
        limit: usize,
        view: fn(R, u64) -> T,
    ) -> Result<Page<T>, ReadError> {
        self.with_tenant(tenant, |store, cf| {
            let (pairs, next) = Self::page(store, cf, &[kind], after, limit)?;
            let items = pairs
                .iter()
                .map(|(k, v)| {
                    let id = keys::trailing_id(k).ok_or_else(|| corrupt(format!("key {k:?}")))?;
                    Ok(view(decode::<R>(v, &format!("record {k:?}"))?, id))
                })
                .collect::<Result<_, ReadError>>()?;
            Ok(Page { items, next })
        })
    }

    /// BLAKE3 over the whole state (registry, counters, sessions, applied id, membership and
    /// every tenant's data) at one consistent point. Equal on replicas at the same applied id,
    /// and equal to the digest of a snapshot taken there.
    pub fn digest(&self) -> Result<[u8; 32], ReadError> {
        let store = self.store();
        // Snapshot, registry and handles under the DDL lock: the column families walked are
        // the ones registered at the snapshot, and a drop after it cannot pull one away.
        let ddl = store.ddl.read().expect("ddl lock poisoned");
        let snap = store.db().snapshot();
        let opts = || {
            let mut o = ReadOptions::default();
            o.set_snapshot(&snap);
            o
        };
        let cfs = cf_handles(store.db(), &registered_cfs(store.db(), opts())?)?;
        drop(ddl);
        let mut h = StateHasher::default();
        hash_cfs(&store, &cfs, &opts, &mut h)?;
        Ok(h.finish().1)
    }

    /// BLAKE3 over one tenant: its registry record, counters and column family.
    pub fn tenant_digest(&self, tenant: &str) -> Result<[u8; 32], ReadError> {
        validate_tenant_id(tenant).map_err(ApplyError::from)?;
        let store = self.store();
        let ddl = store.ddl.read().expect("ddl lock poisoned");
        let snap = store.db().snapshot();
        let meta = store.meta()?;
        let get = |key: &[u8]| snap.get_cf(&meta, key).map_err(|e| rocks_err("read", e));
        let record_key = keys::tenant_record(tenant);
        let Some(record) = get(&record_key)? else {
            return Err(ApplyError::TenantNotFound {
                tenant: tenant.to_string(),
            }
            .into());
        };
        let counters_key = keys::tenant_counters(tenant);
        let counters = get(&counters_key)?.unwrap_or_default();
        let mut h = StateHasher::default();
        h.cf(keys::META_CF);
        h.pair(&record_key, &record);
        h.pair(&counters_key, &counters);
        let opts = || {
            let mut o = ReadOptions::default();
            o.set_snapshot(&snap);
            o
        };
        let cfs = cf_handles(store.db(), &[keys::tenant_cf(tenant)])?;
        drop(ddl);
        hash_cfs(&store, &cfs, &opts, &mut h)?;
        Ok(h.finish().1)
    }
}

/// Feeds every column family in `cfs` and its pairs to `h`, in order.
fn hash_cfs(
    store: &Store,
    cfs: &[super::snapshot::Handle<'_>],
    opts: &dyn Fn() -> ReadOptions,
    h: &mut StateHasher,
) -> Result<(), ReadError> {
    walk(store.db(), cfs, opts, &mut |item| {
        match item {
            Item::Cf(n) => h.cf(n),
            Item::Pair(k, v) => h.pair(k, v),
        }
        Ok(())
    })?;
    Ok(())
}
