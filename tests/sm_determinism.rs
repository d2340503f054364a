//! Determinism: one random log applied to state machines in different directories — straight
//! through, restarted midway, and restored from another's snapshot midway — ends in the same
//! whole-state digest, and a snapshot's stream digest equals the live digest where it was taken.

mod helpers;

use std::io;

use helpers::sm_harness::*;
use helpers::sm_logs::{TENANTS, random_log};
use openraft::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;
use raftgraph::state_machine::stream::{StreamSink, read_stream};

struct Discard;

impl StreamSink for Discard {
    fn cf(&mut self, _: &str) -> io::Result<()> {
        Ok(())
    }
    fn pair(&mut self, _: &[u8], _: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

fn apply_all(h: &mut Harness, log: &[raftgraph::raft::Entry]) {
    for e in log {
        h.sm.apply_entry(e).expect("apply");
    }
}

#[tokio::test]
async fn replicas_reach_equal_digests_through_restart_and_snapshot_install() {
    for seed in 0..6u64 {
        let log = random_log(seed, 600);
        let mid = 250;
        let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();

        // Phase 1: straight through.
        let mut straight = Harness::open(dirs[0].path()).await;
        apply_all(&mut straight, &log);
        let want = straight.reader().digest().unwrap();

        // Phase 2: restarted midway (the database is closed and reopened from disk).
        let mut restarted = Harness::open(dirs[1].path()).await;
        apply_all(&mut restarted, &log[..mid]);
        drop(restarted);
        let mut restarted = Harness::open(dirs[1].path()).await;
        assert_eq!(restarted.sm.applied().map(|l| l.index), Some(mid as u64));
        apply_all(&mut restarted, &log[mid..]);
        assert_eq!(
            restarted.reader().digest().unwrap(),
            want,
            "seed {seed}: restart"
        );

        // Phase 3: a leader builds a snapshot at `mid`; its stream digest is the live digest.
        let mut leader = Harness::open(dirs[2].path()).await;
        apply_all(&mut leader, &log[..mid]);
        let live = leader.reader().digest().unwrap();
        let mut builder = leader.sm.try_create_snapshot_builder(true).await.unwrap();
        // The leader keeps applying while the stream is written from the checkpoint.
        apply_all(&mut leader, &log[mid..mid + 10]);
        let snap = builder.build_snapshot().await.unwrap();
        let (_, stream_digest) = read_stream(&snap.snapshot.file, &mut Discard).unwrap();
        assert_eq!(
            stream_digest, live,
            "seed {seed}: stream digest = live digest at {mid}"
        );

        // A newer snapshot replaces the file, but a transfer holding the old one keeps reading.
        let mut sending = leader.sm.get_current_snapshot().await.unwrap().unwrap();
        let newer = leader.snapshot().await;
        assert!(
            !sending.snapshot.path.exists(),
            "the older stream file is removed"
        );
        use std::io::Seek;
        sending.snapshot.file.seek(io::SeekFrom::Start(0)).unwrap();
        let (_, d) = read_stream(&sending.snapshot.file, &mut Discard).unwrap();
        assert_eq!(
            d, live,
            "seed {seed}: the open handle still reads the whole stream"
        );
        assert_eq!(newer.meta.last_log_id.unwrap().index, (mid + 10) as u64);

        // Phase 4: a follower with different history installs it and applies the rest.
        let mut follower = Harness::open(dirs[3].path()).await;
        apply_all(&mut follower, &log[..40]);
        follower
            .sm
            .install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        assert_eq!(
            follower.reader().digest().unwrap(),
            live,
            "seed {seed}: installed state"
        );
        apply_all(&mut follower, &log[mid..]);
        assert_eq!(
            follower.reader().digest().unwrap(),
            want,
            "seed {seed}: after install"
        );

        // The superseded database directory is gone once nothing reads from it.
        let dbs: Vec<_> = std::fs::read_dir(dirs[3].path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("db-"))
            .collect();
        assert_eq!(dbs, vec!["db-000002".to_string()], "seed {seed}");

        // The follower restarts on the installed database (the pointer switched durably).
        drop(follower);
        let follower = Harness::open(dirs[3].path()).await;
        assert_eq!(
            follower.reader().digest().unwrap(),
            want,
            "seed {seed}: reopened"
        );
        for t in TENANTS {
            if let Ok(d) = straight.reader().tenant_digest(t) {
                assert_eq!(
                    follower.reader().tenant_digest(t).unwrap(),
                    d,
                    "seed {seed}: {t}"
                );
                let check = follower.reader().verify_tenant(t).unwrap();
                assert!(check.problems.is_empty(), "{:?}", check.problems);
                assert_eq!(check.recount, check.recorded);
            }
        }
    }
}

#[tokio::test]
async fn a_corrupt_snapshot_is_refused_and_the_old_state_keeps_serving() {
    let log = random_log(42, 300);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut leader = Harness::open(a.path()).await;
    apply_all(&mut leader, &log);
    let snap = leader.snapshot().await;
    let mut bytes = std::fs::read(&snap.snapshot.path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    let bad = b.path().join("bad.rgsnap");
    std::fs::write(&bad, &bytes).unwrap();

    let mut follower = Harness::open(&b.path().join("sm")).await;
    apply_all(&mut follower, &log[..100]);
    let before = follower.reader().digest().unwrap();
    let file = raftgraph::state_machine::SnapshotFile::open(&bad).unwrap();
    let err = follower
        .sm
        .install_snapshot(&snap.meta, file)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    assert_eq!(
        follower.reader().digest().unwrap(),
        before,
        "old state unchanged"
    );

    // The good snapshot then installs in the same process, over the failed attempt's debris.
    let good = leader.sm.get_current_snapshot().await.unwrap().unwrap();
    let mut second = Harness::open(&b.path().join("sm2")).await;
    let bad_again = raftgraph::state_machine::SnapshotFile::open(&bad).unwrap();
    assert!(
        second
            .sm
            .install_snapshot(&snap.meta, bad_again)
            .await
            .is_err()
    );
    second
        .sm
        .install_snapshot(&good.meta, good.snapshot)
        .await
        .unwrap();
    assert_eq!(
        second.reader().digest().unwrap(),
        leader.reader().digest().unwrap()
    );
    apply_all(&mut follower, &log[100..]);
    assert_eq!(
        follower.reader().digest().unwrap(),
        leader.reader().digest().unwrap()
    );
    // No half-installed database directory is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(b.path().join("sm"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("db-") && n != "db-000001")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The generated logs exercise what the digests are meant to compare: successful writes,
/// cascaded deletes, quota and session refusals, tenant creation and deletion.
#[tokio::test]
async fn the_random_logs_cover_successes_and_every_kind_of_refusal() {
    use raftgraph::command::{ApplyError, Outcome};
    use std::collections::BTreeMap;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    let mut kinds: BTreeMap<String, u32> = BTreeMap::new();
    for e in random_log(0, 2000) {
        let r = h.sm.apply_entry(&e).unwrap();
        // Blank and membership entries answer nothing; a client request answers once.
        if !matches!(e.payload, openraft::EntryPayload::Normal(_)) {
            assert!(r.responses.is_empty(), "{e}: {r:?}");
            continue;
        }
        assert_eq!(r.responses.len(), 1);
        let kind = match &r.responses[0].outcome {
            Ok(Outcome::Write(_)) => "write".to_string(),
            Ok(Outcome::Deleted) => "tenant deleted".to_string(),
            Ok(Outcome::Tenant(_)) => "tenant changed".to_string(),
            Ok(o) => format!("{o:?}")
                .split(['(', ' '])
                .next()
                .unwrap()
                .to_string(),
            Err(ApplyError::Quota(q)) => format!("quota {}", q.resource),
            Err(e) => format!("{e:?}")
                .split(['(', ' '])
                .next()
                .unwrap()
                .to_string(),
        };
        *kinds.entry(kind).or_default() += 1;
    }
    println!("{kinds:#?}");
    assert!(
        kinds["write"] >= 100,
        "too few successful writes: {kinds:?}"
    );
    for k in [
        "write",
        "tenant deleted",
        "tenant changed",
        "quota nodes",
        "quota storage_bytes",
        "SessionExpired",
        "NodeNotFound",
        "TenantNotFound",
    ] {
        assert!(
            kinds.get(k).copied().unwrap_or(0) >= 5,
            "too few {k}: {kinds:?}"
        );
    }
}

/// On restart openraft installs the node's own current snapshot when it is ahead of the applied
/// state (e.g. after a power cut took RocksDB back past a purge): installing a snapshot over the
/// file it came from must work and keep that file as the current snapshot.
#[tokio::test]
async fn a_node_can_install_its_own_current_snapshot() {
    let log = random_log(7, 300);
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    apply_all(&mut h, &log[..200]);
    let want = h.reader().digest().unwrap();
    let built = h.snapshot().await;
    drop(built);
    let cur = h.sm.get_current_snapshot().await.unwrap().unwrap();
    h.sm.install_snapshot(&cur.meta, cur.snapshot)
        .await
        .unwrap();
    assert_eq!(h.reader().digest().unwrap(), want);
    let again = h.sm.get_current_snapshot().await.unwrap().unwrap();
    let (_, d) = read_stream(&again.snapshot.file, &mut Discard).unwrap();
    assert_eq!(d, want, "the current snapshot file is intact");
    apply_all(&mut h, &log[200..]);
    drop(h);
    let h = Harness::open(dir.path()).await;
    assert_eq!(h.sm.applied().unwrap().index, 300);
}

/// Checkpoint directories are named by applied index and a per-process counter; after a
/// restart with nothing applied, a second snapshot at the same index must still build.
#[tokio::test]
async fn a_snapshot_at_the_same_index_builds_again_after_restart() {
    let log = random_log(3, 120);
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    apply_all(&mut h, &log);
    let first = h.snapshot().await;
    drop((first, h));
    let mut h = Harness::open(dir.path()).await;
    let again = h.snapshot().await;
    assert_eq!(again.meta.last_log_id.unwrap().index, 120);
    let (_, d) = read_stream(&again.snapshot.file, &mut Discard).unwrap();
    assert_eq!(d, h.reader().digest().unwrap());
}

/// Readers running while a snapshot is installed finish on the database they started on and
/// then see the installed one: every read succeeds and returns one of the two states.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_during_an_install_see_the_old_or_the_new_state() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let log = random_log(5, 400);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut leader = Harness::open(a.path()).await;
    apply_all(&mut leader, &log);
    let snap = leader.snapshot().await;
    let mut follower = Harness::open(b.path()).await;
    apply_all(&mut follower, &log[..50]);
    let old = follower.reader().digest().unwrap();
    let new = leader.reader().digest().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let reader = follower.reader();
    let s = stop.clone();
    let (started, started_rx) = std::sync::mpsc::channel();
    let readers = std::thread::spawn(move || {
        let mut seen = (0u32, 0u32);
        while !s.load(Ordering::SeqCst) {
            let _ = started.send(());
            let d = reader.digest().expect("a read during install failed");
            match d {
                d if d == old => seen.0 += 1,
                d if d == new => seen.1 += 1,
                _ => panic!("a read saw a state that is neither before nor after the install"),
            }
        }
        // One more after the install returned: the new state.
        assert_eq!(reader.digest().unwrap(), new);
        seen
    });
    // The install starts once the reader is reading (no timing assumption).
    started_rx.recv().unwrap();
    follower
        .sm
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let (before, after) = readers.join().unwrap();
    assert!(before > 0, "the first read precedes the install");
    println!("reads: {before} of the old state, {after} of the new");
}

/// Two builds in flight at once (two `cluster snapshot` calls in a row): the first to publish
/// must not remove the other's checkpoint. It did, and the second build's failure stopped the
/// member's Raft ("open checkpoint ... No such file or directory", seen in tests/auth.rs).
#[tokio::test]
async fn a_build_survives_another_build_publishing_first() {
    let log = random_log(3, 200);
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    apply_all(&mut h, &log[..100]);
    let mut first = h.sm.try_create_snapshot_builder(true).await.unwrap();
    apply_all(&mut h, &log[100..150]);
    let mut second = h.sm.try_create_snapshot_builder(true).await.unwrap();
    let a = first.build_snapshot().await.unwrap();
    drop(first);
    let b = second.build_snapshot().await.unwrap();
    assert_eq!(a.meta.last_log_id.map(|l| l.index), Some(100));
    assert_eq!(b.meta.last_log_id.map(|l| l.index), Some(150));
    // And the other order: the newer build publishes first, the older one still completes.
    let mut older = h.sm.try_create_snapshot_builder(true).await.unwrap();
    apply_all(&mut h, &log[150..]);
    let mut newer = h.sm.try_create_snapshot_builder(true).await.unwrap();
    newer.build_snapshot().await.unwrap();
    older.build_snapshot().await.unwrap();
}
