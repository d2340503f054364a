//! Real `raftgraph server` processes under a nemesis, the history checked for linearizability
//! by the simulation's checker.
//!
//! Four members on loopback (three voters and a spare), TLS and authentication on as a user
//! runs them, set up with the CLI (`certs`, `secrets keygen`, `cluster init`, `tenant create`,
//! `tenant token create`). Workers write, compare-and-set and linearizably read five registers
//! through the Rust client with a tenant token, while the nemesis, one fault at a time:
//! - SIGKILLs a member and restarts it;
//! - SIGSTOPs a member (the leader half the time) for longer than an election timeout, then
//!   SIGCONTs it;
//! - cuts every peer link of a member (the leader half the time) in both directions, then
//!   heals;
//! - replaces a voter by the spare (add learner, promote, remove), the leader among them;
//! - transfers leadership.
//!
//! Partitions go through a proxy in front of each member's peer listener (members advertise
//! the proxy's address). The proxy tells which member dialed a connection from the kernel's
//! socket table (`/proc/net/tcp` and each member's `/proc/<pid>/fd`), so one member's links
//! can be cut both ways while the others' stay up. Clients reach members directly: a
//! partition cuts the peer plane only.
//!
//! - `cargo test --profile ci --test nemesis`: 45 s of faults (`JEPSEN_SECS` for a soak).
//! - `JEPSEN_SEED` fixes the fault schedule and the workload's choices; real processes on a
//!   real clock do not replay exactly.
//!
//! On failure the data directories, each member's log and the history are kept and their
//! path printed.
// Real processes on the real clock: waits here are bounded polls, not simulated time.
#![allow(clippy::disallowed_methods)]

// The simulation's history and checker (it uses all of them; this test not every call kind).
#[allow(dead_code)]
#[path = "sim/check_linearizable.rs"]
mod check_linearizable;
#[allow(dead_code)]
#[path = "sim/history.rs"]
mod history;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use history::{Call, History, Key, Outcome};
use raftgraph::client::{Client, ClientOptions, Pool};
use raftgraph::proto::v1 as pb;
use raftgraph::transport::Dialer;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::net::{TcpListener, TcpStream};
use tonic::{Code, Status};

const BIN: &str = env!("CARGO_BIN_EXE_raftgraph");
/// Three voters and a spare.
const MEMBERS: u64 = 4;
const TENANT: &str = "regs";
const REGISTERS: usize = 5;
const WORKERS: u64 = 6;
/// The stack of the thread that runs the check.
const CHECK_STACK_BYTES: usize = 1 << 30;
/// Lines of a failed check's report shown in the test output.
const REPORT_LINES_SHOWN: usize = 25;
/// The bound of every wait for the cluster (start, recovery, convergence).
const WAIT: Duration = Duration::from_secs(90);
/// The members' election timeout (ms): pauses last longer.
const ELECTION_MAX_MS: u64 = 1_000;

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

/// Milliseconds since the run started, for reports.
fn ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

// ---------------------------------------------------------------------------------------------
// The network: a proxy in front of each member's peer listener.

/// Which links are cut, which member each process is, and the connections carried.
#[derive(Default)]
struct Net {
    /// (dialer, listener) pairs whose connections are refused.
    blocked: BTreeSet<(u64, u64)>,
    pids: BTreeMap<u64, u32>,
    links: Vec<(u64, u64, tokio::task::AbortHandle)>,
    /// Connections refused because their link was cut, and those whose dialer was not found
    /// (closed; the member redials).
    refused: u64,
    unidentified: u64,
}

type SharedNet = Arc<Mutex<Net>>;

impl Net {
    /// Cuts every link into and out of `member`, closing the connections they carry.
    fn isolate(&mut self, member: u64) {
        for other in 1..=MEMBERS {
            if other != member {
                self.blocked.insert((member, other));
                self.blocked.insert((other, member));
            }
        }
        let blocked = &self.blocked;
        self.links.retain(|(from, to, task)| {
            let cut = blocked.contains(&(*from, *to));
            if cut {
                task.abort();
            }
            !cut && !task.is_finished()
        });
    }

