//! Installing a received snapshot, in two parts.
//!
//! **Staging** ([`Stager::stage`]) builds the new database from the stream under a generation
//! nothing names yet, checks it against the snapshot's meta, and makes every file and the
//! directory entry durable. The peer service runs it once a transfer has arrived and been
//! verified, before openraft is told: a failure there (a full disk, an I/O error) refuses the
//! transfer, removes what it wrote, and the member keeps serving its current state.
//!
//! **Switching** (openraft's `install_snapshot`, [`install_blocking`]) publishes the stream as the
//! current snapshot, syncs the state directory (the staged database's entry) and points `CURRENT`
//! at the staged database: a rename, a small file and their syncs.
//! openraft treats any error of `install_snapshot` as fatal for the member, so everything that
//! needs space or many writes happens before it. A snapshot that reaches `install_snapshot`
//! unstaged (tests and tools that call it directly) is staged there, inside the fatal part.
//!
//! Every staging takes a new generation (`Shared::staged`), so a staged database that openraft
//! never installs (a newer snapshot won, the sender's term was stale) is removed when its
//! [`Staged`] drops without touching any other.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::disk::Phase;
use super::shared::{CurrentSnapshot, Shared};
use super::snapshot::{SnapshotFile, Staged, decode_meta, install_stream, snapshot_name};
use super::store::{
    Store, db_dir_name, invalid, read_applied, rocks_err, switch_pointer, write_pointer,
};
use crate::raft::SnapshotMeta;

/// Stages received snapshots for the state machine it was taken from
/// ([`super::StateMachine::stager`]): the peer service holds one.
#[derive(Clone)]
pub struct Stager {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Stager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stager")
            .field("dir", &self.shared.cfg.dir)
            .finish()
    }
}

impl Stager {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Stager { shared }
    }

    /// Where snapshot streams live; the peer service receives into it (`*.tmp`, removed at open).
    pub fn snapshots_dir(&self) -> PathBuf {
        self.shared.snapshots()
    }

    /// Builds `snapshot`'s database, checks it holds `meta`, and makes it durable, so that
    /// openraft's install only has to switch to it. On error nothing staged is left behind, and
    /// the state in use is untouched.
    pub async fn stage(
        &self,
        meta: &SnapshotMeta,
        mut snapshot: SnapshotFile,
    ) -> io::Result<SnapshotFile> {
        let shared = self.shared.clone();
        let expect = meta.clone();
        let staged = shared
            .cfg
            .blocking
            .run(move || {
                stage_blocking(&shared, &mut snapshot.file, &snapshot.path, &expect)
                    .map(|s| (snapshot, s))
            })
            .await;
        let (mut snapshot, staged) = staged?;
        snapshot.staged = Some(staged);
        Ok(snapshot)
    }
}

/// The staging step itself (see the module docs); blocking I/O.
fn stage_blocking(
    sh: &Shared,
    src: &mut File,
    src_path: &Path,
    expect: &SnapshotMeta,
) -> io::Result<Staged> {
    let generation = sh.staged.fetch_add(1, Ordering::SeqCst) + 1;
    let disk = sh.cfg.disk(Phase::Stage);
    let db_dir = sh.cfg.dir.join(db_dir_name(generation));
    let ingest_dir = db_dir.with_extension("ingest");
    let copy = sh
        .snapshots()
        .join(snapshot_name(&expect.last_log_id))
        .with_extension(format!("{generation}.recv"));
    // Planted bug (tests only): the new database synced only after the pointer names it.
    let sync_after_switch = sh.cfg.planted_pointer_before_sync();
    let mut build = || -> io::Result<Store> {
        // A crash of an earlier process may have left these behind (open removes them too).
        disk.remove_dir_if_exists(&db_dir)?;
        disk.remove_dir_if_exists(&ingest_dir)?;
        let (meta_bytes, _digest, store) = install_stream(
            &disk,
            src,
            &copy,
            &db_dir,
            &sh.opts,
            sh.cfg.install_sst_bytes,
        )?;
        let got = decode_meta(&meta_bytes, src_path)?;
        let (applied, _) = read_applied(&store)?;
        if got != *expect || applied != expect.last_log_id {
            return Err(invalid(format!(
                "snapshot {src_path:?} holds {got:?} (applied {applied:?}), expected {expect:?}"
            )));
        }
        // Every file of the new database, then its directory, durable before anything names
        // it (its entry in the state directory is synced by the switch: an EIO on that
        // directory's sync must be fatal, as later syncs of it could no longer be trusted).
        store
            .db()
            .flush_wal(true)
            .map_err(|e| rocks_err("sync WAL", e))?;
        if !sync_after_switch {
            disk.sync_tree(&db_dir)?;
        }
        Ok(store)
    };
    match build() {
        Ok(store) => Ok(Staged {
            generation,
            meta: expect.clone(),
            store: Some(store),
            copy,
            disk,
            blocking: sh.cfg.blocking,
        }),
        Err(e) => {
            let _ = disk.remove_dir_if_exists(&db_dir);
            let _ = disk.remove_dir_if_exists(&ingest_dir);
            let _ = disk.remove_file(&copy);
            Err(e)
        }
    }
}

/// openraft's `install_snapshot`: stages `snapshot` if the peer service has not, then switches
/// to it. Returns the new store and its generation; the caller swaps them in.
pub(super) fn install_blocking(
    sh: &Shared,
    meta: &SnapshotMeta,
    mut snapshot: SnapshotFile,
) -> io::Result<(Store, u64)> {
    let mut staged = match snapshot.staged.take() {
        Some(s) if s.meta == *meta => s,
        // Staged for another meta (never, from the peer service): staged again below, and the
        // stray one removed as it drops.
        _ => stage_blocking(sh, &mut snapshot.file, &snapshot.path, meta)?,
    };
    let disk = sh.cfg.disk(Phase::Install);
    let generation = staged.generation;
    let db_dir = sh.cfg.dir.join(db_dir_name(generation));
    let cur = CurrentSnapshot {
        meta: meta.clone(),
        path: sh.snapshots().join(snapshot_name(&meta.last_log_id)),
    };
    // The stream becomes the current snapshot before the database switch: if the switch is
    // then lost, a restart finds a snapshot ahead of the applied id and openraft reinstalls it.
    // Checkpoints are left for the next build to clear (one may be feeding a build now). Until
    // this succeeds the staged database is removed on any error (as `staged` drops).
    sh.publish(&disk, cur, &staged.copy, None)?;
    // The new database's directory entry, durable before the pointer names it.
    disk.sync_dir(&sh.cfg.dir)?;
    // The switch: from here a restart opens the new database. No cleanup if it fails: the
    // rename may have happened, and open() decides from the pointer.
    let store = staged.store.take().expect("a staged store until switched");
    if sh.cfg.planted_pointer_not_durable() {
        // Planted bug (tests only): the switch left undurable when the install returns.
        switch_pointer(&disk, &sh.cfg.dir, generation)?;
    } else {
        write_pointer(&disk, &sh.cfg.dir, generation)?;
    }
    if sh.cfg.planted_pointer_before_sync() {
        disk.sync_tree(&db_dir)?;
    }
    Ok((store, generation))
}
