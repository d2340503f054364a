//! The state machine's own files (pointer, snapshot streams, new databases, checkpoints) on
//! the real disk, as a power cut would leave them.
//!
//! The state machine announces each step on its files before taking it
//! (`raftgraph::state_machine::DiskStep`). From those announcements this ledger knows what is
//! not yet durable: bytes written to a file since its last sync, directory entries (creations,
//! renames) since the directory's last sync, and every file of a database an install created
//! until raftgraph itself has synced it (RocksDB's own syncs inside a new database are not
//! counted on). It can also cut the power at the `nth + 1`-th step of a phase: that step then
//! does not happen, nor does any after it.
//!
//! At a power loss, each directory loses a random suffix of its unsynced entry changes (undone
//! newest first: a creation removed, a rename reversed and the file it replaced restored), then
//! every unsynced file is kept, emptied or cut at a random length — in place, so every hard
//! link to it (a checkpoint's) sees the same. Removals count as durable at once: the
//! simulation cannot bring back a file the state machine removed.
//!
//! It can also fail one step with ENOSPC or EIO ([`SmLedger::fail_at`]): the step does not
//! happen and returns the error. After an EIO on a sync, later syncs of that file or directory
//! make nothing durable until the next power loss (a failed writeback on Linux).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use raftgraph::state_machine::{DiskHook, DiskStep, Phase};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// One node's ledger; shared with its state machine through [`SmLedger::hook`].
pub struct SmLedger {
    /// Where files a rename replaced are kept (hard links), to restore on an undo.
    stash: PathBuf,
    inner: Mutex<Ledger>,
}

#[derive(Default)]
struct Ledger {
    /// A cut waiting for its step: the phase it counts (any: `None`) and steps still to pass.
    armed: Option<(Option<Phase>, u64)>,
    /// The step the power went out at: its phase, and how the trace shows it.
    fired: Option<(Phase, String)>,
    /// An injected error waiting for its step: the phase it counts (any: `None`), steps still
    /// to pass, and whether it is ENOSPC (else EIO).
    failing: Option<(Option<Phase>, u64, bool)>,
    /// The step an injected error failed: its phase, and how (until
    /// [`SmLedger::clear_failure`]).
    failed: Option<(Phase, String)>,
    /// Files and directories whose sync failed with EIO: as after a failed writeback on
    /// Linux, a later sync does not make what was unsynced durable (until a power loss).
    writeback_failed: BTreeSet<PathBuf>,
    /// Files written since their last sync.
    dirty: BTreeSet<PathBuf>,
    /// Databases an install created, with the files of each synced so far.
    new_dbs: BTreeMap<PathBuf, BTreeSet<PathBuf>>,
    /// Per directory, entry changes since its last sync, oldest first.
    entries: BTreeMap<PathBuf, Vec<EntryChange>>,
    stashed: u64,
    /// The entry of the latest write announced: a second write of one entry is told apart.
    last_apply: Option<u64>,
    /// The entry whose write the cut stopped, if it did.
    cut_apply: Option<u64>,
    /// The index of the snapshot an install is receiving (from its stream's name).
    installing: Option<u64>,
    /// Indexes of snapshots whose install switched the pointer.
    installed: BTreeSet<u64>,
    /// The entry whose write a cut stopped, after a crash that kept the database (for the
    /// next boot's check).
    cut_before: Option<u64>,
}

enum EntryChange {
    Created(PathBuf),
    Renamed {
        from: PathBuf,
        to: PathBuf,
        /// A hard link to the file `to` named before, if any.
        replaced: Option<PathBuf>,
    },
}