    fn heal(&mut self) {
        self.blocked.clear();
    }
}

/// The member whose process holds the socket connected from loopback port `from` to
/// `proxy_port`, from the kernel's socket table.
fn dialer_of(from: u16, proxy_port: u16, pids: &BTreeMap<u64, u32>) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let (local, remote) = (
        format!("0100007F:{from:04X}"),
        format!("0100007F:{proxy_port:04X}"),
    );
    let inode = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && f[1] == local && f[2] == remote).then(|| f[9].to_string())
    })?;
    let socket = format!("socket:[{inode}]");
    pids.iter().find_map(|(member, pid)| {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == socket.as_str()))
            .then_some(*member)
    })
}

/// Forwards connections to `target` (member `to`'s peer listener) unless their dialer's link
/// to it is cut.
async fn proxy(listener: TcpListener, to: u64, target: String, net: SharedNet) {
    let port = listener.local_addr().unwrap().port();
    loop {
        let Ok((inbound, src)) = listener.accept().await else {
            continue;
        };
        let pids = net.lock().unwrap().pids.clone();
        let from = tokio::task::spawn_blocking(move || dialer_of(src.port(), port, &pids))
            .await
            .unwrap();
        let mut n = net.lock().unwrap();
        let Some(from) = from else {
            n.unidentified += 1;
            continue;
        };
        if n.blocked.contains(&(from, to)) {
            n.refused += 1;
            continue;
        }
        let target = target.clone();
        let task = tokio::spawn(async move {
            let mut inbound = inbound;
            if let Ok(mut out) = TcpStream::connect(&target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
            }
        });
        n.links.retain(|(_, _, t)| !t.is_finished());
        n.links.push((from, to, task.abort_handle()));
    }
}

// ---------------------------------------------------------------------------------------------
// The members.

struct Member {
    id: u64,
    /// The client listener.
    addr: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl Member {
    fn start(&mut self, net: &SharedNet) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut c = Command::new(BIN);
        c.arg("server").arg("--config").arg(&self.config);
        for (k, _) in std::env::vars() {
            if k.starts_with("RAFTGRAPH_") {
                c.env_remove(k);
            }
        }
        c.env("RUST_LOG", "info");
        c.stdout(log.try_clone().unwrap()).stderr(log);
        let child = c.spawn().unwrap();
        net.lock().unwrap().pids.insert(self.id, child.id());
        self.child = Some(child);
    }

    fn signal(&self, signal: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid, which we have not reaped.
            let r = unsafe { libc::kill(c.id() as libc::pid_t, signal) };
            assert_eq!(r, 0, "kill({}, {signal})", c.id());
        }
    }

    fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(mut c) = self.child.take() {
            c.wait().unwrap();
        }
        self.paused = false;
    }

    fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
        self.paused = true;
    }

    fn resume(&mut self) {
        if self.paused {
            self.signal(libc::SIGCONT);
            self.paused = false;
        }
    }
}

struct Cluster {
    dir: PathBuf,
    members: Vec<Member>,
    net: SharedNet,
    ca: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.resume();
            m.kill();
        }
    }
}

