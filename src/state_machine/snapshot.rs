//! Snapshots: build (checkpoint, then a stream read from it) and install (stream to SST files,
//! ingested into a fresh versioned database directory).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{IngestExternalFileOptions, IteratorMode, Options, ReadOptions, SstFileWriter};

use super::config::Blocking;
use super::disk::{DiskStep, SmDisk};
use super::keys;
use super::store::{Rocks, RocksOptions, Store, invalid, rocks_err};
use super::stream::{StreamSink, StreamWriter, read_stream};
use crate::codec;
use crate::raft::{LogId, SnapshotMeta};

/// The snapshot data openraft hands around: an open snapshot stream file. The handle keeps
/// the bytes readable while a transfer runs, even after a newer snapshot removes the path.
/// A received stream may also carry its staged database (see `install`).
#[derive(Debug)]
pub struct SnapshotFile {
    pub path: PathBuf,
    pub file: File,
    pub(crate) staged: Option<Staged>,
}

impl SnapshotFile {
    pub fn open(path: impl Into<PathBuf>) -> io::Result<Self> {
        let path = path.into();
        let file = File::open(&path)?;
        Ok(SnapshotFile {
            path,
            file,
            staged: None,
        })
    }
}

/// The file name of the snapshot stream whose last entry is `last`.
pub(crate) fn snapshot_name(last: &Option<LogId>) -> String {
    let n = last.as_ref().map_or(0, |l| l.index + 1);
    format!("snap-{n:020}.rgsnap")
}

/// A snapshot's meta, decoded from its stream's header bytes.
pub(crate) fn decode_meta(bytes: &[u8], what: &Path) -> io::Result<SnapshotMeta> {
    codec::decode(bytes).map_err(|e| invalid(format!("{what:?}: snapshot meta: {e}")))
}

/// A staged database, durable under its own generation, not yet named by `CURRENT`. Dropped
/// unused, its directory and its copy of the stream are removed.
pub(crate) struct Staged {
    pub generation: u64,
    pub meta: SnapshotMeta,
    pub store: Option<Store>,
    /// The stream's copy (`snap-….<generation>.recv`), renamed into place by the switch.
    pub copy: PathBuf,
    pub disk: SmDisk,
    /// Where an unused one is removed: off openraft's task, which may be what drops it.
    pub blocking: Blocking,
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged")
            .field("generation", &self.generation)
            .field("last_log_id", &self.meta.last_log_id)
            .finish()
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let Some(store) = self.store.take() else {
            return;
        };
        tracing::info!(
            generation = self.generation,
            "removing a staged snapshot database that was not installed"
        );
        let (disk, copy) = (self.disk.clone(), self.copy.clone());
        let remove = move || {
            store.remove_on_drop(disk.clone());
            drop(store);
            let _ = disk.remove_file(&copy);
        };
        // Closing and removing a database takes long: not on the task that dropped it
        // (openraft's core, when it declines a snapshot), where the runtime allows.
        match (self.blocking, tokio::runtime::Handle::try_current()) {
            (Blocking::Pool, Ok(runtime)) => drop(runtime.spawn_blocking(remove)),
            _ => remove(),
        }
    }
}

/// One column family or pair of a database walk.
pub(crate) enum Item<'a> {
    Cf(&'a str),
    Pair(&'a [u8], &'a [u8]),
}

/// The column families a walk visits, in order: `meta`, then the CF of every tenant the
/// registry (read with `opts`, e.g. bound to one RocksDB snapshot) holds. A CF without a registry
/// entry is not state (an interrupted create or delete; see `reconcile`), so it is left out.
pub(crate) fn registered_cfs(db: &Rocks, opts: ReadOptions) -> io::Result<Vec<String>> {
    let meta = db
        .cf_handle(keys::META_CF)
        .ok_or_else(|| io::Error::other("the meta column family is missing"))?;
    let mut names = vec![keys::META_CF.to_string()];
    let mode = IteratorMode::From(&[keys::TENANT], rocksdb::Direction::Forward);
    for kv in db.iterator_cf_opt(&meta, opts, mode) {
        let (k, _) = kv.map_err(|e| rocks_err("read registry", e))?;
        if k.first() != Some(&keys::TENANT) {
            break;
        }
        let tenant = keys::tenant_of_meta_key(&k).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("malformed registry key {k:?}"),
            )
        })?;
        names.push(keys::tenant_cf(tenant));
    }
    // "meta" sorts before every "tenant.*" name, and registry keys are in tenant-id order,
    // which is the order of their CF names.
    debug_assert!(names.windows(2).all(|w| w[0] < w[1]));
    Ok(names)
}

