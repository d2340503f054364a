//! Exactly-once sessions against a caller who means harm, at the state machine: a session lives
//! in the space of the credential that made it (`Request::owner`), so one principal cannot
//! evict, advance or read another's; a request whose token was revoked, has expired or does
//! not allow it is refused at apply and records nothing; a write to a tenant that does not
//! exist records no session; what a principal's sessions hold is bounded, by count and by
//! bytes, by evicting that principal's own oldest; and a revoked token's sessions are purged.

mod helpers;

use helpers::sm_harness::*;
use raftgraph::auth::{Credential, Role, Scope, Token};
use raftgraph::command::{
    ApplyError, ClusterLimits, Command, NewToken, OpResult, Outcome, Request, Response,
    WriteRequest,
};
use raftgraph::tenant::Quotas;

fn write(tenant: &str) -> Command {
    Command::Write(WriteRequest {
        tenant: tenant.into(),
        preconditions: vec![],
        operations: vec![create_node(&[], &[])],
    })
}

/// A write of one node to `tenant` by `owner` under `(client, seq)`.
fn as_owner(h: &mut Harness, owner: Credential, client: u64, seq: u64, cmd: Command) -> Response {
    h.clock += 1_000;
    let req = Request::new(client, seq, h.clock, cmd).unwrap().by(owner);
    h.apply(req)
}

fn nodes(h: &Harness, tenant: &str) -> u64 {
    h.reader().tenant(tenant).unwrap().usage.nodes
}

/// Stores a token of `scope` (made by an open request, as a cluster admin would) and returns
/// its credential.
fn token(h: &mut Harness, seed: u8, scope: Scope, expires_micros: Option<i64>) -> Credential {
    let t = Token::generate(&|b: &mut [u8]| b.fill(seed));
    let new = NewToken {
        id: t.id,
        scope,
        hash: t.hash(),
        expires_micros,
        last4: t.last4(),
    };
    let r = h.run(9_000 + u64::from(seed), Command::CreateToken(new));
    assert!(r.outcome.is_ok(), "{:?}", r.outcome);
    Credential::Token(t.id)
}

fn writer_of(tenant: &str) -> Scope {
    Scope::Tenant {
        tenant: tenant.into(),
        role: Role::Write,
    }
}

async fn setup(dir: &std::path::Path) -> (Harness, Credential, Credential) {
    let mut h = Harness::open(dir).await;
    h.create_tenant("a", Quotas::unlimited()).unwrap();
    h.create_tenant("b", Quotas::unlimited()).unwrap();
    let a = token(&mut h, 1, writer_of("a"), None);
    let b = token(&mut h, 2, writer_of("b"), None);
    (h, a, b)
}

/// The eviction attack: many tiny writes under fresh client ids used to evict every
/// real session from the one shared table. Now they evict only the attacker's own.
#[tokio::test]
async fn junk_writes_evict_only_their_own_principals_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let (mut h, a, b) = setup(dir.path()).await;
    let limits = ClusterLimits {
        sessions_per_principal_max: 5,
        ..ClusterLimits::default()
    };
    h.run(100, Command::SetLimits(limits)).outcome.unwrap();
    let first = as_owner(&mut h, a, 7, 1, write("a"));
    assert!(first.outcome.is_ok(), "{:?}", first.outcome);
    // b writes under 50 fresh client ids, to its own tenant and to one that does not exist.
    for client in 1_000..1_050 {
        let tenant = if client % 2 == 0 { "b" } else { "ghost" };
        as_owner(&mut h, b, client, 1, write(tenant));
    }
    // a's retry is answered from its session: the same node, nothing applied again.
    let before = nodes(&h, "a");
    assert_eq!(as_owner(&mut h, a, 7, 1, write("a")), first);
    assert_eq!(nodes(&h, "a"), before);
    // And a goes on where it was.
    assert!(as_owner(&mut h, a, 7, 2, write("a")).outcome.is_ok());
    // b kept at most its five newest sessions: its oldest is gone (a retry of it is refused
    // as a gap only past sequence 1; its session is simply absent).
    let rd = h.reader();
    assert!(
        rd.session(b, 1_000).unwrap().is_none(),
        "b's oldest evicted"
    );
    assert!(rd.session(b, 1_048).unwrap().is_some(), "b's newest kept");
    let kept = (1_000..1_050)
        .filter(|c| rd.session(b, *c).unwrap().is_some())
        .count();
    assert_eq!(kept, 5, "b keeps its limit of sessions");
}

