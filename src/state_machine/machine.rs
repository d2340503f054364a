//! `StateMachine`: opening, applying entries, and openraft's state-machine and snapshot traits.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::{Stream, TryStreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::type_config::alias::SnapshotOf;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use rocksdb::{WriteBatch, WriteOptions};

use super::apply::{Ddl, apply_request};
use super::config::StateMachineConfig;
use super::disk::{DiskStep, Phase, SmDisk};
use super::install::{Stager, install_blocking};
use super::keys;
use super::read::GraphReader;
use super::shared::{CurrentSnapshot, Shared};
use super::snapshot::{SnapshotFile, checkpoint, decode_meta, snapshot_name, write_stream_file};
use super::store::{
    RocksOptions, SNAPSHOTS, Store, db_dir_name, invalid, read_applied, read_pointer, rocks_err,
    write_pointer,
};
use super::stream::read_meta;
use super::txn::Layer;
use crate::codec;
use crate::command::{ApplyError, Command, Response, Responses};
use crate::raft::{LogId, SnapshotMeta, StoredMembership, TypeConfig};
use crate::tenant::TenantCounters;
use crate::wire::PROPOSAL_REQUESTS_MAX;

/// The RocksDB state machine. See the module docs for layout and invariants.
pub struct StateMachine {
    shared: Arc<Shared>,
    applied: Option<LogId>,
    membership: StoredMembership,
    /// Apply's write options: RocksDB's WAL off (see `apply_entry`).
    unlogged: WriteOptions,
    /// Apply's writes, announced (see `disk`).
    disk: SmDisk,
}

impl StateMachine {
    /// Opens (or creates) the state machine in `cfg.dir`: the database `CURRENT` names, column
    /// families reconciled with the tenant registry, the newest snapshot found.
    pub async fn open(cfg: StateMachineConfig) -> io::Result<StateMachine> {
        cfg.validate()?;
        let blocking = cfg.blocking;
        blocking.run(move || Self::open_blocking(cfg)).await
    }

    fn open_blocking(cfg: StateMachineConfig) -> io::Result<StateMachine> {
        let dir = cfg.dir.clone();
        let disk = cfg.disk(Phase::Open);
        disk.create_dir_all(&dir.join(SNAPSHOTS))?;
        if let Some(parent) = dir.parent() {
            disk.sync_dir(parent).ok();
        }
        let generation = match read_pointer(&dir)? {
            Some(g) => g,
            None => {
                let first = dir.join(db_dir_name(1));
                disk.announce(DiskStep::CreateDatabase(&first))?;
                drop(Store::open(&first, &RocksOptions::new(&cfg))?);
                disk.sync_tree(&first)?;
                write_pointer(&disk, &dir, 1)?;
                1
            }
        };
        let opts = RocksOptions::new(&cfg);
        let db_dir = dir.join(db_dir_name(generation));
        if !db_dir.join("CURRENT").exists() {
            // Opening would create an empty database and silently forget the state; and nothing
            // else is removed, so an operator can still repair the pointer.
            return Err(invalid(format!(
                "{db_dir:?}, named by {:?}, is not a database",
                dir.join("CURRENT")
            )));
        }
        remove_leftovers(&disk, &dir, generation)?;
        let store = Store::open(&db_dir, &opts)?;
        reconcile(&store, &opts)?;
        let (applied, membership) = read_applied(&store)?;
        let current = find_current_snapshot(&disk, &dir.join(SNAPSHOTS))?;
        let shared = Arc::new(Shared {
            cfg,
            opts,
            store: RwLock::new(Arc::new(store)),
            generation: AtomicU64::new(generation),
            staged: AtomicU64::new(generation),
            current: Mutex::new(current),
            seq: AtomicU64::new(0),
            building: Mutex::default(),
        });
        let mut unlogged = WriteOptions::default();
        unlogged.disable_wal(true);
        Ok(StateMachine {
            disk: disk.in_phase(Phase::Apply),
            shared,
            applied,
            membership,
            unlogged,
        })
    }

    /// A read handle for the server (cheap to clone).
    pub fn reader(&self) -> GraphReader {
        GraphReader::new(self.shared.clone())
    }

    /// A handle that stages received snapshots for this state machine (see [`Stager`]).
    pub fn stager(&self) -> Stager {
        Stager::new(self.shared.clone())
    }

    pub fn applied(&self) -> Option<LogId> {
        self.applied
    }

