//! Deterministic simulation of a whole raftgraph cluster (turmoil): three real nodes — tonic
//! gRPC over simulated TCP, openraft, the WAL on simulated files, RocksDB inline — under
//! partitions, crashes and power loss, with clients whose history is checked.
//!
//! - `cargo test --profile ci --test sim`: the CI seed budget (see `docs/testing.md`).
//! - `SIM_SEED=123 cargo test --profile ci --test sim -- seeds`: replays one seed.
//! - `SIM_SEEDS=1000..2000` (or `SIM_SEEDS=500`, meaning `1..=500`): a soak over a range.
//!
//! A failure prints the property it violated and the command that replays it, and writes the
//! history, the event trace and the node logs under `target/sim-failures/<seed>/`.

#[cfg(not(tokio_unstable))]
compile_error!(
    "the simulation needs `--cfg tokio_unstable` (set in .cargo/config.toml; a RUSTFLAGS \
     variable in the environment overrides it): without it tokio's select! is unseeded and \
     panics in spawned tasks are swallowed"
);

mod attacker;
mod check_accounts;
mod check_applied;
mod check_brute;
mod check_digests;
mod check_edges;
mod check_isolation;
mod check_leaders;
mod check_linearizable;
mod check_quota;
mod check_recovery;
mod check_refusals;
mod check_replicas;
mod check_values;
mod check_writes;
mod history;
mod logs;
mod net;
mod smdisk;
mod tenants;
mod workload;
mod world;

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use raftgraph::server::PlantedBugs;
use raftgraph::state_machine::Phase;
use world::{Options, Run};

/// Seeds the README's test command runs (measured to fit the CI budget: docs/testing.md).
const CI_SEEDS: u64 = 200;

/// What a passing run measured (printed through `Debug`).
#[derive(Debug)]
#[allow(dead_code)]
struct Summary {
    ops: usize,
    ok: usize,
    unknown: usize,
    /// Of those, calls whose session was evicted after an unanswered attempt.
    session_expired: usize,
    recovered_ms: u64,
    snapshots: u64,
    terms: usize,
    /// Indexes whose entry every member that applied it applied alike.
    indexes: usize,
    /// Reads of every account checked for the sum.
    account_reads: usize,
    /// The applied index at which every member's whole-state digest was equal.
    digest_index: u64,
    /// Edges in the quota tenant at the end, and creates acknowledged with an edge.
    edges: usize,
    edges_created: usize,
    /// Scratch tenants created and answered (each then written and deleted).
    tenants_created: usize,
    visited: u64,
    refused_cas: u64,
    refused_quota: u64,
    /// Mallory's calls on others: refused, and in doubt (no answer under faults).
    mallory_refused: u64,
    mallory_in_doubt: u64,
    /// Faults injected, by kind.
    faults: std::collections::BTreeMap<String, u64>,
}

/// A failed run: the property, the report, how to replay it, where the evidence went.
#[derive(Debug)]
struct Failure {
    seed: u64,
    test: &'static str,
    /// `SIM_PLANTED` and `SIM_WORK_SECS` of the run, as the replay needs them.
    env: String,
    property: String,
    report: String,
    dir: PathBuf,
}

/// Lines of a report shown in the test output (the whole report is in `report.txt`).
const REPORT_LINES_SHOWN: usize = 25;

