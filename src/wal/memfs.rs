//! An in-memory [`WalFs`] with a power-loss model and fault injection, for tests and the
//! deterministic simulation.
//!
//! Model: each file has its *current* bytes (what reads see) and its *durable* bytes (what survives
//! a crash), plus the writes and length changes made since its last `sync_data`, in order.
//! Directory changes (create, rename, remove) are durable once `sync_dir` is called, and a crash
//! keeps an in-order prefix of the unsynced ones (directory updates are journaled in order).
//!
//! A crash ([`MemFs::crash_with`]) decides for every unsynced write independently whether it is
//! kept, dropped, or torn (only its first `n` bytes kept) — a power cut may keep a later write and
//! lose an earlier one. A write landing past the end of a file zero-fills the hole. Handles opened
//! before a crash fail afterwards, as a dead process's would.
//!
//! Faults: [`MemFs::fail_write_after`] and [`MemFs::fail_sync_after`] make a chosen later call fail
//! (ENOSPC and EIO respectively). The failed write changes no bytes. After the failed sync the
//! file's unsynced writes behave as on Linux after a failed writeback: still read back, and a
//! crash keeps, drops or tears them as any unsynced write, but no later sync makes them durable.
//! [`MemFs::cut_power_at`] cuts the
//! power *inside* the I/O: at a chosen later call (of any kind, or of one kind — a sync, a rename,
//! a remove…), which does not happen, and after which every call fails as the dead machine's
//! would, until the crash is applied with [`MemFs::crash_with`] (or a helper built on it).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::Rng;

use super::fs::{WalFile, WalFs};

/// What a crash does to one unsynced write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// The whole write reached the disk.
    Keep,
    /// None of it did.
    Drop,
    /// Only its first `n` bytes did.
    Tear(usize),
}

/// One unsynced change, as offered to a crash's chooser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingWrite {
    /// The file's current name, if it still has one.
    pub path: Option<PathBuf>,
    /// Position among all pending writes (0-based, file by file, oldest first).
    pub seq: usize,
    /// Offset written at; for a length change, the new length.
    pub offset: u64,
    /// Bytes written; 0 for a length change.
    pub len: usize,
}

/// The calls a power cut can be aimed at (see [`MemFs::cut_power_at`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum IoCall {
    Write,
    SetLen,
    SyncData,
    Create,
    Remove,
    Rename,
    SyncDir,
}

impl IoCall {
    /// Every kind, for a chooser.
    pub const ALL: [IoCall; 7] = [
        IoCall::Write,
        IoCall::SetLen,
        IoCall::SyncData,
        IoCall::Create,
        IoCall::Remove,
        IoCall::Rename,
        IoCall::SyncDir,
    ];
}

/// An armed power cut: the `remaining + 1`-th call of kind `call` (any kind: `None`) cuts it.
#[derive(Debug, Clone, Copy)]
struct Cut {
    call: Option<IoCall>,
    remaining: u64,
}

#[derive(Debug, Clone)]
enum DataOp {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Clone, Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<DataOp>,
    /// A sync failed since the last crash: a later sync makes durable only the writes made
    /// since (replayed onto `durable`), never `data` as a whole.
    writeback_failed: bool,
    /// How many of `pending` came before the latest failed sync: a crash before the next sync
    /// keeps, drops or tears them as any unsynced write; that sync drops them for good.
    failed_prefix: usize,
}

#[derive(Debug, Clone)]
enum DirOp {
    Link(PathBuf, u64),
    Unlink(PathBuf),
    Rename(PathBuf, PathBuf),
}

#[derive(Debug, Default)]
struct State {
    next_inode: u64,
    inodes: BTreeMap<u64, Inode>,
    dirs: BTreeSet<PathBuf>,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    dir_ops: Vec<DirOp>,
    generation: u64,
    write_fail_in: Option<u64>,
    sync_fail_in: Option<u64>,
    /// The call an injected fault failed, once one has (until [`MemFs::clear_faults`]).
    injected: Option<String>,
    syncs: u64,
    cut: Option<Cut>,
    /// Set when an armed cut fired: the call it fired at. Every call fails until a crash.
    power_off: Option<String>,
}

