//! `raftgraph bench`: a closed-loop load generator for a raftgraph cluster or, with
//! `--target etcd`, for etcd's v3 KV API with the same shape of load, so both stores are
//! measured by one tool.
//!
//! Each of `--clients` tasks issues one operation at a time and the next as soon as it is
//! answered; the clients share `--connections` HTTP/2 connections (client `i` uses connection
//! `i % connections`). Latency is measured per operation from send to answer, in microseconds,
//! into one histogram per client (merged at the end). Errors are counted by gRPC code and never
//! retried by the benchmark itself (the raftgraph client retries within its deadline, as a user
//! would see it).
//!
//! | workload | raftgraph | etcd |
//! |---|---|---|
//! | `create-node` | a write creating one node with property `v` of `--value-bytes` | a put of a new key |
//! | `update-node` | a write setting `v` of one of `--keys` prepared nodes | a put to one of `--keys` prepared keys |
//! | `read-linearizable` | `GetNode`, linearizable (read index) | a range of one key, linearizable |
//! | `read-serializable` | `GetNode` from the server asked, serializable | a range with `serializable` |
//! | `mix` | `--write-percent` updates, the rest linearizable reads | the same |
//!
//! Writes are durable on both sides (raftgraph: fdatasync of the WAL on a quorum before the
//! answer; etcd: its WAL fsync, which it does not let one turn off).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::client::{Client, ClientOptions, Pool};
use crate::command::OPERATIONS_MAX;
use crate::proto::v1 as pb;
use crate::proto::v1::cluster_service_client::ClusterServiceClient;
use crate::transport::Dialer;

mod compare;
mod etcd;
mod latency;
mod report;

pub use compare::compare;
use etcd::{Etcd, etcd_wal_fsyncs};
use latency::Latencies;
pub use report::Report;

/// Which store the benchmark drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    Raftgraph,
    Etcd,
}

/// What each operation is (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    CreateNode,
    UpdateNode,
    ReadLinearizable,
    ReadSerializable,
    Mix,
}

/// How the result is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Bytes of values in one prepare request.
const PREPARE_BYTES_MAX: usize = 1 << 20;

/// Values above this are refused: the load is about the store, not about huge payloads.
pub const VALUE_BYTES_MAX: usize = 1 << 20;
/// Clients, connections and prepared keys are bounded so a typo cannot exhaust the machine.
pub const CLIENTS_MAX: usize = 10_000;
pub const CONNECTIONS_MAX: usize = 1_000;
pub const KEYS_MAX: u64 = 10_000_000;

