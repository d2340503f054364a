//! The WAL's files, as owned by its I/O task: recovery, group writes, truncation, purge, reads.
//!
//! Only the I/O task touches a [`Disk`]; every method is blocking and runs wherever
//! [`super::IoRuntime`] put that task.

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::sync::Arc;

use openraft::RaftTypeConfig;
use openraft::entry::RaftEntry;
use openraft::type_config::alias::{LogIdOf, VoteOf};
use serde::{Deserialize, Serialize};

use super::config::WalConfig;
use super::error::WalError;
use super::format::{self, META_BYTES_MAX, META_HEADER_BYTES, RecordKind};
use super::fs::{WalFs, io_context};
use super::segment::{self, Pos, Segment};
use super::spare::{Pace, SpareFill};
use crate::codec;

const META_FILE: &str = "wal.meta";
const META_TMP_FILE: &str = "wal.meta.tmp";
/// The next segment's file while a background thread zero-fills it (see `spare_segment`).
const SPARE_FILE: &str = "spare.wal.tmp";

/// A truncation that was decided but may not have finished: entries after `last_kept` are void.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TruncateIntent {
    pub last_kept: Option<u64>,
}

/// What `wal.meta` holds.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub(crate) struct Meta<C: RaftTypeConfig> {
    pub vote: Option<VoteOf<C>>,
    pub committed: Option<LogIdOf<C>>,
    pub purged: Option<LogIdOf<C>>,
    pub truncate: Option<TruncateIntent>,
}

impl<C: RaftTypeConfig> Default for Meta<C> {
    fn default() -> Self {
        Self {
            vote: None,
            committed: None,
            purged: None,
            truncate: None,
        }
    }
}

/// One entry, encoded by the caller, on its way to disk.
pub(crate) struct EncodedEntry {
    pub index: u64,
    pub bytes: Vec<u8>,
}

/// The state recovery hands to the in-memory side.
pub(crate) struct Recovered<C: RaftTypeConfig> {
    pub vote: Option<VoteOf<C>>,
    pub committed: Option<LogIdOf<C>>,
    pub purged: Option<LogIdOf<C>>,
    pub last: Option<LogIdOf<C>>,
    /// Index of the first entry present, if any.
    pub first: u64,
}

pub(crate) struct Disk<C: RaftTypeConfig> {
    fs: Arc<dyn WalFs>,
    cfg: WalConfig,
    /// Oldest first; the last one is the active segment appends go to.
    segments: VecDeque<Segment>,
    meta: Meta<C>,
    /// The committed id last handed to the WAL (written with the next group).
    committed: Option<LogIdOf<C>>,
    /// The committed id must be written again (new segment, or the record may have been cut).
    committed_dirty: bool,
    /// The thread preparing the next segment's file, if one was started.
    spare: Option<SpareFill>,
    /// How far the active segment is written, for the spare thread's pacing.
    pace: Arc<Pace>,
}

impl<C: RaftTypeConfig> Drop for Disk<C> {
    fn drop(&mut self) {
        // A WAL reopened in this directory must not find this thread still writing its spare.
        if let Some(spare) = self.spare.take() {
            let _ = spare.finish();
        }
    }
}

fn index_of<C: RaftTypeConfig>(id: &Option<LogIdOf<C>>) -> Option<u64> {
    id.as_ref().map(|id| id.index())
}

impl<C: RaftTypeConfig> Disk<C> {
    fn dir(&self) -> &Path {
        &self.cfg.dir
    }