    /// Applies one entry: its requests' effects and the applied id in one batch. Returns one
    /// response per request (none for entries without client requests). Errors are fatal for
    /// the member. openraft applies through [`RaftStateMachine::apply`]; this is the same step,
    /// for tests and tools.
    pub fn apply_entry(&mut self, entry: &crate::raft::Entry) -> io::Result<Responses> {
        let log_id = entry.log_id();
        if let Some(prev) = &self.applied {
            let next = prev.index + 1;
            let gap = log_id.index > next && self.shared.cfg.apply_gaps_allowed();
            if log_id.index != next && !gap {
                return Err(io::Error::other(format!(
                    "apply out of order: applied {prev}, next entry {log_id}"
                )));
            }
        }
        let store = self.shared.store();
        let meta = store.meta()?;
        let mut batch = WriteBatch::default();
        let mut ddl = Ddl::None;
        let mut membership = None;
        let mut responses = Vec::new();
        let mut learned = None;
        // Tenant commands (alone in their entry) may change a tenant record readers cache.
        let mut tenant_change = false;
        match &entry.payload {
            EntryPayload::Blank => {}
            EntryPayload::Membership(m) => {
                let stored = StoredMembership::new(Some(log_id), m.clone());
                batch.put_cf(&meta, keys::MEMBERSHIP, encode(&stored)?);
                membership = Some(stored);
            }
            EntryPayload::Normal(p) => {
                tenant_change = p
                    .requests
                    .iter()
                    .any(|r| !matches!(r.command, Command::Write(_)));
                let mut layer = Layer::default();
                let alone = p.requests.len() == 1;
                // Checked once per entry: an entry over the limit has every request refused.
                let too_many = (p.requests.len() > PROPOSAL_REQUESTS_MAX).then(|| {
                    format!(
                        "{} requests in entry {log_id}, limit {PROPOSAL_REQUESTS_MAX}",
                        p.requests.len()
                    )
                });
                for req in p.requests.iter() {
                    let refusal = if let Some(reason) = &too_many {
                        Some(reason.clone())
                    } else if !alone && !matches!(req.command, Command::Write(_)) {
                        Some(format!(
                            "client {} seq {}: tenant and limit commands are proposed alone",
                            req.client_id,
                            req.seq()
                        ))
                    } else {
                        None
                    };
                    // A leader never proposes either; a refusal keeps every replica in step.
                    let response = match refusal {
                        Some(reason) => Response {
                            outcome: Err(ApplyError::InvalidArgument {
                                field: "proposal".into(),
                                reason,
                            }),
                        },
                        None => apply_request(
                            &store,
                            log_id.index,
                            req,
                            &mut layer,
                            &mut ddl,
                            self.shared.cfg.apply_bugs(),
                        )?,
                    };
                    responses.push(response);
                }
                learned = Some(layer.into_batch(&store, &mut batch)?);
            }
        }
        if self.shared.cfg.planted_applied_id_apart() {
            // Planted bug (tests only): the applied id in a batch of its own, written first.
            let mut first = WriteBatch::default();
            first.put_cf(&meta, keys::APPLIED, encode(&log_id)?);
            self.write_unlogged(&store, first, log_id)?;
        } else {
            batch.put_cf(&meta, keys::APPLIED, encode(&log_id)?);
        }
        if let Ddl::Create(t) = &ddl {
            store.create_tenant_cf(t, &self.shared.opts)?;
        }
        // Not synced, and not in RocksDB's WAL: the Raft log is the durability point. After a
        // crash the database is what its last flush wrote — every column family at once
        // (`atomic_flush`), so the state after some entry N with N as its applied id — and
        // openraft replays the log after N. Flushes happen at least at every snapshot, and the
        // log is only purged behind a snapshot, so those entries are still there. Skipping
        // RocksDB's WAL spares every replica a second copy of each write on disk and the CPU
        // to write it (BENCHMARKS.md).
        self.write_unlogged(&store, batch, log_id)?;
        store.meta_cache.forget(keys::APPLIED);
        store.meta_cache.forget(keys::MEMBERSHIP);
        if let Some(learned) = learned {
            store.meta_cache.learn(learned);
        }
        if let Ddl::Drop(t) = &ddl {
            store.drop_cf(&keys::tenant_cf(t))?;
        }
        if tenant_change {
            store.tenants.invalidate();
            store.tokens.invalidate();
            store.rate_limits.invalidate();
        }
        self.applied = Some(log_id);
        if let Some(m) = membership {
            self.membership = m;
        }
        self.shared.cfg.observe_apply(entry);
        Ok(Responses { responses })
    }

