//! openraft's storage conformance suite against the WAL together with the RocksDB state machine:
//! production wiring (real files, I/O thread, blocking pool) and simulation wiring (MemFs log,
//! inline I/O task, inline RocksDB work).

use std::sync::Arc;

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use raftgraph::raft::TypeConfig;
use raftgraph::state_machine::{Blocking, StateMachine, StateMachineConfig};
use raftgraph::wal::{IoRuntime, MemFs, StdFs, Wal, WalConfig, WalFs};

struct Builder {
    fs: fn() -> Arc<dyn WalFs>,
    io: IoRuntime,
    blocking: Blocking,
}

fn err(e: std::io::Error) -> StorageError<TypeConfig> {
    StorageError::read(TypeConfig::err_from_error(&e))
}

impl StoreBuilder<TypeConfig, Wal<TypeConfig>, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, Wal<TypeConfig>, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().map_err(err)?;
        // Tiny segments: the suite's short logs span several files.
        let mut wal_cfg = WalConfig::new(dir.path().join("wal"));
        wal_cfg.segment_bytes = 256;
        let wal = Wal::open(wal_cfg, (self.fs)(), self.io)
            .await
            .map_err(|e| err(e.into()))?;
        let mut sm_cfg = StateMachineConfig::new(dir.path().join("sm"));
        sm_cfg.blocking = self.blocking;
        // The suite's fixtures apply entries with index gaps (e.g. 3 then 5); production keeps
        // the check on (see `apply_out_of_order_is_fatal` in sm_apply.rs).
        sm_cfg.check_apply_order = false;
        let sm = StateMachine::open(sm_cfg).await.map_err(err)?;
        Ok((dir, wal, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes_with_the_rocksdb_state_machine() {
    let b = Builder {
        fs: || Arc::new(StdFs),
        io: IoRuntime::Thread,
        blocking: Blocking::Pool,
    };
    Suite::test_all(b).await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn conformance_suite_passes_with_simulation_wiring() {
    let b = Builder {
        fs: || Arc::new(MemFs::new()),
        io: IoRuntime::Inline,
        blocking: Blocking::Inline,
    };
    Suite::test_all(b).await.unwrap();
}