    /// Opens the WAL directory: finishes or undoes interrupted operations, checks every segment,
    /// cuts a torn tail, and returns the recovered state.
    pub fn recover(fs: Arc<dyn WalFs>, cfg: WalConfig) -> Result<(Self, Recovered<C>), WalError> {
        let dir = cfg.dir.clone();
        fs.create_dir_all(&dir)
            .map_err(|e| io_context(e, "create directory", &dir))?;
        // The directory's own entry must be durable too, or a power cut could lose the whole log.
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs.sync_dir(parent)
                .map_err(|e| io_context(e, "sync directory", parent))?;
        }
        let mut first_indexes = Vec::new();
        let mut removed_tmp = false;
        for name in fs.list(&dir).map_err(|e| io_context(e, "list", &dir))? {
            if name.ends_with(".tmp") {
                // A segment or meta file whose creation never finished: never acknowledged.
                fs.remove(&dir.join(&name))
                    .map_err(|e| io_context(e, "remove", &dir.join(&name)))?;
                removed_tmp = true;
            } else if let Some(first) = format::parse_segment_file_name(&name) {
                first_indexes.push(first);
            } else if name != META_FILE {
                tracing::warn!(file = %dir.join(&name).display(), "ignoring unknown file in the WAL directory");
            }
        }
        if removed_tmp {
            fs.sync_dir(&dir)?;
        }
        first_indexes.sort_unstable();
        let meta = read_meta::<C>(fs.as_ref(), &dir)?;
        if let Some(intent) = meta.truncate {
            let cut = intent.last_kept.map_or(0, |i| i + 1);
            for first in first_indexes.iter().rev().filter(|f| **f >= cut) {
                let path = dir.join(format::segment_file_name(*first));
                fs.remove(&path)
                    .map_err(|e| io_context(e, "remove", &path))?;
            }
            first_indexes.retain(|f| *f < cut);
            fs.sync_dir(&dir)?;
        }
        let mut disk = Disk {
            fs,
            cfg,
            segments: VecDeque::new(),
            meta,
            committed: None,
            committed_dirty: false,
            spare: None,
            pace: Arc::default(),
        };
        let committed_record = disk.scan_segments(&first_indexes)?;
        if let Some(intent) = disk.meta.truncate {
            disk.finish_truncate(intent)?;
        }
        disk.drop_purged_segments()?;
        disk.committed = disk.meta.committed.clone().max(committed_record);
        let purged = disk.meta.purged.clone();
        let last = disk.last_entry_id()?.max(purged.clone());
        if index_of::<C>(&disk.committed) > index_of::<C>(&last) {
            return Err(WalError::corrupt(
                &dir,
                0,
                format!(
                    "committed log index {:?} is past the recovered log's last index {:?}: synced entries are missing",
                    index_of::<C>(&disk.committed),
                    index_of::<C>(&last)
                ),
            ));
        }
        let after_purge = index_of::<C>(&purged).map_or(0, |p| p + 1);
        let first = disk
            .segments
            .iter()
            .find(|s| !s.positions.is_empty())
            .map_or(0, |s| s.first_index)
            .max(after_purge);
        let recovered = Recovered {
            vote: disk.meta.vote.clone(),
            committed: disk.committed.clone(),
            purged,
            last,
            first,
        };
        Ok((disk, recovered))
    }

    /// Scans every segment in order, checking continuity; returns the highest committed id
    /// recorded in the segments.
    fn scan_segments(&mut self, first_indexes: &[u64]) -> Result<Option<LogIdOf<C>>, WalError> {
        let mut committed = None;
        for (i, &first) in first_indexes.iter().enumerate() {
            let path = self.dir().join(format::segment_file_name(first));
            let mut file = self
                .fs
                .open(&path)
                .map_err(|e| io_context(e, "open", &path))?;
            match self.segments.back() {
                Some(prev) if prev.next_index() != first => {
                    return Err(WalError::corrupt(
                        &path,
                        0,
                        format!(
                            "gap: segment starts at index {first} but the previous one ends before {}",
                            prev.next_index()
                        ),
                    ));
                }
                None if index_of::<C>(&self.meta.purged).is_some_and(|p| first > p + 1) => {
                    return Err(WalError::corrupt(
                        &path,
                        0,
                        format!(
                            "gap: the log starts at index {first} but is purged only up to {:?}",
                            index_of::<C>(&self.meta.purged)
                        ),
                    ));
                }
                _ => {}
            }
            let is_last = i + 1 == first_indexes.len();
            let scan = segment::scan::<C>(
                file.as_ref(),
                &path,
                first,
                is_last,
                self.cfg.record_bytes_max,
            )?;
            let mut len = scan.end;
            if let Some((offset, reason)) = &scan.torn {
                tracing::warn!(file = %path.display(), offset, reason = %reason, "cutting a torn tail");
                file.set_len(*offset)
                    .map_err(|e| io_context(e, "cut torn tail of", &path))?;
                len = *offset;
            }
            if is_last {
                // Whatever survived is made durable now, so later batch records may claim it.
                file.sync_data().map_err(|e| io_context(e, "sync", &path))?;
            }
            committed = committed.max(scan.committed);
            self.segments.push_back(Segment {
                first_index: first,
                path,
                file,
                len,
                synced_len: len,
                positions: scan.positions,
            });
        }
        Ok(committed)
    }

    /// The log id of the last entry on disk, read back from its segment.
    fn last_entry_id(&self) -> Result<Option<LogIdOf<C>>, WalError> {
        let Some(seg) = self.segments.iter().rev().find(|s| !s.positions.is_empty()) else {
            return Ok(None);
        };
        let index = seg.next_index() - 1;
        let pos = seg.positions[(index - seg.first_index) as usize];
        let entry = seg.read_entry::<C>(index, pos, self.cfg.record_bytes_max)?;
        let (leader, index) = entry.log_id_parts();
        Ok(Some(LogIdOf::<C>::new(leader.clone(), index)))
    }

    fn write_meta(&mut self) -> Result<(), WalError> {
        self.meta.committed = self.meta.committed.clone().max(self.committed.clone());
        let payload =
            codec::encode(&self.meta).map_err(|e| WalError::Io(io::Error::other(e.to_string())))?;
        let bytes = format::encode_meta(&payload);
        let dir = self.cfg.dir.clone();
        let tmp = dir.join(META_TMP_FILE);
        let mut file = self
            .fs
            .create(&tmp)
            .map_err(|e| io_context(e, "create", &tmp))?;
        file.write_all_at(&bytes, 0)
            .map_err(|e| io_context(e, "write", &tmp))?;
        file.sync_data().map_err(|e| io_context(e, "sync", &tmp))?;
        self.fs
            .rename(&tmp, &dir.join(META_FILE))
            .map_err(|e| io_context(e, "rename", &tmp))?;
        self.fs
            .sync_dir(&dir)
            .map_err(|e| io_context(e, "sync directory", &dir))?;
        Ok(())
    }

    /// Saves the vote durably.
    pub fn save_vote(&mut self, vote: VoteOf<C>) -> Result<(), WalError> {
        self.meta.vote = Some(vote);
        if !self.cfg.persists_votes() {
            return Ok(());
        }
        self.write_meta()
    }

    /// The index the next appended entry must have, if any entry or purge point exists.
    fn next_index(&self) -> Option<u64> {
        let in_segments = self.segments.back().map(|s| s.next_index());
        let after_purge = index_of::<C>(&self.meta.purged).map(|p| p + 1);
        in_segments.max(after_purge)
    }

    /// Makes sure the active segment can take an entry of index `next`, rotating if it is full or
    /// does not continue at `next`.
    fn ensure_active(&mut self, next: u64) -> Result<(), WalError> {
        if let Some(s) = self.segments.back().filter(|s| s.next_index() != next) {
            return Err(WalError::OutOfOrder {
                got: next,
                expected: s.next_index(),
            });
        }
        let reuse = self
            .segments
            .back()
            .is_some_and(|s| s.len < self.cfg.segment_bytes || s.positions.is_empty());
        if !reuse {
            let segment = match self.take_spare() {
                Some(file) => Segment::from_spare(
                    self.fs.as_ref(),
                    &self.cfg.dir,
                    next,
                    file,
                    &self.cfg.dir.join(SPARE_FILE),
                )?,
                None => {
                    let prealloc = if self.cfg.preallocate {
                        self.cfg.segment_bytes
                    } else {
                        0
                    };
                    Segment::create(self.fs.as_ref(), &self.cfg.dir, next, prealloc)?
                }
            };
            self.segments.push_back(segment);
            self.committed_dirty = true;
        }
        self.start_spare();
        Ok(())
    }

    /// The prepared spare file, waiting for its thread if it is not done. `None` when there is
    /// none or preparing it failed (then the caller creates the segment itself).
    fn take_spare(&mut self) -> Option<Box<dyn super::fs::WalFile>> {
        match self.spare.take()?.finish() {
            Ok(file) => Some(file),
            Err(e) => {
                tracing::warn!(error = %e, "preparing the next WAL segment failed; creating it now");
                None
            }
        }
    }

    /// Starts zero-filling the next segment's file in the background, unless one is on the
    /// way or the configuration says not to.
    fn start_spare(&mut self) {
        if self.spare.is_some() || !self.cfg.preallocate || !self.cfg.spare_segment {
            return;
        }
        if let Some(active) = self.segments.back() {
            self.pace.set_active(active.len);
        }
        let path = self.cfg.dir.join(SPARE_FILE);
        match SpareFill::start(
            self.fs.clone(),
            path,
            self.cfg.segment_bytes,
            self.pace.clone(),
        ) {
            Ok(spare) => self.spare = Some(spare),
            // Rotation then zero-fills in the write path, as without a spare.
            Err(e) => tracing::warn!(error = %e, "could not start the WAL spare thread"),
        }
    }

    /// Writes one group-commit batch — a batch record, the committed id if it changed, the
    /// entries — and syncs it. Durable when this returns `Ok`.
    pub fn write_group(
        &mut self,
        entries: &[EncodedEntry],
        committed: Option<Option<LogIdOf<C>>>,
    ) -> Result<(), WalError> {
        if let Some(c) = committed {
            self.committed = c;
            self.committed_dirty = true;
        }
        let next = match (entries.first(), self.next_index()) {
            (Some(e), _) => e.index,
            (None, Some(n)) if !self.segments.is_empty() => n,
            // No segment and no entry: the committed id waits for the next write (and is in meta).
            _ => return Ok(()),
        };
        self.ensure_active(next)?;
        let committed = self
            .committed_dirty
            .then(|| self.committed.clone())
            .flatten();
        self.committed_dirty = false;
        let record_max = self.cfg.record_bytes_max;
        let seg = self
            .segments
            .back_mut()
            .expect("ensure_active leaves an active segment");
        let body: usize = entries
            .iter()
            .map(|e| e.bytes.len() + format::RECORD_HEADER_BYTES)
            .sum();
        let mut buf = Vec::with_capacity(body + 64);
        format::encode_record(RecordKind::Batch, &seg.synced_len.to_le_bytes(), &mut buf);
        let mut positions = Vec::with_capacity(entries.len());
        for (expected, e) in (seg.next_index()..).zip(entries) {
            if e.index != expected {
                return Err(WalError::OutOfOrder {
                    got: e.index,
                    expected,
                });
            }
            assert!(
                e.bytes.len() <= record_max as usize,
                "entry size checked by append"
            );
            positions.push(Pos {
                offset: seg.len + buf.len() as u64,
                len: e.bytes.len() as u32,
            });
            format::encode_record(RecordKind::Entry, &e.bytes, &mut buf);
        }
        // The committed id goes last: it may name this group's own entries, and a scan stops at
        // the first damaged record, so a committed record that survives a torn write has every
        // entry before it (first, a tear could keep it and lose the entries it names).
        if let Some(c) = committed {
            let payload = codec::encode(&Some(c))
                .map_err(|e| WalError::Io(io::Error::other(e.to_string())))?;
            format::encode_record(RecordKind::Committed, &payload, &mut buf);
        }
        seg.file
            .write_all_at(&buf, seg.len)
            .map_err(|e| io_context(e, "write", &seg.path))?;
        seg.len += buf.len() as u64;
        if self.cfg.sync_appends() {
            seg.file
                .sync_data()
                .map_err(|e| io_context(e, "sync", &seg.path))?;
        }
        seg.synced_len = seg.len;
        seg.positions.extend(positions);
        self.pace.set_active(seg.len);
        Ok(())
    }

    /// Removes every entry after `last_kept` (all entries if `None`), crash-atomically: a crash
    /// leaves either the old log or the new one.
    pub fn truncate_after(&mut self, last_kept: Option<u64>) -> Result<(), WalError> {
        let cut = last_kept.map_or(0, |i| i + 1);
        if self.segments.back().is_none_or(|s| s.next_index() <= cut) {
            return Ok(());
        }
        self.committed_dirty = true;
        let whole_segments = self
            .segments
            .iter()
            .filter(|s| s.first_index >= cut)
            .count();
        if whole_segments == 0 {
            // Only the active segment changes: one length change, synced, is atomic.
            return self.cut_active(cut);
        }
        // Several files change: record the intent durably first, so recovery can finish it.
        let intent = TruncateIntent { last_kept };
        self.meta.truncate = Some(intent);
        self.write_meta()?;
        self.finish_truncate(intent)
    }

    /// Carries out a recorded truncation intent and clears it.
    fn finish_truncate(&mut self, intent: TruncateIntent) -> Result<(), WalError> {
        let cut = intent.last_kept.map_or(0, |i| i + 1);
        let mut doomed = Vec::new();
        while let Some(s) = self.segments.pop_back() {
            if s.first_index < cut {
                self.segments.push_back(s);
                break;
            }
            doomed.push(s);
        }
        self.remove_segments(doomed)?;
        if self.segments.back().is_some_and(|s| s.next_index() > cut) {
            self.cut_active(cut)?;
        }
        self.meta.truncate = None;
        self.write_meta()
    }

    /// Cuts the active segment just before entry `cut` and syncs the new length.
    fn cut_active(&mut self, cut: u64) -> Result<(), WalError> {
        let seg = self.segments.back_mut().expect("caller checked");
        let keep = (cut - seg.first_index) as usize;
        let offset = seg.positions[keep].offset;
        seg.file
            .set_len(offset)
            .map_err(|e| io_context(e, "truncate", &seg.path))?;
        seg.file
            .sync_data()
            .map_err(|e| io_context(e, "sync", &seg.path))?;
        seg.positions.truncate(keep);
        seg.len = offset;
        seg.synced_len = offset;
        Ok(())
    }

    /// Records the purge point durably, then deletes every segment it covers entirely.
    pub fn purge(&mut self, upto: LogIdOf<C>) -> Result<(), WalError> {
        if self
            .meta
            .purged
            .as_ref()
            .is_some_and(|p| p.index() >= upto.index())
        {
            return Ok(());
        }
        self.meta.purged = Some(upto);
        self.write_meta()?;
        self.drop_purged_segments()
    }

    /// Deletes the files of segments already taken out of `self.segments`, then syncs the
    /// directory once.
    fn remove_segments(&self, doomed: Vec<Segment>) -> Result<(), WalError> {
        if doomed.is_empty() {
            return Ok(());
        }
        for s in &doomed {
            self.fs
                .remove(&s.path)
                .map_err(|e| io_context(e, "remove", &s.path))?;
        }
        self.fs
            .sync_dir(&self.cfg.dir)
            .map_err(|e| io_context(e, "sync directory", &self.cfg.dir))?;
        Ok(())
    }

    fn drop_purged_segments(&mut self) -> Result<(), WalError> {
        let Some(purged) = index_of::<C>(&self.meta.purged) else {
            return Ok(());
        };
        let mut doomed = Vec::new();
        while let Some(s) = self.segments.pop_front() {
            if s.next_index() > purged + 1 {
                self.segments.push_front(s);
                break;
            }
            doomed.push(s);
        }
        self.remove_segments(doomed)
    }

    /// Reads entries `start..end` from the files; stops early at the first index not on disk.
    pub fn read(&self, start: u64, end: u64) -> Result<Vec<C::Entry>, WalError> {
        let mut out = Vec::new();
        let mut index = start;
        while index < end {
            let at = self.segments.partition_point(|s| s.first_index <= index);
            let Some(seg) = at.checked_sub(1).map(|i| &self.segments[i]) else {
                break;
            };
            if index >= seg.next_index() {
                break;
            }
            let upto = end.min(seg.next_index());
            for i in index..upto {
                let pos = seg.positions[(i - seg.first_index) as usize];
                out.push(seg.read_entry::<C>(i, pos, self.cfg.record_bytes_max)?);
            }
            index = upto;
        }
        Ok(out)
    }
}

