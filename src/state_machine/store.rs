//! The on-disk layout of the state machine and one open RocksDB database.
//!
//! ```text
//! <dir>/CURRENT              "db-<gen>\n": the database directory in use (tmp + fsync + rename)
//! <dir>/db-<gen>/            RocksDB; a snapshot install builds db-<gen+1> beside it
//! <dir>/snapshots/snap-<index>-<term>.rgsnap   the current snapshot stream (see `snapshot`)
//! <dir>/snapshots/ckpt-<index>-<gen>/          the checkpoint it was read from
//! ```
//! Every `db-*` other than the one `CURRENT` names is a leftover of an interrupted install and
//! is removed on open.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rocksdb::{
    BlockBasedOptions, BoundColumnFamily, Cache, ColumnFamilyDescriptor, DBWithThreadMode,
    FlushOptions, MultiThreaded, Options,
};

use super::config::StateMachineConfig;
use super::disk::SmDisk;
use super::keys;
use crate::codec;
use crate::raft::{LogId, StoredMembership};

pub(crate) type Rocks = DBWithThreadMode<MultiThreaded>;

const POINTER: &str = "CURRENT";
pub(crate) const SNAPSHOTS: &str = "snapshots";

pub(crate) fn rocks_err(what: &str, e: rocksdb::Error) -> io::Error {
    let msg = format!("rocksdb: {what}: {e}");
    // RocksDB reports a full disk in words only; callers answer it as such.
    if msg.contains("No space left on device") {
        return io::Error::new(io::ErrorKind::StorageFull, msg);
    }
    io::Error::other(msg)
}

/// Options shared by the database and every column family: one write-buffer budget for all
/// column families together and one block cache.
#[derive(Clone)]
pub(crate) struct RocksOptions {
    pub db: Options,
    pub cf: Options,
    /// The meta column family's: `cf` with a smaller memtable (see [`META_WRITE_BUFFER_BYTES`]).
    pub meta: Options,
}

/// The meta column family's memtable. Every write rewrites its client's session there (and
/// each entry the counters and the applied id), so the memtable is mostly superseded versions
/// of a few hot keys: small, it stays in cache and inserts stay cheap, and a flush writes out
/// little (versions collapse). A large one makes every insert walk a deep skiplist of
/// superseded versions (BENCHMARKS.md measures the cost). Not smaller than 8 MiB: with `atomic_flush` a full
/// meta memtable flushes every column family, and at 2 MiB that was several flushes a second
/// under load, each writing a small SST file per tenant.
pub(crate) const META_WRITE_BUFFER_BYTES: usize = 8 << 20;

/// L0 files that start a compaction into the level below (RocksDB's default is 4). A tenant
/// column family holds node records (`n` + id) and label index entries (`l` + label + id), so
/// every flushed file's key range spans from the newest label entries to the newest nodes and
/// overlaps every older node record: each L0 compaction rewrites the whole level below, on
/// every replica at about the same time, and writes slow while one runs (BENCHMARKS.md). At 8
/// the rewrites come half as often; point reads may consult up to twice
/// as many L0 files.
pub(crate) const L0_COMPACTION_TRIGGER: i32 = 8;

impl RocksOptions {
    pub fn new(cfg: &StateMachineConfig) -> Self {
        let cache = Cache::new_lru_cache(cfg.block_cache_bytes);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        let mut cf = Options::default();
        cf.set_block_based_table_factory(&table);
        cf.set_write_buffer_size(cfg.cf_write_buffer_bytes);
        cf.set_level_zero_file_num_compaction_trigger(L0_COMPACTION_TRIGGER);
        let mut meta = cf.clone();
        meta.set_write_buffer_size(cfg.cf_write_buffer_bytes.min(META_WRITE_BUFFER_BYTES));
        let mut db = cf.clone();
        db.create_if_missing(true);
        db.create_missing_column_families(true);
        // One budget for every memtable of every column family: past it, the largest flushes.
        db.set_db_write_buffer_size(cfg.write_buffer_bytes);
        // The WAL is shared; without a cap an idle tenant's memtable pins old WAL files forever.
        db.set_max_total_wal_size(4 * cfg.write_buffer_bytes as u64);
        db.set_max_background_jobs(2);
        // Flushes and compactions run at the lowest CPU priority: on a busy machine they
        // otherwise take a core from the threads that answer clients for tens of ms at a time.
        // Under saturation compaction then lags (more L0 files); RocksDB's L0 slowdown and
        // stop triggers bound that lag by slowing writes, as they would without this.
        if let Ok(mut env) = rocksdb::Env::new() {
            env.lower_thread_pool_cpu_priority();
            env.lower_high_priority_thread_pool_cpu_priority();
            db.set_env(&env);
        }
        db.set_keep_log_file_num(4);
        // Apply writes skip RocksDB's WAL (see `StateMachine::apply_entry`): a flush must then
        // write every column family's memtable in one MANIFEST commit, or a crash between two
        // column families' flushes would leave an entry half on disk.
        db.set_atomic_flush(true);
        RocksOptions { db, cf, meta }
    }
}

