//! The simulated world: three raftgraph nodes on turmoil hosts, the clients, and the fault
//! schedule, all derived from one seed.
//!
//! A node's WAL lives in a [`MemFs`] the harness keeps across restarts (the disk); its RocksDB
//! state machine lives in a per-node temporary directory, its own file steps watched by an
//! [`SmLedger`]. A crash (`kill -9`) loses nothing written; a power loss keeps, drops or tears
//! each unsynced WAL write, may undo unsynced directory entries and keeps, empties or cuts
//! short each unsynced state-machine file, and reverts the live database to its last
//! checkpoint, so recovery has to come from the log.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use raftgraph::proto::v1 as pb;
use raftgraph::server::{Incoming, PlantedBugs, Server, ServerConfig, ServerEnv};
use raftgraph::state_machine::{Blocking, GraphReader, Phase};
use raftgraph::wal::{IoCall, IoRuntime, MemFs};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::history::History;
use super::smdisk::SmLedger;
use super::workload::{self, Replica};

pub const NODES: [&str; 3] = ["n1", "n2", "n3"];
pub const PORT: u16 = 7000;
/// Each member's peer listener.
pub const PEER_PORT: u16 = 7100;
/// After the faults stop, a write must succeed within this (simulated) time.
pub const LIVENESS_MS: u64 = 30_000;
/// … and every replica must have applied the same index within this.
pub const CONVERGE_MS: u64 = 60_000;

pub fn addr(node: &str) -> String {
    format!("{node}:{PORT}")
}

pub fn peer_addr(node: &str) -> String {
    format!("{node}:{PEER_PORT}")
}

/// Simulated milliseconds since the start (inside a host or client).
pub fn now_ms() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as u64)
}

/// One run's parameters.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    /// Simulated seconds of workload under faults.
    pub work_secs: u64,
    pub workers: u64,
    pub planted: PlantedBugs,
    /// Faults at fixed times (ms) instead of the seed's random schedule: pins a scenario.
    pub script: Option<Vec<(u64, Fault)>>,
    /// The test that replays this run (`seeds` replays any seed through `SIM_SEED`).
    pub test: &'static str,
    /// The `SIM_PLANTED` name of the planted bug, for the replay command.
    pub planted_name: Option<String>,
}

impl Options {
    pub fn new(seed: u64) -> Options {
        Options {
            seed,
            // SIM_WORK_SECS shortens or lengthens the faulty phase (for debugging a seed).
            work_secs: std::env::var("SIM_WORK_SECS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(60),
            workers: 4,
            planted: PlantedBugs::default(),
            script: None,
            test: "seeds",
            planted_name: None,
        }
    }
}

/// Everything the hosts, clients and harness record.
#[derive(Default)]
pub struct Shared {
    pub history: History,
    /// Logical events in order, with simulated times: the determinism test compares these.
    pub trace: Vec<String>,
    /// Term → the nodes seen leading in it.
    pub leaders: BTreeMap<u64, BTreeSet<u64>>,
    /// The latest (term, leader) seen, for leader-targeted faults.
    pub last_leader: Option<(u64, u64)>,
    /// (time, node, usage of the quota tenant) as each replica reported it.
    pub usage: Vec<(u64, String, pb::Usage)>,
    pub registers: Vec<u64>,
    /// The accounts setup made (transfers keep their sum).
    pub accounts: Vec<u64>,
    pub setup_done_ms: Option<u64>,
    /// Workers still running (the final checks wait for every call to end).
    pub workers_running: u64,
    /// Time from the end of faults to the first successful write, or why none succeeded.
    pub liveness: Option<Result<u64, String>>,
    pub replicas: Option<BTreeMap<String, Replica>>,
    /// Node errors: a node that failed to start or stopped with an error.
    pub node_errors: Vec<String>,
    /// Snapshots installed or built, per node (from metrics).
    pub snapshots: u64,
    /// Definite refusals the workload saw, by kind.
    pub refused: Refused,
    /// The id of the cluster-admin token init made (every client but Mallory carries it).
    pub admin_token_id: String,
    /// Mallory's token (`write` in its own tenant), once setup made it.
    pub mallory_token: Option<String>,
    /// What Mallory was answered.
    pub attempts: super::attacker::Attempts,
    /// Every token at the end (`<role> <tenant or id>`).
    pub tokens: Option<Vec<String>>,
    /// A member's term, commit or applied point seen going back.
    pub backwards: Vec<String>,
    /// Faults injected, by kind (with `PowerCutInIo(fired)` and `(not fired)`).
    pub faults: BTreeMap<String, u64>,
    /// The cluster limits after setup, rendered.
    pub limits_at_setup: String,
    /// At the end: every tenant's id, and the cluster limits rendered.
    pub cluster_end: Option<(Vec<String>, String)>,
    /// Scratch tenants' lifecycle calls, in order (`tenants.rs`).
    pub tenant_ops: Vec<super::tenants::TenantOp>,
    /// Set once the replicas converged: each host then reports its state digest.
    pub digests_wanted: bool,
    /// Members the harness asks to build a snapshot now (so that one restarted after a while
    /// is sent one: the log it needs is then purged).
    pub snapshot_wanted: BTreeSet<u64>,
    /// Member id → its applied index and the digest of its whole state there (every column
    /// family: registry, counters, sessions, tokens, membership, applied id, every tenant).
    pub digests: BTreeMap<u64, (u64, [u8; 32])>,
}

/// Definite refusals, by kind (see `workload::failure`).
#[derive(Default)]
pub struct Refused {
    /// CASes whose precondition did not hold.
    pub precondition: u64,
    /// Creates over the quota tenant's node limit.
    pub quota: u64,
    /// Refusals the workload never provokes: the call and its outcome.
    pub unexpected: Vec<String>,
}

impl Shared {
    /// Records `line` at the current simulated time (inside a host or client).
    pub fn trace(&mut self, line: String) {
        self.trace_at(now_ms(), line);
    }

    /// Records `line` at `t` ms (the harness, outside any host, passes the simulation's time).
    pub fn trace_at(&mut self, t: u64, line: String) {
        let line = format!("{t:>8} {line}");
        // SIM_PRINT_TRACE=1 prints the trace as it happens (for a run that aborts).
        if std::env::var_os("SIM_PRINT_TRACE").is_some() {
            eprintln!("{line}");
        }
        self.trace.push(line);
    }
}

/// What the members applied at each index: the first application seen, and every
/// disagreement with it. Filled from inside the hosts (the state machine's apply observer).
#[derive(Default)]
pub struct Applies {
    /// Index → (term, fingerprint of the entry, who applied it first: `n2 boot 3`).
    pub first: BTreeMap<u64, (u64, u64, String)>,
    /// Applications seen (re-applications after a restart included).
    pub count: u64,
    pub violations: Vec<String>,
    /// Member → every index it finished applying → the latest boot that did.
    finished: BTreeMap<u64, BTreeMap<u64, u64>>,
    /// Boots that started at an applied index the member never finished applying.
    pub unfinished: Vec<String>,
}

impl Applies {
    fn record(
        &mut self,
        who: &str,
        (node, boot): (u64, u64),
        index: u64,
        term: u64,
        fingerprint: u64,
    ) {
        self.count += 1;
        self.finished.entry(node).or_default().insert(index, boot);
        match self.first.get(&index) {
            None => {
                self.first
                    .insert(index, (term, fingerprint, who.to_string()));
            }
            Some((t, f, first)) if (*t, *f) != (term, fingerprint) => {
                self.violations.push(format!(
                    "{who} applied entry {index} of term {term} (fingerprint {fingerprint:016x}); \
                     {first} had applied entry {index} of term {t} (fingerprint {f:016x})"
                ));
            }
            Some(_) => {}
        }
    }