fn read_meta<C: RaftTypeConfig>(fs: &dyn WalFs, dir: &Path) -> Result<Meta<C>, WalError> {
    let path = dir.join(META_FILE);
    let file = match fs.open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Meta::default()),
        Err(e) => return Err(io_context(e, "open", &path).into()),
    };
    let len = file.len()?;
    if len > (META_HEADER_BYTES + META_BYTES_MAX) as u64 {
        return Err(WalError::corrupt(
            &path,
            0,
            format!("meta file is {len} bytes, over the {META_BYTES_MAX}-byte limit"),
        ));
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| io_context(e, "read", &path))?;
    let payload =
        format::decode_meta(&bytes).map_err(|reason| WalError::corrupt(&path, 0, reason))?;
    codec::decode(payload).map_err(|e| {
        WalError::corrupt(
            &path,
            META_HEADER_BYTES as u64,
            format!("meta does not decode: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use openraft::entry::RaftEntry;
    use openraft::type_config::alias::{EntryOf, LeaderIdOf, LogIdOf};
    use openraft::vote::RaftLeaderIdExt;

    use super::{Disk, EncodedEntry, SPARE_FILE};
    use crate::codec;
    use crate::wal::{StdFs, WalConfig};

    openraft::declare_raft_types!(TC);

    fn entry(index: u64) -> EncodedEntry {
        let log_id = LogIdOf::<TC>::new(LeaderIdOf::<TC>::new_committed(1, 0), index);
        let e = EntryOf::<TC>::new_normal(log_id, format!("entry {index} {}", "x".repeat(40)));
        EncodedEntry {
            index,
            bytes: codec::encode(&e).unwrap(),
        }
    }

    fn payloads(disk: &Disk<TC>, end: u64) -> Vec<u64> {
        disk.read(0, end)
            .unwrap()
            .iter()
            .map(|e| e.log_id().index)
            .collect()
    }

    #[test]
    fn segments_made_from_spares_read_back_and_a_leftover_spare_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = WalConfig::new(dir.path().join("wal"));
        cfg.segment_bytes = 1024; // a rotation every few groups
        assert!(
            cfg.preallocate && cfg.spare_segment,
            "the defaults use spares"
        );
        let spare = cfg.dir.join(SPARE_FILE);

        let (mut disk, _) = Disk::<TC>::recover(Arc::new(StdFs), cfg.clone()).unwrap();
        for group in 0..20u64 {
            let entries: Vec<_> = (group * 5..group * 5 + 5).map(entry).collect();
            disk.write_group(&entries, None).unwrap();
        }
        assert!(disk.segments.len() >= 5, "{} segments", disk.segments.len());
        assert_eq!(payloads(&disk, 100), (0..100).collect::<Vec<_>>());
        for s in &disk.segments {
            let len = std::fs::metadata(&s.path).unwrap().len();
            assert!(len >= 1024, "{:?} is {len} bytes: not preallocated", s.path);
        }
        drop(disk); // joins the spare thread: the spare for the next rotation is ready
        assert_eq!(std::fs::metadata(&spare).unwrap().len(), 1024);

        // A crash can leave a half-made spare: recovery removes it, and nothing is lost.
        std::fs::write(&spare, b"torn").unwrap();
        let (mut disk, recovered) = Disk::<TC>::recover(Arc::new(StdFs), cfg.clone()).unwrap();
        assert!(!spare.exists(), "a leftover spare is removed on open");
        assert_eq!(recovered.last.map(|l| l.index), Some(99));
        for group in 20..30u64 {
            let entries: Vec<_> = (group * 5..group * 5 + 5).map(entry).collect();
            disk.write_group(&entries, None).unwrap();
        }
        assert_eq!(payloads(&disk, 150), (0..150).collect::<Vec<_>>());
        drop(disk);
        let (disk, recovered) = Disk::<TC>::recover(Arc::new(StdFs), cfg).unwrap();
        assert_eq!(recovered.last.map(|l| l.index), Some(149));
        assert_eq!(payloads(&disk, 150), (0..150).collect::<Vec<_>>());
    }
}