fn kind(step: &DiskStep<'_>) -> &'static str {
    match step {
        DiskStep::CreateDir(_) => "create_dir",
        DiskStep::WriteFile(_) => "write_file",
        DiskStep::SyncFile(_) => "sync_file",
        DiskStep::Rename { .. } => "rename",
        DiskStep::SyncDir(_) => "sync_dir",
        DiskStep::RemoveFile(_) => "remove_file",
        DiskStep::RemoveDir(_) => "remove_dir",
        DiskStep::CreateDatabase(_) => "create_database",
        DiskStep::Checkpoint(_) => "checkpoint",
        DiskStep::ApplyWrite { .. } => "apply_write",
    }
}

/// A step as the trace shows it: no temporary directory in it, so runs compare equal.
fn describe(phase: Phase, step: &DiskStep<'_>) -> String {
    let name = |p: &Path| {
        p.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    };
    let what = match step {
        DiskStep::CreateDir(p)
        | DiskStep::WriteFile(p)
        | DiskStep::SyncFile(p)
        | DiskStep::SyncDir(p)
        | DiskStep::RemoveFile(p)
        | DiskStep::RemoveDir(p)
        | DiskStep::CreateDatabase(p)
        | DiskStep::Checkpoint(p) => name(p),
        DiskStep::Rename { from, to } => format!("{} -> {}", name(from), name(to)),
        DiskStep::ApplyWrite { index } => format!("entry {index}"),
    };
    format!("{phase:?} {}({what})", kind(step))
}

/// Whether a cut or error aimed at `want` (any phase: `None`) counts a step of `got`: one aimed
/// at an install counts its staging too (the new database built before openraft is told).
fn counts(want: Option<Phase>, got: Phase) -> bool {
    match want {
        None => true,
        Some(Phase::Install) => matches!(got, Phase::Stage | Phase::Install),
        Some(p) => p == got,
    }
}

fn parent(p: &Path) -> PathBuf {
    p.parent().map(Path::to_path_buf).unwrap_or_default()
}

impl SmLedger {
    pub fn new(stash: PathBuf) -> Arc<SmLedger> {
        Arc::new(SmLedger {
            stash,
            inner: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn hook(self: &Arc<Self>) -> DiskHook {
        let me = self.clone();
        DiskHook(Arc::new(move |phase, step| me.step(phase, step)))
    }

    /// Cuts the power at the `nth + 1`-th step of `phase` (any phase: `None`; an install's
    /// counts its staging) from now.
    pub fn cut_at(&self, phase: Option<Phase>, nth: u64) {
        self.lock().armed = Some((phase, nth));
    }

    /// Forgets an armed cut that has not fired.
    pub fn disarm(&self) {
        self.lock().armed = None;
    }

    /// The step the power went out at (its phase, and how the trace shows it), if it did.
    pub fn fired(&self) -> Option<(Phase, String)> {
        self.lock().fired.clone()
    }

    /// Fails the `nth + 1`-th step of `phase` (as [`SmLedger::cut_at`] counts) from now with ENOSPC
    /// (`enospc`) or EIO: that step does not happen and returns the error; later steps work.
    pub fn fail_at(&self, phase: Option<Phase>, nth: u64, enospc: bool) {
        self.lock().failing = Some((phase, nth, enospc));
    }

    /// The step an injected error failed, if one did.
    pub fn failed(&self) -> Option<String> {
        self.lock().failed.as_ref().map(|(_, what)| what.clone())
    }

    /// The phase of the step an injected error failed, if one did.
    pub fn failed_phase(&self) -> Option<Phase> {
        self.lock().failed.as_ref().map(|(phase, _)| *phase)
    }

    /// Forgets an injected error, fired or not.
    pub fn clear_failure(&self) {
        let mut l = self.lock();
        l.failing = None;
        l.failed = None;
    }

    fn step(&self, phase: Phase, step: &DiskStep<'_>) -> io::Result<()> {
        let mut l = self.lock();
        if l.fired.is_some() {
            return Err(io::Error::other("simulated power cut: the machine is off"));
        }
        if let Some((p, left, enospc)) = &mut l.failing
            && counts(*p, phase)
        {
            if *left == 0 {
                let enospc = *enospc;
                l.failing = None;
                let (what, err) = if enospc {
                    (
                        "ENOSPC",
                        io::Error::new(io::ErrorKind::StorageFull, "injected ENOSPC"),
                    )
                } else {
                    ("EIO", io::Error::other("injected EIO"))
                };
                l.failed = Some((phase, format!("{what} at {}", describe(phase, step))));
                if !enospc && let DiskStep::SyncFile(p) | DiskStep::SyncDir(p) = step {
                    l.writeback_failed.insert(p.to_path_buf());
                }
                if let DiskStep::ApplyWrite { index } = step {
                    // Not written: the next boot must not report it applied.
                    l.cut_apply = Some(*index);
                }
                return Err(err);
            }
            *left -= 1;
        }
        if let Some((p, left)) = &mut l.armed
            && counts(*p, phase)
        {
            if *left == 0 {
                l.armed = None;
                let mut at = describe(phase, step);
                if let DiskStep::ApplyWrite { index } = step
                    && l.last_apply == Some(*index)
                {
                    at.push_str(", its second write");
                }
                l.fired = Some((phase, at));
                if let DiskStep::ApplyWrite { index } = step {
                    l.cut_apply = Some(*index);
                }
                return Err(io::Error::other("simulated power cut"));
            }
            *left -= 1;
        }
        match *step {
            DiskStep::CreateDir(p) | DiskStep::Checkpoint(p) => {
                if !p.exists() {
                    l.entries
                        .entry(parent(p))
                        .or_default()
                        .push(EntryChange::Created(p.to_path_buf()));
                }
            }
            DiskStep::CreateDatabase(p) => {
                if !p.exists() {
                    l.entries
                        .entry(parent(p))
                        .or_default()
                        .push(EntryChange::Created(p.to_path_buf()));
                }
                l.new_dbs.insert(p.to_path_buf(), BTreeSet::new());
            }
            DiskStep::WriteFile(p) => {
                // `snap-<index + 1>.<generation>.recv` (the state machine's `snapshot_name`,
                // staged).
                let receiving = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix("snap-")?.strip_suffix(".recv"))
                    .and_then(|n| n.split('.').next()?.parse::<u64>().ok());
                if phase == Phase::Stage
                    && let Some(n) = receiving
                {
                    l.installing = n.checked_sub(1);
                }
                if !p.exists() {
                    l.entries
                        .entry(parent(p))
                        .or_default()
                        .push(EntryChange::Created(p.to_path_buf()));
                }
                l.dirty.insert(p.to_path_buf());
            }
            DiskStep::SyncFile(p) | DiskStep::SyncDir(p) if l.writeback_failed.contains(p) => {}
            DiskStep::SyncFile(p) => {
                l.dirty.remove(p);
                if let Some(synced) = l.new_dbs.get_mut(&parent(p)) {
                    synced.insert(p.to_path_buf());
                }
            }
            DiskStep::Rename { from, to } => {
                if phase == Phase::Install
                    && to.file_name().is_some_and(|n| n == "CURRENT")
                    && let Some(index) = l.installing
                {
                    l.installed.insert(index);
                }
                let replaced = if to.is_file() {
                    l.stashed += 1;
                    std::fs::create_dir_all(&self.stash)?;
                    let keep = self.stash.join(l.stashed.to_string());
                    std::fs::hard_link(to, &keep)?;
                    Some(keep)
                } else {
                    None
                };
                if l.dirty.remove(from) {
                    l.dirty.insert(to.to_path_buf());
                }
                l.entries
                    .entry(parent(to))
                    .or_default()
                    .push(EntryChange::Renamed {
                        from: from.to_path_buf(),
                        to: to.to_path_buf(),
                        replaced,
                    });
            }
            DiskStep::SyncDir(d) => {
                for change in l.entries.remove(d).unwrap_or_default() {
                    change.durable();
                }
                if let Some(synced) = l.new_dbs.remove(d) {
                    // Files the install did not sync stay as unsynced as they were.
                    for f in files(d) {
                        if !synced.contains(&f) {
                            l.dirty.insert(f);
                        }
                    }
                }
            }
            DiskStep::RemoveFile(p) | DiskStep::RemoveDir(p) => l.forget(p),
            DiskStep::ApplyWrite { index } => l.last_apply = Some(index),
        }
        Ok(())
    }

    /// Indexes of the snapshots installs switched to (possibly undone by a power loss since).
    pub fn installed(&self) -> BTreeSet<u64> {
        self.lock().installed.clone()
    }

    /// The power goes out (the node is already stopped): unsynced entry changes and bytes are
    /// lost at random (from `seed`: how many draws this takes depends on the files found, so it
    /// must not consume the fault schedule's generator) as the module docs say. Returns what
    /// happened, for the trace. Any cut is disarmed; call [`SmLedger::restart`] before the
    /// machine starts again.
    pub fn power_loss(&self, seed: u64) -> String {
        let rng = &mut SmallRng::seed_from_u64(seed);
        let mut l = self.lock();
        let mut undone = 0;
        let entries = std::mem::take(&mut l.entries);
        for (_, changes) in entries {
            let k = rng.random_range(0..=changes.len());
            for change in changes.into_iter().rev().take(k) {
                undone += 1;
                match change {
                    EntryChange::Created(p) => {
                        if p.is_dir() {
                            let _ = std::fs::remove_dir_all(&p);
                        } else {
                            let _ = std::fs::remove_file(&p);
                        }
                        l.forget(&p);
                    }
                    EntryChange::Renamed { from, to, replaced } => {
                        if to.exists() {
                            let _ = std::fs::rename(&to, &from);
                            if l.dirty.remove(&to) {
                                l.dirty.insert(from.clone());
                            }
                        }
                        if let Some(old) = replaced {
                            let _ = std::fs::hard_link(&old, &to);
                        }
                    }
                }
            }
        }
        let mut unsynced: Vec<PathBuf> = std::mem::take(&mut l.dirty).into_iter().collect();
        for (db, synced) in std::mem::take(&mut l.new_dbs) {
            unsynced.extend(files(&db).into_iter().filter(|f| !synced.contains(f)));
        }
        let (mut emptied, mut cut) = (0, 0);
        for f in unsynced {
            let Ok(len) = std::fs::metadata(&f).map(|m| m.len()) else {
                continue;
            };
            let to = match rng.random_range(0..3) {
                0 => continue,
                1 => {
                    emptied += 1;
                    0
                }
                _ => {
                    cut += 1;
                    rng.random_range(0..=len)
                }
            };
            if let Ok(file) = std::fs::OpenOptions::new().write(true).open(&f) {
                let _ = file.set_len(to);
            }
        }
        let _ = std::fs::remove_dir_all(&self.stash);
        l.writeback_failed.clear();
        l.armed = None;
        l.fired = None;
        format!("{undone} entry changes undone, {emptied} files emptied, {cut} cut short")
    }

    /// After a crash (and after [`SmLedger::power_loss`], if the power went out): the machine can
    /// start again; nothing unsynced became durable. If the cut stopped an entry's write, the
    /// next boot is told ([`SmLedger::take_cut_before`]): whatever the database kept, that
    /// entry was never written.
    pub fn restart(&self) {
        let mut l = self.lock();
        l.armed = None;
        l.fired = None;
        l.cut_before = l.cut_apply.take();
    }

    /// The entry whose write the last crash stopped, if the database was kept (once).
    pub fn take_cut_before(&self) -> Option<u64> {
        self.lock().cut_before.take()
    }
}

impl Ledger {
    /// `p` (a file or a directory tree) is gone: nothing under it to lose or undo.
    fn forget(&mut self, p: &Path) {
        self.dirty.retain(|f| !f.starts_with(p));
        self.new_dbs.retain(|d, _| !d.starts_with(p));
        let under: Vec<PathBuf> = self
            .entries
            .keys()
            .filter(|d| d.starts_with(p))
            .cloned()
            .collect();
        for d in under {
            for change in self.entries.remove(&d).unwrap_or_default() {
                change.durable();
            }
        }
        for changes in self.entries.values_mut() {
            for change in std::mem::take(changes) {
                let gone = match &change {
                    EntryChange::Created(c) => c.starts_with(p),
                    EntryChange::Renamed { to, .. } => to.starts_with(p),
                };
                if gone {
                    change.durable();
                } else {
                    changes.push(change);
                }
            }
        }
    }
}

impl EntryChange {
    /// The change can no longer be undone: the file it replaced is let go.
    fn durable(self) {
        if let EntryChange::Renamed {
            replaced: Some(old),
            ..
        } = self
        {
            let _ = std::fs::remove_file(old);
        }
    }
}

/// The files directly in `dir`, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}