/// `raftgraph bench` flags.
#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    /// The store to drive.
    #[arg(long, value_enum, default_value = "raftgraph")]
    pub target: Target,
    /// `host:port` of the store's members, comma separated (default: the local raftgraph
    /// cluster of deploy/local-cluster.sh, or etcd's 127.0.0.1:2379).
    #[arg(long, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// HTTP/2 connections the clients share.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// The CA certificate of the store (raftgraph or etcd): the clients speak TLS and trust it.
    /// Without it, plaintext, which a raftgraph server with TLS on refuses.
    #[arg(long, env = "RAFTGRAPH_CA")]
    pub ca: Option<std::path::PathBuf>,
    /// raftgraph: the bearer token every call carries (a cluster-admin one if the tenant must
    /// be created).
    #[arg(long, env = "RAFTGRAPH_TOKEN", hide_env_values = true)]
    pub token: Option<crate::client::SecretArg>,
    /// raftgraph: one unary `Write` call per write instead of the connection's shared
    /// `WriteStream` (the Rust client's default), to compare the two.
    #[arg(long)]
    pub unary_writes: bool,
    /// raftgraph: one unary call per read instead of the connection's shared `ReadStream`
    /// (the Rust client's default), to compare the two.
    #[arg(long)]
    pub unary_reads: bool,
    /// Concurrent clients, each with one operation in flight.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Seconds to run (after the setup), unless `--ops` is given.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Total operations to run instead of a duration.
    #[arg(long)]
    pub ops: Option<u64>,
    /// Operations per second the clients aim at together, each pacing itself to its share on
    /// a fixed schedule (latency then counts from the scheduled start, so time spent behind
    /// schedule is not hidden). Without it, each client sends its next as soon as it can.
    #[arg(long)]
    pub rate: Option<f64>,
    /// After a refusal that carries a retry hint (a tenant over its rate limit), a client waits
    /// before its next operation, as a well-behaved client would: the hint, or longer after
    /// refusals in a row (exponential backoff from 1 ms, doubling up to 1 s, with jitter).
    #[arg(long)]
    pub honor_pushback: bool,
    /// etcd: the user to authenticate as (with `--etcd-password`), for a cluster with
    /// `auth enable`; every call then carries the user's token.
    #[arg(long)]
    pub etcd_user: Option<String>,
    #[arg(long, env = "ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
    #[arg(long, value_enum, default_value = "create-node")]
    pub workload: Workload,
    /// Bytes of each written value.
    #[arg(long, default_value_t = 256)]
    pub value_bytes: usize,
    /// raftgraph: a label every created node gets (one label-index entry more per write).
    /// Without it a created node is only its one property, as an etcd put is only its value.
    #[arg(long)]
    pub label: Option<String>,
    /// The raftgraph tenant (created with unlimited quotas if missing; ignored for etcd).
    #[arg(long, default_value = "bench")]
    pub tenant: String,
    /// Nodes (or etcd keys) written before the run that `update-node`, the reads and `mix`
    /// spread over.
    #[arg(long, default_value_t = 1_000)]
    pub keys: u64,
    /// Members whose fsync counters are sampled before and after a write run (default: the
    /// endpoints). raftgraph: `Status` (WAL group commits); etcd: `/metrics` on the client
    /// port (`etcd_disk_wal_fsync_duration_seconds_count`).
    #[arg(long, value_delimiter = ',')]
    pub fsync_endpoints: Vec<String>,
    /// In `mix`: percent of operations that are writes.
    #[arg(long, default_value_t = 50)]
    pub write_percent: u8,
    /// One operation's deadline in seconds; a slower one counts as an error.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl BenchArgs {
    /// Checks every flag; the message names the flag, its value and the bound.
    pub fn validate(&mut self) -> Result<(), String> {
        if self.endpoints.is_empty() {
            self.endpoints = match self.target {
                Target::Raftgraph => vec![
                    "127.0.0.1:7001".into(),
                    "127.0.0.1:7002".into(),
                    "127.0.0.1:7003".into(),
                ],
                Target::Etcd => vec!["127.0.0.1:2379".into()],
            };
        }
        if self.fsync_endpoints.is_empty() {
            self.fsync_endpoints = self.endpoints.clone();
        }
        for e in self.endpoints.iter().chain(&self.fsync_endpoints) {
            crate::transport::check_addr(e)
                .map_err(|e| format!("invalid argument --endpoints: {e}"))?;
        }
        let within = |flag: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("{flag} {v}: must be in {lo}..={hi}"))
            }
        };
        within("--clients", self.clients as u64, 1, CLIENTS_MAX as u64)?;
        within(
            "--connections",
            self.connections as u64,
            1,
            CONNECTIONS_MAX as u64,
        )?;
        within(
            "--value-bytes",
            self.value_bytes as u64,
            1,
            VALUE_BYTES_MAX as u64,
        )?;
        within("--keys", self.keys, 1, KEYS_MAX)?;
        within("--write-percent", self.write_percent.into(), 0, 100)?;
        within("--timeout", self.timeout, 1, 3_600)?;
        if let Some(r) = self.rate
            && !(r.is_finite() && r > 0.0 && r <= 10_000_000.0)
        {
            return Err(format!(
                "--rate {r}: must be operations per second in (0, 10000000]"
            ));
        }
        if let Some(n) = self.ops {
            within("--ops", n, 1, u64::MAX)?;
        } else if !(self.duration.is_finite() && self.duration > 0.0 && self.duration <= 86_400.0) {
            return Err(format!(
                "--duration {}: must be a number of seconds in (0, 86400]",
                self.duration
            ));
        }
        Ok(())
    }
}

/// One operation against the store.
trait Driver: Send + Sync + 'static {
    fn op(
        &self,
        client: usize,
        seq: u64,
        rng: &mut SmallRng,
    ) -> impl std::future::Future<Output = Result<(), Status>> + Send;
}