fn write_config(dir: &Path, id: u64, addr: &str, peer: &str, advertised: &str) -> PathBuf {
    let certs = dir.join("certs");
    let path = dir.join(format!("member-{id}.toml"));
    let text = format!(
        "cluster_id = \"nemesis\"\nmember_id = {id}\nlisten = \"{addr}\"\n\
         peer_listen = \"{peer}\"\npeer_advertise = \"{advertised}\"\n\
         data_dir = \"{}\"\nsecrets_key_file = \"{}\"\n\
         [certs]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\
         [raft]\nheartbeat_ms = 100\nelection_timeout_min_ms = 500\n\
         election_timeout_max_ms = {ELECTION_MAX_MS}\n\
         [storage]\nwrite_buffer_bytes = 8388608\nblock_cache_bytes = 8388608\n\
         wal_segment_bytes = 8388608\n",
        dir.join(format!("data-{id}")).display(),
        dir.join("secrets.keys").display(),
        certs.join("ca.pem").display(),
        certs.join(format!("member-{id}.pem")).display(),
        certs.join(format!("member-{id}.key")).display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The CLI, trusting the cluster's CA, with `token` if given; its output checked.
fn cli(ca: &Path, token: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("RAFTGRAPH_ENDPOINTS")
        .env("RAFTGRAPH_CA", ca);
    match token {
        Some(t) => c.env("RAFTGRAPH_TOKEN", t),
        None => c.env_remove("RAFTGRAPH_TOKEN"),
    };
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "raftgraph {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Cluster {
    async fn start(dir: PathBuf) -> Cluster {
        let certs = dir.join("certs");
        let certs_arg = certs.to_str().unwrap();
        let run = |args: &[&str]| {
            let out = Command::new(BIN).args(args).output().unwrap();
            assert!(out.status.success(), "{args:?}: {out:?}");
        };
        run(&[
            "certs",
            "init",
            "--cluster-id",
            "nemesis",
            "--dir",
            certs_arg,
        ]);
        for id in 1..=MEMBERS {
            run(&[
                "certs",
                "member",
                "--id",
                &id.to_string(),
                "--host",
                "127.0.0.1",
                "--cluster-id",
                "nemesis",
                "--dir",
                certs_arg,
            ]);
        }
        let keys = dir.join("secrets.keys");
        run(&[
            "secrets",
            "keygen",
            "--id",
            "k1",
            "--file",
            keys.to_str().unwrap(),
        ]);
        let net = SharedNet::default();
        let mut members = Vec::new();
        for id in 1..=MEMBERS {
            let (addr, peer) = (free_addr(), free_addr());
            // Bound here and kept: the address the member advertises to the others.
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let advertised = listener.local_addr().unwrap().to_string();
            tokio::spawn(proxy(listener, id, peer.clone(), net.clone()));
            let config = write_config(&dir, id, &addr, &peer, &advertised);
            let mut m = Member {
                id,
                addr,
                config,
                log: dir.join(format!("member-{id}.log")),
                child: None,
                paused: false,
            };
            m.start(&net);
            members.push(m);
        }
        Cluster {
            ca: certs.join("ca.pem"),
            dir,
            members,
            net,
        }
    }

    fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.addr.clone()).collect()
    }

    /// How clients reach the members: TLS trusting the cluster's CA, carrying `token`.
    fn access(&self, token: &str) -> Access {
        Access {
            endpoints: self.endpoints(),
            ca: self.ca.clone(),
            token: token.to_string(),
        }
    }

    fn member(&mut self, id: u64) -> &mut Member {
        &mut self.members[id as usize - 1]
    }
}

/// What a client needs: the endpoints, the CA, a token.
#[derive(Clone)]
struct Access {
    endpoints: Vec<String>,
    ca: PathBuf,
    token: String,
}

impl Access {
    /// A client with a fresh random id (its own session), streams or unary calls at random,
    /// giving up on a call after `deadline`.
    fn client_within(&self, rng: &mut SmallRng, deadline: Duration) -> Client {
        let config = raftgraph::tls::client_config_from_files(&self.ca, None).unwrap();
        let dialer = Dialer::default().with_tls(Arc::new(move || config.clone()));
        Client::new(
            self.endpoints.clone(),
            ClientOptions {
                client_id: Some(rng.random()),
                jitter_seed: Some(rng.random()),
                attempt_timeout: Duration::from_secs(2),
                deadline,
                pool: match self.token.as_str() {
                    "" => Pool::new(dialer),
                    token => Pool::new(dialer).with_token(token).unwrap(),
                },
                write_stream: rng.random_bool(0.5),
                read_stream: rng.random_bool(0.5),
            },
        )
        .unwrap()
    }

    /// [`Access::client_within`] 6 s.
    fn client(&self, rng: &mut SmallRng) -> Client {
        self.client_within(rng, Duration::from_secs(6))
    }
}

