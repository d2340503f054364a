//! Batched entries: client writes the leader puts in one entry apply exactly as if each were
//! alone. Random logs are applied twice — one request per entry, and with runs of writes
//! grouped into entries of 1..=8 — and every response, every node and edge (but its version,
//! which is the entry's index), every tenant's usage and every session's sequence must match.
//!
//! Both runs number their entries from [`FIRST_INDEX`]: a record stores its version (the
//! index) as a variable-length integer, so storage usage depends on the indexes' encoded
//! widths, and those must be the same in both runs.

mod helpers;

use helpers::sm_harness::*;
use helpers::sm_logs::{TENANTS, random_log};
use openraft::entry::RaftEntry;
use openraft::{EntryPayload, Membership};
use proptest::prelude::*;
use raftgraph::auth::Credential;
use raftgraph::command::{ApplyError, Command, Op, Proposal, Request, Response, WriteRequest};
use raftgraph::raft::Entry;
use raftgraph::state_machine::GraphReader;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Everything the two runs must agree on, versions and indexes left out.
fn state(rd: &GraphReader) -> String {
    let mut out = String::new();
    for t in TENANTS {
        let Ok(info) = rd.tenant(t) else {
            out += &format!("{t}: none\n");
            continue;
        };
        out += &format!("{t}: {:?} enabled {}\n", info.usage, info.enabled);
        // A disabled tenant's data cannot be listed; both runs must then refuse alike.
        match rd.scan_nodes(t, None, 1_000) {
            Ok(page) => {
                let mut nodes = page.items;
                for n in &mut nodes {
                    n.version = 0;
                }
                let mut edges = rd.scan_edges(t, None, 1_000).unwrap().items;
                for e in &mut edges {
                    e.version = 0;
                }
                out += &format!("{nodes:?}\n{edges:?}\n");
            }
            Err(e) => out += &format!("{e:?}\n"),
        }
        let check = rd.verify_tenant(t).unwrap();
        assert!(check.problems.is_empty(), "{t}: {:?}", check.problems);
        assert_eq!(check.recount, check.recorded, "{t} usage");
    }
    for client in 0..8 {
        let s = rd
            .session(Credential::Open, client)
            .unwrap()
            .map(|s| s.sequence);
        out += &format!("client {client}: {s:?}\n");
    }
    out
}

/// The first entry's index in both runs: with fewer than 64,000 entries, every index encodes in
/// the same three bytes (bincode's varint: 251..=65535).
const FIRST_INDEX: u64 = 1_000;

async fn run(seed: u64, n: u64) {
    // Session eviction breaks ties between requests of one entry by client id, not by their
    // order, so the comparison runs with the default sessions_per_principal_max (nothing evicted).
    let log: Vec<Entry> = random_log(seed, n)
        .into_iter()
        .filter(|e| {
            !matches!(&e.payload, EntryPayload::Normal(p)
                if matches!(p.requests[0].command, Command::SetLimits(_)))
        })
        .collect();

    let alone_dir = tempfile::tempdir().unwrap();
    let mut alone = Harness::open(alone_dir.path()).await;
    let mut expected: Vec<Response> = Vec::new();
    for (i, e) in log.iter().enumerate() {
        let mut e = e.clone();
        e.log_id = log_id(1, FIRST_INDEX + i as u64);
        expected.extend(alone.sm.apply_entry(&e).unwrap().responses);
    }

    let batched_dir = tempfile::tempdir().unwrap();
    let mut batched = Harness::open(batched_dir.path()).await;
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
    let mut got: Vec<Response> = Vec::new();
    let mut index = FIRST_INDEX - 1;
    let mut multi = 0;
    let mut rest = log.iter().peekable();
    while let Some(e) = rest.next() {
        index += 1;
        let id = log_id(1, index);
        let payload = match &e.payload {
            EntryPayload::Normal(p) if matches!(p.requests[0].command, Command::Write(_)) => {
                let mut requests = p.requests.to_vec();
                let want = rng.random_range(1..=8);
                while requests.len() < want {
                    match rest.peek().map(|e| &e.payload) {
                        Some(EntryPayload::Normal(p))
                            if matches!(p.requests[0].command, Command::Write(_)) =>
                        {
                            requests.extend(p.requests.iter().cloned());
                            rest.next();
                        }
                        _ => break,
                    }
                }
                if requests.len() > 1 {
                    multi += 1;
                }
                EntryPayload::Normal(Proposal {
                    requests: requests.into(),
                })
            }
            other => other.clone(),
        };
        let r = batched
            .sm
            .apply_entry(&Entry {
                log_id: id,
                payload,
            })
            .unwrap();
        got.extend(r.responses);
    }
    assert_eq!(got.len(), expected.len(), "seed {seed}: response count");
    for (i, (g, x)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, x, "seed {seed}: response {i}");
    }
    assert_eq!(
        state(&batched.reader()),
        state(&alone.reader()),
        "seed {seed}: state"
    );
    assert!(
        n < 50 || multi > 0,
        "seed {seed}: no batched entry was built"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn a_batched_entry_applies_each_request_as_if_alone(seed in any::<u64>(), n in 1..400u64) {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(run(seed, n));
    }
}