/// A random lowercase-alphanumeric string of `bytes` bytes (for both targets). Filled from
/// whole random words, a byte per character: drawing and pushing one `char` at a time costs
/// CPU the load generator shares with the cluster it measures (the slight bias of `% 36` does not matter
/// for a payload).
fn value(bytes: usize, rng: &mut SmallRng) -> String {
    const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut raw = vec![0u8; bytes];
    rng.fill(&mut raw[..]);
    for b in &mut raw {
        *b = ALPHABET[usize::from(*b) % ALPHABET.len()];
    }
    String::from_utf8(raw).expect("the alphabet is ASCII")
}

/// The raftgraph side: one [`Client`] (session) per benchmark client.
struct Raftgraph {
    clients: Vec<Client>,
    tenant: String,
    workload: Workload,
    value_bytes: usize,
    label: Option<String>,
    write_percent: u8,
    /// Node ids prepared for updates and reads.
    ids: Vec<u64>,
}

fn node_op(o: pb::operation::Op) -> pb::Operation {
    pb::Operation { op: Some(o) }
}

fn string_value(s: String) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::StringValue(s)),
    }
}

impl Raftgraph {
    async fn connect(a: &BenchArgs) -> Result<Raftgraph, Status> {
        let dialer = dialer(a)?;
        let pools: Vec<Pool> = (0..a.connections)
            .map(|_| match &a.token {
                Some(t) => Pool::new(dialer.clone()).with_token(&t.0),
                None => Ok(Pool::new(dialer.clone())),
            })
            .collect::<Result<_, _>>()?;
        let options = |i: usize| ClientOptions {
            deadline: Duration::from_secs(a.timeout),
            attempt_timeout: Duration::from_secs(a.timeout),
            pool: pools[i % pools.len()].clone(),
            write_stream: !a.unary_writes,
            read_stream: !a.unary_reads,
            ..Default::default()
        };
        let clients = (0..a.clients)
            .map(|i| Client::new(a.endpoints.clone(), options(i)))
            .collect::<Result<Vec<_>, _>>()?;
        let admin = &clients[0];
        match admin
            .create_tenant(pb::CreateTenantRequest {
                id: a.tenant.clone(),
                // Unlimited: repeated runs must not end in quota errors.
                quotas: Some(pb::Quotas::default()),
                ..Default::default()
            })
            .await
        {
            Ok(_) => {}
            // A tenant's token may not create tenants: its tenant exists.
            Err(s) if s.code() == Code::AlreadyExists || s.code() == Code::PermissionDenied => {}
            Err(s) => return Err(s),
        }
        let mut me = Raftgraph {
            tenant: a.tenant.clone(),
            workload: a.workload,
            value_bytes: a.value_bytes,
            label: a.label.clone(),
            write_percent: a.write_percent,
            ids: Vec::new(),
            clients,
        };
        // Every client learns the leader now: the Rust client looks it up when it writes,
        // and a read-only client would otherwise spread linearizable reads over the members
        // (followers answer them through a read index), unlike etcd's, sent to its leader.
        for c in &me.clients {
            c.discover_leader().await;
        }
        if a.workload != Workload::CreateNode {
            me.ids = me.prepare(a.keys).await?;
            // Serializable reads go to every member: each must have applied the prepared
            // nodes, or a lagging follower answers "not found".
            caught_up(a, &a.endpoints).await?;
        }
        Ok(me)
    }

    /// Creates `keys` nodes, `OPERATIONS_MAX` per write, and returns their ids.
    async fn prepare(&self, keys: u64) -> Result<Vec<u64>, Status> {
        let mut rng = SmallRng::seed_from_u64(keys);
        let mut ids = Vec::with_capacity(keys as usize);
        // Requests stay far below the server's entry limit, whatever the value size.
        let per_request = (PREPARE_BYTES_MAX / (self.value_bytes + 64)).clamp(1, OPERATIONS_MAX);
        while (ids.len() as u64) < keys {
            let n = (keys - ids.len() as u64).min(per_request as u64) as usize;
            let before = ids.len();
            let operations = (0..n).map(|_| self.create(&mut rng)).collect::<Vec<_>>();
            let r = self.clients[0]
                .write(pb::WriteRequest {
                    tenant: self.tenant.clone(),
                    operations,
                    ..Default::default()
                })
                .await?;
            for res in r.results {
                if let Some(pb::op_result::Result::NodeCreated(id)) = res.result {
                    ids.push(id);
                }
            }
            if ids.len() == before {
                return Err(Status::internal(
                    "preparing nodes: a write created none (unexpected answer)",
                ));
            }
        }
        Ok(ids)
    }

