//! `raftgraph sm-bench`: apply throughput and snapshot build/install cost on real disk.
//!
//! Apply: node creates (one `value_bytes` property each) in entries of 1, 64, 512 operations,
//! applied straight to a fresh state machine (no Raft, no log). Snapshot: a tenant grown to
//! `tenant_bytes` of logical data, then a snapshot built (checkpoint + stream) and installed into
//! a second state machine, with the time of each and the peak RSS above the level before it
//! (Linux: `/proc/self/clear_refs` resets the peak).

use std::io;
use std::path::Path;

use openraft::RaftSnapshotBuilder;
use openraft::entry::RaftEntry;
use openraft::storage::RaftStateMachine;
use openraft::vote::RaftLeaderIdExt;
use tokio::time::Instant;

use super::config::StateMachineConfig;
use super::machine::StateMachine;
use crate::command::Value;
use crate::command::{Command, Op, Request, Response, WriteRequest};
use crate::raft::{Entry, LogId, TypeConfig};
use crate::tenant::{Quotas, TenantConfig};

/// One apply configuration's result.
#[derive(Clone, Debug)]
pub struct ApplyRow {
    pub ops_per_entry: usize,
    pub nodes: u64,
    pub seconds: f64,
}

/// Snapshot build and install of one tenant.
#[derive(Clone, Debug)]
pub struct SnapshotReport {
    pub logical_bytes: u64,
    pub stream_bytes: u64,
    pub load_seconds: f64,
    pub build_seconds: f64,
    pub install_seconds: f64,
    pub rss_before_build: u64,
    pub peak_rss_build: u64,
    pub rss_before_install: u64,
    pub peak_rss_install: u64,
}

fn log_id(index: u64) -> LogId {
    LogId::new(
        openraft::type_config::alias::LeaderIdOf::<TypeConfig>::new_committed(1, 1),
        index,
    )
}

/// Applies requests as consecutive entries.
struct Driver {
    sm: StateMachine,
    index: u64,
    seq: u64,
}

impl Driver {
    async fn open(dir: &Path) -> io::Result<Driver> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        let sm = StateMachine::open(StateMachineConfig::new(dir)).await?;
        let mut d = Driver {
            sm,
            index: 0,
            seq: 0,
        };
        d.apply(Command::CreateTenant {
            tenant: "bench".into(),
            quotas: Quotas::unlimited(),
            config: TenantConfig::default(),
        })?;
        Ok(d)
    }

    fn apply(&mut self, command: Command) -> io::Result<()> {
        self.index += 1;
        self.seq += 1;
        let req = Request::new(1, self.seq, 0, command).map_err(io::Error::other)?;
        let r = self
            .sm
            .apply_entry(&Entry::new_normal(log_id(self.index), req.into()))?;
        let [one] = <[Response; 1]>::try_from(r.responses)
            .map_err(|v| io::Error::other(format!("{} responses to one request", v.len())))?;
        one.outcome
            .map(|_| ())
            .map_err(|e| io::Error::other(format!("bench write refused: {e}")))
    }

    fn creates(&mut self, ops: usize, value_bytes: usize) -> io::Result<()> {
        let op = Op::CreateNode {
            labels: ["Bench".to_string()].into(),
            properties: [("v".to_string(), Value::Bytes(vec![0x5a; value_bytes]))].into(),
        };
        self.apply(Command::Write(WriteRequest {
            tenant: "bench".into(),
            preconditions: vec![],
            operations: vec![op; ops],
        }))
    }
}

/// Node creates per second for each `ops_per_entry`, `nodes` nodes per run.
pub async fn run_apply(
    dir: &Path,
    ops_per_entry: &[usize],
    nodes: u64,
    value_bytes: usize,
) -> io::Result<Vec<ApplyRow>> {
    let mut rows = Vec::new();
    for &ops in ops_per_entry {
        let mut d = Driver::open(&dir.join(format!("apply-{ops}"))).await?;
        let entries = nodes.div_ceil(ops as u64);
        let start = Instant::now();
        for _ in 0..entries {
            d.creates(ops, value_bytes)?;
        }
        rows.push(ApplyRow {
            ops_per_entry: ops,
            nodes: entries * ops as u64,
            seconds: start.elapsed().as_secs_f64(),
        });
        drop(d);
        std::fs::remove_dir_all(dir.join(format!("apply-{ops}")))?;
    }
    Ok(rows)
}

