//! The state machine's own file operations: the `CURRENT` pointer, snapshot streams, new
//! database directories, checkpoints, and the syncs and renames that make them durable.
//! RocksDB's writes inside a database are RocksDB's; these are the steps around them.
//!
//! Every operation goes through [`SmDisk`], which (with the `testing` feature) first tells a
//! [`DiskHook`] what it is about to do. The simulation uses that to cut the power at any one
//! step — the step then does not happen — and to know, when it does, which files and directory
//! entries were not yet durable. Without a hook (always, in production) each method is the
//! plain `std::fs` call.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
#[cfg(feature = "testing")]
use std::sync::Arc;

/// What the state machine was doing when it touched its files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Opening: the first database and pointer of a new directory, leftovers removed.
    Open,
    /// Applying entries (an entry's write to RocksDB, unsynced).
    Apply,
    /// Building a snapshot: a checkpoint, the stream written, synced and published.
    Build,
    /// Staging a received snapshot: a new database ingested from the stream, checked and
    /// synced under a generation nothing names yet. A failure refuses the transfer.
    Stage,
    /// Installing a staged snapshot: the stream published, the pointer switched, the old
    /// database removed. A failure is fatal for the member.
    Install,
}

/// One step, announced before it happens (read only by a hook, which exists only with the
/// `testing` feature).
#[derive(Debug)]
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
pub enum DiskStep<'a> {
    /// A directory is created (its entry durable once its parent is synced).
    CreateDir(&'a Path),
    /// A file is created (or truncated) and then written; its bytes are durable once synced,
    /// its entry once its directory is.
    WriteFile(&'a Path),
    /// A file's bytes are synced.
    SyncFile(&'a Path),
    /// A file is renamed over `to` (durable once the directory is synced).
    Rename { from: &'a Path, to: &'a Path },
    /// A directory's entries (creations, renames) are synced.
    SyncDir(&'a Path),
    /// A file is removed.
    RemoveFile(&'a Path),
    /// A directory and everything in it are removed.
    RemoveDir(&'a Path),
    /// RocksDB creates a database in this new directory. Nothing in it counts as durable until
    /// each of its files and then the directory are synced ([`SmDisk::sync_tree`]).
    CreateDatabase(&'a Path),
    /// RocksDB writes a checkpoint of the open database into this new directory (it syncs the
    /// files itself; the entry is durable once the parent is synced).
    Checkpoint(&'a Path),
    /// One write of an entry to the open database, unsynced (not in RocksDB's WAL): durable
    /// at the next flush.
    ApplyWrite { index: u64 },
}

/// Told of every step before it happens; an error stops the step from happening and is
/// returned from it (the `testing` feature only).
#[cfg(feature = "testing")]
#[doc(hidden)]
#[derive(Clone)]
pub struct DiskHook(pub Arc<DiskHookFn>);

/// What a [`DiskHook`] calls.
#[cfg(feature = "testing")]
#[doc(hidden)]
pub type DiskHookFn = dyn Fn(Phase, &DiskStep<'_>) -> io::Result<()> + Send + Sync;

#[cfg(feature = "testing")]
impl std::fmt::Debug for DiskHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DiskHook")
    }
}

/// The state machine's file operations in one phase (see the module docs).
#[derive(Clone, Debug)]
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
pub(crate) struct SmDisk {
    phase: Phase,
    #[cfg(feature = "testing")]
    hook: Option<DiskHook>,
}

impl SmDisk {
    #[cfg(feature = "testing")]
    pub fn new(phase: Phase, hook: Option<DiskHook>) -> Self {
        SmDisk { phase, hook }
    }

    #[cfg(not(feature = "testing"))]
    pub fn new(phase: Phase) -> Self {
        SmDisk { phase }
    }

    /// The same operations in another phase.
    pub fn in_phase(&self, phase: Phase) -> Self {
        let mut disk = self.clone();
        disk.phase = phase;
        disk
    }

    /// Announces `step`; an error means it must not happen.
    #[cfg_attr(not(feature = "testing"), allow(unused_variables))]
    pub fn announce(&self, step: DiskStep<'_>) -> io::Result<()> {
        #[cfg(feature = "testing")]
        if let Some(hook) = &self.hook {
            return (hook.0)(self.phase, &step);
        }
        Ok(())
    }

    pub fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        if !dir.exists() {
            self.announce(DiskStep::CreateDir(dir))?;
        }
        fs::create_dir_all(dir)
    }

    /// Creates (or truncates) `path` for writing; sync it with [`SmDisk::sync_file`].
    pub fn create_file(&self, path: &Path) -> io::Result<File> {
        self.announce(DiskStep::WriteFile(path))?;
        File::create(path)
    }

    pub fn sync_file(&self, file: &File, path: &Path) -> io::Result<()> {
        self.announce(DiskStep::SyncFile(path))?;
        file.sync_all()
    }

    /// Writes `bytes` to a new file at `path` and syncs it.
    pub fn write_durable(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut f = self.create_file(path)?;
        f.write_all(bytes)?;
        self.sync_file(&f, path)
    }

    pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.announce(DiskStep::Rename { from, to })?;
        fs::rename(from, to)
    }

    pub fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.announce(DiskStep::SyncDir(dir))?;
        File::open(dir)?.sync_all()
    }

    /// Fsyncs every file in `dir` (not recursive) and then `dir` itself.
    pub fn sync_tree(&self, dir: &Path) -> io::Result<()> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.path());
            }
        }
        names.sort();
        for path in names {
            self.sync_file(&File::open(&path)?, &path)?;
        }
        self.sync_dir(dir)
    }

    pub fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.announce(DiskStep::RemoveFile(path))?;
        fs::remove_file(path)
    }

    pub fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.announce(DiskStep::RemoveDir(dir))?;
        fs::remove_dir_all(dir)
    }

    /// Removes `dir` and its contents; a missing `dir` is not an error.
    pub fn remove_dir_if_exists(&self, dir: &Path) -> io::Result<()> {
        if !dir.exists() {
            return Ok(());
        }
        match self.remove_dir_all(dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}