/// A session's first request, applied unanswered, then its session evicted by the same
/// principal's other sessions: its retry (marked resent) used to be taken for a new session's
/// first request and applied again (found by the simulation with a low session limit, seed
/// 28). Now it is refused as session-expired and applies nothing; a first attempt is not
/// marked and still starts a session, and a principal that had no session evicted in the last
/// ten minutes is answered as before.
#[tokio::test]
async fn a_resent_first_request_whose_session_was_evicted_is_not_applied_again() {
    use raftgraph::command::RESENT;
    let dir = tempfile::tempdir().unwrap();
    let (mut h, a, b) = setup(dir.path()).await;
    // Before any eviction: a resent first request without a session applies.
    assert!(
        as_owner(&mut h, a, 3, 1 | RESENT, write("a"))
            .outcome
            .is_ok(),
        "no eviction yet"
    );
    let limits = ClusterLimits {
        sessions_per_principal_max: 5,
        ..ClusterLimits::default()
    };
    h.run(100, Command::SetLimits(limits)).outcome.unwrap();
    let first = as_owner(&mut h, a, 7, 1, write("a"));
    assert!(first.outcome.is_ok(), "{:?}", first.outcome);
    for client in 1_000..1_010 {
        assert!(as_owner(&mut h, a, client, 1, write("a")).outcome.is_ok());
    }
    assert!(h.reader().session(a, 7).unwrap().is_none(), "evicted");
    let before = nodes(&h, "a");
    let retry = as_owner(&mut h, a, 7, 1 | RESENT, write("a"));
    assert!(
        matches!(
            retry.outcome,
            Err(ApplyError::SessionExpired {
                client_id: 7,
                sequence: 1,
                last: None
            })
        ),
        "{:?}",
        retry.outcome
    );
    assert_eq!(nodes(&h, "a"), before, "nothing applied again");
    assert!(
        h.reader().session(a, 7).unwrap().is_none(),
        "no session recorded"
    );
    // A new session's first attempt is not marked: it applies.
    assert!(as_owner(&mut h, a, 8, 1, write("a")).outcome.is_ok());
    assert_eq!(nodes(&h, "a"), before + 1);
    // Another principal, none of whose sessions was evicted, is answered as before.
    assert!(
        as_owner(&mut h, b, 7, 1 | RESENT, write("b"))
            .outcome
            .is_ok()
    );
    // Ten minutes after a's latest eviction (stamped times), a resent first request that
    // finds no session applies again: a first attempt that old would have been evicted later.
    h.clock += 10 * 60 * 1_000_000;
    assert!(
        as_owner(&mut h, a, 9, 1 | RESENT, write("a"))
            .outcome
            .is_ok()
    );
}

/// One principal cannot advance, reuse or read another's client id: the same id names another
/// session in another principal's space.
#[tokio::test]
async fn one_principal_cannot_move_anothers_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let (mut h, a, b) = setup(dir.path()).await;
    let r1 = as_owner(&mut h, a, 7, 1, write("a"));
    // b, who learned a's client id, tries to push it far ahead and to replay it.
    let far = as_owner(&mut h, b, 7, u64::MAX, write("b"));
    assert!(
        matches!(
            far.outcome,
            Err(ApplyError::SessionExpired { last: None, .. })
        ),
        "b has no session 7 of its own: {:?}",
        far.outcome
    );
    // (Two nodes, so its answer differs from a's one.)
    let two = Command::Write(WriteRequest {
        tenant: "b".into(),
        preconditions: vec![],
        operations: vec![create_node(&[], &[]), create_node(&[], &[])],
    });
    let own = as_owner(&mut h, b, 7, 1, two);
    assert!(
        matches!(own.outcome, Ok(Outcome::Write(ref r)) if r.len() == 2),
        "b's sequence 1 under 7 is b's own request, not a's answer: {:?}",
        own.outcome
    );
    assert_eq!(nodes(&h, "b"), 2);
    // a's session is where a left it: its retry answers the stored response, its next
    // sequence applies.
    assert_eq!(as_owner(&mut h, a, 7, 1, write("a")), r1);
    let r2 = as_owner(&mut h, a, 7, 2, write("a"));
    assert!(
        matches!(r2.outcome, Ok(Outcome::Write(ref r)) if r == &[OpResult::NodeCreated(2)]),
        "{:?}",
        r2.outcome
    );
    assert_eq!(h.reader().session(a, 7).unwrap().unwrap().sequence, 2);
    assert_eq!(h.reader().session(b, 7).unwrap().unwrap().sequence, 1);
}