impl Failure {
    fn replay(&self) -> String {
        if self.test == "seeds" {
            format!(
                "{}SIM_SEED={} cargo test --profile ci --test sim -- seeds",
                self.env, self.seed
            )
        } else {
            format!(
                "{}cargo test --profile ci --test sim -- {} --exact",
                self.env, self.test
            )
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines: Vec<&str> = self.report.lines().collect();
        let shown = lines[..lines.len().min(REPORT_LINES_SHOWN)].join("\n");
        let more = lines.len().saturating_sub(REPORT_LINES_SHOWN);
        write!(
            f,
            "seed {} violated {}:\n{shown}\n{}replay: {}\nevidence: {}",
            self.seed,
            self.property,
            if more > 0 {
                format!("  ... {more} more lines in report.txt\n")
            } else {
                String::new()
            },
            self.replay(),
            self.dir.display()
        )
    }
}

/// `target/sim-failures/<seed>`, `<planted bug>-<seed>` with a bug planted, or
/// `<test>-<seed>` for a named scenario.
fn failure_dir(opts: &Options) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let name = match (&opts.planted_name, opts.test) {
        (Some(bug), _) => format!("{bug}-{}", opts.seed),
        (None, "seeds") => opts.seed.to_string(),
        (None, test) => format!("{test}-{}", opts.seed),
    };
    target.join("sim-failures").join(name)
}

/// The environment a replay of `opts` needs besides `SIM_SEED`.
fn replay_env(opts: &Options) -> String {
    let mut env = String::new();
    if let Some(bug) = &opts.planted_name {
        env.push_str(&format!("SIM_PLANTED={bug} "));
    }
    if opts.work_secs != Options::new(0).work_secs {
        env.push_str(&format!("SIM_WORK_SECS={} ", opts.work_secs));
    }
    env
}

/// The node logs with the run's temporary directory (a random name) replaced by `$DATA`, so
/// two runs of one seed log the same text.
fn scrub(logs: &[u8], run: &Run) -> String {
    let dir = run._dir.path().to_string_lossy().into_owned();
    String::from_utf8_lossy(logs).replace(&dir, "$DATA")
}

/// Runs every checker; the first violated property fails the run.
fn check(run: &Run) -> Result<Summary, (String, String)> {
    let s = &run.shared;
    fn named<T>(r: Result<T, String>) -> Result<T, (String, String)> {
        r.map_err(|e| {
            let property = e.split(':').next().unwrap_or("unknown").to_string();
            (property, e)
        })
    }
    let recovered_ms = check_recovery::check(s, run.sim_error.as_deref())
        .map_err(|e| ("recovery".to_string(), e))?;
    named(check_leaders::check(&s.leaders))?;
    let indexes = named(check_applied::check(&run.applies, &s.backwards))?;
    let stats =
        check_linearizable::check(&s.history).map_err(|e| ("linearizability".to_string(), e))?;
    named(check_values::check(&s.history))?;
    let replicas = s
        .replicas
        .as_ref()
        .ok_or(("recovery".to_string(), "no final replica state".to_string()))?;
    named(check_replicas::check(replicas))?;
    let digest_index = named(check_digests::check(&s.digests))?;
    named(check_writes::check(&s.history, replicas))?;
    let edges = named(check_edges::check(&s.history, replicas))?;
    let (end_tenants, _) = s
        .cluster_end
        .as_ref()
        .ok_or(("recovery".to_string(), "no final tenant list".to_string()))?;
    let tenants_created = named(tenants::check(&s.tenant_ops, end_tenants))?;
    let account_reads = named(check_accounts::check(&s.history, replicas))?;
    named(check_quota::check(&s.usage, replicas))?;
    named(check_refusals::check(&s.refused))?;
    let tokens = s
        .tokens
        .as_ref()
        .ok_or(("recovery".to_string(), "no final token list".to_string()))?;
    named(check_isolation::check(s, replicas, tokens))?;
    let unseeded = raftgraph::raft::unseeded_draws();
    if unseeded > 0 {
        return Err((
            "determinism".to_string(),
            format!(
                "determinism: openraft drew randomness outside a seeded scope {unseeded} times \
                 (the OS generator: the run cannot be replayed)"
            ),
        ));
    }
    let ops = s.history.ops.len();
    let ok = s
        .history
        .ops
        .iter()
        .filter(|o| matches!(o.outcome, history::Outcome::Ok(_)))
        .count();
    let unknown = s
        .history
        .ops
        .iter()
        .filter(|o| matches!(o.outcome, history::Outcome::Unknown(_)))
        .count();
    // Unknown outcomes because the session was evicted (seeds with a low session limit).
    let session_expired = s
        .history
        .ops
        .iter()
        .filter(
            |o| matches!(&o.outcome, history::Outcome::Unknown(m) if m.contains("session expired")),
        )
        .count();
    let edges_created = s
        .history
        .ops
        .iter()
        .filter(|o| {
            matches!(
                (&o.call, &o.outcome),
                (
                    history::Call::Create {
                        edge_to: Some(_),
                        ..
                    },
                    history::Outcome::Ok(_)
                )
            )
        })
        .count();
    Ok(Summary {
        ops,
        ok,
        unknown,
        session_expired,
        recovered_ms,
        snapshots: s.snapshots,
        terms: s.leaders.len(),
        indexes,
        account_reads,
        digest_index,
        edges,
        edges_created,
        tenants_created,
        visited: stats.visited,
        refused_cas: s.refused.precondition,
        refused_quota: s.refused.quota,
        mallory_refused: s.attempts.refused,
        mallory_in_doubt: s.attempts.in_doubt,
        faults: s.faults.clone(),
    })
}