    /// Writes one of entry `log_id`'s batches, unsynced and outside RocksDB's WAL, announced
    /// to the disk hook first.
    fn write_unlogged(&self, store: &Store, batch: WriteBatch, log_id: LogId) -> io::Result<()> {
        self.disk.announce(DiskStep::ApplyWrite {
            index: log_id.index,
        })?;
        store
            .db()
            .write_opt(batch, &self.unlogged)
            .map_err(|e| rocks_err(&format!("apply {log_id}"), e))
    }

    /// Checkpoints the current state for a snapshot builder. A failed checkpoint still yields a
    /// builder, which reports the error from `build_snapshot` (openraft's startup path unwraps
    /// `try_create_snapshot_builder(true)`, so `None` there would be a panic, not an error).
    async fn new_builder(&mut self) -> Builder {
        let seq = self.shared.seq.fetch_add(1, Ordering::SeqCst);
        let n = self.applied.as_ref().map_or(0, |l| l.index + 1);
        let dir = self.shared.snapshots().join(format!("ckpt-{n:020}-{seq}"));
        self.shared
            .building
            .lock()
            .expect("builders lock poisoned")
            .insert(dir.clone());
        let store = self.shared.store();
        let d = dir.clone();
        let disk = self.shared.cfg.disk(Phase::Build);
        let made = self
            .shared
            .cfg
            .blocking
            .run(move || {
                // `seq` restarts with the process: a checkpoint of the same index may exist.
                disk.remove_dir_if_exists(&d)?;
                checkpoint(&disk, &store, &d)
            })
            .await;
        Builder {
            shared: self.shared.clone(),
            registered: dir.clone(),
            checkpoint: made.map(|()| dir),
            meta: SnapshotMeta {
                last_log_id: self.applied,
                last_membership: self.membership.clone(),
            },
        }
    }
}

fn encode<T: serde::Serialize>(v: &T) -> io::Result<Vec<u8>> {
    codec::encode(v).map_err(|e| io::Error::other(e.to_string()))
}

/// Removes database directories other than the current one and interrupted-install debris.
fn remove_leftovers(disk: &SmDisk, dir: &Path, generation: u64) -> io::Result<()> {
    let current = db_dir_name(generation);
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if (name.starts_with("db-") && name != current) || name == "CURRENT.tmp" {
            tracing::info!(
                ?path,
                "removing a leftover of an interrupted snapshot install"
            );
            if path.is_dir() {
                disk.remove_dir_all(&path)?;
            } else {
                disk.remove_file(&path)?;
            }
        }
    }
    Ok(())
}

/// Column families and the registry agree after this: a tenant CF without a registry entry is
/// an orphan of an interrupted create or delete and is dropped; a registered tenant without a
/// CF (its create was cut short after the registry batch) gets an empty one, which is only
/// valid while its usage is zero.
fn reconcile(store: &Store, opts: &RocksOptions) -> io::Result<()> {
    let meta = store.meta()?;
    let mut registered = std::collections::BTreeMap::new();
    let prefix = [keys::COUNTERS];
    for kv in store.db().prefix_iterator_cf(&meta, prefix) {
        let (k, v) = kv.map_err(|e| rocks_err("read registry", e))?;
        if !k.starts_with(&prefix) {
            break;
        }
        let tenant = keys::tenant_of_meta_key(&k)
            .ok_or_else(|| invalid(format!("malformed counters key {k:?}")))?
            .to_string();
        let counters: TenantCounters =
            codec::decode(&v).map_err(|e| invalid(format!("tenant {tenant} counters: {e}")))?;
        registered.insert(tenant, counters);
    }
    for name in store.cf_names()? {
        if let Some(t) = keys::tenant_of_cf(&name)
            && !registered.contains_key(t)
        {
            tracing::info!(cf = name, "dropping an orphaned tenant column family");
            store.drop_cf(&name)?;
        }
    }
    for (t, counters) in &registered {
        if store.cf(&keys::tenant_cf(t)).is_none() {
            if counters.usage != Default::default() {
                return Err(invalid(format!(
                    "tenant {t}: column family missing while usage is {:?}",
                    counters.usage
                )));
            }
            store.create_tenant_cf(t, opts)?;
        }
    }
    Ok(())
}