/// Revocation and expiry take effect at apply, on every replica alike: a request that a member
/// accepted before it applied the revocation is refused, applies nothing and records no
/// session; so is one its token's scope does not allow.
#[tokio::test]
async fn revoked_expired_and_out_of_scope_tokens_are_refused_at_apply() {
    let dir = tempfile::tempdir().unwrap();
    let (mut h, a, _) = setup(dir.path()).await;
    let reader = token(
        &mut h,
        3,
        Scope::Tenant {
            tenant: "a".into(),
            role: Role::Read,
        },
        None,
    );
    let until = h.clock + 5_000;
    let expiring = token(&mut h, 4, writer_of("a"), Some(until));
    let before = nodes(&h, "a");
    let refused = |r: Response| match r.outcome {
        Err(ApplyError::PermissionDenied { reason }) => format!("denied: {reason}"),
        Err(ApplyError::Unauthenticated { reason }) => format!("unauthenticated: {reason}"),
        other => panic!("not refused: {other:?}"),
    };
    let e = refused(as_owner(&mut h, reader, 1, 1, write("a")));
    assert!(
        e.contains("denied") && e.contains("write to tenant \"a\""),
        "{e}"
    );
    let e = refused(as_owner(&mut h, a, 2, 1, write("b")));
    assert!(e.contains("denied"), "{e}");
    let e = refused(as_owner(
        &mut h,
        a,
        3,
        1,
        Command::DeleteTenant { tenant: "a".into() },
    ));
    assert!(e.contains("cluster-admin"), "{e}");
    h.clock += 10_000;
    let e = refused(as_owner(&mut h, expiring, 4, 1, write("a")));
    assert!(e.contains("expired"), "{e}");
    let Credential::Token(id) = a else {
        unreachable!()
    };
    h.run(101, Command::RevokeToken { id, tenant: None })
        .outcome
        .unwrap();
    let e = refused(as_owner(&mut h, a, 5, 1, write("a")));
    assert!(e.contains("revoked"), "{e}");
    assert_eq!(nodes(&h, "a"), before, "nothing applied");
    for (owner, client) in [(reader, 1), (a, 2), (a, 3), (expiring, 4), (a, 5)] {
        assert!(h.reader().session(owner, client).unwrap().is_none());
    }
}

/// Writes that never reach a tenant record no session, so they cannot fill the table.
#[tokio::test]
async fn a_write_to_a_missing_tenant_records_no_session() {
    let dir = tempfile::tempdir().unwrap();
    let (mut h, _, _) = setup(dir.path()).await;
    let r = as_owner(&mut h, Credential::Open, 1, 1, write("ghost"));
    assert!(matches!(r.outcome, Err(ApplyError::TenantNotFound { .. })));
    assert!(h.reader().session(Credential::Open, 1).unwrap().is_none());
    // A refusal inside a tenant (a failed precondition, say) does record one, so a retry is
    // answered alike.
    let r = as_owner(&mut h, Credential::Open, 2, 1, write("a"));
    assert!(r.outcome.is_ok());
    assert!(h.reader().session(Credential::Open, 2).unwrap().is_some());
}

/// A principal's session bytes are bounded: past `session_bytes_per_principal_max` its own
/// oldest sessions go, another principal's stay.
#[tokio::test]
async fn session_bytes_are_bounded_per_principal() {
    let dir = tempfile::tempdir().unwrap();
    let (mut h, a, b) = setup(dir.path()).await;
    let limits = ClusterLimits {
        session_bytes_per_principal_max: 64 << 10,
        ..ClusterLimits::default()
    };
    h.run(100, Command::SetLimits(limits)).outcome.unwrap();
    assert!(as_owner(&mut h, b, 1, 1, write("b")).outcome.is_ok());
    for client in 0..2_000 {
        as_owner(&mut h, a, client, 1, write("a"));
    }
    let rd = h.reader();
    let kept = (0..2_000)
        .filter(|c| rd.session(a, *c).unwrap().is_some())
        .count();
    // A write's session is some 50-100 bytes with its key: 64 KiB holds several hundred.
    assert!((100..1_500).contains(&kept), "a keeps {kept} sessions");
    assert!(rd.session(a, 1_999).unwrap().is_some(), "the newest stays");
    assert!(rd.session(a, 0).unwrap().is_none(), "the oldest went");
    assert!(
        rd.session(b, 1).unwrap().is_some(),
        "b's is not a's to evict"
    );
}