/// The in-memory file system. Clones share the same files.
#[derive(Debug, Clone, Default)]
pub struct MemFs {
    state: Arc<Mutex<State>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves plain data behind; keep using it.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn apply_dir_op(names: &mut BTreeMap<PathBuf, u64>, op: &DirOp) {
    match op {
        DirOp::Link(p, ino) => {
            names.insert(p.clone(), *ino);
        }
        DirOp::Unlink(p) => {
            names.remove(p);
        }
        DirOp::Rename(from, to) => {
            if let Some(ino) = names.remove(from) {
                names.insert(to.clone(), ino);
            }
        }
    }
}

fn apply_data_op(data: &mut Vec<u8>, op: &DataOp, keep: Option<usize>) {
    match op {
        DataOp::Write { offset, bytes } => {
            let n = keep.unwrap_or(bytes.len()).min(bytes.len());
            let start = *offset as usize;
            if data.len() < start + n {
                data.resize(start + n, 0);
            }
            data[start..start + n].copy_from_slice(&bytes[..n]);
        }
        DataOp::SetLen(len) => data.resize(*len as usize, 0),
    }
}

impl State {
    fn name_of(&self, ino: u64) -> String {
        self.path_of(ino)
            .map_or_else(|| "an unlinked file".into(), |p| p.display().to_string())
    }

    fn path_of(&self, ino: u64) -> Option<PathBuf> {
        self.names
            .iter()
            .find(|(_, i)| **i == ino)
            .map(|(p, _)| p.clone())
    }

    fn pending(&self) -> Vec<(u64, usize, PendingWrite)> {
        let mut out = Vec::new();
        for (ino, inode) in &self.inodes {
            for (i, op) in inode.pending.iter().enumerate() {
                let (offset, len) = match op {
                    DataOp::Write { offset, bytes } => (*offset, bytes.len()),
                    DataOp::SetLen(len) => (*len, 0),
                };
                let seq = out.len();
                out.push((
                    *ino,
                    i,
                    PendingWrite {
                        path: self.path_of(*ino),
                        seq,
                        offset,
                        len,
                    },
                ));
            }
        }
        out
    }

    /// Fails if the power is off, or cuts it if `call` is the one an armed cut waits for.
    fn power(
        &mut self,
        call: IoCall,
        path: impl FnOnce(&State) -> Option<PathBuf>,
    ) -> io::Result<()> {
        if self.power_off.is_none()
            && let Some(mut cut) = self.cut
            && cut.call.is_none_or(|c| c == call)
        {
            if cut.remaining == 0 {
                self.cut = None;
                let at = path(self).map_or_else(|| "?".into(), |p| p.display().to_string());
                self.power_off = Some(format!("{call:?} {at}"));
            } else {
                cut.remaining -= 1;
                self.cut = Some(cut);
            }
        }
        self.alive()
    }

    fn alive(&self) -> io::Result<()> {
        match &self.power_off {
            Some(at) => Err(io::Error::other(format!("power lost (cut at {at})"))),
            None => Ok(()),
        }
    }