/// Handles of the column families `names` (registered ones: a missing one is corruption).
pub(crate) fn cf_handles<'a>(db: &'a Rocks, names: &[String]) -> io::Result<Vec<Handle<'a>>> {
    names
        .iter()
        .map(|name| {
            let cf = db.cf_handle(name).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("tenant column family {name} is registered but missing"),
                )
            })?;
            Ok((name.clone(), cf))
        })
        .collect()
}

pub(crate) type Handle<'a> = (String, std::sync::Arc<rocksdb::BoundColumnFamily<'a>>);

/// Visits the column families `cfs` (in order) and all their pairs in key order; `read_opts`
/// gives each iterator's options (e.g. bound to one RocksDB snapshot so the walk is consistent).
pub(crate) fn walk(
    db: &Rocks,
    cfs: &[Handle<'_>],
    read_opts: &dyn Fn() -> ReadOptions,
    visit: &mut dyn FnMut(Item<'_>) -> io::Result<()>,
) -> io::Result<()> {
    for (name, cf) in cfs {
        visit(Item::Cf(name))?;
        for kv in db.iterator_cf_opt(cf, read_opts(), IteratorMode::Start) {
            let (k, v) = kv.map_err(|e| rocks_err("walk", e))?;
            visit(Item::Pair(&k, &v))?;
        }
    }
    Ok(())
}

/// Takes a checkpoint of `store` into `dir` (must not exist): hard links, memtables flushed.
pub(crate) fn checkpoint(disk: &SmDisk, store: &Store, dir: &Path) -> io::Result<()> {
    // RocksDB flushes memtables for a checkpoint too; flushing here first does not depend on
    // that, and apply's writes (no RocksDB WAL) exist nowhere else.
    store.flush_all()?;
    let cp = Checkpoint::new(store.db()).map_err(|e| rocks_err("checkpoint", e))?;
    disk.announce(DiskStep::Checkpoint(dir))?;
    cp.create_checkpoint(dir)
        .map_err(|e| rocks_err(&format!("checkpoint into {dir:?}"), e))?;
    if let Some(parent) = dir.parent() {
        disk.sync_dir(parent)?;
    }
    Ok(())
}

/// Writes the stream of the checkpoint at `checkpoint` to `out` and fsyncs it (the caller
/// renames it into place). `check_applied` receives the checkpoint's stored applied id bytes, to
/// cross-check the meta.
pub(crate) fn write_stream_file(
    disk: &SmDisk,
    checkpoint: &Path,
    meta: &[u8],
    out: &Path,
    check_applied: &dyn Fn(Option<&[u8]>) -> io::Result<()>,
) -> io::Result<[u8; 32]> {
    let opts = Options::default();
    let all = Rocks::list_cf(&opts, checkpoint).map_err(|e| rocks_err("list checkpoint", e))?;
    let db = Rocks::open_cf_for_read_only(&opts, checkpoint, &all, false)
        .map_err(|e| rocks_err(&format!("open checkpoint {checkpoint:?}"), e))?;
    {
        let meta_cf = db
            .cf_handle(keys::META_CF)
            .ok_or_else(|| io::Error::other("checkpoint has no meta column family"))?;
        let applied = db
            .get_cf(&meta_cf, keys::APPLIED)
            .map_err(|e| rocks_err("read applied", e))?;
        check_applied(applied.as_deref())?;
    }
    let names = registered_cfs(&db, ReadOptions::default())?;
    let cfs = cf_handles(&db, &names)?;
    let mut w = StreamWriter::new(BufWriter::new(disk.create_file(out)?), meta)?;
    walk(&db, &cfs, &ReadOptions::default, &mut |item| match item {
        Item::Cf(n) => w.cf(n),
        Item::Pair(k, v) => w.pair(k, v),
    })?;
    let (buf, digest) = w.finish()?;
    let file = buf.into_inner().map_err(|e| e.into_error())?;
    disk.sync_file(&file, out)?;
    Ok(digest)
}

/// Builds SST files per column family from a verified stream.
struct SstSink<'o> {
    opts: &'o Options,
    dir: PathBuf,
    sst_bytes: u64,
    writer: Option<SstFileWriter<'o>>,
    cf: Option<String>,
    files: BTreeMap<String, Vec<PathBuf>>,
    seq: u64,
}

impl SstSink<'_> {
    fn close(&mut self) -> io::Result<()> {
        if let Some(mut w) = self.writer.take() {
            w.finish().map_err(|e| rocks_err("finish SST", e))?;
        }
        Ok(())
    }
}