/// A revoked token can never write again, so its sessions would stay forever: later requests
/// (of any owner) purge them, a few at a time, until none is left.
#[tokio::test]
async fn a_revoked_tokens_sessions_are_purged_by_later_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (mut h, a, b) = setup(dir.path()).await;
    for client in 0..100 {
        assert!(as_owner(&mut h, a, client, 1, write("a")).outcome.is_ok());
    }
    let Credential::Token(id) = a else {
        unreachable!()
    };
    h.run(101, Command::RevokeToken { id, tenant: None })
        .outcome
        .unwrap();
    let alive = |h: &Harness| {
        (0..100)
            .filter(|c| h.reader().session(a, *c).unwrap().is_some())
            .count()
    };
    // Each request purges up to 32, the revoke's own included: three more are enough.
    assert_eq!(alive(&h), 100 - 32);
    for client in 0..3 {
        assert!(as_owner(&mut h, b, client, 1, write("b")).outcome.is_ok());
    }
    assert_eq!(alive(&h), 0);
    assert!(
        h.reader().session(b, 2).unwrap().is_some(),
        "b's own are kept"
    );
}

/// `UpdateLimits` changes the limits it names and keeps the others, merged at apply.
#[tokio::test]
async fn limit_changes_merge_at_apply() {
    use raftgraph::command::LimitChanges;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    let change = |c: LimitChanges| Command::UpdateLimits(c);
    let r = h.run(
        1,
        change(LimitChanges {
            tenants_max: Some(7),
            ..Default::default()
        }),
    );
    let Ok(Outcome::Limits(l)) = r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert_eq!(
        l,
        ClusterLimits {
            tenants_max: 7,
            ..ClusterLimits::default()
        }
    );
    let r = h.run(
        1,
        change(LimitChanges {
            cascade_edges_max: Some(9),
            ..Default::default()
        }),
    );
    let Ok(Outcome::Limits(l)) = r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert_eq!((l.tenants_max, l.cascade_edges_max), (7, 9));
    let e = h
        .run(
            1,
            change(LimitChanges {
                sessions_per_principal_max: Some(0),
                ..Default::default()
            }),
        )
        .outcome
        .unwrap_err();
    assert!(e.to_string().contains("sessions_per_principal_max"), "{e}");
    assert_eq!(h.reader().limits().unwrap().tenants_max, 7, "kept");
}

/// Eviction deletes an owner's oldest keys, which RocksDB keeps as tombstones until it compacts
/// them. A scan from the start of the owner's keys would step over every one at each eviction,
/// so applying got slower the more sessions had come and gone (a flood of new sessions slowed
/// every tenant's writes). Scans start at the owner's eviction floor: RocksDB's own counter of
/// deleted keys its iterators skipped shows it, and eviction still goes oldest first.
#[tokio::test]
async fn eviction_does_not_step_over_the_sessions_it_evicted_before() {
    use rocksdb::perf::{PerfContext, PerfMetric, PerfStatsLevel, set_perf_stats};

    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    h.create_tenant("a", Quotas::unlimited()).unwrap();
    let limits = ClusterLimits {
        sessions_per_principal_max: 10,
        ..ClusterLimits::default()
    };
    assert!(h.run(100, Command::SetLimits(limits)).outcome.is_ok());
    // 2,000 sessions come and go (each new one evicts the oldest).
    for client in 1_000..3_000 {
        as_owner(&mut h, Credential::Open, client, 1, write("a"));
    }
    // The apply runs on this thread, where the counter is kept.
    set_perf_stats(PerfStatsLevel::EnableCount);
    let mut perf = PerfContext::default();
    perf.reset();
    for client in 3_000..3_100 {
        as_owner(&mut h, Credential::Open, client, 1, write("a"));
    }
    let skipped = perf.metric(PerfMetric::InternalDeleteSkippedCount);
    set_perf_stats(PerfStatsLevel::Disable);
    assert!(
        skipped <= 200,
        "100 evictions stepped over {skipped} deleted keys"
    );
    // The ten newest sessions live (a repeat is answered, not applied again); the one before
    // them was evicted.
    let before = nodes(&h, "a");
    for client in 3_090..3_100 {
        let r = as_owner(&mut h, Credential::Open, client, 1, write("a"));
        assert!(r.outcome.is_ok(), "client {client}: {:?}", r.outcome);
    }
    assert_eq!(nodes(&h, "a"), before);
    let r = as_owner(&mut h, Credential::Open, 3_089, 2, write("a"));
    assert!(
        matches!(
            r.outcome,
            Err(ApplyError::SessionExpired { last: None, .. })
        ),
        "{:?}",
        r.outcome
    );
}