/// One open database directory. Dropping the last reference closes it, and removes the
/// directory if it was superseded by a snapshot install (reads in flight finish first).
pub(crate) struct Store {
    db: Option<Rocks>,
    pub dir: PathBuf,
    /// Set when superseded: the directory is removed (through this) when the store drops.
    remove_on_drop: Mutex<Option<SmDisk>>,
    /// Column-family create and drop take it for writing; a reader that needs the set of
    /// column families to agree with a RocksDB snapshot (digests) takes the snapshot, reads the
    /// registry and takes the handles under it for reading.
    pub ddl: RwLock<()>,
    /// What readers learned of tenant records, so a read does not fetch and decode its
    /// tenant's record each time.
    pub tenants: TenantCache,
    /// The token records calls were authenticated by, so a call does not fetch and decode its
    /// token's record each time (invalidated with `tenants`: by every admin entry).
    pub tokens: EpochCache<u64, Arc<crate::auth::TokenRecord>>,
    /// The rate limits of each tenant calls named (unlimited when none are set), for the
    /// same reason (invalidated with `tenants`).
    pub rate_limits: EpochCache<String, crate::tenant::RateLimits>,
    /// Meta column family values apply has read or written, so the per-request reads of a
    /// client's session, the tenant record, its counters and the globals do not go to RocksDB.
    pub meta_cache: MetaCache,
}

/// Values of the meta column family as they are in the database (`None`: known absent). Only
/// apply fills it, with what it reads from the database (which does not change before the
/// entry's batch is written) and, after that write, with the entry's changes
/// ([`MetaCache::learn`]): nothing else writes the meta column family while
/// the store is open (`reconcile` runs before the first apply; a snapshot install opens a new
/// store). It answers the same as the database, so what it holds changes speed, never
/// results; debug builds check every hit against the database.
#[derive(Debug, Default)]
pub(crate) struct MetaCache {
    inner: Mutex<MetaMap>,
}

#[derive(Debug, Default)]
struct MetaMap {
    values: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Key and value bytes held, at most [`META_CACHE_BYTES_MAX`].
    bytes: usize,
}

/// Bytes of keys and values the meta cache holds; past it, it starts over empty.
pub(crate) const META_CACHE_BYTES_MAX: usize = 16 << 20;
/// Larger values are not cached (read from RocksDB each time).
pub(crate) const META_CACHE_VALUE_BYTES_MAX: usize = 1 << 20;

fn cached_bytes(key: &[u8], value: &Option<Vec<u8>>) -> usize {
    key.len() + value.as_ref().map_or(0, Vec::len)
}

impl MetaCache {
    /// The value under `key` if known: `Some(None)` when known absent.
    pub fn get(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.inner
            .lock()
            .expect("meta cache lock poisoned")
            .values
            .get(key)
            .cloned()
    }

    /// Records values now in the database (call only after the write that put them there).
    pub fn learn(&self, values: impl IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>) {
        let mut m = self.inner.lock().expect("meta cache lock poisoned");
        for (k, v) in values {
            if let Some(old) = m.values.remove(&k) {
                m.bytes -= cached_bytes(&k, &old);
            }
            let n = cached_bytes(&k, &v);
            if v.as_ref()
                .is_some_and(|v| v.len() > META_CACHE_VALUE_BYTES_MAX)
            {
                continue;
            }
            if m.bytes + n > META_CACHE_BYTES_MAX {
                m.values.clear();
                m.bytes = 0;
            }
            m.bytes += n;
            m.values.insert(k, v);
        }
    }

    /// Forgets `key` (written to the database other than through [`MetaCache::learn`]).
    pub fn forget(&self, key: &[u8]) {
        let mut m = self.inner.lock().expect("meta cache lock poisoned");
        if let Some(old) = m.values.remove(key) {
            m.bytes -= cached_bytes(key, &old);
        }
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.inner.lock().expect("meta cache lock poisoned").bytes
    }
}

