//! openraft's storage conformance suite against the WAL, on real files (dedicated I/O thread) and
//! on `MemFs` (inline I/O task, as the simulation runs it), with a test-only in-memory state
//! machine so the WAL is tested alone (and under paused time). `sm_conformance.rs` runs the same
//! suite against the WAL together with the RocksDB state machine.

use std::io;
use std::io::Cursor;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::{Stream, TryStreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageError};
use raftgraph::wal::{IoRuntime, MemFs, StdFs, Wal, WalConfig};

openraft::declare_raft_types!(pub TC);

/// A test-only state machine: the applied id, the membership and the current snapshot's meta,
/// behind one lock so its snapshot builder can record the snapshot it built.
#[derive(Clone, Default)]
struct MemSm(Arc<Mutex<SmState>>);

#[derive(Default)]
struct SmState {
    applied: Option<LogIdOf<TC>>,
    membership: StoredMembershipOf<TC>,
    current: Option<SnapshotMetaOf<TC>>,
}

impl MemSm {
    fn state(&self) -> MutexGuard<'_, SmState> {
        self.0.lock().unwrap()
    }
}

impl RaftSnapshotBuilder<TC> for MemSm {
    type SnapshotData = Cursor<Vec<u8>>;
    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TC, Cursor<Vec<u8>>>, io::Error> {
        let mut st = self.state();
        let meta = SnapshotMetaOf::<TC> {
            last_log_id: st.applied,
            last_membership: st.membership.clone(),
        };
        st.current = Some(meta.clone());
        Ok(SnapshotOf::<TC, _> {
            meta,
            snapshot: Cursor::new(Vec::new()),
        })
    }
}

impl RaftStateMachine<TC> for MemSm {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = MemSm;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TC>>, StoredMembershipOf<TC>), io::Error> {
        let st = self.state();
        Ok((st.applied, st.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TC>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            {
                let mut st = self.state();
                st.applied = Some(entry.log_id());
                if let EntryPayload::Membership(m) = &entry.payload {
                    st.membership = StoredMembershipOf::<TC>::new(Some(entry.log_id()), m.clone());
                }
            }
            if let Some(r) = responder {
                r.send(String::new());
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TC>,
        _: Cursor<Vec<u8>>,
    ) -> Result<(), io::Error> {
        let mut st = self.state();
        st.applied = meta.last_log_id;
        st.membership = meta.last_membership.clone();
        st.current = Some(meta.clone());
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TC, Cursor<Vec<u8>>>>, io::Error> {
        let meta = self.state().current.clone();
        Ok(meta.map(|meta| SnapshotOf::<TC, _> {
            meta,
            snapshot: Cursor::new(Vec::new()),
        }))
    }
}

struct StdBuilder;
struct MemBuilder;

fn small_segments(dir: impl Into<std::path::PathBuf>) -> WalConfig {
    // Tiny segments so the suite's ten-entry logs span several files (rotation, cross-segment
    // truncate and purge all get exercised).
    let mut cfg = WalConfig::new(dir);
    cfg.segment_bytes = 256;
    cfg
}

impl StoreBuilder<TC, Wal<TC>, MemSm, tempfile::TempDir> for StdBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, Wal<TC>, MemSm), StorageError<TC>> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::read(TC::err_from_error(&e)))?;
        let wal = Wal::open(
            small_segments(dir.path().join("wal")),
            Arc::new(StdFs),
            IoRuntime::Thread,
        )
        .await
        .map_err(|e| StorageError::read(TC::err_from_error(&e)))?;
        Ok((dir, wal, MemSm::default()))
    }
}

impl StoreBuilder<TC, Wal<TC>, MemSm, ()> for MemBuilder {
    async fn build(&self) -> Result<((), Wal<TC>, MemSm), StorageError<TC>> {
        let wal = Wal::open(
            small_segments("/wal"),
            Arc::new(MemFs::new()),
            IoRuntime::Inline,
        )
        .await
        .map_err(|e| StorageError::read(TC::err_from_error(&e)))?;
        Ok(((), wal, MemSm::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes_on_real_files() {
    Suite::test_all(StdBuilder).await.unwrap();
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn conformance_suite_passes_on_memfs_inline() {
    Suite::test_all(MemBuilder).await.unwrap();
}