    fn countdown(slot: &mut Option<u64>) -> bool {
        match slot {
            Some(0) => {
                *slot = None;
                true
            }
            Some(n) => {
                *n -= 1;
                false
            }
            None => false,
        }
    }
}

impl MemFs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates a power cut: every unsynced write meets the fate `fate` chooses for it, and the
    /// first `dir_ops_kept(n)` of the `n` unsynced directory changes survive.
    pub fn crash_with(
        &self,
        mut fate: impl FnMut(&PendingWrite) -> Fate,
        dir_ops_kept: impl FnOnce(usize) -> usize,
    ) {
        let mut s = lock(&self.state);
        let pending = s.pending();
        let mut fates: BTreeMap<(u64, usize), Fate> = BTreeMap::new();
        for (ino, i, pw) in &pending {
            fates.insert((*ino, *i), fate(pw));
        }
        for (ino, inode) in s.inodes.iter_mut() {
            let mut data = inode.durable.clone();
            for (i, op) in inode.pending.iter().enumerate() {
                match fates.get(&(*ino, i)).copied().unwrap_or(Fate::Drop) {
                    Fate::Keep => apply_data_op(&mut data, op, None),
                    Fate::Drop => {}
                    Fate::Tear(n) => apply_data_op(&mut data, op, Some(n)),
                }
            }
            inode.durable = data.clone();
            inode.data = data;
            inode.pending.clear();
            inode.writeback_failed = false;
            inode.failed_prefix = 0;
        }
        let kept = dir_ops_kept(s.dir_ops.len()).min(s.dir_ops.len());
        let mut names = s.durable_names.clone();
        for op in &s.dir_ops[..kept] {
            apply_dir_op(&mut names, op);
        }
        s.names = names.clone();
        s.durable_names = names;
        s.dir_ops.clear();
        let live: BTreeSet<u64> = s.names.values().copied().collect();
        s.inodes.retain(|ino, _| live.contains(ino));
        s.generation += 1;
        s.cut = None;
        s.power_off = None;
    }

    /// Arms a power cut at the `nth + 1`-th call from now of kind `call` (of any mutating kind:
    /// `None`). That call does not happen; it and every later call fail until a crash is applied,
    /// which the caller does once it sees [`MemFs::power_cut`].
    pub fn cut_power_at(&self, call: Option<IoCall>, nth: u64) {
        lock(&self.state).cut = Some(Cut {
            call,
            remaining: nth,
        });
    }

    /// Where an armed cut fired (the call and its path), if it has and no crash was applied since.
    pub fn power_cut(&self) -> Option<String> {
        lock(&self.state).power_off.clone()
    }

    /// Disarms a cut that has not fired.
    pub fn disarm_cut(&self) {
        lock(&self.state).cut = None;
    }

    /// A power cut that loses everything not synced.
    pub fn crash_drop_unsynced(&self) {
        self.crash_with(|_| Fate::Drop, |_| 0);
    }

    /// A power cut with every unsynced write independently kept, dropped or torn at random, and a
    /// random prefix of the unsynced directory changes kept.
    pub fn crash_random(&self, rng: &mut impl Rng) {
        let mut choices = Vec::new();
        for pw in self.pending_writes() {
            choices.push(match rng.random_range(0..3) {
                0 => Fate::Keep,
                1 => Fate::Drop,
                _ => Fate::Tear(rng.random_range(0..=pw.len)),
            });
        }
        let dir_pick: f64 = rng.random();
        let mut it = choices.into_iter();
        self.crash_with(
            |_| it.next().unwrap_or(Fate::Drop),
            |n| ((n + 1) as f64 * dir_pick) as usize,
        );
    }

    /// A process kill: nothing is lost (the page cache survives), but open handles die.
    pub fn kill(&self) {
        self.crash_with(|_| Fate::Keep, |n| n);
    }

    /// The unsynced writes, in the order a crash's chooser sees them.
    pub fn pending_writes(&self) -> Vec<PendingWrite> {
        lock(&self.state)
            .pending()
            .into_iter()
            .map(|(_, _, pw)| pw)
            .collect()
    }

    /// Makes the `n+1`-th write from now fail with ENOSPC (no bytes written).
    pub fn fail_write_after(&self, n: u64) {
        lock(&self.state).write_fail_in = Some(n);
    }

    /// Makes the `n+1`-th `sync_data` from now fail with EIO: nothing made durable, and no later
    /// sync makes the file's unsynced writes durable (a crash keeps, drops or tears them).
    pub fn fail_sync_after(&self, n: u64) {
        lock(&self.state).sync_fail_in = Some(n);
    }

    /// Cancels any injected fault that has not fired yet, and forgets one that has.
    pub fn clear_faults(&self) {
        let mut s = lock(&self.state);
        s.write_fail_in = None;
        s.sync_fail_in = None;
        s.injected = None;
    }