fn write_req(client: u64, sequence: u64, ops: Vec<Op>) -> Request {
    let command = Command::Write(WriteRequest {
        tenant: "t".into(),
        preconditions: vec![],
        operations: ops,
    });
    Request::new(client, sequence, 0, command).unwrap()
}

/// A request sees the ones before it in its entry (ids continue, a retry of an earlier
/// request in the same entry is answered from its session), and tenant commands are refused
/// in an entry with other requests — a leader never builds one, so this is only the
/// deterministic answer to a forged entry.
#[tokio::test]
async fn requests_of_one_entry_see_each_other_and_commands_go_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    h.create_tenant("t", raftgraph::tenant::Quotas::unlimited())
        .unwrap();
    let a = write_req(10, 1, vec![create_node(&["A"], &[])]);
    let b = write_req(11, 1, vec![create_node(&["B"], &[])]);
    let entry = |index, requests: Vec<_>| Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(Proposal {
            requests: requests.into(),
        }),
    };
    let r =
        h.sm.apply_entry(&entry(2, vec![a.clone(), b, a.clone()]))
            .unwrap()
            .responses;
    assert_eq!(r.len(), 3);
    let ids: Vec<u64> = r
        .iter()
        .map(|r| match &r.outcome {
            Ok(raftgraph::command::Outcome::Write(w)) => created(&w[0]),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids[1], ids[0] + 1, "the second create sees the first");
    assert_eq!(ids[2], ids[0], "the retry is answered from its session");
    assert_eq!(h.reader().tenant("t").unwrap().usage.nodes, 2);

    let create = Request::new(12, 1, 0, Command::DeleteTenant { tenant: "t".into() }).unwrap();
    let c = write_req(13, 1, vec![create_node(&["C"], &[])]);
    let r =
        h.sm.apply_entry(&entry(3, vec![c, create]))
            .unwrap()
            .responses;
    assert!(r[0].outcome.is_ok(), "{:?}", r[0]);
    assert!(
        matches!(&r[1].outcome, Err(ApplyError::InvalidArgument { field, reason })
            if field == "proposal" && reason.contains("proposed alone")),
        "{:?}",
        r[1]
    );
    assert!(h.reader().tenant("t").is_ok(), "the tenant was not deleted");
    // Blank and membership entries answer nothing.
    let blank = Entry::new_blank(log_id(1, 4));
    assert!(h.sm.apply_entry(&blank).unwrap().responses.is_empty());
    let m = Entry {
        log_id: log_id(1, 5),
        payload: EntryPayload::Membership(Membership::new_with_defaults(
            vec![[1, 2, 3].into()],
            [],
        )),
    };
    assert!(h.sm.apply_entry(&m).unwrap().responses.is_empty());
}