/// What the peer gate logs when it admits a member it did not know.
const VOUCHED_LINE: &str = "admitted on the peer plane until this member's log reaches it";

/// Runs one seed and checks it; on failure writes the evidence.
fn run_seed(opts: &Options) -> Result<Summary, Failure> {
    let (run, logs) = logs::capture(|| world::run(opts));
    let logs = scrub(&logs, &run);
    let verdict = check(&run);
    // SIM_KEEP=1 keeps the evidence of passing runs too.
    if verdict.is_err() || std::env::var_os("SIM_KEEP").is_some() {
        let dir = failure_dir(opts);
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join("history.txt"), run.shared.history.render());
        let _ = std::fs::write(dir.join("trace.txt"), run.shared.trace.join("\n"));
        let _ = std::fs::write(dir.join("nodes.log"), &logs);
        if let Err((_, report)) = &verdict {
            let _ = std::fs::write(dir.join("report.txt"), report);
        }
    }
    match verdict {
        Ok(mut s) => {
            // Members admitted on the peer plane because a member the receiver knew vouched
            // for them (`raftgraph::peer::PeerGate`): the receiver had missed a change.
            let vouched = logs.matches(VOUCHED_LINE).count() as u64;
            if vouched > 0 {
                s.faults
                    .insert("peer gate: vouched admissions".into(), vouched);
            }
            Ok(s)
        }
        Err((property, report)) => Err(Failure {
            seed: opts.seed,
            test: opts.test,
            env: replay_env(opts),
            property,
            report,
            dir: failure_dir(opts),
        }),
    }
}

/// The seeds to run: `SIM_SEED`, else `SIM_SEEDS` (`N` or `A..B`), else the CI budget.
fn seed_range() -> Range<u64> {
    match std::env::var("SIM_SEEDS") {
        Ok(s) => match s.split_once("..") {
            Some((a, b)) => {
                a.parse().expect("SIM_SEEDS=A..B: A is a number")
                    ..b.parse().expect("SIM_SEEDS=A..B: B is a number")
            }
            None => 1..s.parse::<u64>().expect("SIM_SEEDS is N or A..B") + 1,
        },
        Err(_) => 1..CI_SEEDS + 1,
    }
}

/// The planted bug a `SIM_PLANTED` name switches on (test code only).
fn planted_by_name(name: &str) -> PlantedBugs {
    let mut p = PlantedBugs::default();
    match name {
        "ack_before_sync" => p.ack_before_sync = true,
        "stale_follower_reads" => p.stale_follower_reads = true,
        "skip_session_dedup" => p.skip_session_dedup = true,
        "quota_off_by_one" => p.quota_off_by_one = true,
        "leader_reads_unconfirmed" => p.leader_reads_unconfirmed = true,
        "vote_not_persisted" => p.vote_not_persisted = true,
        "pointer_before_sync" => p.pointer_before_sync = true,
        "applied_id_apart" => p.applied_id_apart = true,
        "pointer_not_durable" => p.pointer_not_durable = true,
        other => panic!("SIM_PLANTED={other}: not a planted bug"),
    }
    p
}