    /// Member `node` started (as `who`) with `applied` as its applied index: that must be an
    /// entry it finished applying (effects and applied id are one batch) or a snapshot it
    /// installed, never an entry whose apply was cut short.
    ///
    /// `cut_before`: the previous boot lost power (or crashed right after a flush) just before
    /// writing that entry, so unless this boot has applied it since, or a snapshot at or past
    /// it was installed, it must not report it applied.
    fn boot(
        &mut self,
        who: &str,
        (node, boot): (u64, u64),
        applied: Option<u64>,
        installed: &BTreeSet<u64>,
        cut_before: Option<u64>,
    ) {
        let Some(index) = applied else { return };
        let finished = self.finished.get(&node);
        let finished_in = |i: u64| finished.and_then(|f| f.get(&i)).copied();
        if installed.contains(&index) {
            return;
        }
        if finished_in(index).is_none() {
            self.unfinished.push(format!(
                "{who} starts at applied index {index}, an entry it never finished applying \
                 and no snapshot it installed"
            ));
        } else if let Some(cut) = cut_before
            && index >= cut
            && finished_in(cut) != Some(boot)
            && installed.range(cut..).next().is_none()
        {
            self.unfinished.push(format!(
                "{who} starts at applied index {index}, though its last boot crashed right \
                 before writing entry {cut} (after a flush) and this boot has not applied it"
            ));
        }
    }
}

/// One node's lasting state: its disk.
struct Disk {
    name: &'static str,
    /// Tight reconnect loops the node's dialer saw.
    alarms: Arc<std::sync::Mutex<Vec<String>>>,
    config: ServerConfig,
    wal: Arc<MemFs>,
    /// The state machine's own file steps (pointer, streams, new databases).
    sm: Arc<SmLedger>,
    boots: Cell<u64>,
    /// The highest term this member was seen leading, over all its boots: a leader's vote is
    /// on disk (it was granted by a quorum only after being saved), so no later boot may start
    /// below it.
    led_term: Cell<u64>,
    applies: Arc<std::sync::Mutex<Applies>>,
    /// Set when the server stopped itself after an injected disk error: how it ended.
    stopped: RefCell<Option<String>>,
    /// When (simulated ms) this boot's Raft stopped after an injected disk error: the server
    /// must then stop too, within [`STOP_WITHIN_MS`].
    raft_stopped_at: Cell<Option<u64>>,
}

impl Disk {
    /// Whether a power cut armed in the WAL's or the state machine's I/O fired.
    fn powered_off(&self) -> bool {
        self.wal.power_cut().is_some() || self.sm.fired().is_some()
    }

    /// Whether `error` is the injected disk error's doing: one fired, and the error says so
    /// (the WAL's and the state machine's errors carry the injected error's text).
    /// An error in a snapshot's staging never counts: it must refuse the transfer, not stop the
    /// member.
    fn caused_by_injected(&self, error: &str) -> bool {
        self.injected().is_some()
            && self.sm.failed_phase() != Some(Phase::Stage)
            && error.contains("injected")
    }

    /// Notes that Raft stopped after the injected error (first time only).
    fn note_raft_stopped(&self) {
        if self.raft_stopped_at.get().is_none() {
            self.raft_stopped_at.set(Some(now_ms()));
        }
    }

    /// The call or step an injected disk error (EIO, ENOSPC) failed, if one did.
    fn injected(&self) -> Option<String> {
        self.wal
            .injected()
            .map(|w| format!("WAL: {}", self.scrub(&w)))
            .or_else(|| self.sm.failed().map(|f| format!("state machine: {f}")))
    }

    /// `text` without the run's temporary directory (`$DATA` instead), so runs compare equal.
    fn scrub(&self, text: &str) -> String {
        match self.config.data_dir.parent() {
            Some(dir) => text.replace(&*dir.to_string_lossy(), "$DATA"),
            None => text.to_string(),
        }
    }

    /// Cancels an injected disk error not yet fired, and forgets one that fired.
    fn clear_injected(&self) {
        self.wal.clear_faults();
        self.sm.clear_failure();
    }

