//! Crash tests: a child process applying a random log (tenant creates and deletes, snapshots
//! every 40 entries) is killed with SIGKILL at random points — apply skips RocksDB's WAL, so a
//! kill loses what was applied since the last flush, never more than since the last snapshot;
//! separately its database is reverted to its last checkpoint (what a power cut does to
//! unsynced RocksDB writes, at worst).
//! After reopen, the state must be exactly a reference's state at the applied id it reports,
//! every tenant must pass the consistency check, and replaying the rest of the log must reach
//! the reference's final digest.

mod helpers;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use helpers::sm_harness::*;
use helpers::sm_logs::{TENANTS, random_log};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const CHILD_ENV: &str = "RAFTGRAPH_SM_CRASH_CHILD";
const LOG_LEN: u64 = 500;
const SNAPSHOT_EVERY: u64 = 40;

/// Not a test of its own: the body of the child process the crash tests start (it returns at
/// once unless `RAFTGRAPH_SM_CRASH_CHILD` names a directory and seed). It resumes the log from
/// the state machine's applied id, prints each applied index, then waits to be killed.
#[tokio::test]
async fn crash_child_entry_point() {
    let Ok(arg) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (dir, seed) = arg.split_once(',').expect("dir,seed");
    let log = random_log(seed.parse().unwrap(), LOG_LEN);
    let mut h = Harness::open(Path::new(dir)).await;
    let mut out = std::io::stdout().lock();
    for e in &log[h.next_index as usize - 1..] {
        h.sm.apply_entry(e).expect("apply");
        let index = e.log_id.index;
        if index % SNAPSHOT_EVERY == 0 {
            h.snapshot().await;
        }
        writeln!(out, "applied {index}").unwrap();
        out.flush().unwrap();
    }
    writeln!(out, "done").unwrap();
    out.flush().unwrap();
    // Wait for the kill without sleeping: the parent never writes to our stdin.
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

fn spawn_child(dir: &Path, seed: u64) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child_entry_point",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{},{seed}", dir.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    (child, stdout)
}

/// Reads the child's progress until it has printed `lines` more indexes (or finished); returns
/// the last index it printed.
fn read_progress(out: &mut BufReader<std::process::ChildStdout>, lines: u64) -> (u64, bool) {
    let (mut last, mut seen) = (0, 0);
    let mut line = String::new();
    while seen < lines {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            panic!("the child exited early");
        }
        if line.trim() == "done" {
            return (last, true);
        }
        if let Some(i) = line.trim().strip_prefix("applied ") {
            last = i.parse().unwrap();
            seen += 1;
        }
    }
    (last, false)
}

/// Digests of the reference state after each entry (index 0: before any).
async fn reference(seed: u64) -> Vec<[u8; 32]> {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    let mut digests = vec![h.reader().digest().unwrap()];
    for e in random_log(seed, LOG_LEN) {
        h.sm.apply_entry(&e).unwrap();
        digests.push(h.reader().digest().unwrap());
    }
    digests
}

/// Opens the state machine left behind, checks it is exactly the reference at its applied id,
/// then (if `replay`) applies the rest of the log and checks the final digest.
async fn check_recovered(dir: &Path, seed: u64, refs: &[[u8; 32]], replay: bool) -> u64 {
    let mut h = Harness::open(dir).await;
    let applied = h.sm.applied().map_or(0, |l| l.index);
    assert_eq!(
        h.reader().digest().unwrap(),
        refs[applied as usize],
        "state at {applied}"
    );
    for t in TENANTS {
        if let Ok(check) = h.reader().verify_tenant(t) {
            assert!(
                check.problems.is_empty(),
                "{t} at {applied}: {:?}",
                check.problems
            );
            assert_eq!(check.recount, check.recorded, "{t} at {applied}");
        }
    }
    if replay {
        let log = random_log(seed, LOG_LEN);
        for e in &log[applied as usize..] {
            h.sm.apply_entry(e).unwrap();
        }
        assert_eq!(
            h.reader().digest().unwrap(),
            refs[LOG_LEN as usize],
            "after replay"
        );
    }
    applied
}

#[tokio::test]
async fn sigkill_at_random_points_leaves_a_state_the_log_brings_forward() {
    let seed = 11;
    let refs = reference(seed).await;
    let mut rng = SmallRng::seed_from_u64(seed);
    let (mut kills, mut mid_log, mut dirs, mut lost) = (0, 0, 0, 0);
    while kills < 105 {
        let dir = tempfile::tempdir().unwrap();
        dirs += 1;
        loop {
            let (mut child, mut out) = spawn_child(dir.path(), seed);
            // Past a snapshot now and then: a kill loses what the last snapshot did not flush, so a
            // child stopped sooner each time would never get further.
            let (printed, done) =
                read_progress(&mut out, rng.random_range(1..=SNAPSHOT_EVERY + 20));
            child.kill().unwrap();
            child.wait().unwrap();
            kills += 1;
            assert!(kills < 1_000, "no progress: {kills} kills over {dirs} logs");
            let applied = check_recovered(dir.path(), seed, &refs, false).await;
            // Apply skips RocksDB's WAL, so a kill loses what was applied since the last flush;
            // every snapshot flushes, so nothing before the last one the child reported.
            let flushed = printed / SNAPSHOT_EVERY * SNAPSHOT_EVERY;
            assert!(
                applied >= flushed,
                "applied {applied} after a kill at {printed}: behind the last snapshot {flushed}"
            );
            if applied < printed {
                lost += 1;
            }
            if applied < LOG_LEN {
                mid_log += 1;
            }
            if done || applied == LOG_LEN {
                break;
            }
        }
        check_recovered(dir.path(), seed, &refs, true).await;
    }
    println!(
        "{kills} kills over {dirs} logs, {mid_log} in the middle of the log, \
         {lost} lost applied entries (replayed from the log)"
    );
    assert!(mid_log >= 100, "only {mid_log} kills landed mid-log");
    // The case the WAL-less apply adds: entries applied, then lost to the kill.
    assert!(lost >= 50, "only {lost} kills lost applied entries");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// Replaces the database `CURRENT` names with the newest checkpoint; returns its name.
fn revert_to_last_checkpoint(dir: &Path) -> Option<String> {
    let snaps = dir.join("snapshots");
    let mut ckpts: Vec<PathBuf> = std::fs::read_dir(&snaps)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("ckpt-")
        })
        .filter(|p| !p.to_str().unwrap().ends_with(".tmp"))
        .collect();
    ckpts.sort();
    let ckpt = ckpts.pop()?;
    let current = std::fs::read_to_string(dir.join("CURRENT")).unwrap();
    let db = dir.join(current.trim());
    std::fs::remove_dir_all(&db).unwrap();
    copy_dir(&ckpt, &db);
    Some(ckpt.file_name().unwrap().to_string_lossy().into_owned())
}

#[tokio::test]
async fn reverting_to_the_last_checkpoint_is_recovered_by_replay() {
    let seed = 12;
    let refs = reference(seed).await;
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut reverted = 0;
    for _ in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, mut out) = spawn_child(dir.path(), seed);
        let (printed, _) = read_progress(&mut out, rng.random_range(SNAPSHOT_EVERY..LOG_LEN));
        child.kill().unwrap();
        child.wait().unwrap();
        if revert_to_last_checkpoint(dir.path()).is_some() {
            reverted += 1;
        }
        let applied = check_recovered(dir.path(), seed, &refs, true).await;
        assert!(
            applied <= printed,
            "a checkpoint is never ahead of what was applied"
        );
    }
    assert!(
        reverted >= 18,
        "only {reverted} runs had a checkpoint to revert to"
    );
}