/// The options of seed `seed` as `SIM_SEED`, `SIM_PLANTED` and `SIM_WORK_SECS` describe them.
fn options_from_env(seed: u64) -> Options {
    let mut o = Options::new(seed);
    if let Ok(name) = std::env::var("SIM_PLANTED") {
        o.planted = planted_by_name(&name);
        o.planted_name = Some(name);
    }
    o
}

/// How one seed ended, run in a child process of this test binary.
struct ChildRun {
    seed: u64,
    passed: bool,
    /// The child's report: its summary line, or the failure with its replay command.
    output: String,
}

impl ChildRun {
    /// The property a failed run names (`seed N violated <property>:`).
    fn property(&self) -> Option<&str> {
        let rest = self.output.split("violated ").nth(1)?;
        rest.split(':').next()
    }
}

/// Runs seed `seed` alone in a child process (`SIM_SEED=seed … -- seeds`), with `env` added.
/// Each seed gets its own process: two simulations in one process were seen to influence each
/// other (docs/testing.md), and a run that aborts takes only its own process down.
fn run_child(seed: u64, env: &[(&str, String)]) -> ChildRun {
    let mut cmd = std::process::Command::new(std::env::current_exe().expect("test binary"));
    cmd.args(["seeds", "--exact", "--nocapture", "--test-threads=1"])
        .env("SIM_SEED", seed.to_string());
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Output goes to files, not pipes: the watchdog below polls rather than reads.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    cmd.stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"));
    let mut child = cmd.spawn().expect("run a child");
    let status = watch(&mut child);
    let read = |p: &std::path::Path| {
        String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
    };
    let text = read(&err_path) + &read(&out_path);
    let Some(status) = status else {
        return ChildRun {
            seed,
            passed: false,
            output: format!(
                "seed {seed} violated watchdog: the child did not end within {CHILD_REAL_SECS_MAX} s \
                 of real time (a seed takes about 5 s; something spins or blocks outside \
                 simulated time) and was killed:\n{text}"
            ),
        };
    };
    let report: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with(&format!("seed {seed}")))
        .take_while(|l| {
            !l.starts_with("thread 'seeds'")
                && !l.starts_with("note: run with")
                && !l.starts_with("test result")
        })
        .filter(|l| !l.is_empty())
        .collect();
    let output = if report.is_empty() {
        format!("seed {seed} violated no abort: the child process ended with {status}:\n{text}")
    } else {
        report.join("\n")
    };
    ChildRun {
        seed,
        passed: status.success(),
        output,
    }
}

/// Real seconds a child may run before the watchdog kills it: a generous bound (a seed takes
/// about 5 s alone) that only a hang reaches, so a livelock fails the run instead of CI.
const CHILD_REAL_SECS_MAX: u64 = 300;