/// Polls `f` until it gives a value, for at most [`WAIT`].
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The leader and the voters as some member answering for the cluster admin sees them.
async fn view(admin: &Client, endpoints: &[String]) -> Option<(u64, BTreeSet<u64>)> {
    for e in endpoints {
        let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), admin.status_of(e)).await
        else {
            continue;
        };
        if s.state == "leader" {
            let voters = s.membership?.voters.iter().map(|m| m.id).collect();
            return Some((s.member_id, voters));
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The workload.

/// What the workers share.
struct Work {
    start: Instant,
    history: Mutex<History>,
    registers: Vec<Key>,
    /// Refusals no correct run gives (and UNAUTHENTICATED from a member that has not applied
    /// the token yet, counted apart).
    unexpected: Mutex<Vec<String>>,
    lagging: Mutex<u64>,
    stop: AtomicBool,
}

fn int(v: i64) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::IntValue(v)),
    }
}

fn set_v(key: Key, value: i64) -> pb::Operation {
    pb::Operation {
        op: Some(pb::operation::Op::UpdateNode(pb::UpdateNode {
            node: Some(pb::NodeRef {
                r#ref: Some(pb::node_ref::Ref::Id(key)),
            }),
            set: [("v".to_string(), int(value))].into(),
            remove: vec![],
        })),
    }
}

fn write(preconditions: Vec<pb::Precondition>, operations: Vec<pb::Operation>) -> pb::WriteRequest {
    pb::WriteRequest {
        tenant: TENANT.into(),
        request_id: None,
        preconditions,
        operations,
    }
}

/// A register's value: the node's integer property `v`.
fn register(n: &pb::Node) -> Option<i64> {
    match n.properties.get("v")?.kind {
        Some(pb::value::Kind::IntValue(i)) => Some(i),
        _ => None,
    }
}

async fn perform(c: &Client, call: &Call) -> Result<Option<i64>, Status> {
    match call {
        Call::Write { key, value } => c
            .write(write(vec![], vec![set_v(*key, *value)]))
            .await
            .map(|_| None),
        Call::Cas { key, expect, value } => c
            .write(write(
                vec![pb::Precondition {
                    check: Some(pb::precondition::Check::NodeProperty(pb::PropertyEquals {
                        id: *key,
                        key: "v".into(),
                        value: Some(int(*expect)),
                    })),
                }],
                vec![set_v(*key, *value)],
            ))
            .await
            .map(|_| None),
        Call::Read { key, .. } => {
            let n = c
                .get_node(pb::GetNodeRequest {
                    tenant: TENANT.into(),
                    id: *key,
                    consistency: pb::Consistency::Linearizable as i32,
                })
                .await?;
            Ok(register(&n))
        }
        _ => unreachable!("registers only"),
    }
}

impl Work {
    /// Performs `call` as `process`, its invocation and completion in the history.
    async fn record(&self, process: u64, client: &Client, call: &Call) -> Outcome {
        let i = self
            .history
            .lock()
            .unwrap()
            .invoke(process, call.clone(), ms(self.start));
        let outcome = match perform(client, call).await {
            Ok(v) => Outcome::Ok(v),
            Err(s) => self.failure(call, &s),
        };
        self.history
            .lock()
            .unwrap()
            .complete(i, outcome.clone(), ms(self.start));
        outcome
    }

    /// The outcome of a failed call: only a CAS refused by its precondition is a definite
    /// failure; anything else may have applied.
    fn failure(&self, call: &Call, s: &Status) -> Outcome {
        let msg = format!("{:?}: {}", s.code(), s.message());
        match s.code() {
            Code::FailedPrecondition
                if matches!(call, Call::Cas { .. })
                    && s.message()
                        .starts_with(&format!("tenant {TENANT}: precondition ")) =>
            {
                return Outcome::Fail(format!("precondition: {msg}"));
            }
            Code::FailedPrecondition if s.message().contains("session expired") => {}
            Code::Unauthenticated => *self.lagging.lock().unwrap() += 1,
            Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::Unimplemented => self
                .unexpected
                .lock()
                .unwrap()
                .push(format!("{call:?}: {msg}")),
            _ => {}
        }
        Outcome::Unknown(msg)
    }
}