impl StreamSink for SstSink<'_> {
    fn cf(&mut self, name: &str) -> io::Result<()> {
        self.close()?;
        self.files.insert(name.to_string(), Vec::new());
        self.cf = Some(name.to_string());
        Ok(())
    }

    fn pair(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        if self.writer.is_none() {
            self.seq += 1;
            let path = self.dir.join(format!("{:06}.sst", self.seq));
            let w = SstFileWriter::create(self.opts);
            w.open(&path).map_err(|e| rocks_err("create SST", e))?;
            let cf = self
                .cf
                .as_ref()
                .expect("read_stream sends a cf before pairs");
            self.files
                .get_mut(cf)
                .expect("registered in cf()")
                .push(path);
            self.writer = Some(w);
        }
        let w = self.writer.as_mut().expect("just opened");
        w.put(key, value).map_err(|e| rocks_err("write SST", e))?;
        if w.file_size() >= self.sst_bytes {
            self.close()?;
        }
        Ok(())
    }
}

/// Copies everything read through it into `w`, so the received stream becomes this member's
/// current snapshot in the same pass.
struct Tee<R, W> {
    r: R,
    w: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.r.read(buf)?;
        self.w.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// Verifies the stream in `src` while building SST files and ingests them into a new database
/// at `db_dir` (not yet synced: the caller does that before anything names it); the stream is
/// copied to `copy_to` (fsynced, not yet renamed into place). Returns the stream's encoded
/// meta, its digest and the open store.
pub(crate) fn install_stream(
    disk: &SmDisk,
    src: &mut File,
    copy_to: &Path,
    db_dir: &Path,
    opts: &RocksOptions,
    sst_bytes: u64,
) -> io::Result<(Vec<u8>, [u8; 32], Store)> {
    src.seek(SeekFrom::Start(0))?;
    let ingest_dir = db_dir.with_extension("ingest");
    disk.create_dir_all(&ingest_dir)?;
    let mut tee = Tee {
        r: BufReader::with_capacity(1 << 20, src),
        w: BufWriter::with_capacity(1 << 20, disk.create_file(copy_to)?),
    };
    let mut sink = SstSink {
        opts: &opts.cf,
        dir: ingest_dir.clone(),
        sst_bytes,
        writer: None,
        cf: None,
        files: BTreeMap::new(),
        seq: 0,
    };
    let (meta, digest) = read_stream(&mut tee, &mut sink)?;
    sink.close()?;
    let copy = tee.w.into_inner().map_err(|e| e.into_error())?;
    disk.sync_file(&copy, copy_to)?;

    disk.announce(DiskStep::CreateDatabase(db_dir))?;
    let store = Store::open(db_dir, opts)?;
    let ingest = {
        let mut o = IngestExternalFileOptions::default();
        o.set_move_files(true);
        o
    };
    for (name, files) in &sink.files {
        if name != keys::META_CF {
            store
                .db()
                .create_cf(name, &opts.cf)
                .map_err(|e| rocks_err(&format!("create {name}"), e))?;
        }
        if files.is_empty() {
            continue;
        }
        let cf = store.cf(name).expect("created above");
        store
            .db()
            .ingest_external_file_cf_opts(&cf, &ingest, files.clone())
            .map_err(|e| rocks_err(&format!("ingest into {name}"), e))?;
    }
    disk.remove_dir_all(&ingest_dir)?;
    Ok((meta, digest, store))
}