/// Waits for `child`; kills it and returns `None` once it has run `CHILD_REAL_SECS_MAX` s.
fn watch(child: &mut std::process::Child) -> Option<std::process::ExitStatus> {
    #[allow(clippy::disallowed_methods)] // a watchdog over a child process measures real time
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for a child") {
            return Some(status);
        }
        if started.elapsed().as_secs() >= CHILD_REAL_SECS_MAX {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        #[allow(clippy::disallowed_methods)] // polling a child process, outside any simulation
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Runs `seeds`, each in its own child process, as many at once as there are cores; returns
/// the failed ones in seed order.
fn run_many(seeds: Range<u64>, env: &[(&str, String)]) -> Vec<ChildRun> {
    let list: Vec<u64> = seeds.collect();
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..parallel {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&seed) = list.get(i) else { break };
                    let run = run_child(seed, env);
                    eprintln!("{}", run.output);
                    if !run.passed {
                        failures.lock().expect("failures").push(run);
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().expect("failures");
    failures.sort_by_key(|r| r.seed);
    failures
}

/// Runs one seed in this process and reports it; `Err` is the failure.
fn run_and_report(opts: &Options) -> Result<(), Failure> {
    #[allow(clippy::disallowed_methods)] // reporting real time taken only
    let started = std::time::Instant::now();
    let r = run_seed(opts);
    let took = started.elapsed();
    match &r {
        Ok(s) => eprintln!("seed {}: ok in {took:.1?}: {s:?}", opts.seed),
        Err(f) => eprintln!("{f}"),
    }
    r.map(|_| ())
}

/// `SIM_SEED`: that seed, in this process. Otherwise every seed of the range, each in a child.
#[test]
fn seeds() {
    if let Ok(seed) = std::env::var("SIM_SEED") {
        let seed: u64 = seed.parse().expect("SIM_SEED is a number");
        if let Err(f) = run_and_report(&options_from_env(seed)) {
            panic!("seed {seed} failed (above)\n{}", f.replay());
        }
        return;
    }
    let env: Vec<(&str, String)> = ["SIM_PLANTED", "SIM_WORK_SECS", "SIM_LOG", "SIM_KEEP"]
        .into_iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k, v)))
        .collect();
    let failures = run_many(seed_range(), &env);
    if let Some(f) = failures.first() {
        // By the property each violated: a planted bug's catch rate per check.
        let mut by_property = std::collections::BTreeMap::<&str, u64>::new();
        for f in &failures {
            *by_property.entry(f.property().unwrap_or("?")).or_default() += 1;
        }
        panic!(
            "{} of the seeds failed ({:?}), by property {by_property:?}; the first:\n{}",
            failures.len(),
            failures.iter().map(|f| f.seed).collect::<Vec<_>>(),
            f.output
        );
    }
}

/// Regression (found by seed 2): after all three nodes lost power and restarted, the new
/// leader, cut off from one follower, redialled it in a tight loop — openraft's replication
/// backoff was skipped because the stream transport dialled before taking a request. The
/// faults are scripted so the scenario survives unrelated changes.
#[test]
fn regression_no_tight_reconnect_loop_after_restart_into_a_partition() {
    use world::Fault;
    let mut opts = Options::new(2);
    opts.test = "regression_no_tight_reconnect_loop_after_restart_into_a_partition";
    opts.work_secs = 20;
    opts.script = Some(vec![
        (
            8_700,
            Fault::PowerLoss {
                nodes: vec![0, 1, 2],
                down_ms: 3_600,
            },
        ),
        (12_300, Fault::IsolateLeader { ms: 1_000 }),
        (
            14_000,
            Fault::Partition {
                side: vec![0],
                ms: 2_000,
            },
        ),
        (
            17_000,
            Fault::Partition {
                side: vec![2],
                ms: 2_000,
            },
        ),
    ]);
    if let Err(f) = run_seed(&opts) {
        panic!("{f}");
    }
}

