//! Helpers shared by the state-machine tests: a harness that applies requests as consecutive
//! log entries and remembers each client's next sequence.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use openraft::RaftSnapshotBuilder;
use openraft::entry::RaftEntry;
use openraft::storage::RaftStateMachine;
use openraft::type_config::alias::SnapshotOf;
use openraft::vote::RaftLeaderIdExt;
use raftgraph::command::{
    ApplyError, Command, Op, OpResult, Outcome, Properties, Request, Response, Value, WriteRequest,
};
use raftgraph::raft::{Entry, LogId, TypeConfig};
use raftgraph::state_machine::{
    Blocking, GraphReader, SnapshotFile, StateMachine, StateMachineConfig,
};
use raftgraph::tenant::{Quotas, TenantConfig};

pub fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(
        openraft::type_config::alias::LeaderIdOf::<TypeConfig>::new_committed(term, 0),
        index,
    )
}

pub fn entry(index: u64, req: Request) -> Entry {
    Entry::new_normal(log_id(1, index), req.into())
}

pub fn config(dir: &Path) -> StateMachineConfig {
    let mut c = StateMachineConfig::new(dir);
    // Small, so tests exercise memtable flushes and many SST files on install.
    c.write_buffer_bytes = 4 << 20;
    c.cf_write_buffer_bytes = 1 << 20;
    c.block_cache_bytes = 4 << 20;
    c.install_sst_bytes = 256 << 10;
    c.blocking = Blocking::Inline;
    c
}

pub fn create_node(labels: &[&str], p: &[(&str, Value)]) -> Op {
    Op::CreateNode {
        labels: labels.iter().map(|s| s.to_string()).collect(),
        properties: props(p),
    }
}

pub fn props(p: &[(&str, Value)]) -> Properties {
    p.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

pub fn names(n: &[&str]) -> BTreeSet<String> {
    n.iter().map(|s| s.to_string()).collect()
}

/// A state machine in `dir` and the index of the next entry to apply.
pub struct Harness {
    pub sm: StateMachine,
    pub dir: PathBuf,
    pub next_index: u64,
    pub sequences: BTreeMap<u64, u64>,
    pub clock: i64,
}

impl Harness {
    pub async fn open(dir: &Path) -> Harness {
        let sm = StateMachine::open(config(dir))
            .await
            .expect("open state machine");
        let next_index = sm.applied().map_or(1, |l| l.index + 1);
        Harness {
            sm,
            dir: dir.to_path_buf(),
            next_index,
            sequences: BTreeMap::new(),
            clock: 1_700_000_000_000_000,
        }
    }

    pub fn reader(&self) -> GraphReader {
        self.sm.reader()
    }

    /// Builds a snapshot of the current state (checkpoint, then the stream).
    pub async fn snapshot(&mut self) -> SnapshotOf<TypeConfig, SnapshotFile> {
        let mut builder = self.sm.try_create_snapshot_builder(true).await.unwrap();
        builder.build_snapshot().await.expect("build snapshot")
    }

    /// Applies `req` as the next entry.
    pub fn apply(&mut self, req: Request) -> Response {
        let e = entry(self.next_index, req);
        self.next_index += 1;
        let mut r = self
            .sm
            .apply_entry(&e)
            .expect("apply must not fail fatally")
            .responses;
        assert_eq!(r.len(), 1, "one response per request");
        r.remove(0)
    }

    /// Applies `command` for `client` with its next sequence.
    pub fn run(&mut self, client: u64, command: Command) -> Response {
        let seq = self.sequences.entry(client).or_insert(0);
        *seq += 1;
        self.clock += 1_000;
        let req = Request::new(client, *seq, self.clock, command).unwrap();
        self.apply(req)
    }

    pub fn create_tenant(&mut self, tenant: &str, quotas: Quotas) -> Result<Outcome, ApplyError> {
        let cmd = Command::CreateTenant {
            tenant: tenant.into(),
            quotas,
            config: TenantConfig::default(),
        };
        self.run(0, cmd).outcome
    }

    pub fn write(&mut self, tenant: &str, ops: Vec<Op>) -> Result<Vec<OpResult>, ApplyError> {
        let cmd = Command::Write(WriteRequest {
            tenant: tenant.into(),
            preconditions: vec![],
            operations: ops,
        });
        match self.run(1, cmd).outcome? {
            Outcome::Write(r) => Ok(r),
            other => panic!("unexpected outcome {other:?}"),
        }
    }
}

/// A test keyring of one key, `k1`.
pub fn keyring() -> raftgraph::tenant::Keyring {
    raftgraph::tenant::Keyring::parse(&format!("k1 {}\n", "5a".repeat(32))).unwrap()
}

/// `plain` sealed as the secret of `field` in `tenant` (as the API seals before proposing).
pub fn sealed(plain: &str, tenant: &str, field: &str) -> raftgraph::tenant::Secret {
    raftgraph::tenant::Secret::Sealed(keyring().seal(plain, tenant, field))
}

/// The id a create produced.
pub fn created(r: &OpResult) -> u64 {
    match r {
        OpResult::NodeCreated(id) | OpResult::EdgeCreated(id) => *id,
        OpResult::Done => panic!("not a create: {r:?}"),
    }
}