    fn create(&self, rng: &mut SmallRng) -> pb::Operation {
        node_op(pb::operation::Op::CreateNode(pb::CreateNode {
            labels: self.label.iter().cloned().collect(),
            properties: [("v".to_string(), string_value(value(self.value_bytes, rng)))].into(),
        }))
    }

    fn node(&self, rng: &mut SmallRng) -> u64 {
        self.ids[rng.random_range(0..self.ids.len())]
    }

    async fn update(&self, c: &Client, rng: &mut SmallRng) -> Result<(), Status> {
        let id = self.node(rng);
        let op = node_op(pb::operation::Op::UpdateNode(pb::UpdateNode {
            node: Some(pb::NodeRef {
                r#ref: Some(pb::node_ref::Ref::Id(id)),
            }),
            set: [("v".to_string(), string_value(value(self.value_bytes, rng)))].into(),
            remove: vec![],
        }));
        self.write(c, op).await
    }

    async fn write(&self, c: &Client, op: pb::Operation) -> Result<(), Status> {
        c.write(pb::WriteRequest {
            tenant: self.tenant.clone(),
            operations: vec![op],
            ..Default::default()
        })
        .await
        .map(|_| ())
    }

    async fn read(
        &self,
        c: &Client,
        rng: &mut SmallRng,
        c_: pb::Consistency,
    ) -> Result<(), Status> {
        let id = self.node(rng);
        let n = c
            .get_node(pb::GetNodeRequest {
                tenant: self.tenant.clone(),
                id,
                consistency: c_ as i32,
            })
            .await?;
        // Counted as an error if the answer is not the node asked for.
        if n.id != id {
            return Err(Status::internal(format!(
                "asked for node {id}, got node {}",
                n.id
            )));
        }
        Ok(())
    }
}

impl Driver for Raftgraph {
    async fn op(&self, client: usize, _seq: u64, rng: &mut SmallRng) -> Result<(), Status> {
        let c = &self.clients[client];
        match self.workload {
            Workload::CreateNode => self.write(c, self.create(rng)).await,
            Workload::UpdateNode => self.update(c, rng).await,
            Workload::ReadLinearizable => self.read(c, rng, pb::Consistency::Linearizable).await,
            Workload::ReadSerializable => self.read(c, rng, pb::Consistency::Serializable).await,
            Workload::Mix => {
                if rng.random_range(0..100) < self.write_percent {
                    self.update(c, rng).await
                } else {
                    self.read(c, rng, pb::Consistency::Linearizable).await
                }
            }
        }
    }
}

/// Errors by code: count and first message.
#[derive(Default)]
struct Errors(std::collections::BTreeMap<i32, (Code, u64, String)>);

impl Errors {
    fn add(&mut self, s: &Status) {
        let e = self
            .0
            .entry(s.code() as i32)
            .or_insert_with(|| (s.code(), 0, s.message().to_string()));
        e.1 += 1;
    }
}

/// Runs the benchmark `a` describes (call `validate` first).
pub async fn run(a: &BenchArgs) -> anyhow::Result<Report> {
    match a.target {
        Target::Raftgraph => {
            let d = Raftgraph::connect(a)
                .await
                .map_err(|s| anyhow::anyhow!("raftgraph setup: {:?}: {}", s.code(), s.message()))?;
            drive(a, Arc::new(d)).await
        }
        Target::Etcd => {
            let d = Etcd::connect(a)
                .await
                .map_err(|s| anyhow::anyhow!("etcd setup: {:?}: {}", s.code(), s.message()))?;
            drive(a, Arc::new(d)).await
        }
    }
}

/// A dialer for raftgraph: TLS trusting `--ca`, or plaintext. (Each call builds a fresh one:
/// callers keep what they need.)
fn dialer(a: &BenchArgs) -> Result<Dialer, Status> {
    let Some(ca) = &a.ca else {
        return Ok(Dialer::default());
    };
    let config = crate::tls::client_config_from_files(ca, None)
        .map_err(|e| Status::invalid_argument(format!("--ca: {e}")))?;
    Ok(Dialer::default().with_tls(Arc::new(move || config.clone())))
}

