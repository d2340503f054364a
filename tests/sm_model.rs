//! Property test over random logs: after every entry, each tenant's usage equals a recount of
//! its column family, every index matches the records, a successful write never grows a
//! resource past its limit, and a repeated (client, sequence) never applies again.

mod helpers;

use std::collections::BTreeMap;

use helpers::sm_harness::*;
use helpers::sm_logs::{TENANTS, random_log};
use openraft::EntryPayload;
use proptest::prelude::*;
use raftgraph::command::{ApplyError, Command, Outcome, Response};
use raftgraph::tenant::{Quotas, Resource};

fn within(quotas: &Quotas, r: Resource, v: u64) -> bool {
    let limit = match r {
        Resource::Nodes => quotas.max_nodes,
        Resource::Edges => quotas.max_edges,
        Resource::StorageBytes => quotas.max_storage_bytes,
    };
    limit.is_none_or(|l| v <= l)
}

async fn run(seed: u64, n: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    let rd = h.reader();
    // The first request applied under each (client, sequence), and its response.
    let mut first: BTreeMap<(u64, u64), (Command, Response)> = BTreeMap::new();
    for e in random_log(seed, n) {
        let before: BTreeMap<&str, _> = TENANTS
            .iter()
            .filter_map(|t| Some((*t, (rd.tenant(t).ok()?, rd.tenant_digest(t).ok()?))))
            .collect();
        let session = match &e.payload {
            EntryPayload::Normal(p) => rd
                .session(p.requests[0].owner, p.requests[0].client_id)
                .unwrap(),
            _ => None,
        };
        let mut responses = h.sm.apply_entry(&e).unwrap().responses;
        let EntryPayload::Normal(p) = &e.payload else {
            continue;
        };
        // These logs carry one request per entry (batched entries: tests/sm_batch.rs).
        let [req] = &p.requests[..] else {
            panic!("seed {seed} {e}: {} requests", p.requests.len());
        };
        assert_eq!(responses.len(), 1, "seed {seed} {e}");
        let response = responses.remove(0);
        let key = (req.client_id, req.sequence);
        let expired = matches!(response.outcome, Err(ApplyError::SessionExpired { .. }));

        // A repeat of the session's last sequence returns the first response (or, if it is
        // another request under that sequence, is refused) and changes no tenant; an older sequence is refused as expired. (Sequence 1 from a client whose
        // session was evicted is indistinguishable from a new client: the documented caveat.)
        let repeat = session.as_ref().is_some_and(|s| s.sequence == req.sequence);
        let stale = session.as_ref().is_some_and(|s| s.sequence > req.sequence)
            || (session.is_none() && req.sequence > 1);
        if repeat {
            let (command, original) = &first[&key];
            if *command == req.command {
                assert_eq!(&response, original, "seed {seed} {e}: repeat");
            } else {
                let reused = ApplyError::SequenceReused {
                    client_id: req.client_id,
                    sequence: req.sequence,
                };
                assert_eq!(
                    response.outcome,
                    Err(reused),
                    "seed {seed} {e}: reused sequence"
                );
            }
            for (t, (_, digest)) in &before {
                assert_eq!(
                    rd.tenant_digest(t).ok().as_ref(),
                    Some(digest),
                    "seed {seed}: repeat changed {t}"
                );
            }
            continue;
        }
        assert_eq!(
            expired, stale,
            "seed {seed} {e}: session {session:?}: {response:?}"
        );
        if stale {
            continue;
        }
        first.insert(key, (req.command.clone(), response.clone()));

        // Growth stays within limits.
        if let (Command::Write(w), Ok(Outcome::Write(_))) = (&req.command, &response.outcome) {
            let (old, _) = &before[w.tenant.as_str()];
            let now = rd.tenant(&w.tenant).unwrap();
            for r in Resource::ALL {
                let (a, b) = (old.usage.get(r), now.usage.get(r));
                assert!(
                    b <= a || within(&now.quotas, r, b),
                    "seed {seed} {e}: {r} {a} -> {b} over {:?}",
                    now.quotas
                );
            }
        }

        // Usage = recount, indexes = records, for every tenant.
        for t in TENANTS {
            let Ok(check) = rd.verify_tenant(t) else {
                continue;
            };
            assert!(
                check.problems.is_empty(),
                "seed {seed} {e}: {t}: {:?}",
                check.problems
            );
            assert_eq!(check.recount, check.recorded, "seed {seed} {e}: {t} usage");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn usage_indexes_quotas_and_sessions_hold_after_every_entry(seed in any::<u64>(), n in 1..400u64) {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(run(seed, n));
    }
}