    /// The call an injected fault ([`MemFs::fail_write_after`], [`MemFs::fail_sync_after`])
    /// failed, if one has since the last [`MemFs::clear_faults`].
    pub fn injected(&self) -> Option<String> {
        lock(&self.state).injected.clone()
    }

    /// How many `sync_data` calls succeeded so far.
    pub fn sync_count(&self) -> u64 {
        lock(&self.state).syncs
    }

    /// The current bytes of a file.
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let s = lock(&self.state);
        let ino = s.names.get(path)?;
        Some(s.inodes[ino].data.clone())
    }

    /// Replaces a file's bytes, durably (a test's way to corrupt or cut a file).
    pub fn write_file_durable(&self, path: &Path, bytes: Vec<u8>) {
        let mut s = lock(&self.state);
        let ino = match s.names.get(path) {
            Some(ino) => *ino,
            None => {
                let ino = s.next_inode;
                s.next_inode += 1;
                s.names.insert(path.to_path_buf(), ino);
                s.durable_names.insert(path.to_path_buf(), ino);
                ino
            }
        };
        let inode = s.inodes.entry(ino).or_default();
        inode.durable = bytes.clone();
        inode.data = bytes;
        inode.pending.clear();
    }

    /// The paths of all files, sorted.
    pub fn paths(&self) -> Vec<PathBuf> {
        lock(&self.state).names.keys().cloned().collect()
    }
}

struct MemFile {
    state: Arc<Mutex<State>>,
    ino: u64,
    generation: u64,
}

impl MemFile {
    fn with<T>(&self, f: impl FnOnce(&mut State, u64) -> io::Result<T>) -> io::Result<T> {
        let mut s = lock(&self.state);
        if s.generation != self.generation || !s.inodes.contains_key(&self.ino) {
            return Err(io::Error::other("file handle from before a crash"));
        }
        s.alive()?;
        f(&mut s, self.ino)
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

impl WalFile for MemFile {
    fn len(&self) -> io::Result<u64> {
        self.with(|s, ino| Ok(s.inodes[&ino].data.len() as u64))
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with(|s, ino| {
            let data = &s.inodes[&ino].data;
            let start = usize::try_from(offset).map_err(io::Error::other)?;
            match start.checked_add(buf.len()) {
                Some(end) if end <= data.len() => {
                    buf.copy_from_slice(&data[start..end]);
                    Ok(())
                }
                _ => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past end of file",
                )),
            }
        })
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.with(|s, ino| {
            s.power(IoCall::Write, |s| s.path_of(ino))?;
            if State::countdown(&mut s.write_fail_in) {
                s.injected = Some(format!("ENOSPC on a write to {}", s.name_of(ino)));
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "injected ENOSPC",
                ));
            }
            let op = DataOp::Write {
                offset,
                bytes: buf.to_vec(),
            };
            let inode = s.inodes.get_mut(&ino).expect("checked by with()");
            apply_data_op(&mut inode.data, &op, None);
            inode.pending.push(op);
            Ok(())
        })
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.with(|s, ino| {
            s.power(IoCall::SyncData, |s| s.path_of(ino))?;
            if State::countdown(&mut s.sync_fail_in) {
                s.injected = Some(format!("EIO on a sync of {}", s.name_of(ino)));
                let inode = s.inodes.get_mut(&ino).expect("checked by with()");
                // The kernel marks the pages clean: the writes stay readable, may or may not
                // have reached the disk, and no later sync writes them.
                inode.writeback_failed = true;
                inode.failed_prefix = inode.pending.len();
                return Err(io::Error::other("injected EIO on fsync"));
            }
            s.syncs += 1;
            let inode = s.inodes.get_mut(&ino).expect("checked by with()");
            if inode.writeback_failed {
                for op in &inode.pending[inode.failed_prefix..] {
                    apply_data_op(&mut inode.durable, op, None);
                }
                inode.failed_prefix = 0;
            } else {
                inode.durable = inode.data.clone();
            }
            inode.pending.clear();
            Ok(())
        })
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.with(|s, ino| {
            s.power(IoCall::SetLen, |s| s.path_of(ino))?;
            let op = DataOp::SetLen(len);
            let inode = s.inodes.get_mut(&ino).expect("checked by with()");
            apply_data_op(&mut inode.data, &op, None);
            inode.pending.push(op);
            Ok(())
        })
    }
}