    /// The server stopped itself after an injected disk error, as it must: noted for the
    /// harness, which then takes the machine down and restarts it later.
    async fn stopped(&self, who: &str, why: String, shared: &RefCell<Shared>) -> turmoil::Result {
        let what = self.injected().unwrap_or_default();
        let why = self.scrub(&why);
        shared
            .borrow_mut()
            .trace(format!("{who} stopped itself after {what}: {why}"));
        *self.stopped.borrow_mut() = Some(why);
        std::future::pending().await
    }
}

/// Random bytes from a seed: the same run makes the same tokens.
fn seeded_random(seed: u64) -> raftgraph::api::Random {
    use rand::{RngCore, SeedableRng};
    let rng = std::sync::Mutex::new(rand::rngs::SmallRng::seed_from_u64(seed));
    Arc::new(move |buf: &mut [u8]| rng.lock().expect("rng").fill_bytes(buf))
}

fn node_config(dir: &Path, id: u64) -> ServerConfig {
    let name = NODES[id as usize - 1];
    let mut c = ServerConfig::new(
        "sim",
        id,
        format!("0.0.0.0:{PORT}").parse().expect("an address"),
        format!("0.0.0.0:{PEER_PORT}").parse().expect("an address"),
        &dir.join(name),
    );
    c.advertise = Some(addr(name));
    c.peer_advertise = Some(peer_addr(name));
    c.raft.heartbeat_ms = 100;
    c.raft.election_timeout_min_ms = 500;
    c.raft.election_timeout_max_ms = 1_000;
    // Small, so snapshots are built, purge the log, and have to be sent to lagging nodes.
    c.raft.snapshot_every_entries = 300;
    c.raft.log_kept_behind_snapshot = 50;
    c.storage.write_buffer_bytes = 4 << 20;
    c.storage.block_cache_bytes = 4 << 20;
    c.storage.wal_segment_bytes = 256 << 10;
    // Authentication on (the default); no TLS in the simulation, so `Init` needs no member
    // certificate and answers the first cluster-admin token.
    assert_eq!(c.auth, raftgraph::auth::AuthMode::On);
    c.tls = raftgraph::server::TlsMode::Off;
    c
}

async fn host(disk: Rc<Disk>, shared: Rc<RefCell<Shared>>, opts: Options) -> turmoil::Result {
    let boot = disk.boots.get() + 1;
    disk.boots.set(boot);
    disk.raft_stopped_at.set(None);
    let id = disk.config.member_id;
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    let peer_listener = turmoil::net::TcpListener::bind(("0.0.0.0", PEER_PORT)).await?;
    let incoming = Incoming {
        api_addr: listener.local_addr()?,
        api: super::net::incoming(listener),
        peer_addr: peer_listener.local_addr()?,
        peer: super::net::incoming(peer_listener),
    };
    let dialer = super::net::node_dialer(disk.name, disk.alarms.clone());
    let env = ServerEnv {
        wal_fs: disk.wal.clone(),
        wal_io: IoRuntime::Inline,
        blocking: Blocking::Inline,
        clock: Arc::new(|| turmoil::since_epoch().map_or(0, |d| d.as_micros() as i64)),
        dialer: dialer.clone(),
        peer_dialer: dialer,
        tls: None,
        seed: Some(opts.seed ^ (id << 48) ^ (boot << 32)),
        random: seeded_random(opts.seed ^ (id << 48) ^ (boot << 32) ^ 0x70cc),
        planted: opts.planted,
        on_apply: Some({
            let applies = disk.applies.clone();
            let who = format!("n{id} boot {boot}");
            raftgraph::state_machine::ApplyObserver(Arc::new(move |index, term, fingerprint| {
                let mut a = applies.lock().unwrap_or_else(|p| p.into_inner());
                a.record(&who, (id, boot), index, term, fingerprint);
            }))
        }),
        on_sm_disk: Some(disk.sm.hook()),
    };
    shared.borrow_mut().trace(format!("n{id} boot {boot}"));
    let who = format!("n{id} boot {boot}");
    let node = match Server::start_in(disk.config.clone(), incoming, env).await {
        Ok(n) => n,
        // The power went out mid-recovery: the machine is off until the harness crashes it.
        Err(_) if disk.powered_off() => return powered_off().await,
        Err(e) if disk.caused_by_injected(&e.to_string()) => {
            return disk.stopped(&who, e.to_string(), &shared).await;
        }
        Err(e) => {
            let msg = format!("n{id} boot {boot}: failed to start: {e}");
            shared.borrow_mut().node_errors.push(msg.clone());
            return Err(msg.into());
        }
    };
    {
        let applied = node
            .reader()
            .applied()
            .map_err(|e| format!("n{id}: applied id: {e}"))?;
        let mut a = disk.applies.lock().unwrap_or_else(|p| p.into_inner());
        a.boot(
            &format!("n{id} boot {boot}"),
            (id, boot),
            applied.map(|l| l.index),
            &disk.sm.installed(),
            disk.sm.take_cut_before(),
        );
    }
    // Serve as the binary does (which stops the server when Raft stops on a fatal error),
    // meanwhile watching the node's Raft state: leaders per term, snapshots, fatal errors.
    let reader = node.reader().clone();
    let raft = node.raft().clone();
    let mut metrics = node.raft().metrics();
    let mut serving = std::pin::pin!(node.run_until(
        std::future::pending::<()>(),
        futures::stream::pending::<()>()
    ));
    let mut last = None;
    // Within one boot, none of the term, the commit point and the applied point goes back.
    let (mut term, mut committed, mut applied) = (0, None, None);
    loop {
        let m = metrics.borrow_watched().clone();
        {
            let mut backwards = Vec::new();
            // openraft's placeholder before it has read the disk: term 0, nothing logged.
            let placeholder =
                m.current_term == 0 && m.last_log_index.is_none() && m.last_applied.is_none();
            if !placeholder && m.current_term < disk.led_term.get() {
                backwards.push(format!(
                    "n{id} boot {boot}: term {} after leading term {} (a vote lost)",
                    m.current_term,
                    disk.led_term.get()
                ));
            }
            if m.current_term < term {
                backwards.push(format!(
                    "n{id} boot {boot}: term {} after term {term}",
                    m.current_term
                ));
            }
            term = term.max(m.current_term);
            if m.state == ServerState::Leader {
                disk.led_term.set(disk.led_term.get().max(m.current_term));
            }
            if m.local_committed < committed {
                backwards.push(format!(
                    "n{id} boot {boot}: committed {:?} after {committed:?}",
                    m.local_committed
                ));
            }
            if m.last_applied < applied {
                backwards.push(format!(
                    "n{id} boot {boot}: applied {:?} after {applied:?}",
                    m.last_applied
                ));
            }
            committed = committed.max(m.local_committed);
            applied = applied.max(m.last_applied);
            if !backwards.is_empty() {
                shared.borrow_mut().backwards.extend(backwards);
            }
        }
        let seen = (
            m.current_term,
            m.state,
            m.current_leader,
            m.snapshot.map(|s| s.index),
        );
        if last != Some(seen) {
            let mut s = shared.borrow_mut();
            s.trace(format!(
                "n{id} term {} {:?} leader {:?} snapshot {:?}",
                seen.0, seen.1, seen.2, seen.3
            ));
            if m.state == ServerState::Leader {
                s.leaders.entry(m.current_term).or_default().insert(id);
                if s.last_leader.is_none_or(|(t, _)| t <= m.current_term) {
                    s.last_leader = Some((m.current_term, id));
                }
            }
            if last.is_some_and(|l: (u64, ServerState, Option<u64>, Option<u64>)| l.3 != seen.3) {
                s.snapshots += 1;
            }
            last = Some(seen);
        }
        if m.running_state.is_err() && disk.powered_off() {
            return powered_off().await;
        }
        if let Err(e) = &m.running_state {
            if !disk.caused_by_injected(&e.to_string()) {
                let msg = format!("n{id} boot {boot}: Raft stopped: {e}");
                shared.borrow_mut().node_errors.push(msg.clone());
                return Err(msg.into());
            }
            // A fatal error after an injected disk error: the server must stop itself.
            disk.note_raft_stopped();
        }
        let raft_stopped = disk.raft_stopped_at.get().is_some();
        let snapshot_wanted = shared.borrow_mut().snapshot_wanted.remove(&id);
        if snapshot_wanted && !raft_stopped {
            shared
                .borrow_mut()
                .trace(format!("n{id} builds a snapshot, asked by the harness"));
            let _ = raft.trigger().snapshot().await;
        }
        if shared.borrow().digests_wanted && !raft_stopped {
            report_digest(id, &reader, &shared)?;
        }
        tokio::select! {
            ended = &mut serving => {
                if disk.powered_off() {
                    return powered_off().await;
                }
                // Only the stop for a fatal error, and only when the injected error caused it.
                let why = match ended {
                    Ok(()) => "stopped without an error".to_string(),
                    Err(e @ raftgraph::server::ServerError::RaftStopped(_)) => e.to_string(),
                    Err(e) => format!("not for Raft's fatal error: {e}"),
                };
                if why.starts_with("Raft stopped") && disk.caused_by_injected(&why) {
                    return disk.stopped(&who, why, &shared).await;
                }
                let msg = format!("{who}: the server stopped: {why}");
                shared.borrow_mut().node_errors.push(msg.clone());
                return Err(msg.into());
            }
            changed = metrics.changed(), if !raft_stopped => if changed.is_err() {
                if disk.powered_off() {
                    return powered_off().await;
                }
                if disk.injected().is_some() {
                    // Raft's core ended; its error is in the last metrics (checked above).
                    disk.note_raft_stopped();
                    continue;
                }
                return Err(format!("n{id}: Raft metrics closed").into());
            },
            // The digest is wanted while nothing changes too.
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// Records member `id`'s applied index and state digest, read together: nothing else runs on
/// the simulation's thread between the two reads.
fn report_digest(id: u64, reader: &GraphReader, shared: &RefCell<Shared>) -> turmoil::Result {
    let applied = reader
        .applied()
        .map_err(|e| format!("n{id}: applied id: {e}"))?
        .map_or(0, |l| l.index);
    if shared
        .borrow()
        .digests
        .get(&id)
        .is_some_and(|d| d.0 == applied)
    {
        return Ok(());
    }
    let digest = reader
        .digest()
        .map_err(|e| format!("n{id}: state digest: {e}"))?;
    shared.borrow_mut().digests.insert(id, (applied, digest));
    Ok(())
}

/// A host whose disk lost power: silent until the harness crashes it (the same step's end).
async fn powered_off() -> turmoil::Result {
    std::future::pending().await
}

/// A fault the harness applies between steps (or arms, for a cut inside the I/O).
#[derive(Clone, Debug)]
pub enum Fault {
    /// Cut every link between the two sides for a while.
    Partition { side: Vec<usize>, ms: u64 },
    /// Cut the current leader off from the others.
    IsolateLeader { ms: u64 },
    /// Drop one direction of one link.
    OneWay { from: usize, to: usize, ms: u64 },
    /// Hold one link's messages, then release them all at once.
    Hold { a: usize, b: usize, ms: u64 },
    /// Raise one link's latency to up to `latency_ms` (past the client's attempt timeout, so
    /// calls time out after their effect and are retried).
    Slow {
        a: usize,
        b: usize,
        latency_ms: u64,
        ms: u64,
    },
    /// `kill -9`: the page cache survives.
    Crash { nodes: Vec<usize>, down_ms: u64 },
    /// Power loss: unsynced WAL writes lost or torn, the state machine back to its checkpoint.
    PowerLoss { nodes: Vec<usize>, down_ms: u64 },
    /// Crash the leader right after a long-down node restarts (mid snapshot transfer).
    CrashLeaderDuringCatchUp { down_ms: u64 },
    /// Power loss *inside* the WAL's I/O: at the `nth + 1`-th call of kind `call` (any kind:
    /// `None`) on `node`'s disk — between a write and its sync, between `wal.meta`'s temporary
    /// file and its rename, mid-truncate, mid-purge, mid-rotation, mid-recovery. That call does
    /// not happen; unsynced writes are then kept, dropped or torn as for [`Fault::PowerLoss`].
    /// Disarmed if it has not fired within [`CUT_ARMED_MS`].
    PowerCutInIo {
        node: usize,
        call: Option<IoCall>,
        nth: u64,
        down_ms: u64,
    },
    /// Power loss *inside* the state machine's own file steps ([`SmLedger`]): at the
    /// `nth + 1`-th step of `phase` (any: `None`) on `node` — before an entry's write to
    /// RocksDB, inside a snapshot build (checkpoint, stream written, synced, renamed, old ones
    /// removed), inside an install. That step does not happen, nor any after it. Unsynced
    /// files and directory entries are then lost as [`SmLedger`] describes, unsynced WAL
    /// writes as for [`Fault::PowerLoss`], and the database goes back to its checkpoint — except
    /// that after a cut before an entry's write, three times in four the machine instead
    /// crashes right after a background flush: the WAL keeps everything, the database what it
    /// held.
    /// Disarmed if it has not fired within [`CUT_ARMED_MS`].
    PowerCutInSm {
        node: usize,
        phase: Option<Phase>,
        nth: u64,
        down_ms: u64,
    },
    /// A follower down long enough that it must be sent a snapshot; when it restarts, the
    /// power is cut at the `nth + 1`-th step of the install (as [`Fault::PowerCutInSm`]).
    PowerCutInInstall { nth: u64, down_ms: u64 },
    /// As [`Fault::PowerCutInInstall`], but the step fails with ENOSPC (`enospc`) or EIO. In
    /// staging (before openraft is told) the transfer is refused and the member must serve on;
    /// in the switch the member must stop itself, as after a [`Fault::DiskError`].
    DiskErrorInInstall {
        nth: u64,
        enospc: bool,
        down_ms: u64,
    },
    /// A disk error on `node`: the `nth + 1`-th call of `at` fails and returns the error
    /// (nothing written, nothing made durable); later calls work. The member must stop itself
    /// within [`STOP_WITHIN_MS`]; the harness then takes the machine down — after an EIO as
    /// a power loss (the kernel may have dropped the pages it could not write), after ENOSPC
    /// as a crash — and starts it again after `down_ms`. Disarmed if it has not fired within
    /// [`CUT_ARMED_MS`].
    DiskError {
        node: usize,
        at: DiskErrorAt,
        nth: u64,
        down_ms: u64,
    },
}

/// Where a [`Fault::DiskError`] lands.
#[derive(Clone, Copy, Debug)]
pub enum DiskErrorAt {
    /// A WAL write: ENOSPC.
    WalWrite,
    /// A WAL `sync_data`: EIO.
    WalSync,
    /// A state-machine step of `phase` (any: `None`): ENOSPC (`enospc`) or EIO.
    Sm { phase: Option<Phase>, enospc: bool },
}

/// How long a member may keep serving after an injected disk error stopped its Raft (the
/// server lets in-flight calls finish for up to 1 s first).
pub const STOP_WITHIN_MS: u64 = 5_000;
/// A [`Fault::DiskError`]'s `node` that means the member that last led.
pub const LEADER: usize = usize::MAX;

/// How long an armed [`Fault::PowerCutInIo`] waits for its call.
pub const CUT_ARMED_MS: u64 = 5_000;
/// How long a [`Fault::PowerCutInInstall`] waits for its step, from the restart.
pub const INSTALL_ARMED_MS: u64 = 10_000;

impl Fault {
    /// The fault's kind, for the counts a run reports.
    pub fn kind(&self) -> String {
        match self {
            Fault::PowerCutInIo { call, .. } => match call {
                Some(c) => format!("PowerCutInIo({c:?})"),
                None => "PowerCutInIo(any)".into(),
            },
            Fault::PowerCutInSm { phase, .. } => match phase {
                Some(p) => format!("PowerCutInSm({p:?})"),
                None => "PowerCutInSm(any)".into(),
            },
            Fault::DiskError { at, .. } => match at {
                DiskErrorAt::Sm {
                    phase: Some(p),
                    enospc,
                } => format!(
                    "DiskError(Sm {p:?} {})",
                    if *enospc { "ENOSPC" } else { "EIO" }
                ),
                DiskErrorAt::Sm {
                    phase: None,
                    enospc,
                } => format!(
                    "DiskError(Sm any {})",
                    if *enospc { "ENOSPC" } else { "EIO" }
                ),
                other => format!("DiskError({other:?})"),
            },
            Fault::DiskErrorInInstall { enospc, .. } => format!(
                "DiskErrorInInstall({})",
                if *enospc { "ENOSPC" } else { "EIO" }
            ),
            other => format!("{other:?}")
                .split([' ', '{'])
                .next()
                .unwrap_or("?")
                .to_string(),
        }
    }
}

fn pick_nodes(rng: &mut SmallRng, max: usize) -> Vec<usize> {
    let n = rng.random_range(1..=max);
    let mut all: Vec<usize> = (0..NODES.len()).collect();
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(all.remove(rng.random_range(0..all.len())));
    }
    out.sort();
    out
}

fn random_fault(rng: &mut SmallRng) -> Fault {
    let short = |rng: &mut SmallRng| rng.random_range(500..4_000);
    // Long enough that the log moves past what the others keep: catch-up by snapshot.
    let long = |rng: &mut SmallRng| rng.random_range(12_000..20_000);
    match rng.random_range(0..100) {
        0..8 => Fault::Partition {
            side: pick_nodes(rng, 1),
            ms: short(rng),
        },
        // Long enough that the others elect a leader and clients find it and write there
        // while the old leader still believes it leads (a leader serving reads without
        // confirming leadership was caught by 7 of 50 seeds with 0.5–4 s).
        8..20 => Fault::IsolateLeader {
            ms: rng.random_range(2_000..8_000),
        },
        20..25 => {
            let from = rng.random_range(0..3);
            Fault::OneWay {
                from,
                to: (from + rng.random_range(1..3)) % 3,
                ms: short(rng),
            }
        }
        25..30 => {
            let a = rng.random_range(0..3);
            Fault::Hold {
                a,
                b: (a + rng.random_range(1..3)) % 3,
                ms: short(rng),
            }
        }
        30..36 => {
            let a = rng.random_range(0..3);
            Fault::Slow {
                a,
                b: (a + rng.random_range(1..3)) % 3,
                latency_ms: rng.random_range(200..3_000),
                ms: short(rng),
            }
        }
        // A third of them in an install (as `PowerCutInInstall`, below).
        36..42 if rng.random_bool(1.0 / 3.0) => Fault::DiskErrorInInstall {
            nth: rng.random_range(0..24),
            enospc: rng.random_bool(0.5),
            down_ms: long(rng),
        },
        36..42 => {
            let (at, nth) = match rng.random_range(0..4) {
                0 => (DiskErrorAt::WalWrite, rng.random_range(0..30)),
                1 => (DiskErrorAt::WalSync, rng.random_range(0..30)),
                _ => {
                    let enospc = rng.random_bool(0.5);
                    if rng.random_bool(0.6) {
                        let phase = Some(Phase::Apply);
                        (DiskErrorAt::Sm { phase, enospc }, rng.random_range(0..40))
                    } else {
                        let phase = None;
                        (DiskErrorAt::Sm { phase, enospc }, rng.random_range(0..60))
                    }
                }
            };
            Fault::DiskError {
                node: rng.random_range(0..NODES.len()),
                at,
                nth,
                down_ms: short(rng),
            }
        }
        42..54 => {
            let long_down = rng.random_bool(0.3);
            Fault::Crash {
                nodes: pick_nodes(rng, 1),
                down_ms: if long_down { long(rng) } else { short(rng) },
            }
        }
        54..64 => {
            let long_down = rng.random_bool(0.2);
            Fault::PowerLoss {
                nodes: pick_nodes(rng, 3),
                down_ms: if long_down { long(rng) } else { short(rng) },
            }
        }
        64..73 => {
            // Half aimed at any call soon; half at a kind, the rare ones (rename, remove,
            // set_len, create: meta replacement, purge, truncate, rotation) among them.
            let (call, nth) = if rng.random_bool(0.5) {
                (None, rng.random_range(0..60))
            } else {
                let call = IoCall::ALL[rng.random_range(0..IoCall::ALL.len())];
                let nth = match call {
                    IoCall::Write | IoCall::SyncData => rng.random_range(0..30),
                    _ => rng.random_range(0..3),
                };
                (Some(call), nth)
            };
            Fault::PowerCutInIo {
                node: rng.random_range(0..NODES.len()),
                call,
                nth,
                down_ms: short(rng),
            }
        }
        73..80 => Fault::CrashLeaderDuringCatchUp { down_ms: long(rng) },
        // Before one of the next entries' writes, or at any step (a build's among them).
        80..90 => {
            let (phase, nth) = if rng.random_bool(0.8) {
                (Some(Phase::Apply), rng.random_range(0..40))
            } else {
                (None, rng.random_range(0..60))
            };
            Fault::PowerCutInSm {
                node: rng.random_range(0..NODES.len()),
                phase,
                nth,
                down_ms: short(rng),
            }
        }
        // An install has some 22–26 steps (one per database file synced; more with more
        // tenants). Half the restarts were caught up from the log with no install to cut, and
        // `pointer_before_sync` was caught by 9 of 50 seeds: the others now also build a
        // snapshot when the member restarts.
        _ => Fault::PowerCutInInstall {
            nth: rng.random_range(0..24),
            down_ms: long(rng),
        },
    }
}

/// What the harness undoes later.
#[derive(Debug)]
enum Undo {
    Repair(usize, usize),
    RepairOneWay(usize, usize),
    Release(usize, usize),
    Latency(usize, usize),
    Start(usize),
    /// Start `0`, then crash the leader `1` ms later (and start it again after a while).
    StartThenCrashLeader(usize, u64),
    CrashLeader,
    /// Disarm node `0`'s power cut (a fault of kind `2`) if it has not fired; if it fires
    /// first, the node is down for `1` ms.
    Disarm(usize, u64, &'static str),
    /// Start `0`, then arm `1` in its next install; down for `2` ms after it fires.
    StartArmed(usize, InInstall, u64),
    /// Node `0`'s injected disk error fired: the schedule waits until it has stopped itself
    /// (then it is down for a while), or for [`STOP_WITHIN_MS`] if its Raft has not stopped.
    AwaitStop(usize),
}

/// What a fault aimed at an install arms when its member restarts.
#[derive(Clone, Copy, Debug)]
enum InInstall {
    /// A power cut at the `nth + 1`-th step.
    Cut { nth: u64 },
    /// ENOSPC (`enospc`) or EIO at the `nth + 1`-th step.
    Error { nth: u64, enospc: bool },
}

/// Takes a member down after its injected disk error (the caller crashed its host): after an
/// EIO as a power loss (the kernel may have dropped the pages it could not write), after
/// ENOSPC as a crash. Returns how, for the trace.
fn down_after_disk_error(disk: &Disk, watch: &mut SmWatch, rng: &mut SmallRng) -> String {
    let what = disk.injected().unwrap_or_default();
    let after = if what.contains("EIO") {
        disk.wal.crash_random(rng);
        let files = disk.sm.power_loss(rng.random());
        let db = watch.power_loss(&disk.config.sm_config().dir);
        format!("as a power loss: state machine {files}, {db}")
    } else {
        disk.wal.kill();
        "as a crash".to_string()
    };
    disk.sm.restart();
    disk.clear_injected();
    after
}

/// A member booted afresh: its earlier disk error, if any, is behind it.
fn forget_disk_error(disk: &Disk, failing: &mut Option<u64>, late: &mut bool) {
    disk.clear_injected();
    *failing = None;
    *late = false;
}

/// The result of one run, for the checkers and for a failure report.
pub struct Run {
    pub shared: Shared,
    /// The nodes' directories, removed when the run is dropped.
    pub _dir: tempfile::TempDir,
    pub sim_error: Option<String>,
    pub applies: Applies,
}

/// Which database generation (`CURRENT`) each checkpoint of one node was taken from, learned
/// by polling its state-machine directory. A power loss may revert the live database to its
/// newest checkpoint only if no snapshot was installed since: an install is synced, so it is
/// never undone.
#[derive(Default)]
struct SmWatch {
    current: String,
    /// Checkpoint directory name → the `CURRENT` it was first seen under (`None`: ambiguous,
    /// an install was seen in the same poll).
    taken_from: BTreeMap<String, Option<String>>,
}

impl SmWatch {
    fn poll(&mut self, sm_dir: &Path) {
        let Ok(current) = std::fs::read_to_string(sm_dir.join("CURRENT")) else {
            return;
        };
        let current = current.trim().to_string();
        let changed = current != self.current;
        self.current = current;
        for (name, _) in checkpoints(sm_dir) {
            self.taken_from
                .entry(name)
                .or_insert_with(|| (!changed).then(|| self.current.clone()));
        }
    }

    /// Reverts to the newest checkpoint when that is the state a power cut can leave.
    fn power_loss(&mut self, sm_dir: &Path) -> String {
        self.poll(sm_dir);
        let Some((name, path)) = checkpoints(sm_dir).pop() else {
            return "no checkpoint: database kept".into();
        };
        if self.taken_from.get(&name) != Some(&Some(self.current.clone())) {
            return format!(
                "{name} predates the installed {}: database kept",
                self.current
            );
        }
        let db = sm_dir.join(&self.current);
        if !db.is_dir() {
            return format!(
                "{} (named by CURRENT) missing: nothing reverted",
                self.current
            );
        }
        std::fs::remove_dir_all(&db).expect("remove the live database");
        copy_dir(&path, &db);
        format!("reverted to {name}")
    }
}

/// The finished checkpoints in `sm_dir/snapshots`, oldest first.
fn checkpoints(sm_dir: &Path) -> Vec<(String, PathBuf)> {
    let mut found: Vec<((u64, u64), String, PathBuf)> = Vec::new();
    let Ok(entries) = std::fs::read_dir(sm_dir.join("snapshots")) else {
        return Vec::new();
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("ckpt-") else {
            continue;
        };
        if name.ends_with(".tmp") {
            continue;
        }
        let mut parts = rest.split('-').map(|p| p.parse::<u64>().unwrap_or(0));
        let key = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        found.push((key, name, e.path()));
    }
    found.sort();
    found.into_iter().map(|(_, n, p)| (n, p)).collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    let mut entries: Vec<_> = std::fs::read_dir(from)
        .expect("read dir")
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).expect("copy");
        }
    }
}

/// Runs one seed to the end and returns what was recorded.
pub fn run(opts: &Options) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let shared = Rc::new(RefCell::new(Shared::default()));
    let mut rng = SmallRng::seed_from_u64(opts.seed);
    let work_ms = opts.work_secs * 1_000;
    let mut sim = turmoil::Builder::new()
        .rng_seed(opts.seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(1_800_000_000))
        .simulation_duration(Duration::from_millis(
            work_ms + 60_000 + CONVERGE_MS + 60_000,
        ))
        .tcp_capacity(1 << 16)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(10))
        .build();
    let applies = Arc::new(std::sync::Mutex::new(Applies::default()));
    let disks: Vec<Rc<Disk>> = (1..=NODES.len() as u64)
        .map(|id| {
            Rc::new(Disk {
                name: NODES[id as usize - 1],
                alarms: Arc::default(),
                config: node_config(dir.path(), id),
                wal: Arc::new(MemFs::new()),
                sm: SmLedger::new(dir.path().join(format!("stash-{}", NODES[id as usize - 1]))),
                boots: Cell::new(0),
                led_term: Cell::new(0),
                applies: applies.clone(),
                stopped: RefCell::new(None),
                raft_stopped_at: Cell::new(None),
            })
        })
        .collect();
    for (i, disk) in disks.iter().enumerate() {
        let disk = disk.clone();
        let shared = shared.clone();
        let opts = opts.clone();
        sim.host(NODES[i], move || {
            host(disk.clone(), shared.clone(), opts.clone())
        });
    }
    sim.client("setup", workload::setup(shared.clone(), opts.seed));
    // The work phase's end is fixed in simulated time: the setup takes what it takes first.
    let work_start_ms = 3_000;
    let work_end_ms = work_start_ms + work_ms;
    // The workers, Mallory, the admin client and the tenant lifecycle.
    shared.borrow_mut().workers_running = opts.workers + 3;
    for w in 0..opts.workers {
        sim.client(
            format!("w{w}"),
            workload::worker(shared.clone(), w + 1, opts.seed, work_end_ms),
        );
    }
    sim.client(
        "admin",
        workload::admin(shared.clone(), opts.seed, work_end_ms),
    );
    sim.client(
        "tenants",
        super::tenants::cycle(shared.clone(), opts.seed, work_end_ms),
    );
    sim.client(
        "mallory",
        super::attacker::attacker(shared.clone(), opts.seed, work_end_ms),
    );
    sim.client(
        "poller",
        workload::quota_poller(shared.clone(), work_end_ms),
    );

    // The fault schedule: one fault at a time, each undone before the next.
    let mut next_fault_ms = work_start_ms + rng.random_range(1_000..3_000);
    let mut undo: Vec<(u64, Undo)> = Vec::new();
    let mut down: BTreeSet<usize> = BTreeSet::new();
    let mut finishing = false;
    let mut script = opts.script.clone().unwrap_or_default();
    let mut watches: Vec<SmWatch> = (0..NODES.len()).map(|_| SmWatch::default()).collect();
    // Members whose injected disk error fired and which have not stopped yet.
    // (The time each is to stay down once it has.)
    let mut failing: [Option<u64>; NODES.len()] = [None; NODES.len()];
    // Members whose server was reported still serving too long after Raft stopped.
    let mut late = [false; NODES.len()];
    let mut next_poll_ms = 0;
    let mut sim_error = None;
    loop {
        let now = sim.elapsed().as_millis() as u64;
        // A power cut that fired inside a node's I/O: the machine is off from that call on.
        for (n, disk) in disks.iter().enumerate() {
            let (at, kind, in_apply) = match (disk.wal.power_cut(), disk.sm.fired()) {
                (Some(at), _) => (at, "PowerCutInIo", false),
                (None, Some((phase, at))) => (at, "PowerCutInSm", phase == Phase::Apply),
                (None, None) => continue,
            };
            sim.crash(NODES[n]);
            // Three in four: the power-loss outcome is what `PowerLoss` already gives.
            let sm = if in_apply && rng.random_bool(0.75) {
                disk.wal.kill();
                disk.sm.restart();
                "crashed right after a flush: WAL and database kept".to_string()
            } else {
                disk.wal.crash_random(&mut rng);
                let files = disk.sm.power_loss(rng.random());
                disk.sm.restart();
                let db = watches[n].power_loss(&disk.config.sm_config().dir);
                format!("state machine {files}, {db}")
            };
            let mut s = shared.borrow_mut();
            s.trace_at(now, format!("power cut on {} at {at}: {sm}", NODES[n]));
            *s.faults.entry(format!("{kind}(fired)")).or_default() += 1;
            down.insert(n);
            for (t, u) in &mut undo {
                if let Undo::Disarm(m, down_ms, _) = *u
                    && m == n
                {
                    *t = now + down_ms;
                    *u = Undo::Start(n);
                }
            }
        }
        // An injected disk error fired: the member must stop itself (its server, not the
        // harness), within `STOP_WITHIN_MS` of its Raft stopping; once it has, the machine is
        // taken down and started again later. Except in a snapshot's staging: that transfer is
        // refused and the member serves on. The error is forgotten at once, so a stop it
        // caused after all fails the run (nothing else would explain it).
        for (n, disk) in disks.iter().enumerate() {
            if disk.sm.failed_phase() == Some(Phase::Stage) {
                let what = disk.injected().unwrap_or_default();
                disk.sm.clear_failure();
                undo.retain(|(_, u)| {
                    !matches!(u, Undo::Disarm(m, _, kind) if *m == n && kind.starts_with("DiskError"))
                });
                let mut s = shared.borrow_mut();
                s.trace_at(
                    now,
                    format!(
                        "disk error on {}: {what}: the transfer is refused",
                        NODES[n]
                    ),
                );
                *s.faults.entry("DiskError(fired)".into()).or_default() += 1;
                *s.faults
                    .entry("DiskError(transfer refused)".into())
                    .or_default() += 1;
            } else if let Some(what) = disk.injected()
                && failing[n].is_none()
            {
                let mut down_ms = 2_000;
                for (t, u) in &mut undo {
                    if let Undo::Disarm(m, d, _) = *u
                        && m == n
                    {
                        down_ms = d;
                        *t = now + STOP_WITHIN_MS;
                        *u = Undo::AwaitStop(n);
                    }
                }
                failing[n] = Some(down_ms);
                let mut s = shared.borrow_mut();
                s.trace_at(now, format!("disk error on {}: {what}", NODES[n]));
                *s.faults.entry("DiskError(fired)".into()).or_default() += 1;
            }
            if let Some(at) = disk.raft_stopped_at.get()
                && failing[n].is_some()
                && !late[n]
                && now >= at + STOP_WITHIN_MS
            {
                late[n] = true;
                let what = disk.injected().unwrap_or_default();
                shared.borrow_mut().node_errors.push(format!(
                    "{}: Raft stopped at {at} ms after {what}, but the server still served \
                     {STOP_WITHIN_MS} ms later",
                    NODES[n]
                ));
            }
            let Some(why) = disk.stopped.borrow_mut().take() else {
                continue;
            };
            sim.crash(NODES[n]);
            let after = down_after_disk_error(disk, &mut watches[n], &mut rng);
            let down_ms = failing[n].take().unwrap_or(2_000);
            down.insert(n);
            let mut s = shared.borrow_mut();
            s.trace_at(
                now,
                format!("{} down after it stopped ({why}), {after}", NODES[n]),
            );
            *s.faults
                .entry("DiskError(member stopped)".into())
                .or_default() += 1;
            undo.retain(|(_, u)| !matches!(u, Undo::AwaitStop(m) if *m == n));
            undo.push((now + down_ms, Undo::Start(n)));
        }
        // Undo what is due.
        let mut due: Vec<Undo> = Vec::new();
        undo.retain_mut(|(at, u)| {
            if *at <= now {
                due.push(std::mem::replace(u, Undo::CrashLeader));
                false
            } else {
                true
            }
        });
        for u in due {
            match u {
                Undo::Repair(a, b) => sim.repair(NODES[a], NODES[b]),
                Undo::RepairOneWay(a, b) => sim.repair_oneway(NODES[a], NODES[b]),
                Undo::Release(a, b) => sim.release(NODES[a], NODES[b]),
                Undo::Latency(a, b) => {
                    sim.set_link_max_message_latency(NODES[a], NODES[b], Duration::from_millis(10))
                }
                Undo::Start(n) => {
                    sim.bounce(NODES[n]);
                    down.remove(&n);
                    forget_disk_error(&disks[n], &mut failing[n], &mut late[n]);
                }
                Undo::StartThenCrashLeader(n, after) => {
                    sim.bounce(NODES[n]);
                    down.remove(&n);
                    forget_disk_error(&disks[n], &mut failing[n], &mut late[n]);
                    undo.push((now + after, Undo::CrashLeader));
                }
                Undo::AwaitStop(n) => {
                    match disks[n].raft_stopped_at.get() {
                        // Raft stopped: hold the schedule until the server stops or is late
                        // (reported above; the run fails).
                        Some(at) if !late[n] => {
                            undo.push((at + STOP_WITHIN_MS, Undo::AwaitStop(n)));
                        }
                        Some(_) => {}
                        None => {
                            // Raft has not stopped: the failed step was not needed yet (a
                            // WAL purge's error surfaces at the next append). The member
                            // serves on, the error still its own if it stops later.
                            let what = disks[n].injected().unwrap_or_default();
                            let mut s = shared.borrow_mut();
                            s.trace_at(now, format!("{} serves on after {what}", NODES[n]));
                            *s.faults.entry("DiskError(served on)".into()).or_default() += 1;
                        }
                    }
                    continue;
                }
                Undo::Disarm(n, _, kind) => {
                    disks[n].wal.disarm_cut();
                    disks[n].sm.disarm();
                    disks[n].clear_injected();
                    shared
                        .borrow_mut()
                        .trace_at(now, format!("{kind} on {} did not fire", NODES[n]));
                    *shared
                        .borrow_mut()
                        .faults
                        .entry(format!("{kind}(not fired)"))
                        .or_default() += 1;
                    continue;
                }
                Undo::StartArmed(n, armed, down_ms) => {
                    sim.bounce(NODES[n]);
                    down.remove(&n);
                    forget_disk_error(&disks[n], &mut failing[n], &mut late[n]);
                    let kind = match armed {
                        InInstall::Cut { nth } => {
                            disks[n].sm.cut_at(Some(Phase::Install), nth);
                            "PowerCutInInstall"
                        }
                        InInstall::Error { nth, enospc } => {
                            disks[n].sm.fail_at(Some(Phase::Install), nth, enospc);
                            "DiskErrorInInstall"
                        }
                    };
                    // The others build a snapshot and purge their logs, so that the member is
                    // sent one (otherwise it is often caught up from the log).
                    let others = (0..NODES.len()).filter(|m| *m != n && !down.contains(m));
                    shared
                        .borrow_mut()
                        .snapshot_wanted
                        .extend(others.map(|m| m as u64 + 1));
                    undo.push((now + INSTALL_ARMED_MS, Undo::Disarm(n, down_ms, kind)));
                }
                Undo::CrashLeader => {
                    let leader = shared.borrow().last_leader.map(|(_, l)| l as usize - 1);
                    if let Some(l) = leader.filter(|l| !down.contains(l)) {
                        shared.borrow_mut().trace_at(
                            now,
                            format!("fault: crash leader {} during catch-up", NODES[l]),
                        );
                        sim.crash(NODES[l]);
                        disks[l].wal.kill();
                        down.insert(l);
                        undo.push((now + 3_000, Undo::Start(l)));
                    }
                    continue;
                }
            }
            shared
                .borrow_mut()
                .trace_at(now, format!("fault undone: {u:?}"));
        }
        let scripted = script.first().is_some_and(|(at, _)| *at <= now)
            && shared.borrow().setup_done_ms.is_some();
        // Not before setup is done: init's answer (the admin token) must not be lost.
        let random = opts.script.is_none()
            && now >= next_fault_ms
            && shared.borrow().setup_done_ms.is_some();
        if !finishing && (scripted || random) && undo.is_empty() && now < work_end_ms {
            let fault = if scripted {
                script.remove(0).1
            } else {
                random_fault(&mut rng)
            };
            {
                let mut s = shared.borrow_mut();
                s.trace_at(now, format!("fault: {fault:?}"));
                *s.faults.entry(fault.kind()).or_default() += 1;
            }
            let others = |side: &[usize]| -> Vec<usize> {
                (0..NODES.len()).filter(|n| !side.contains(n)).collect()
            };
            match fault {
                Fault::Partition { side, ms } => {
                    for a in &side {
                        for b in others(&side) {
                            sim.partition(NODES[*a], NODES[b]);
                            undo.push((now + ms, Undo::Repair(*a, b)));
                        }
                    }
                }
                Fault::IsolateLeader { ms } => {
                    if let Some((_, l)) = shared.borrow().last_leader {
                        let l = l as usize - 1;
                        for b in others(&[l]) {
                            sim.partition(NODES[l], NODES[b]);
                            undo.push((now + ms, Undo::Repair(l, b)));
                        }
                    }
                }
                Fault::OneWay { from, to, ms } => {
                    sim.partition_oneway(NODES[from], NODES[to]);
                    undo.push((now + ms, Undo::RepairOneWay(from, to)));
                }
                Fault::Hold { a, b, ms } => {
                    sim.hold(NODES[a], NODES[b]);
                    undo.push((now + ms, Undo::Release(a, b)));
                }
                Fault::Slow {
                    a,
                    b,
                    latency_ms,
                    ms,
                } => {
                    sim.set_link_max_message_latency(
                        NODES[a],
                        NODES[b],
                        Duration::from_millis(latency_ms),
                    );
                    undo.push((now + ms, Undo::Latency(a, b)));
                }
                Fault::Crash { nodes, down_ms } => {
                    for n in nodes {
                        sim.crash(NODES[n]);
                        disks[n].wal.kill();
                        down.insert(n);
                        undo.push((now + down_ms, Undo::Start(n)));
                    }
                }
                Fault::PowerLoss { nodes, down_ms } => {
                    for n in nodes {
                        sim.crash(NODES[n]);
                        disks[n].wal.crash_random(&mut rng);
                        let files = disks[n].sm.power_loss(rng.random());
                        let db = watches[n].power_loss(&disks[n].config.sm_config().dir);
                        shared.borrow_mut().trace_at(
                            now,
                            format!("power loss {}: state machine {files}, {db}", NODES[n]),
                        );
                        down.insert(n);
                        undo.push((now + down_ms, Undo::Start(n)));
                    }
                }
                Fault::PowerCutInIo {
                    node,
                    call,
                    nth,
                    down_ms,
                } => {
                    disks[node].wal.cut_power_at(call, nth);
                    undo.push((
                        now + CUT_ARMED_MS,
                        Undo::Disarm(node, down_ms, "PowerCutInIo"),
                    ));
                }
                Fault::PowerCutInSm {
                    node,
                    phase,
                    nth,
                    down_ms,
                } => {
                    disks[node].sm.cut_at(phase, nth);
                    undo.push((
                        now + CUT_ARMED_MS,
                        Undo::Disarm(node, down_ms, "PowerCutInSm"),
                    ));
                }
                Fault::DiskError {
                    node,
                    at,
                    nth,
                    down_ms,
                } => {
                    let node = match (node, shared.borrow().last_leader) {
                        (LEADER, Some((_, l))) => l as usize - 1,
                        (LEADER, None) => 0,
                        (n, _) => n,
                    };
                    shared
                        .borrow_mut()
                        .trace_at(now, format!("disk error armed on {}", NODES[node]));
                    match at {
                        DiskErrorAt::WalWrite => disks[node].wal.fail_write_after(nth),
                        DiskErrorAt::WalSync => disks[node].wal.fail_sync_after(nth),
                        DiskErrorAt::Sm { phase, enospc } => {
                            disks[node].sm.fail_at(phase, nth, enospc)
                        }
                    }
                    undo.push((now + CUT_ARMED_MS, Undo::Disarm(node, down_ms, "DiskError")));
                }
                Fault::PowerCutInInstall { nth, down_ms }
                | Fault::DiskErrorInInstall { nth, down_ms, .. } => {
                    let armed = match &fault {
                        Fault::DiskErrorInInstall { enospc, .. } => InInstall::Error {
                            nth,
                            enospc: *enospc,
                        },
                        _ => InInstall::Cut { nth },
                    };
                    let leader = shared.borrow().last_leader.map(|(_, l)| l as usize - 1);
                    let followers: Vec<usize> =
                        (0..NODES.len()).filter(|n| Some(*n) != leader).collect();
                    let n = followers[rng.random_range(0..followers.len())];
                    sim.crash(NODES[n]);
                    disks[n].wal.kill();
                    down.insert(n);
                    let after = rng.random_range(500..4_000);
                    undo.push((now + down_ms, Undo::StartArmed(n, armed, after)));
                }
                Fault::CrashLeaderDuringCatchUp { down_ms } => {
                    let leader = shared.borrow().last_leader.map(|(_, l)| l as usize - 1);
                    let victim = (0..NODES.len()).find(|n| Some(*n) != leader);
                    if let Some(n) = victim {
                        sim.crash(NODES[n]);
                        disks[n].wal.kill();
                        down.insert(n);
                        undo.push((now + down_ms, Undo::StartThenCrashLeader(n, 300)));
                    }
                }
            }
            next_fault_ms = now + rng.random_range(500..3_000);
        }
        if !finishing && now >= work_end_ms && undo.is_empty() {
            // Heal: every link whole, every node up; then the final client checks recovery.
            finishing = true;
            // A member serving on after a disk error is restarted like the others.
            for (n, disk) in disks.iter().enumerate() {
                if failing[n].is_some() && !down.contains(&n) {
                    sim.crash(NODES[n]);
                    let after = down_after_disk_error(disk, &mut watches[n], &mut rng);
                    shared.borrow_mut().trace_at(
                        now,
                        format!("{} restarted after its disk error, {after}", NODES[n]),
                    );
                    down.insert(n);
                }
            }
            for n in std::mem::take(&mut down) {
                sim.bounce(NODES[n]);
            }
            for (n, disk) in disks.iter().enumerate() {
                forget_disk_error(disk, &mut failing[n], &mut late[n]);
            }
            shared.borrow_mut().trace_at(now, "faults stop".to_string());
            sim.client("final", workload::finish(shared.clone(), opts.seed));
        }
        if now >= next_poll_ms {
            for (w, d) in watches.iter_mut().zip(&disks) {
                w.poll(&d.config.sm_config().dir);
            }
            next_poll_ms = now + 10;
        }
        match sim.step() {
            Ok(true) if finishing => break,
            Ok(_) => {}
            Err(e) => {
                sim_error = Some(e.to_string());
                break;
            }
        }
    }
    drop(sim);
    let mut shared = Rc::try_unwrap(shared)
        .map(RefCell::into_inner)
        .unwrap_or_else(|rc| std::mem::take(&mut *rc.borrow_mut()));
    shared.history.close();
    for d in &disks {
        let alarms = d.alarms.lock().expect("alarms");
        shared.node_errors.extend(alarms.iter().cloned());
    }
    drop(disks);
    let applies = std::mem::take(&mut *applies.lock().unwrap_or_else(|p| p.into_inner()));
    Run {
        shared,
        _dir: dir,
        sim_error,
        applies,
    }
}