/// Resident and peak resident set size in bytes (Linux `/proc/self/status`).
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn reset_peak_rss() {
    // "5" resets VmHWM to the current RSS (Linux >= 4.0); without it the peak includes the load.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Grows one tenant to `tenant_bytes` of logical data, then times a snapshot build and install.
pub async fn run_snapshot(dir: &Path, tenant_bytes: u64) -> io::Result<SnapshotReport> {
    const VALUE: usize = 4096;
    const OPS: usize = 256;
    let mut leader = Driver::open(&dir.join("snap-leader")).await?;
    let start = Instant::now();
    let reader = leader.sm.reader();
    while reader
        .tenant("bench")
        .map_err(io::Error::other)?
        .usage
        .storage_bytes
        < tenant_bytes
    {
        leader.creates(OPS, VALUE)?;
    }
    let load_seconds = start.elapsed().as_secs_f64();
    let logical_bytes = reader
        .tenant("bench")
        .map_err(io::Error::other)?
        .usage
        .storage_bytes;

    reset_peak_rss();
    let rss_before_build = rss().0;
    let start = Instant::now();
    let mut builder = leader
        .sm
        .try_create_snapshot_builder(true)
        .await
        .ok_or_else(|| io::Error::other("no snapshot builder"))?;
    let snap = builder.build_snapshot().await?;
    let build_seconds = start.elapsed().as_secs_f64();
    let peak_rss_build = rss().1;
    let stream_bytes = snap.snapshot.file.metadata()?.len();

    let mut follower = Driver::open(&dir.join("snap-follower")).await?;
    reset_peak_rss();
    let rss_before_install = rss().0;
    let start = Instant::now();
    follower
        .sm
        .install_snapshot(&snap.meta, snap.snapshot)
        .await?;
    let install_seconds = start.elapsed().as_secs_f64();
    let peak_rss_install = rss().1;
    if follower.sm.reader().digest().map_err(io::Error::other)?
        != leader.sm.reader().digest().map_err(io::Error::other)?
    {
        return Err(io::Error::other(
            "installed state differs from the leader's",
        ));
    }
    drop((leader, follower));
    std::fs::remove_dir_all(dir.join("snap-leader"))?;
    std::fs::remove_dir_all(dir.join("snap-follower"))?;
    Ok(SnapshotReport {
        logical_bytes,
        stream_bytes,
        load_seconds,
        build_seconds,
        install_seconds,
        rss_before_build,
        peak_rss_build,
        rss_before_install,
        peak_rss_install,
    })
}

/// A Markdown table of apply results.
pub fn apply_table(rows: &[ApplyRow]) -> String {
    let mut s = String::from("| ops per entry | nodes | seconds | node creates/s | entries/s |\n");
    s.push_str("|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let per_s = r.nodes as f64 / r.seconds;
        s.push_str(&format!(
            "| {} | {} | {:.2} | {:.0} | {:.0} |\n",
            r.ops_per_entry,
            r.nodes,
            r.seconds,
            per_s,
            per_s / r.ops_per_entry as f64
        ));
    }
    s
}

/// A Markdown table of a snapshot report.
pub fn snapshot_table(r: &SnapshotReport) -> String {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let rss = |before: u64, peak: u64| {
        format!(
            "{:.0} → {:.0} MiB (+{:.0})",
            mib(before),
            mib(peak),
            mib(peak.saturating_sub(before))
        )
    };
    format!(
        "| tenant (logical) | stream file | load | build | install | RSS build: before → peak | RSS install: before → peak |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n\
         | {:.0} MiB | {:.0} MiB | {:.1} s | {:.1} s | {:.1} s | {} | {} |\n",
        mib(r.logical_bytes),
        mib(r.stream_bytes),
        r.load_seconds,
        r.build_seconds,
        r.install_seconds,
        rss(r.rss_before_build, r.peak_rss_build),
        rss(r.rss_before_install, r.peak_rss_install),
    )
}
