//! `Shared`: the state one state machine's apply task, snapshot builders and readers hold in
//! common — the open database (swapped by an install), its generation, the current snapshot.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

use super::config::StateMachineConfig;
use super::disk::SmDisk;
use super::snapshot::SnapshotFile;
use super::store::{RocksOptions, SNAPSHOTS, Store};
use crate::raft::SnapshotMeta;

/// The current snapshot: its meta and where its stream file is.
#[derive(Clone, Debug)]
pub(crate) struct CurrentSnapshot {
    pub meta: SnapshotMeta,
    pub path: PathBuf,
}

/// State shared by the state machine, its snapshot builders and its readers.
pub(crate) struct Shared {
    pub cfg: StateMachineConfig,
    pub opts: RocksOptions,
    /// Readers clone the `Arc`; an install swaps it and the old database closes (and its
    /// directory is removed) when the last reader drops it.
    pub store: RwLock<Arc<Store>>,
    /// The generation `CURRENT` names.
    pub generation: AtomicU64,
    /// The highest generation a staging has taken (each takes a new one; see `install`).
    pub staged: AtomicU64,
    pub current: Mutex<Option<CurrentSnapshot>>,
    pub seq: AtomicU64,
    /// Checkpoints of builders not yet dropped: a snapshot published meanwhile must not remove
    /// one (two builds can run at once, e.g. after two `cluster snapshot` calls in a row).
    pub building: Mutex<std::collections::BTreeSet<PathBuf>>,
}

impl Shared {
    pub fn store(&self) -> Arc<Store> {
        self.store.read().expect("store lock poisoned").clone()
    }

    pub(super) fn snapshots(&self) -> PathBuf {
        self.cfg.dir.join(SNAPSHOTS)
    }

    /// Renames the fsynced stream at `tmp` to `cur.path` and makes it the current snapshot
    /// unless a newer one already is; removes older stream files, and checkpoints other than
    /// `keep_checkpoint` when one is given. Returns an open handle to the stream. All of it
    /// happens under the snapshot lock, so no reader can find a path that is being removed.
    pub(super) fn publish(
        &self,
        disk: &SmDisk,
        cur: CurrentSnapshot,
        tmp: &Path,
        keep_checkpoint: Option<&Path>,
    ) -> io::Result<SnapshotFile> {
        let mut slot = self.current.lock().expect("snapshot lock poisoned");
        disk.rename(tmp, &cur.path)?;
        disk.sync_dir(&self.snapshots())?;
        let file = SnapshotFile::open(&cur.path)?;
        if slot
            .as_ref()
            .is_some_and(|c| c.meta.last_log_id > cur.meta.last_log_id)
        {
            // A newer snapshot won meanwhile (e.g. an install): keep only the handle.
            disk.remove_file(&cur.path)?;
            return Ok(file);
        }
        let keep = cur.path.clone();
        *slot = Some(cur);
        let building = self
            .building
            .lock()
            .expect("builders lock poisoned")
            .clone();
        let mut stale_checkpoints = Vec::new();
        for entry in fs::read_dir(self.snapshots())? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".rgsnap") && path != keep {
                disk.remove_file(&path)?;
            } else if let Some(k) = keep_checkpoint
                && name.starts_with("ckpt-")
                && !name.ends_with(".tmp")
                && path != k
                && !building.contains(&path)
            {
                stale_checkpoints.push(path);
            }
        }
        // Removing a checkpoint unlinks thousands of files: not while readers wait on the lock.
        drop(slot);
        for path in stale_checkpoints {
            disk.remove_dir_all(&path)?;
        }
        Ok(file)
    }
}