/// A member whose disk fails a WAL sync (EIO), a WAL write (ENOSPC) or a state-machine step
/// stops itself: its server, not the harness (a member whose Raft stopped but which still
/// served 5 s later fails the run, as `recovery`). The others serve on, nothing acknowledged
/// is lost (every check of a seed run applies), and each member rejoins once started again.
#[test]
fn members_whose_disks_fail_stop_themselves_and_rejoin() {
    use world::{DiskErrorAt, Fault, LEADER};
    let mut opts = Options::new(3);
    opts.test = "members_whose_disks_fail_stop_themselves_and_rejoin";
    opts.work_secs = 50;
    let error = |node, at, nth| Fault::DiskError {
        node,
        at,
        nth,
        down_ms: 2_000,
    };
    let sm = |phase, enospc| DiskErrorAt::Sm { phase, enospc };
    // Each waits until the one before is over. The first after the workload's first
    // membership change (a removed leader is still the last seen leading until an election).
    opts.script = Some(vec![
        (8_000, error(LEADER, DiskErrorAt::WalSync, 3)),
        (5_000, error(LEADER, DiskErrorAt::WalWrite, 5)),
        (5_000, error(LEADER, sm(Some(Phase::Apply), false), 10)),
        (5_000, error(LEADER, sm(Some(Phase::Apply), true), 0)),
    ]);
    let summary = run_seed(&opts).unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(
        summary.faults.get("DiskError(member stopped)"),
        Some(&4),
        "every injected error fired and its member stopped itself: {:?}",
        summary.faults
    );
}

/// A follower down long enough to be sent a snapshot has its disk fail while it stages one
/// (ENOSPC, then EIO, each before openraft is told): the transfer is refused, the member serves
/// on (a stop for the error fails the run), and a later transfer installs. Every check of a
/// seed run applies.
#[test]
fn a_disk_error_while_staging_a_snapshot_refuses_the_transfer_and_the_member_serves_on() {
    use world::Fault;
    let mut opts = Options::new(5);
    opts.test =
        "a_disk_error_while_staging_a_snapshot_refuses_the_transfer_and_the_member_serves_on";
    opts.work_secs = 60;
    let fail = |nth, enospc| Fault::DiskErrorInInstall {
        nth,
        enospc,
        down_ms: 15_000,
    };
    opts.script = Some(vec![(8_000, fail(1, true)), (5_000, fail(4, false))]);
    let summary = run_seed(&opts).unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(
        summary.faults.get("DiskError(transfer refused)"),
        Some(&2),
        "both errors fired while staging: {:?}",
        summary.faults
    );
}

/// Seeds each planted bug may take to be caught (a run is about 4 s).
const PLANTED_SEEDS: Range<u64> = 1..21;

/// Runs seeds in order, each in a child with bug `name` planted, until one fails; the failure
/// must name one of `properties` and its replay command.
fn planted(name: &str, properties: &[&str]) {
    let env = [("SIM_PLANTED", name.to_string())];
    let caught = PLANTED_SEEDS
        .map(|seed| run_child(seed, &env))
        .find(|r| !r.passed)
        .unwrap_or_else(|| panic!("{name} was not caught within seeds {PLANTED_SEEDS:?}"));
    eprintln!("{name} caught:\n{}", caught.output);
    let property = caught.property().unwrap_or("?");
    assert!(
        properties.contains(&property),
        "{name} was caught as {property:?}, expected one of {properties:?}:\n{}",
        caught.output
    );
    let replay = format!(
        "replay: SIM_PLANTED={name} SIM_SEED={} cargo test --profile ci --test sim -- seeds",
        caught.seed
    );
    assert!(caught.output.contains(&replay), "{}", caught.output);
}

#[test]
fn planted_ack_before_fsync_is_caught() {
    planted(
        "ack_before_sync",
        // Lost acknowledged writes, or — as the WAL usually notices first — a log whose batch
        // records claim more was synced than survived, which the node refuses to start on.
        &["linearizability", "writes", "recovery"],
    );
}

#[test]
fn planted_stale_follower_reads_are_caught() {
    planted("stale_follower_reads", &["linearizability"]);
}

#[test]
fn planted_skipped_session_dedup_is_caught() {
    planted(
        "skip_session_dedup",
        // A create or write applied twice, or a retried delete applied twice, whose second
        // application answers "not found" (a refusal the workload never provokes); `values`
        // caught it once in seeds 1..=50.
        &["writes", "linearizability", "refusals", "values"],
    );
}

#[test]
fn planted_quota_off_by_one_is_caught() {
    planted("quota_off_by_one", &["quota"]);
}