/// Waits (up to 30 s) until every member has applied what the most advanced one had applied
/// when asked.
async fn caught_up(a: &BenchArgs, endpoints: &[String]) -> Result<(), Status> {
    let applied = |e: String| async move {
        let ch = dialer(a)?
            .dial(&e, Duration::from_secs(2))
            .map_err(|err| Status::invalid_argument(format!("{e}: {err}")))?;
        let mut req = tonic::Request::new(pb::StatusRequest {});
        req.set_timeout(Duration::from_secs(2));
        let s = ClusterServiceClient::new(ch)
            .status(req)
            .await?
            .into_inner();
        Ok::<u64, Status>(s.applied.map_or(0, |p| p.index))
    };
    let mut target = 0;
    for e in endpoints {
        target = target.max(applied(e.clone()).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    'wait: loop {
        for e in endpoints {
            if applied(e.clone()).await? < target {
                if Instant::now() >= deadline {
                    return Err(Status::deadline_exceeded(format!(
                        "member {e} did not apply index {target} within 30 s"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue 'wait;
            }
        }
        return Ok(());
    }
}

/// Whether the workload writes (its runs report fsyncs per write).
fn writes(w: Workload) -> bool {
    matches!(w, Workload::CreateNode | Workload::UpdateNode)
}

/// Each sampled member's fsync counter; `None` if any cannot be read.
async fn fsync_counters(a: &BenchArgs) -> Option<Vec<u64>> {
    let mut out = Vec::with_capacity(a.fsync_endpoints.len());
    for e in &a.fsync_endpoints {
        let n = match a.target {
            Target::Raftgraph => {
                let ch = dialer(a).ok()?.dial(e, Duration::from_secs(2)).ok()?;
                let mut req = tonic::Request::new(pb::StatusRequest {});
                req.set_timeout(Duration::from_secs(2));
                ClusterServiceClient::new(ch)
                    .status(req)
                    .await
                    .ok()?
                    .into_inner()
                    .wal_group_commits
            }
            Target::Etcd => etcd_wal_fsyncs(e).await?,
        };
        out.push(n);
    }
    // Status shows a member's counters to a cluster admin only: with a tenant's token they read
    // as zero, which is "unknown", not "no fsync".
    if out.iter().all(|&n| n == 0) {
        return None;
    }
    Some(out)
}

/// The largest member's and the summed increase of the counters, per write.
fn per_write(before: &[u64], after: &[u64], writes: u64) -> Option<(f64, f64)> {
    if before.len() != after.len() || writes == 0 {
        return None;
    }
    let deltas: Vec<u64> = after
        .iter()
        .zip(before)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    let w = writes as f64;
    Some((
        *deltas.iter().max()? as f64 / w,
        deltas.iter().sum::<u64>() as f64 / w,
    ))
}

async fn drive<D: Driver>(a: &BenchArgs, d: Arc<D>) -> anyhow::Result<Report> {
    let counters_before = if writes(a.workload) {
        fsync_counters(a).await
    } else {
        None
    };
    let done = Arc::new(AtomicU64::new(0));
    let issued = Arc::new(AtomicU64::new(0));
    let bar = progress(a);
    let started = Instant::now();
    let until = a
        .ops
        .is_none()
        .then(|| started + Duration::from_secs_f64(a.duration));
    let mut tasks = Vec::with_capacity(a.clients);
    // Latencies above the operation timeout (plus slack for retries' last attempt) saturate.
    let max_us = (a.timeout * 2 + 1) * 1_000_000;
    // One histogram for all clients, fed in batches: a histogram per client (128 KiB of
    // counters each) makes every record a cache miss, and the generator shares the machine
    // with the cluster it measures.
    let shared = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(
        1, max_us, 3,
    )?));
    // With `--rate`, each client's schedule: one operation per `interval`, clients staggered.
    let interval = a
        .rate
        .map(|r| Duration::from_secs_f64(a.clients as f64 / r));
    let honor_pushback = a.honor_pushback;
    for client in 0..a.clients {
        let (d, done, issued) = (d.clone(), done.clone(), issued.clone());
        let limit = a.ops;
        let mut next = interval.map(|i| started + i.mul_f64(client as f64 / a.clients as f64));
        let mut rng = SmallRng::from_os_rng();
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Latencies::new(shared);
            let mut errors = Errors::default();
            let mut seq = 0;
            // Refusals in a row, for the backoff of `--honor-pushback`.
            let mut refused_in_a_row = 0u32;
            loop {
                if until.is_some_and(|u| Instant::now() >= u) {
                    break;
                }
                if let Some(limit) = limit
                    && issued.fetch_add(1, Ordering::Relaxed) >= limit
                {
                    break;
                }
                seq += 1;
                let t = match (&mut next, interval) {
                    (Some(at), Some(i)) => {
                        tokio::time::sleep_until(*at).await;
                        let scheduled = *at;
                        *at += i;
                        scheduled
                    }
                    _ => Instant::now(),
                };
                match d.op(client, seq, &mut rng).await {
                    Ok(()) => {
                        hist.record(t.elapsed());
                        refused_in_a_row = 0;
                    }
                    Err(s) => {
                        errors.add(&s);
                        if honor_pushback
                            && s.code() == Code::ResourceExhausted
                            && let Some(hint) = crate::client::retry_after(&s)
                        {
                            refused_in_a_row = refused_in_a_row.saturating_add(1);
                            let backoff = Duration::from_millis(1 << refused_in_a_row.min(10));
                            let wait = hint.max(backoff.mul_f64(rng.random_range(0.5..1.0)));
                            tokio::time::sleep(wait).await;
                        }
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            hist.flush();
            errors
        }));
    }
    let ticker = {
        let (bar, done) = (bar.clone(), done.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                bar.set_position(done.load(Ordering::Relaxed));
            }
        })
    };
    let mut errors = Errors::default();
    for t in tasks {
        let e = t.await?;
        for (_, (code, n, first)) in e.0 {
            let entry = errors.0.entry(code as i32).or_insert((code, 0, first));
            entry.1 += n;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let latency = std::mem::replace(&mut *shared.lock().expect("histogram"), Histogram::new(1)?);
    ticker.abort();
    bar.finish_and_clear();
    let ok = latency.len();
    let fsyncs_per_write = match counters_before {
        Some(before) => match fsync_counters(a).await {
            Some(after) => per_write(&before, &after, ok),
            None => None,
        },
        None => None,
    };
    Ok(Report {
        target: a.target,
        workload: a.workload,
        clients: a.clients,
        connections: a.connections,
        value_bytes: a.value_bytes,
        label: a.label.clone(),
        ok,
        errors: errors.0.into_values().collect(),
        seconds,
        latency,
        fsyncs_per_write,
    })
}

fn progress(a: &BenchArgs) -> indicatif::ProgressBar {
    if a.quiet || a.output == Output::Json {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match a.ops {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::no_length(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {elapsed_precise} {pos} ops ({per_sec}) {wide_bar}",
        )
        .expect("valid template"),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchArgs, String> {
        let mut a = Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?
            .a;
        a.validate()?;
        Ok(a)
    }

    #[test]
    fn defaults_target_the_local_cluster() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.endpoints.len(), 3);
        let e = parse(&["--target", "etcd"]).unwrap();
        assert_eq!(e.endpoints, vec!["127.0.0.1:2379".to_string()]);
    }

    #[test]
    fn bad_flags_name_the_flag_value_and_bound() {
        let e = parse(&["--clients", "0"]).unwrap_err();
        assert!(e.contains("--clients 0") && e.contains("1..=10000"), "{e}");
        let e = parse(&["--value-bytes", "2000000"]).unwrap_err();
        assert!(e.contains("--value-bytes 2000000"), "{e}");
        let e = parse(&["--duration=-1"]).unwrap_err();
        assert!(e.contains("--duration -1"), "{e}");
        let e = parse(&["--duration", "nan"]).unwrap_err();
        assert!(e.contains("--duration NaN"), "{e}");
        let e = parse(&["--write-percent", "101"]).unwrap_err();
        assert!(e.contains("--write-percent 101"), "{e}");
        let e = parse(&["--endpoints", "nohost"]).unwrap_err();
        assert!(e.contains("nohost"), "{e}");
    }

    #[test]
    fn fsyncs_per_write_take_the_busiest_member_and_the_sum() {
        assert_eq!(
            per_write(&[10, 20, 30], &[60, 45, 80], 100),
            Some((0.5, 1.25))
        );
        assert_eq!(per_write(&[1], &[2, 3], 10), None);
        assert_eq!(per_write(&[1], &[2], 0), None);
    }
}