async fn worker(work: Arc<Work>, access: Access, index: u64, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut process = index << 32;
    let mut client = access.client(&mut rng);
    let mut seen: BTreeMap<Key, i64> = BTreeMap::new();
    let mut counter = 0i64;
    while !work.stop.load(Ordering::Relaxed) {
        counter += 1;
        let value = ((index as i64) << 40) | counter;
        let key = work.registers[rng.random_range(0..work.registers.len())];
        let call = match rng.random_range(0..100) {
            0..35 => Call::Write { key, value },
            35..60 => Call::Cas {
                key,
                expect: seen
                    .get(&key)
                    .copied()
                    .unwrap_or(check_linearizable::INITIAL),
                value,
            },
            _ => Call::Read {
                key,
                linearizable: true,
                via: None,
            },
        };
        let outcome = work.record(process, &client, &call).await;
        match (&call, &outcome) {
            (Call::Write { value, .. } | Call::Cas { value, .. }, Outcome::Ok(_)) => {
                seen.insert(key, *value);
            }
            (Call::Read { .. }, Outcome::Ok(Some(v))) => {
                seen.insert(key, *v);
            }
            _ => {}
        }
        if matches!(outcome, Outcome::Unknown(_)) {
            // As in Jepsen: a process with an operation in doubt is done; a new one continues.
            process += 1;
            client = access.client(&mut rng);
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The nemesis.

/// The faults a run survived.
#[derive(Debug, Default)]
struct Faults {
    kills: u64,
    pauses: u64,
    leader_pauses: u64,
    partitions: u64,
    leader_partitions: u64,
    /// Voters replaced by the spare (add learner, promote, remove), and attempts that failed
    /// partway (the next one continues from the membership as it is).
    replacements: u64,
    replacements_failed: u64,
    transfers: u64,
}

async fn sleep_ms(rng: &mut SmallRng, range: std::ops::Range<u64>) {
    tokio::time::sleep(Duration::from_millis(rng.random_range(range))).await;
}

/// Makes `spare` a voter in place of `old`, as an operator would.
async fn replace(admin: &Client, cluster: &Cluster, spare: u64, old: u64) -> Result<(), Status> {
    let addr = cluster.members[spare as usize - 1].addr.clone();
    let peer_addr = admin.status_of(&addr).await?.peer_addr;
    let member = pb::Member {
        id: spare,
        addr,
        peer_addr,
    };
    admin
        .cluster(|mut c| {
            let req = pb::AddLearnerRequest {
                member: Some(member.clone()),
                wait: true,
            };
            async move { c.add_learner(req).await }
        })
        .await?;
    admin
        .cluster(|mut c| async move { c.promote(pb::PromoteRequest { ids: vec![spare] }).await })
        .await?;
    admin
        .cluster(|mut c| async move { c.remove(pb::RemoveRequest { ids: vec![old] }).await })
        .await?;
    Ok(())
}

/// Faults one at a time until `until`, each healed before the next; every action in `log`.
async fn nemesis(
    cluster: &mut Cluster,
    admin: &Client,
    rng: &mut SmallRng,
    until: Instant,
    start: Instant,
    log: &mut Vec<String>,
) -> Faults {
    let endpoints = cluster.endpoints();
    let mut f = Faults::default();
    while Instant::now() < until {
        sleep_ms(rng, 300..1_500).await;
        let seen = view(admin, &endpoints).await;
        let leader = seen.as_ref().map(|(l, _)| *l);
        let at_leader = leader.is_some() && rng.random_bool(0.5);
        let target = match leader {
            Some(l) if at_leader => l,
            _ => rng.random_range(1..=MEMBERS),
        };
        let mut note = |what: String| log.push(format!("{:>7} ms  {what}", ms(start)));
        match rng.random_range(0..100) {
            0..25 => {
                note(format!("SIGKILL member {target}"));
                cluster.member(target).kill();
                sleep_ms(rng, 100..2_000).await;
                cluster.members[target as usize - 1].start(&cluster.net);
                note(format!("restarted member {target}"));
                f.kills += 1;
            }
            25..45 => {
                note(format!("SIGSTOP member {target} (leader: {at_leader})"));
                cluster.member(target).pause();
                sleep_ms(rng, ELECTION_MAX_MS + 200..ELECTION_MAX_MS + 3_000).await;
                cluster.member(target).resume();
                note(format!("SIGCONT member {target}"));
                f.pauses += 1;
                f.leader_pauses += u64::from(at_leader);
            }
            45..70 => {
                note(format!("isolate member {target} (leader: {at_leader})"));
                cluster.net.lock().unwrap().isolate(target);
                sleep_ms(rng, 500..4_000).await;
                cluster.net.lock().unwrap().heal();
                note("heal".into());
                f.partitions += 1;
                f.leader_partitions += u64::from(at_leader);
            }
            70..85 => {
                let Some((_, voters)) = seen else { continue };
                let spares: Vec<u64> = (1..=MEMBERS).filter(|id| !voters.contains(id)).collect();
                let voters: Vec<u64> = voters.into_iter().collect();
                let old = voters[rng.random_range(0..voters.len())];
                let r = match spares.first() {
                    Some(&spare) if voters.len() == 3 => {
                        note(format!(
                            "replace voter {old} by {spare} (voters {voters:?})"
                        ));
                        replace(admin, cluster, spare, old).await
                    }
                    // A replacement that stopped after promoting: four voters; remove one.
                    _ => {
                        note(format!("remove voter {old} (voters {voters:?})"));
                        admin
                            .cluster(|mut c| async move {
                                c.remove(pb::RemoveRequest { ids: vec![old] }).await
                            })
                            .await
                            .map(|_| ())
                    }
                };
                match r {
                    Ok(()) => f.replacements += 1,
                    Err(e) => {
                        note(format!("membership change failed: {e:?}"));
                        f.replacements_failed += 1;
                    }
                }
            }
            _ => {
                let Some((l, voters)) = seen else { continue };
                let others: Vec<u64> = voters.into_iter().filter(|v| *v != l).collect();
                let Some(&to) = others.get(rng.random_range(0..others.len().max(1))) else {
                    continue;
                };
                note(format!("transfer leadership {l} -> {to}"));
                let r = admin
                    .cluster(|mut c| async move {
                        c.transfer_leadership(pb::TransferLeadershipRequest { to })
                            .await
                    })
                    .await;
                if let Err(e) = r {
                    note(format!("transfer failed: {e:?}"));
                }
                f.transfers += 1;
            }
        }
    }
    f
}

/// The checker on a thread of its own: its search recurses once per operation of a
/// register, and a soak's 60k deep needs more than a test thread's stack (the stack is
/// reserved, not touched, until used).
fn check_deep(history: &History) -> Result<check_linearizable::CheckStats, String> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .stack_size(CHECK_STACK_BYTES)
            .spawn_scoped(scope, || check_linearizable::check(history))
            .expect("a thread for the check")
            .join()
            .expect("the check did not panic")
    })
}