/// What readers looked up of records that only admin commands change (tenant records, token
/// records), valid while no entry that may change one has been written since. Apply calls
/// [`EpochCache::invalidate`] after writing such an entry and before reporting it applied, so a
/// read that waits for that entry (a linearizable one) never sees the older answer. Only
/// records that exist are held, so it holds at most as many as may exist (`tenants_max`
/// tenants, `TOKENS_MAX` tokens) whatever keys clients send.
#[derive(Debug)]
pub(crate) struct EpochCache<K, V> {
    epoch: AtomicU64,
    /// The epoch the values were read in, and each key's value.
    seen: RwLock<(u64, BTreeMap<K, V>)>,
}

impl<K, V> Default for EpochCache<K, V> {
    fn default() -> Self {
        EpochCache {
            epoch: AtomicU64::new(0),
            seen: RwLock::new((0, BTreeMap::new())),
        }
    }
}

impl<K: Ord, V: Clone> EpochCache<K, V> {
    /// Forgets everything learned so far (call after writing a change to such records).
    pub fn invalidate(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// `key`'s value: remembered, or from `load` (`None`: no record, not remembered).
    pub fn get<Q, E>(
        &self,
        key: &Q,
        load: impl FnOnce() -> Result<Option<V>, E>,
    ) -> Result<Option<V>, E>
    where
        K: std::borrow::Borrow<Q>,
        Q: Ord + ToOwned<Owned = K> + ?Sized,
    {
        // Read before the database: a change written after this load bumps the epoch past it.
        let epoch = self.epoch.load(Ordering::SeqCst);
        {
            let seen = self.seen.read().expect("record cache lock poisoned");
            if seen.0 == epoch
                && let Some(v) = seen.1.get(key)
            {
                return Ok(Some(v.clone()));
            }
        }
        let Some(value) = load()? else {
            return Ok(None);
        };
        let mut seen = self.seen.write().expect("record cache lock poisoned");
        if seen.0 < epoch {
            *seen = (epoch, BTreeMap::new());
        }
        // A newer epoch's map must not take an answer read before it began.
        if seen.0 == epoch {
            seen.1.insert(key.to_owned(), value.clone());
        }
        Ok(Some(value))
    }
}

/// Whether each tenant readers looked up is enabled.
pub(crate) type TenantCache = EpochCache<String, bool>;

impl TenantCache {
    /// Whether `tenant` is enabled: remembered, or from `load` (which reads the record and
    /// fails when there is none).
    pub fn enabled<E>(
        &self,
        tenant: &str,
        load: impl FnOnce() -> Result<bool, E>,
    ) -> Result<bool, E> {
        self.get(tenant, || load().map(Some))
            .map(|v| v.unwrap_or_default())
    }
}

impl Store {
    pub fn open(dir: &Path, opts: &RocksOptions) -> io::Result<Store> {
        let existing = match Rocks::list_cf(&opts.db, dir) {
            Ok(cfs) => cfs,
            Err(_) if !dir.join("CURRENT").exists() => vec![],
            Err(e) => return Err(rocks_err(&format!("list column families in {dir:?}"), e)),
        };
        let mut names: Vec<String> = existing;
        if !names.iter().any(|n| n == keys::META_CF) {
            names.push(keys::META_CF.to_string());
        }
        let cfs = names.into_iter().map(|n| {
            let o = if n == keys::META_CF {
                &opts.meta
            } else {
                &opts.cf
            };
            ColumnFamilyDescriptor::new(n, o.clone())
        });
        let db = Rocks::open_cf_descriptors(&opts.db, dir, cfs)
            .map_err(|e| rocks_err(&format!("open {dir:?}"), e))?;
        Ok(Store {
            db: Some(db),
            dir: dir.to_path_buf(),
            remove_on_drop: Mutex::new(None),
            ddl: RwLock::new(()),
            tenants: TenantCache::default(),
            tokens: EpochCache::default(),
            rate_limits: EpochCache::default(),
            meta_cache: MetaCache::default(),
        })
    }

    pub fn db(&self) -> &Rocks {
        self.db
            .as_ref()
            .expect("the database is open until the store drops")
    }

    pub fn meta(&self) -> io::Result<Arc<BoundColumnFamily<'_>>> {
        self.cf(keys::META_CF)
            .ok_or_else(|| io::Error::other("the meta column family is missing"))
    }