#[test]
fn planted_leader_reads_unconfirmed_are_caught() {
    planted("leader_reads_unconfirmed", &["linearizability"]);
}

#[test]
fn planted_vote_not_persisted_is_caught() {
    planted(
        "vote_not_persisted",
        // A member whose term goes back after a restart, or two leaders in one term.
        &["monotonic", "leaders", "linearizability", "writes"],
    );
}

#[test]
fn planted_pointer_before_sync_is_caught() {
    planted(
        "pointer_before_sync",
        // The pointer names a database whose files a power cut then tore: the member cannot
        // open it, or opens it with entries missing.
        &[
            "recovery",
            "digests",
            "replicas",
            "writes",
            "linearizability",
        ],
    );
}

#[test]
fn planted_pointer_not_durable_is_caught() {
    planted(
        "pointer_not_durable",
        // A power loss undoes the switch after the old database was removed (and the log
        // purged): the pointer names a database that is gone.
        &[
            "recovery",
            "digests",
            "replicas",
            "writes",
            "linearizability",
        ],
    );
}

#[test]
fn planted_applied_id_apart_is_caught() {
    planted(
        "applied_id_apart",
        // A member that reports an entry applied whose effects it never wrote.
        &[
            "atomic apply",
            "digests",
            "replicas",
            "writes",
            "linearizability",
            "values",
            "edges",
        ],
    );
}

/// The seed and faults of the determinism test: a follower down long enough that it must be
/// caught up by a snapshot transfer, then a power loss and a leader isolation.
fn determinism_options() -> Options {
    use world::Fault;
    let mut o = Options::new(7);
    o.work_secs = 30;
    o.script = Some(vec![
        (
            5_000,
            Fault::Crash {
                nodes: vec![2],
                down_ms: 15_000,
            },
        ),
        (
            21_000,
            Fault::PowerLoss {
                nodes: vec![0],
                down_ms: 2_000,
            },
        ),
        (25_000, Fault::IsolateLeader { ms: 2_000 }),
    ]);
    o
}

/// Helper for `the_same_seed_gives_the_same_run`: runs the determinism scenario and writes
/// its trace, history and node logs to `SIM_DETERMINISM_OUT`.
#[test]
#[ignore = "run by the_same_seed_gives_the_same_run in a child process"]
fn determinism_child() {
    let out = std::env::var("SIM_DETERMINISM_OUT").expect("SIM_DETERMINISM_OUT");
    let (run, logs) = logs::capture(|| world::run(&determinism_options()));
    let logs = scrub(&logs, &run);
    let mut text = run.shared.trace.join("\n");
    text.push_str("\n--- history\n");
    text.push_str(&run.shared.history.render());
    text.push_str("--- node logs\n");
    text.push_str(&logs);
    std::fs::write(out, text).expect("write the run");
}

/// Two runs of one seed, in separate processes, produce identical traces of logical events,
/// histories and node logs — including a snapshot streamed to a lagging follower.
#[test]
fn the_same_seed_gives_the_same_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for i in 0..2 {
        let out = dir.path().join(format!("run-{i}.txt"));
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "determinism_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SIM_DETERMINISM_OUT", &out)
            .env_remove("SIM_LOG")
            .status()
            .unwrap();
        assert!(status.success(), "child run {i} failed");
        runs.push(std::fs::read_to_string(&out).unwrap());
    }
    let (a, b) = (&runs[0], &runs[1]);
    assert!(
        a.contains("installed a snapshot streamed from the leader"),
        "the scenario must include a snapshot transfer"
    );
    assert!(
        a.lines().count() > 1_000,
        "a run of substance: {} lines",
        a.lines().count()
    );
    if a != b {
        let (n, (x, y)) = a
            .lines()
            .zip(b.lines())
            .enumerate()
            .find(|(_, (x, y))| x != y)
            .unwrap_or((0, ("<length differs>", "")));
        panic!("the runs differ first at line {n}:\n  {x}\n  {y}");
    }
}