/// A soak-length history on one register: 60,000 operations, about what one register gets in
/// a 30-minute soak (the check overflowed the test thread's stack at that depth before it had a
/// thread of its own).
#[test]
fn a_soak_length_history_is_checked() {
    let mut h = History::default();
    for i in 1..=30_000i64 {
        let w = h.invoke(1, Call::Write { key: 1, value: i }, 0);
        h.complete(w, Outcome::Ok(None), 0);
        let read = Call::Read {
            key: 1,
            linearizable: true,
            via: None,
        };
        let r = h.invoke(2, read, 0);
        h.complete(r, Outcome::Ok(Some(i)), 0);
    }
    let stats = check_deep(&h).unwrap();
    assert_eq!(stats.ops, 60_000);
}

// ---------------------------------------------------------------------------------------------
// The run.

/// Keeps the run's directory, with the history and the nemesis log, if the test panics.
struct Evidence {
    dir: Option<tempfile::TempDir>,
    work: Option<Arc<Work>>,
    log: Arc<Mutex<Vec<String>>>,
    replay: String,
    /// The checker's whole report, when it failed.
    report: Option<String>,
}

impl Drop for Evidence {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Some(dir) = self.dir.take() else { return };
        let path = dir.keep();
        if let Some(w) = &self.work {
            let history = w.history.lock().unwrap_or_else(|e| e.into_inner());
            let _ = std::fs::write(path.join("history.txt"), history.render());
        }
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let _ = std::fs::write(path.join("nemesis.txt"), log.join("\n"));
        if let Some(r) = &self.report {
            let _ = std::fs::write(path.join("report.txt"), r);
        }
        eprintln!(
            "nemesis failed; kept {} (member-N.log, data-N, history.txt, nemesis.txt, \
             report.txt). Rerun with the same schedule: {}",
            path.display(),
            self.replay
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_processes_stay_linearizable_under_a_nemesis() {
    let seed = env_u64("JEPSEN_SEED").unwrap_or_else(|| SmallRng::from_os_rng().random());
    let secs = env_u64("JEPSEN_SECS").unwrap_or(45);
    let dir = tempfile::Builder::new()
        .prefix("nemesis-")
        .tempdir()
        .unwrap();
    let mut evidence = Evidence {
        dir: None,
        work: None,
        log: Arc::default(),
        report: None,
        replay: format!(
            "JEPSEN_SEED={seed} JEPSEN_SECS={secs} cargo test --profile ci --test nemesis -- --nocapture"
        ),
    };
    eprintln!(
        "nemesis: seed {seed}, {secs} s of faults ({})",
        evidence.replay
    );
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut cluster = Cluster::start(dir.path().to_path_buf()).await;
    evidence.dir = Some(dir);
    let ca = cluster.ca.clone();
    let endpoints = cluster.endpoints();

    // Set up as a user would, with the CLI.
    let open = Access {
        endpoints: endpoints.clone(),
        ca: ca.clone(),
        token: String::new(),
    };
    let probe = open.client(&mut rng);
    for e in &endpoints {
        eventually(&format!("{e} to answer"), || async {
            probe.status_of(e).await.ok().map(|_| ())
        })
        .await;
    }
    let certs = cluster.dir.join("certs");
    let token_file = cluster.dir.join("admin.token");
    let mut init = vec![
        "cluster".to_string(),
        "init".into(),
        "--endpoints".into(),
        endpoints[0].clone(),
    ];
    for (i, e) in endpoints.iter().take(3).enumerate() {
        init.extend(["--member".into(), format!("{}={e}", i + 1)]);
    }
    init.extend([
        "--client-cert".into(),
        certs.join("member-1.pem").display().to_string(),
    ]);
    init.extend([
        "--client-key".into(),
        certs.join("member-1.key").display().to_string(),
    ]);
    init.extend([
        "--admin-token-file".into(),
        token_file.display().to_string(),
    ]);
    let init: Vec<&str> = init.iter().map(String::as_str).collect();
    cli(&ca, None, &init);
    let admin_token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    let all = endpoints.join(",");
    cli(
        &ca,
        Some(&admin_token),
        &["tenant", "create", TENANT, "--endpoints", &all],
    );
    let made = cli(
        &ca,
        Some(&admin_token),
        &[
            "tenant",
            "token",
            "create",
            TENANT,
            "--role",
            "write",
            "--endpoints",
            &all,
            "--output",
            "json",
        ],
    );
    let made: serde_json::Value = serde_json::from_slice(&made.stdout).unwrap();
    let token = made["token"].as_str().unwrap().to_string();
    let access = cluster.access(&token);
    let admin_access = cluster.access(&admin_token);
    let admin = admin_access.client_within(&mut rng, Duration::from_secs(30));

    // The registers, each at the initial value.
    let setup = access.client_within(&mut rng, Duration::from_secs(30));
    let mut registers = Vec::new();
    for _ in 0..REGISTERS {
        let created = setup
            .write(write(
                vec![],
                vec![pb::Operation {
                    op: Some(pb::operation::Op::CreateNode(pb::CreateNode {
                        labels: vec!["r".into()],
                        properties: [("v".to_string(), int(check_linearizable::INITIAL))].into(),
                    })),
                }],
            ))
            .await
            .unwrap();
        match created.results[0].result {
            Some(pb::op_result::Result::NodeCreated(id)) => registers.push(id),
            ref r => panic!("create answered {r:?}"),
        }
    }

    // The workload under the nemesis.
    let start = Instant::now();
    let work = Arc::new(Work {
        start,
        history: Mutex::default(),
        registers: registers.clone(),
        unexpected: Mutex::default(),
        lagging: Mutex::default(),
        stop: AtomicBool::new(false),
    });
    evidence.work = Some(work.clone());
    let workers: Vec<_> = (0..WORKERS)
        .map(|i| tokio::spawn(worker(work.clone(), access.clone(), i + 1, seed)))
        .collect();
    let mut log = Vec::new();
    let faults = nemesis(
        &mut cluster,
        &admin,
        &mut rng,
        start + Duration::from_secs(secs),
        start,
        &mut log,
    )
    .await;
    eprintln!("nemesis: the faults:\n{}", log.join("\n"));
    *evidence.log.lock().unwrap() = log;

    // Healed (every fault is healed before the next): the cluster must take a write again
    // within WAIT. The probes are in the history, each with its own value.
    let deadline = Instant::now() + WAIT;
    for attempt in 1.. {
        let call = Call::Write {
            key: registers[0],
            value: -attempt,
        };
        let fresh = access.client(&mut rng);
        if let Outcome::Ok(_) = work.record(u64::MAX - 1, &fresh, &call).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no write succeeded in {WAIT:?} after the faults"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    work.stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    // A last linearizable read of every register, and the same value on every voter.
    let (_, voters) = eventually("a leader", || view(&admin, &endpoints)).await;
    let reader = access.client_within(&mut rng, Duration::from_secs(30));
    let mut last = BTreeMap::new();
    for &key in &registers {
        let call = Call::Read {
            key,
            linearizable: true,
            via: None,
        };
        match work.record(u64::MAX, &reader, &call).await {
            Outcome::Ok(v) => last.insert(key, v),
            other => panic!("the last read of register {key}: {other:?}"),
        };
    }
    let (verdict, ok) = {
        let mut history = work.history.lock().unwrap();
        history.close();
        let (mut ok, mut failed, mut unknown) = (0, 0, 0);
        for op in &history.ops {
            match op.outcome {
                Outcome::Ok(_) => ok += 1,
                Outcome::Fail(_) => failed += 1,
                _ => unknown += 1,
            }
        }
        let net = cluster.net.lock().unwrap();
        eprintln!(
            "nemesis: {} operations ({ok} ok, {failed} refused CAS, {unknown} unknown); \
             {faults:?}; peer connections refused {} (unidentified {}); UNAUTHENTICATED from \
             a lagging member {}; voters at the end {voters:?}",
            history.ops.len(),
            net.refused,
            net.unidentified,
            work.lagging.lock().unwrap()
        );
        (check_deep(&history), ok)
    };
    let unexpected = work.unexpected.lock().unwrap().clone();
    assert!(
        unexpected.is_empty(),
        "refusals no correct run gives: {unexpected:#?}"
    );
    let stats = match verdict {
        Ok(stats) => stats,
        Err(report) => {
            let shown: Vec<&str> = report.lines().take(REPORT_LINES_SHOWN).collect();
            let total = report.lines().count();
            evidence.report = Some(report.clone());
            panic!(
                "{}\n  … ({total} lines in all: report.txt in the directory kept)",
                shown.join("\n")
            );
        }
    };
    eprintln!("nemesis: linearizable: {stats:?}");
    assert!(ok > 100, "only {ok} operations succeeded");
    assert!(
        faults.kills + faults.pauses + faults.partitions > 0,
        "no fault happened: {faults:?}"
    );
    // Every voter holds what the last linearizable reads saw.
    for id in &voters {
        let one = Access {
            endpoints: vec![cluster.members[*id as usize - 1].addr.clone()],
            ..access.clone()
        }
        .client(&mut rng);
        eventually(&format!("voter {id} to hold the last values"), || async {
            for (&key, v) in &last {
                let n = one
                    .get_node(pb::GetNodeRequest {
                        tenant: TENANT.into(),
                        id: key,
                        consistency: pb::Consistency::Serializable as i32,
                    })
                    .await
                    .ok()?;
                let got = register(&n);
                if got != *v {
                    return None;
                }
            }
            Some(())
        })
        .await;
    }
}