    pub fn cf(&self, name: &str) -> Option<Arc<BoundColumnFamily<'_>>> {
        self.db().cf_handle(name)
    }

    /// The names of every column family, sorted.
    pub fn cf_names(&self) -> io::Result<Vec<String>> {
        let opts = Options::default();
        let mut names =
            Rocks::list_cf(&opts, &self.dir).map_err(|e| rocks_err("list column families", e))?;
        names.sort();
        Ok(names)
    }

    /// Creates a tenant's column family; an orphan of the same name (no registry entry, see
    /// `StateMachine::open`) is dropped first, so the new one starts empty.
    pub fn create_tenant_cf(&self, tenant: &str, opts: &RocksOptions) -> io::Result<()> {
        let name = keys::tenant_cf(tenant);
        if self.cf(&name).is_some() {
            self.drop_cf(&name)?;
        }
        let _ddl = self.ddl.write().expect("ddl lock poisoned");
        self.db()
            .create_cf(&name, &opts.cf)
            .map_err(|e| rocks_err(&format!("create column family {name}"), e))
    }

    /// Writes every column family's memtable to SST files (one atomic flush) and waits: what
    /// apply has written, which skips RocksDB's WAL, is on disk afterwards.
    pub fn flush_all(&self) -> io::Result<()> {
        let names = self.cf_names()?;
        let cfs: Vec<_> = names.iter().filter_map(|n| self.cf(n)).collect();
        let refs: Vec<_> = cfs.iter().collect();
        let mut opts = FlushOptions::default();
        opts.set_wait(true);
        self.db()
            .flush_cfs_opt(&refs, &opts)
            .map_err(|e| rocks_err("flush memtables", e))
    }

    /// Drops a column family after making every earlier batch durable (flushed), so a
    /// power cut can never leave the drop (durable in the MANIFEST) ahead of the registry
    /// change that ordered it.
    pub fn drop_cf(&self, name: &str) -> io::Result<()> {
        self.flush_all()?;
        let _ddl = self.ddl.write().expect("ddl lock poisoned");
        self.db()
            .drop_cf(name)
            .map_err(|e| rocks_err(&format!("drop column family {name}"), e))
    }

    pub fn remove_on_drop(&self, disk: SmDisk) {
        *self.remove_on_drop.lock().expect("store lock poisoned") = Some(disk);
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        drop(self.db.take());
        let remove = self
            .remove_on_drop
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(disk) = remove
            && let Err(e) = disk.remove_dir_all(&self.dir)
        {
            tracing::warn!(dir = ?self.dir, error = %e, "could not remove a superseded database");
        }
    }
}

/// An error for data that is not what it should be.
pub(crate) fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// The applied log id and membership a database holds.
pub(crate) fn read_applied(store: &Store) -> io::Result<(Option<LogId>, StoredMembership)> {
    let meta = store.meta()?;
    let get = |k: &[u8]| {
        store
            .db()
            .get_cf(&meta, k)
            .map_err(|e| rocks_err("read applied state", e))
    };
    let applied = match get(keys::APPLIED)? {
        Some(b) => Some(codec::decode(&b).map_err(|e| invalid(format!("applied id: {e}")))?),
        None => None,
    };
    let membership = match get(keys::MEMBERSHIP)? {
        Some(b) => codec::decode(&b).map_err(|e| invalid(format!("membership: {e}")))?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

/// The database directory name for a generation.
pub(crate) fn db_dir_name(generation: u64) -> String {
    format!("db-{generation:06}")
}

/// Reads `CURRENT`: the generation of the database in use, or None in a new directory.
pub(crate) fn read_pointer(dir: &Path) -> io::Result<Option<u64>> {
    let text = match fs::read_to_string(dir.join(POINTER)) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let generation = text
        .strip_suffix('\n')
        .and_then(|t| t.strip_prefix("db-"))
        .filter(|g| g.len() >= 6 && g.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|g| g.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{:?}: malformed database pointer {text:?}",
                    dir.join(POINTER)
                ),
            )
        })?;
    Ok(Some(generation))
}

/// Durably points `CURRENT` at `generation`: tmp file, fsync, rename, directory fsync.
pub(crate) fn write_pointer(disk: &SmDisk, dir: &Path, generation: u64) -> io::Result<()> {
    switch_pointer(disk, dir, generation)?;
    disk.sync_dir(dir)
}

/// [`write_pointer`] without the directory sync that makes the switch durable.
pub(crate) fn switch_pointer(disk: &SmDisk, dir: &Path, generation: u64) -> io::Result<()> {
    let tmp = dir.join("CURRENT.tmp");
    let body = format!("{}\n", db_dir_name(generation));
    disk.write_durable(&tmp, body.as_bytes())?;
    disk.rename(&tmp, &dir.join(POINTER))
}

#[cfg(test)]
mod tests {
    use super::{
        L0_COMPACTION_TRIGGER, META_CACHE_BYTES_MAX, META_CACHE_VALUE_BYTES_MAX, MetaCache,
        RocksOptions, Store, TenantCache,
    };
    use crate::state_machine::StateMachineConfig;