impl WalFs for MemFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.alive()?;
        s.dirs.insert(dir.to_path_buf());
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = lock(&self.state);
        s.alive()?;
        if !s.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(s.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        let s = lock(&self.state);
        s.alive()?;
        let ino = *s.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(Box::new(MemFile {
            state: self.state.clone(),
            ino,
            generation: s.generation,
        }))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        let mut s = lock(&self.state);
        s.power(IoCall::Create, |_| Some(path.to_path_buf()))?;
        if let Some(&ino) = s.names.get(path) {
            let inode = s.inodes.get_mut(&ino).expect("named inode exists");
            let op = DataOp::SetLen(0);
            apply_data_op(&mut inode.data, &op, None);
            inode.pending.push(op);
            return Ok(Box::new(MemFile {
                state: self.state.clone(),
                ino,
                generation: s.generation,
            }));
        }
        let ino = s.next_inode;
        s.next_inode += 1;
        s.inodes.insert(ino, Inode::default());
        s.names.insert(path.to_path_buf(), ino);
        s.dir_ops.push(DirOp::Link(path.to_path_buf(), ino));
        Ok(Box::new(MemFile {
            state: self.state.clone(),
            ino,
            generation: s.generation,
        }))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.power(IoCall::Remove, |_| Some(path.to_path_buf()))?;
        s.names.remove(path).ok_or_else(|| not_found(path))?;
        s.dir_ops.push(DirOp::Unlink(path.to_path_buf()));
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.power(IoCall::Rename, |_| Some(to.to_path_buf()))?;
        let ino = s.names.remove(from).ok_or_else(|| not_found(from))?;
        s.names.insert(to.to_path_buf(), ino);
        s.dir_ops
            .push(DirOp::Rename(from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        // One directory per WAL: syncing it makes every pending directory change durable.
        let mut s = lock(&self.state);
        s.power(IoCall::SyncDir, |_| Some(dir.to_path_buf()))?;
        let ops = std::mem::take(&mut s.dir_ops);
        let mut names = std::mem::take(&mut s.durable_names);
        for op in &ops {
            apply_dir_op(&mut names, op);
        }
        s.durable_names = names;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from("/w").join(s)
    }

    /// A fresh file system holding an empty `/w/a` whose name is durable, and its handle.
    fn named_file() -> (MemFs, Box<dyn WalFile>) {
        let fs = MemFs::new();
        fs.create_dir_all(Path::new("/w")).unwrap();
        let f = fs.create(&p("a")).unwrap();
        fs.sync_dir(Path::new("/w")).unwrap();
        (fs, f)
    }

    #[test]
    fn unsynced_writes_and_unsynced_names_are_lost_on_crash() {
        let (fs, mut f) = named_file();
        f.write_all_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        f.write_all_at(b" world", 5).unwrap();
        let _g = fs.create(&p("b")).unwrap();
        fs.crash_drop_unsynced();
        assert_eq!(fs.read_file(&p("a")).unwrap(), b"hello");
        assert_eq!(fs.read_file(&p("b")), None);
        assert!(f.len().is_err(), "old handles die with the crash");
    }

    #[test]
    fn a_later_write_can_survive_an_earlier_lost_one() {
        let (fs, mut f) = named_file();
        f.write_all_at(b"aaaa", 0).unwrap();
        f.write_all_at(b"bbbb", 4).unwrap();
        let mut fates = [Fate::Drop, Fate::Tear(2)].into_iter();
        fs.crash_with(|_| fates.next().unwrap(), |_| 0);
        assert_eq!(fs.read_file(&p("a")).unwrap(), b"\0\0\0\0bb");
    }

    #[test]
    fn injected_faults_fire_once_at_the_chosen_call() {
        let fs = MemFs::new();
        fs.create_dir_all(Path::new("/w")).unwrap();
        let mut f = fs.create(&p("a")).unwrap();
        fs.fail_write_after(1);
        f.write_all_at(b"x", 0).unwrap();
        assert_eq!(
            f.write_all_at(b"y", 1).unwrap_err().kind(),
            io::ErrorKind::StorageFull
        );
        f.write_all_at(b"z", 1).unwrap();
        fs.fail_sync_after(0);
        assert!(f.sync_data().is_err());
        f.sync_data().unwrap();
        assert_eq!(fs.sync_count(), 1);
    }

    #[test]
    fn writes_a_failed_sync_lost_stay_lost_after_a_later_sync() {
        let (fs, mut f) = named_file();
        f.write_all_at(b"one", 0).unwrap();
        f.sync_data().unwrap();
        f.write_all_at(b"two", 3).unwrap();
        fs.fail_sync_after(0);
        assert!(f.sync_data().is_err());
        // Retrying succeeds, and the page cache still shows the write...
        f.write_all_at(b"six", 6).unwrap();
        f.sync_data().unwrap();
        assert_eq!(fs.read_file(&p("a")).unwrap(), b"onetwosix");
        // ...but the disk never got it: a crash shows a hole where it was.
        fs.crash_drop_unsynced();
        assert_eq!(fs.read_file(&p("a")).unwrap(), b"one\0\0\0six");
    }

    #[test]
    fn a_power_cut_stops_the_chosen_call_and_every_later_one_until_the_crash() {
        let (fs, mut f) = named_file();
        f.write_all_at(b"one", 0).unwrap();
        f.sync_data().unwrap();
        // The second sync from now: the write before it is left unsynced.
        fs.cut_power_at(Some(IoCall::SyncData), 1);
        f.write_all_at(b"two", 3).unwrap();
        f.sync_data().unwrap();
        f.write_all_at(b"six", 6).unwrap();
        assert_eq!(fs.power_cut(), None);
        let err = f.sync_data().unwrap_err();
        assert!(err.to_string().contains("power lost"), "{err}");
        assert_eq!(fs.power_cut().as_deref(), Some("SyncData /w/a"));
        // Dead: writes, reads and directory calls all fail.
        assert!(f.write_all_at(b"x", 0).is_err());
        assert!(f.len().is_err());
        assert!(fs.list(Path::new("/w")).is_err());
        assert!(fs.create(&p("b")).is_err());
        fs.crash_drop_unsynced();
        assert_eq!(fs.power_cut(), None);
        assert_eq!(fs.read_file(&p("a")).unwrap(), b"onetwo");
        let mut g = fs.open(&p("a")).unwrap();
        g.write_all_at(b"!", 6).unwrap();
    }

    #[test]
    fn a_power_cut_of_any_kind_counts_every_mutating_call() {
        let fs = MemFs::new();
        fs.create_dir_all(Path::new("/w")).unwrap();
        fs.cut_power_at(None, 2);
        let mut f = fs.create(&p("t")).unwrap();
        f.write_all_at(b"x", 0).unwrap();
        assert!(fs.rename(&p("t"), &p("u")).is_err());
        assert_eq!(fs.power_cut().as_deref(), Some("Rename /w/u"));
        fs.crash_with(|_| Fate::Keep, |n| n);
        assert_eq!(fs.paths(), vec![p("t")], "the cut call did not happen");
    }

    #[test]
    fn rename_is_atomic_across_a_crash() {
        for kept in 0..=2 {
            let fs2 = MemFs::new();
            fs2.create_dir_all(Path::new("/w")).unwrap();
            fs2.write_file_durable(&p("meta"), b"old".to_vec());
            let mut t = fs2.create(&p("meta.tmp")).unwrap();
            t.write_all_at(b"new", 0).unwrap();
            t.sync_data().unwrap();
            fs2.rename(&p("meta.tmp"), &p("meta")).unwrap();
            fs2.crash_with(|_| Fate::Keep, |_| kept);
            let meta = fs2.read_file(&p("meta")).unwrap();
            assert!(meta == b"old" || meta == b"new", "kept {kept}: {meta:?}");
        }
    }
}