/// The newest complete snapshot stream in `dir`; interrupted temporary files and checkpoint
/// directories are removed.
fn find_current_snapshot(disk: &SmDisk, dir: &Path) -> io::Result<Option<CurrentSnapshot>> {
    let mut best: Option<PathBuf> = None;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".tmp") || name.ends_with(".recv") {
            // Interrupted work: a stream being written or received, or a checkpoint RocksDB
            // was still building (it renames `<dir>.tmp` into place when complete).
            if path.is_dir() {
                disk.remove_dir_all(&path)?;
            } else {
                disk.remove_file(&path)?;
            }
        } else if name.ends_with(".rgsnap") && best.as_ref().is_none_or(|b| path > *b) {
            best = Some(path);
        }
    }
    let Some(path) = best else { return Ok(None) };
    let meta = decode_meta(&read_meta(fs::File::open(&path)?)?, &path)?;
    Ok(Some(CurrentSnapshot { meta, path }))
}

/// Builds a snapshot from a checkpoint taken when it was created.
pub struct Builder {
    shared: Arc<Shared>,
    /// The checkpoint taken when the builder was created, or why it could not be taken.
    checkpoint: io::Result<PathBuf>,
    /// Its checkpoint's path in `Shared::building`, removed when the builder is dropped.
    registered: PathBuf,
    meta: SnapshotMeta,
}

impl Drop for Builder {
    fn drop(&mut self) {
        if let Ok(mut b) = self.shared.building.lock() {
            b.remove(&self.registered);
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, SnapshotFile>, io::Error> {
        let shared = self.shared.clone();
        let ckpt = match &self.checkpoint {
            Ok(p) => p.clone(),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("snapshot checkpoint: {e}"),
                ));
            }
        };
        let meta = self.meta.clone();
        let path = shared.snapshots().join(snapshot_name(&meta.last_log_id));
        let blocking = shared.cfg.blocking;
        let m = meta.clone();
        let disk = shared.cfg.disk(Phase::Build);
        let file = blocking
            .run(move || -> io::Result<SnapshotFile> {
                let expect = m.last_log_id;
                let check = |stored: Option<&[u8]>| {
                    let got: Option<LogId> = match stored {
                        Some(b) => Some(codec::decode(b).map_err(|e| invalid(e.to_string()))?),
                        None => None,
                    };
                    if got != expect {
                        return Err(invalid(format!(
                            "checkpoint holds applied {got:?}, snapshot meta says {expect:?}"
                        )));
                    }
                    Ok(())
                };
                let tmp = path.with_extension("tmp");
                if let Err(e) = write_stream_file(&disk, &ckpt, &encode(&m)?, &tmp, &check) {
                    let _ = disk.remove_file(&tmp);
                    return Err(e);
                }
                shared.publish(&disk, CurrentSnapshot { meta: m, path }, &tmp, Some(&ckpt))
            })
            .await?;
        Ok(SnapshotOf::<TypeConfig, SnapshotFile> {
            meta,
            snapshot: file,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = Builder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let response = self.apply_entry(&entry)?;
            if let Some(r) = responder {
                r.send(response);
            }
        }
        Ok(())
    }

    async fn try_create_snapshot_builder(&mut self, _force: bool) -> Option<Builder> {
        Some(self.new_builder().await)
    }

    async fn get_snapshot_builder(&mut self) -> Builder {
        self.new_builder().await
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        let shared = self.shared.clone();
        let m = meta.clone();
        let (store, generation) = shared
            .cfg
            .blocking
            .run({
                let shared = shared.clone();
                move || install_blocking(&shared, &m, snapshot)
            })
            .await?;
        let old = {
            let mut slot = shared.store.write().expect("store lock poisoned");
            std::mem::replace(&mut *slot, Arc::new(store))
        };
        old.remove_on_drop(shared.cfg.disk(Phase::Install));
        drop(old);
        shared.generation.store(generation, Ordering::SeqCst);
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, SnapshotFile>>, io::Error> {
        // Opened under the lock: a concurrent publish cannot remove the file in between.
        let slot = self.shared.current.lock().expect("snapshot lock poisoned");
        let Some(cur) = slot.as_ref() else {
            return Ok(None);
        };
        Ok(Some(SnapshotOf::<TypeConfig, SnapshotFile> {
            meta: cur.meta.clone(),
            snapshot: SnapshotFile::open(&cur.path)?,
        }))
    }
}