    /// The value RocksDB recorded in its newest OPTIONS file for `option` in column family `cf`.
    fn recorded_option(dir: &std::path::Path, cf: &str, option: &str) -> Option<String> {
        let newest = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("OPTIONS-"))
            .max_by_key(|n| n["OPTIONS-".len()..].parse::<u64>().unwrap_or(0))?;
        let text = std::fs::read_to_string(dir.join(newest)).unwrap();
        let section = format!("[CFOptions \"{cf}\"]");
        let body = text.split(&section).nth(1)?;
        let body = body.split("\n[").next()?;
        body.lines().find_map(|l| {
            let (k, v) = l.trim().split_once('=')?;
            (k == option).then(|| v.to_string())
        })
    }

    #[test]
    fn tenant_and_meta_column_families_get_the_l0_compaction_trigger() {
        let dir = tempfile::tempdir().unwrap();
        let opts = RocksOptions::new(&StateMachineConfig::new(dir.path()));
        let db = dir.path().join("db");
        let store = Store::open(&db, &opts).unwrap();
        store.create_tenant_cf("acme", &opts).unwrap();
        let want = Some(L0_COMPACTION_TRIGGER.to_string());
        for cf in ["tenant.acme", "meta"] {
            assert_eq!(
                recorded_option(&db, cf, "level0_file_num_compaction_trigger"),
                want,
                "{cf}"
            );
        }
    }

    #[test]
    fn the_meta_cache_answers_what_it_learned_last() {
        let c = MetaCache::default();
        assert_eq!(c.get(b"k"), None, "unknown");
        c.learn([(b"k".to_vec(), Some(b"v1".to_vec()))]);
        c.learn([(b"k".to_vec(), Some(b"v22".to_vec()))]);
        assert_eq!(c.get(b"k"), Some(Some(b"v22".to_vec())));
        assert_eq!(c.bytes(), 4);
        c.learn([(b"k".to_vec(), None)]);
        assert_eq!(c.get(b"k"), Some(None), "known absent");
        assert_eq!(c.bytes(), 1);
        c.forget(b"k");
        assert_eq!(c.get(b"k"), None);
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn the_meta_cache_stays_within_its_bytes() {
        let c = MetaCache::default();
        let big = vec![7u8; META_CACHE_VALUE_BYTES_MAX + 1];
        c.learn([
            (b"old".to_vec(), Some(b"x".to_vec())),
            (b"old".to_vec(), Some(big)),
        ]);
        assert_eq!(
            c.get(b"old"),
            None,
            "a too-large value replaces, and is not kept"
        );
        assert_eq!(c.bytes(), 0);
        let value = vec![1u8; META_CACHE_VALUE_BYTES_MAX];
        let n = META_CACHE_BYTES_MAX / value.len() + 2;
        for i in 0..n as u32 {
            c.learn([(i.to_be_bytes().to_vec(), Some(value.clone()))]);
            assert!(c.bytes() <= META_CACHE_BYTES_MAX);
        }
        let last = (n as u32 - 1).to_be_bytes();
        assert_eq!(c.get(&last), Some(Some(value)), "the newest is kept");
    }

    fn answer(v: bool) -> impl FnOnce() -> Result<bool, ()> {
        move || Ok(v)
    }

    #[test]
    fn the_cache_answers_until_invalidated() {
        let c = TenantCache::default();
        assert_eq!(c.enabled("t", answer(true)), Ok::<_, ()>(true));
        assert_eq!(c.enabled("t", || panic!("remembered")), Ok::<_, ()>(true));
        c.invalidate();
        assert_eq!(c.enabled("t", answer(false)), Ok(false), "looked up again");
        assert_eq!(c.enabled("t", || panic!("remembered")), Ok::<_, ()>(false));
    }

    #[test]
    fn a_failed_lookup_is_not_remembered() {
        let c = TenantCache::default();
        assert_eq!(c.enabled("gone", || Err(())), Err(()));
        assert_eq!(c.enabled("gone", answer(true)), Ok(true), "looked up again");
    }

    #[test]
    fn an_answer_read_before_an_invalidation_is_not_kept_after_it() {
        let c = TenantCache::default();
        // The change lands (and invalidates) while this lookup reads the old record.
        let stale = c.enabled("t", || {
            c.invalidate();
            Ok::<_, ()>(true)
        });
        assert_eq!(stale, Ok::<_, ()>(true));
        assert_eq!(
            c.enabled("t", answer(false)),
            Ok(false),
            "not the stale answer"
        );
    }
}
