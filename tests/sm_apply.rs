//! The state machine applying graph operations, admin commands and sessions, read back through
//! the reader: each test states the behaviour a bug would break.

mod helpers;

use helpers::sm_harness::*;
use raftgraph::auth::Credential;
use raftgraph::command::{
    ApplyError, ClusterLimits, Command, Direction, NodeRef, Op, OpResult, Outcome, Precondition,
    Request, Value, WriteRequest,
};
use raftgraph::state_machine::StateMachine;
use raftgraph::tenant::{LlmProvider, LlmProviderConfig, Quotas, Resource, Secret, TenantConfig};

fn quotas(nodes: u64, edges: u64, bytes: u64) -> Quotas {
    Quotas {
        max_nodes: Some(nodes),
        max_edges: Some(edges),
        max_storage_bytes: Some(bytes),
    }
}

#[tokio::test]
async fn nodes_edges_and_indexes_follow_every_operation() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    h.create_tenant("t", Quotas::unlimited()).unwrap();

    // Phase 1: two nodes and an edge in one request, the edge naming the nodes by op index.
    let r = h
        .write(
            "t",
            vec![
                create_node(&["Person"], &[("name", Value::String("ann".into()))]),
                create_node(&["Person", "Admin"], &[]),
                Op::CreateEdge {
                    source: NodeRef::Created(0),
                    target: NodeRef::Created(1),
                    edge_type: "knows".into(),
                    properties: props(&[("since", Value::Int(2020))]),
                },
            ],
        )
        .unwrap();
    let (a, b, e) = (created(&r[0]), created(&r[1]), created(&r[2]));
    assert_eq!((a, b, e), (1, 2, 1), "ids come from per-tenant counters");
    let rd = h.reader();
    let out = rd
        .neighbors("t", a, Direction::Out, None, None, 10)
        .unwrap();
    assert_eq!(out.items.len(), 1);
    assert_eq!((out.items[0].edge, out.items[0].node), (e, b));
    let inn = rd
        .neighbors("t", b, Direction::In, Some("knows"), None, 10)
        .unwrap();
    assert_eq!(inn.items[0].node, a);
    assert!(
        rd.neighbors("t", b, Direction::In, Some("know"), None, 10)
            .unwrap()
            .items
            .is_empty()
    );
    let persons = rd.nodes_by_label("t", "Person", None, 10).unwrap();
    assert_eq!(
        persons.items.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![a, b]
    );

    // Phase 2: update properties and labels; the label index follows.
    h.write(
        "t",
        vec![
            Op::UpdateNode {
                node: NodeRef::Id(a),
                set: props(&[("age", Value::Int(30))]),
                remove: names(&["name"]),
            },
            Op::RemoveLabels {
                node: NodeRef::Id(b),
                labels: names(&["Admin"]),
            },
            Op::AddLabels {
                node: NodeRef::Id(a),
                labels: names(&["Admin"]),
            },
        ],
    )
    .unwrap();
    let node_a = rd.node("t", a).unwrap().unwrap();
    assert_eq!(node_a.properties, props(&[("age", Value::Int(30))]));
    let admins = rd.nodes_by_label("t", "Admin", None, 10).unwrap();
    assert_eq!(
        admins.items.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![a]
    );

    // Phase 3: deleting a node removes its edges and every index entry in the same entry.
    h.write(
        "t",
        vec![Op::DeleteNode {
            node: NodeRef::Id(b),
        }],
    )
    .unwrap();
    assert!(rd.edge("t", e).unwrap().is_none());
    assert!(
        rd.neighbors("t", a, Direction::Out, None, None, 10)
            .unwrap()
            .items
            .is_empty()
    );
    let check = rd.verify_tenant("t").unwrap();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    assert_eq!(check.recount, check.recorded);
    assert_eq!((check.recorded.nodes, check.recorded.edges), (1, 0));
}

#[tokio::test]
async fn a_failed_operation_or_precondition_applies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    h.create_tenant("t", Quotas::unlimited()).unwrap();
    let n = created(&h.write("t", vec![create_node(&["A"], &[])]).unwrap()[0]);
    let before = h.reader().digest().unwrap();
    let usage = h.reader().tenant("t").unwrap().usage;

    // An edge to a missing node after a create: the create must not survive.
    let err = h
        .write(
            "t",
            vec![
                create_node(&["B"], &[]),
                Op::CreateEdge {
                    source: NodeRef::Id(n),
                    target: NodeRef::Id(99),
                    edge_type: "x".into(),
                    properties: Default::default(),
                },
            ],
        )
        .unwrap_err();
    assert_eq!(
        err,
        ApplyError::NodeNotFound {
            tenant: "t".into(),
            node: 99
        }
    );
    assert!(
        h.reader()
            .nodes_by_label("t", "B", None, 10)
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(h.reader().tenant("t").unwrap().usage, usage);

    // A failed precondition.
    let cmd = Command::Write(WriteRequest {
        tenant: "t".into(),
        preconditions: vec![
            Precondition::NodeExists {
                node: n,
                exists: true,
            },
            Precondition::NodePropertyEquals {
                node: n,
                key: "k".into(),
                value: Some(Value::Int(1)),
            },
        ],
        operations: vec![Op::DeleteNode {
            node: NodeRef::Id(n),
        }],
    });
    let err = h.run(1, cmd).outcome.unwrap_err();
    assert!(
        matches!(err, ApplyError::PreconditionFailed { index: 1, .. }),
        "{err}"
    );
    assert!(h.reader().node("t", n).unwrap().is_some());

    // Only the session records and applied id changed; the tenant's data digest did not.
    assert_ne!(
        h.reader().digest().unwrap(),
        before,
        "sessions and applied id moved"
    );
    let version = h.reader().node("t", n).unwrap().unwrap().version;
    let cmd = Command::Write(WriteRequest {
        tenant: "t".into(),
        preconditions: vec![Precondition::NodeVersion { node: n, version }],
        operations: vec![Op::DeleteNode {
            node: NodeRef::Id(n),
        }],
    });
    assert!(h.run(1, cmd).outcome.is_ok(), "the right version passes");
}

#[tokio::test]
async fn quotas_refuse_growth_with_the_figures_and_allow_shrinking() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    h.create_tenant("q", quotas(2, 1, 10_000)).unwrap();
    h.write("q", vec![create_node(&[], &[]), create_node(&[], &[])])
        .unwrap();
    let err = h.write("q", vec![create_node(&[], &[])]).unwrap_err();
    let ApplyError::Quota(q) = &err else {
        panic!("{err}")
    };
    assert_eq!(
        (q.tenant.as_str(), q.resource, q.used, q.requested, q.limit),
        ("q", Resource::Nodes, 2, 1, 2)
    );
    assert_eq!(
        err.to_string(),
        "tenant q: quota exceeded for nodes: used 2, requested 1, limit 2"
    );

    let edge = |s, t| Op::CreateEdge {
        source: NodeRef::Id(s),
        target: NodeRef::Id(t),
        edge_type: "e".into(),
        properties: Default::default(),
    };
    h.write("q", vec![edge(1, 2)]).unwrap();
    let err = h.write("q", vec![edge(2, 1)]).unwrap_err();
    assert!(
        matches!(err, ApplyError::Quota(ref q) if q.resource == Resource::Edges),
        "{err}"
    );

    // Storage: a value that would cross the byte limit.
    let big = Value::Bytes(vec![0; 20_000]);
    let err = h
        .write(
            "q",
            vec![Op::UpdateNode {
                node: NodeRef::Id(1),
                set: props(&[("b", big)]),
                remove: names(&[]),
            }],
        )
        .unwrap_err();
    assert!(
        matches!(err, ApplyError::Quota(ref q) if q.resource == Resource::StorageBytes),
        "{err}"
    );

    // Lower the quota below usage: deletes still pass, growth does not.
    h.run(
        0,
        Command::UpdateQuotas {
            tenant: "q".into(),
            quotas: quotas(1, 0, 10_000),
        },
    )
    .outcome
    .unwrap();
    assert!(h.write("q", vec![edge(1, 2)]).is_err());
    h.write(
        "q",
        vec![Op::DeleteNode {
            node: NodeRef::Id(2),
        }],
    )
    .unwrap();
    let usage = h.reader().tenant("q").unwrap().usage;
    assert_eq!((usage.nodes, usage.edges), (1, 0));
    // Unlimited is expressible.
    h.run(
        0,
        Command::UpdateQuotas {
            tenant: "q".into(),
            quotas: Quotas::unlimited(),
        },
    )
    .outcome
    .unwrap();
    h.write("q", vec![create_node(&[], &[]); 50]).unwrap();
}

#[tokio::test]
async fn a_repeated_sequence_returns_the_stored_response_and_applies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    h.create_tenant("t", Quotas::unlimited()).unwrap();
    let req = |seq| {
        Request::new(
            7,
            seq,
            5,
            Command::Write(WriteRequest {
                tenant: "t".into(),
                preconditions: vec![],
                operations: vec![create_node(&[], &[])],
            }),
        )
        .unwrap()
    };
    let first = h.apply(req(1));
    assert_eq!(
        first.outcome,
        Ok(Outcome::Write(vec![OpResult::NodeCreated(1)]))
    );
    let retry = h.apply(req(1));
    assert_eq!(retry, first, "the retry gets the original response");
    // Apply compares the fingerprint the request carries (stamped by the leader, the same on
    // every replica), not one of its own: the same command stamped differently is another
    // request.
    let mut restamped = req(1);
    restamped.fingerprint[0] ^= 1;
    assert_eq!(
        h.apply(restamped).outcome,
        Err(ApplyError::SequenceReused {
            client_id: 7,
            sequence: 1
        })
    );
    assert_eq!(
        h.reader().tenant("t").unwrap().usage.nodes,
        1,
        "and creates nothing"
    );
    assert_eq!(
        h.apply(req(2)).outcome,
        Ok(Outcome::Write(vec![OpResult::NodeCreated(2)]))
    );
    let stale = h.apply(req(1)).outcome.unwrap_err();
    assert_eq!(
        stale,
        ApplyError::SessionExpired {
            client_id: 7,
            sequence: 1,
            last: Some(2)
        }
    );
    // A client never seen, starting above 1, is refused too.
    let mut r = req(5);
    r.client_id = 8;
    assert!(matches!(
        h.apply(r).outcome,
        Err(ApplyError::SessionExpired { last: None, .. })
    ));
    assert_eq!(h.reader().tenant("t").unwrap().usage.nodes, 2);
}

#[tokio::test]
async fn sessions_are_evicted_oldest_first_past_the_replicated_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    let limits = ClusterLimits {
        sessions_per_principal_max: 3,
        ..ClusterLimits::default()
    };
    h.run(100, Command::SetLimits(limits)).outcome.unwrap();
    h.create_tenant("t", Quotas::unlimited()).unwrap(); // client 0
    for client in 1..=3 {
        h.write_as(client);
    }
    // Sessions: 0 and 100 were evicted (oldest), 1..=3 remain; client 100 resuming at 2 fails.
    let cmd = Command::SetLimits(ClusterLimits {
        sessions_per_principal_max: 3,
        ..ClusterLimits::default()
    });
    let r = h.run(100, cmd).outcome.unwrap_err();
    assert!(
        matches!(
            r,
            ApplyError::SessionExpired {
                client_id: 100,
                sequence: 2,
                last: None
            }
        ),
        "{r}"
    );
    // Client 3's session is alive: its retry returns the stored response.
    let retry = Request::new(
        3,
        1,
        0,
        Command::Write(WriteRequest {
            tenant: "t".into(),
            preconditions: vec![],
            operations: vec![create_node(&[], &[])],
        }),
    )
    .unwrap();
    let nodes = h.reader().tenant("t").unwrap().usage.nodes;
    assert_eq!(
        h.apply(retry).outcome,
        Ok(Outcome::Write(vec![OpResult::NodeCreated(3)]))
    );
    assert_eq!(h.reader().tenant("t").unwrap().usage.nodes, nodes);
}

/// Sessions go least recently written first, whatever mix of new and returning clients and
/// limit changes comes before (the eviction index is written lazily: a returning client's
/// write does not move its key, eviction re-files it). A model LRU list is checked after every
/// step by probing every client: a live session refuses another command under its last
/// sequence (`SequenceReused`); an evicted one is unknown (`SessionExpired`, no last).
#[tokio::test]
async fn eviction_follows_the_last_write_of_each_client() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    let write = |tenant: &str| {
        Command::Write(WriteRequest {
            tenant: tenant.into(),
            preconditions: vec![],
            operations: vec![create_node(&[], &[])],
        })
    };
    let limits = |max| {
        Command::SetLimits(ClusterLimits {
            sessions_per_principal_max: max,
            ..ClusterLimits::default()
        })
    };
    // Model: clients by last recorded write, oldest first; each client's last sequence.
    let mut lru: Vec<u64> = Vec::new();
    let mut seqs: std::collections::BTreeMap<u64, u64> = Default::default();
    let mut max = 4u64;
    let mut send = |h: &mut Harness, lru: &mut Vec<u64>, max: u64, client: u64, cmd: Command| {
        let seq = seqs.entry(client).or_insert(0);
        *seq += 1;
        let r = h.apply(Request::new(client, *seq, 0, cmd).unwrap());
        assert!(r.outcome.is_ok(), "client {client}: {:?}", r.outcome);
        lru.retain(|c| *c != client);
        lru.push(client);
        while lru.len() as u64 > max {
            let gone = lru.remove(0);
            seqs.remove(&gone);
        }
        seqs.clone()
    };
    send(&mut h, &mut lru, max, 100, limits(max));
    send(
        &mut h,
        &mut lru,
        max,
        0,
        Command::CreateTenant {
            tenant: "t".into(),
            quotas: Quotas::unlimited(),
            config: TenantConfig::default(),
        },
    );
    // A fixed pseudo-random walk over 9 clients, the limit lowered and raised on the way.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for step in 0..400u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let seqs_now = if step % 23 == 22 {
            // Down to 1 or 2 from 5..=8 evicts several at once, stale keys among them.
            max = if max >= 4 { 1 + x % 2 } else { 5 + x % 4 };
            send(&mut h, &mut lru, max, 100, limits(max))
        } else {
            send(&mut h, &mut lru, max, 1 + x % 9, write("t"))
        };
        for client in [0, 100].into_iter().chain(1..=9) {
            // A live session refuses another command under its last sequence; an evicted or
            // never-seen client at sequence 2 or more is unknown. (At sequence 1 an unknown
            // client would be taken for a new one and apply, so probe at 2 at least.)
            let alive = seqs_now.get(&client).copied();
            let probe_seq = alive.unwrap_or(2).max(2);
            if alive == Some(1) {
                continue;
            }
            let r = h.apply(
                Request::new(
                    client,
                    probe_seq,
                    0,
                    Command::DeleteTenant {
                        tenant: "probe".into(),
                    },
                )
                .unwrap(),
            );
            match (alive, r.outcome) {
                (Some(_), Err(ApplyError::SequenceReused { .. })) => {}
                (None, Err(ApplyError::SessionExpired { last: None, .. })) => {}
                (a, o) => {
                    panic!("step {step}: client {client}, model says {a:?}, got {o:?}; lru {lru:?}")
                }
            }
        }
    }
}

trait WriteAs {
    fn write_as(&mut self, client: u64);
}

impl WriteAs for Harness {
    fn write_as(&mut self, client: u64) {
        let cmd = Command::Write(WriteRequest {
            tenant: "t".into(),
            preconditions: vec![],
            operations: vec![create_node(&[], &[])],
        });
        self.run(client, cmd).outcome.unwrap();
    }
}

#[tokio::test]
async fn tenants_with_prefix_colliding_ids_never_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    let ids = ["t", "t1", "t1a"];
    for t in ids {
        h.create_tenant(t, Quotas::unlimited()).unwrap();
    }
    // Each tenant gets a different number of nodes and edges, labelled alike.
    for (i, t) in ids.iter().enumerate() {
        let mut ops = vec![create_node(&["L"], &[("owner", Value::String(t.to_string()))]); i + 1];
        ops.push(Op::CreateEdge {
            source: NodeRef::Created(0),
            target: NodeRef::Created(0),
            edge_type: "self".into(),
            properties: Default::default(),
        });
        h.write(t, ops).unwrap();
    }
    let rd = h.reader();
    for (i, t) in ids.iter().enumerate() {
        let nodes = rd.scan_nodes(t, None, 100).unwrap().items;
        assert_eq!(nodes.len(), i + 1, "{t}");
        assert!(
            nodes
                .iter()
                .all(|n| n.properties["owner"] == Value::String(t.to_string()))
        );
        assert_eq!(
            rd.nodes_by_label(t, "L", None, 100).unwrap().items.len(),
            i + 1
        );
        assert_eq!(rd.scan_edges(t, None, 100).unwrap().items.len(), 1);
        let u = rd.tenant(t).unwrap().usage;
        assert_eq!((u.nodes, u.edges), (i as u64 + 1, 1));
    }
    let digests: Vec<_> = ids.iter().map(|t| rd.tenant_digest(t).unwrap()).collect();

    // Writes naming t delete t's node 1 (ids overlap across tenants): the others keep theirs.
    h.write(
        "t",
        vec![Op::DeleteNode {
            node: NodeRef::Id(1),
        }],
    )
    .unwrap();
    for (i, t) in ids.iter().enumerate().skip(1) {
        assert_eq!(rd.tenant_digest(t).unwrap(), digests[i], "{t} changed");
        assert!(rd.node(t, 1).unwrap().is_some());
    }
    // A cursor from one tenant's list cannot page into another's keys.
    let page = rd.scan_nodes("t1a", None, 1).unwrap();
    assert!(
        rd.nodes_by_label("t1", "L", page.next.as_deref(), 10)
            .is_err()
    );

    // Deleting t drops only its column family; t1 and t1a keep data, usage and digests. (The
    // scan first has the reader remember t, which the delete must make it forget.)
    rd.scan_nodes("t", None, 10).unwrap();
    h.run(0, Command::DeleteTenant { tenant: "t".into() })
        .outcome
        .unwrap();
    assert!(matches!(
        rd.scan_nodes("t", None, 10),
        Err(raftgraph::state_machine::ReadError::Refused(
            ApplyError::TenantNotFound { .. }
        ))
    ));
    for (i, t) in ids.iter().enumerate().skip(1) {
        assert_eq!(
            rd.tenant_digest(t).unwrap(),
            digests[i],
            "{t} changed by the delete"
        );
    }
    // Recreated, t starts empty with fresh counters.
    h.create_tenant("t", Quotas::unlimited()).unwrap();
    assert!(rd.scan_nodes("t", None, 10).unwrap().items.is_empty());
    assert_eq!(
        created(&h.write("t", vec![create_node(&[], &[])]).unwrap()[0]),
        1
    );
}

#[tokio::test]
async fn state_survives_restart_and_tenant_admin_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    let config = TenantConfig {
        llm: Some(LlmProviderConfig {
            provider: LlmProvider::Ollama,
            model: "llama".into(),
            endpoint: None,
            api_key: Some(sealed("secret-key-1", "acme", "llm.api_key")),
        }),
        ..TenantConfig::default()
    };
    let made = h
        .run(
            0,
            Command::CreateTenant {
                tenant: "acme".into(),
                quotas: Quotas::default(),
                config,
            },
        )
        .outcome
        .unwrap();
    let Outcome::Tenant(info) = made else {
        panic!()
    };
    assert!(
        info.config.llm.unwrap().api_key.unwrap().is_redacted(),
        "the create response redacts"
    );
    assert!(matches!(
        h.create_tenant("acme", Quotas::default()),
        Err(ApplyError::TenantExists { .. })
    ));
    assert!(matches!(
        h.create_tenant("Bad!", Quotas::default()),
        Err(ApplyError::Tenant(_))
    ));
    let made = h.write("acme", vec![create_node(&["X"], &[])]).unwrap();
    let OpResult::NodeCreated(node) = made[0] else {
        panic!("{made:?}")
    };
    // The reader remembers the tenant as enabled; each tenant command must make it look again.
    // (One reader throughout: a reader is dropped before the restart below.)
    let rd = h.reader();
    assert!(rd.node("acme", node).unwrap().is_some());

    h.run(
        0,
        Command::SetTenantEnabled {
            tenant: "acme".into(),
            enabled: false,
        },
    )
    .outcome
    .unwrap();
    assert_eq!(
        h.write("acme", vec![create_node(&[], &[])]).unwrap_err(),
        ApplyError::TenantDisabled {
            tenant: "acme".into()
        }
    );
    assert!(
        matches!(
            rd.node("acme", node),
            Err(raftgraph::state_machine::ReadError::Refused(
                ApplyError::TenantDisabled { .. }
            ))
        ),
        "a read after the disable is refused"
    );
    h.run(
        0,
        Command::SetTenantEnabled {
            tenant: "acme".into(),
            enabled: true,
        },
    )
    .outcome
    .unwrap();
    assert!(rd.node("acme", node).unwrap().is_some(), "enabled again");
    drop(rd);

    let limits = ClusterLimits {
        tenants_max: 1,
        ..ClusterLimits::default()
    };
    h.run(0, Command::SetLimits(limits)).outcome.unwrap();
    assert_eq!(
        h.create_tenant("b", Quotas::default()),
        Err(ApplyError::TooManyTenants {
            tenant: "b".into(),
            count: 1,
            limit: 1
        })
    );

    let digest = h.reader().digest().unwrap();
    let applied = h.sm.applied();
    drop(h);
    let h = Harness::open(dir.path()).await;
    assert_eq!(h.sm.applied(), applied);
    assert_eq!(h.reader().digest().unwrap(), digest);
    let info = h.reader().tenant("acme").unwrap();
    assert!(
        info.config.llm.unwrap().api_key.unwrap().is_redacted(),
        "reads redact"
    );
    assert_eq!(info.usage.nodes, 1);
}

#[tokio::test]
async fn pages_are_bounded_and_resume_from_their_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    h.create_tenant("t", Quotas::unlimited()).unwrap();
    h.write("t", vec![create_node(&["L"], &[]); 25]).unwrap();
    let rd = h.reader();
    let mut seen = vec![];
    let mut after = None;
    loop {
        let page = rd.nodes_by_label("t", "L", after.as_deref(), 7).unwrap();
        seen.extend(page.items.iter().map(|n| n.id));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, (1..=25).collect::<Vec<_>>());
    assert!(rd.scan_nodes("t", None, 0).is_err());
    // Names past the limit are refused as arguments, not turned into keys.
    let long = "l".repeat(70_000);
    assert!(matches!(
        rd.nodes_by_label("t", &long, None, 10),
        Err(raftgraph::state_machine::ReadError::Refused(
            ApplyError::InvalidArgument { .. }
        ))
    ));
    let out = raftgraph::command::Direction::Out;
    assert!(rd.neighbors("t", 1, out, Some(&long), None, 10).is_err());
    assert!(
        rd.scan_nodes("t", None, raftgraph::state_machine::PAGE_ITEMS_MAX + 1)
            .is_err()
    );
    let tenants = rd.tenants(None, 10).unwrap();
    assert_eq!(tenants.items.len(), 1);
}

#[tokio::test]
async fn oversized_input_is_refused_naming_the_field_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    h.create_tenant("t", Quotas::unlimited()).unwrap();
    let long = "x".repeat(raftgraph::command::NAME_BYTES_MAX + 1);
    let err = h
        .write("t", vec![create_node(&[long.as_str()], &[])])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("operations[0]") && err.contains("limit 256"),
        "{err}"
    );
    // A node grown past the record limit by repeated updates is refused.
    let n = created(&h.write("t", vec![create_node(&[], &[])]).unwrap()[0]);
    let mb = Value::Bytes(vec![1; raftgraph::command::VALUE_BYTES_MAX]);
    let mut last = Ok(vec![]);
    for i in 0..6 {
        last = h.write(
            "t",
            vec![Op::UpdateNode {
                node: NodeRef::Id(n),
                set: props(&[(&format!("p{i}"), mb.clone())]),
                remove: names(&[]),
            }],
        );
        if last.is_err() {
            break;
        }
    }
    let err = last.unwrap_err().to_string();
    assert!(
        err.contains("record would be") && err.contains("limit 4194304"),
        "{err}"
    );
}

#[tokio::test]
async fn apply_out_of_order_is_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    h.create_tenant("t", Quotas::unlimited()).unwrap();
    let req = Request::new(9, 1, 0, Command::DeleteTenant { tenant: "t".into() }).unwrap();
    for index in [1, 3] {
        let err = h.sm.apply_entry(&entry(index, req.clone())).unwrap_err();
        assert!(err.to_string().contains("apply out of order"), "{err}");
    }
    assert!(
        h.reader().tenant("t").is_ok(),
        "nothing of a refused entry applied"
    );
    assert!(h.sm.apply_entry(&entry(2, req)).is_ok());
}

/// The switch openraft's conformance suite needs (the `testing` feature) allows gaps only: an
/// entry at or below the applied index is refused whatever the switch says.
#[tokio::test]
async fn with_gaps_allowed_an_entry_at_or_below_the_applied_index_is_still_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.check_apply_order = false;
    let mut sm = StateMachine::open(cfg).await.unwrap();
    let req = |seq| {
        let create = Command::CreateTenant {
            tenant: format!("t{seq}"),
            quotas: Quotas::unlimited(),
            config: Default::default(),
        };
        Request::new(9, seq, 0, create).unwrap()
    };
    sm.apply_entry(&entry(1, req(1))).unwrap();
    sm.apply_entry(&entry(3, req(2)))
        .expect("a gap is allowed with the check relaxed");
    for index in [3, 2, 1] {
        let err = sm.apply_entry(&entry(index, req(3))).unwrap_err();
        assert!(
            err.to_string().contains("apply out of order"),
            "{index}: {err}"
        );
    }
    assert_eq!(sm.applied().map(|l| l.index), Some(3));
    assert!(
        sm.reader().tenant("t3").is_err(),
        "nothing of a refused entry applied"
    );
}

#[tokio::test]
async fn a_missing_database_is_an_error_not_an_empty_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    h.create_tenant("t", Quotas::unlimited()).unwrap();
    drop(h);
    std::fs::remove_dir_all(dir.path().join("db-000001")).unwrap();
    let err = raftgraph::state_machine::StateMachine::open(config(dir.path()))
        .await
        .err()
        .expect("opening must fail");
    assert!(err.to_string().contains("db-000001"), "{err}");
    std::fs::write(dir.path().join("CURRENT"), "garbage").unwrap();
    let err = raftgraph::state_machine::StateMachine::open(config(dir.path()))
        .await
        .err()
        .expect("opening must fail");
    assert!(
        err.to_string().contains("malformed database pointer"),
        "{err}"
    );
}

#[tokio::test]
async fn one_entry_is_bounded_in_bytes_written_and_edges_cascaded() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    let limits = ClusterLimits {
        cascade_edges_max: 5,
        entry_write_bytes_max: 1 << 20,
        ..ClusterLimits::default()
    };
    h.run(0, Command::SetLimits(limits)).outcome.unwrap();
    h.create_tenant("t", Quotas::unlimited()).unwrap();

    // A node of ~600 KB, rewritten twice in one request: each rewrite counts, so the second
    // passes the 1 MiB bound although usage barely grows.
    let big = Value::Bytes(vec![7; 600_000]);
    let n = created(&h.write("t", vec![create_node(&[], &[("b", big)])]).unwrap()[0]);
    let touch = |i: i64| Op::UpdateNode {
        node: NodeRef::Id(n),
        set: props(&[("i", Value::Int(i))]),
        remove: names(&[]),
    };
    let before = h.reader().tenant_digest("t").unwrap();
    let err = h.write("t", vec![touch(1), touch(2)]).unwrap_err();
    let ApplyError::RequestTooLarge {
        tenant,
        written,
        limit,
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!((tenant.as_str(), *limit), ("t", 1 << 20));
    assert!(*written > 1 << 20, "{err}");
    assert_eq!(
        h.reader().tenant_digest("t").unwrap(),
        before,
        "nothing applied"
    );
    h.write("t", vec![touch(1)]).unwrap();

    // Two hubs with 3 edges each: one delete passes the limit of 5, both in one entry do not.
    let mut ops = vec![create_node(&[], &[]), create_node(&[], &[])];
    for _ in 0..3 {
        for hub in [0, 1] {
            ops.push(Op::CreateEdge {
                source: NodeRef::Created(hub),
                target: NodeRef::Id(n),
                edge_type: "e".into(),
                properties: Default::default(),
            });
        }
    }
    let r = h.write("t", ops).unwrap();
    let (a, b) = (created(&r[0]), created(&r[1]));
    let del = |id| Op::DeleteNode {
        node: NodeRef::Id(id),
    };
    let err = h.write("t", vec![del(a), del(b)]).unwrap_err();
    assert_eq!(
        err,
        ApplyError::CascadeTooLarge {
            tenant: "t".into(),
            node: b,
            edges: 6,
            limit: 5
        }
    );
    h.write("t", vec![del(a)]).unwrap();
    h.write("t", vec![del(b)]).unwrap();
    assert_eq!(h.reader().tenant("t").unwrap().usage.edges, 0);
}

/// The byte bound holds per entry: requests batched into one entry share it, so an entry of
/// many requests, each under the bound alone, never buffers more than the bound.
#[tokio::test]
async fn the_write_byte_bound_holds_per_entry_not_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    let limits = ClusterLimits {
        entry_write_bytes_max: 1 << 20,
        ..ClusterLimits::default()
    };
    h.run(0, Command::SetLimits(limits)).outcome.unwrap();
    h.create_tenant("t", Quotas::unlimited()).unwrap();

    // Four clients each create a ~400 KB node: alone each fits 1 MiB, batched only two do.
    let big = || create_node(&[], &[("b", Value::Bytes(vec![7; 400_000]))]);
    let requests: Vec<Request> = (10..14)
        .map(|client| {
            let cmd = Command::Write(WriteRequest {
                tenant: "t".into(),
                preconditions: vec![],
                operations: vec![big()],
            });
            Request::new(client, 1, h.clock, cmd).unwrap()
        })
        .collect();
    use openraft::entry::RaftEntry;
    let e = raftgraph::raft::Entry::new_normal(
        log_id(1, h.next_index),
        raftgraph::command::Proposal {
            requests: std::sync::Arc::new(requests),
        },
    );
    h.next_index += 1;
    let responses = h.sm.apply_entry(&e).expect("not fatal").responses;
    assert_eq!(responses.len(), 4);
    assert!(responses[0].outcome.is_ok() && responses[1].outcome.is_ok());
    for r in &responses[2..] {
        let Err(
            err @ ApplyError::EntryTooLarge {
                earlier,
                written,
                limit,
                ..
            },
        ) = &r.outcome
        else {
            panic!("{:?}", r.outcome)
        };
        assert_eq!(*limit, 1 << 20);
        assert!(*earlier > 800_000 && *written > 400_000, "{err}");
        assert!(err.to_string().contains("same Raft entry"), "{err}");
    }
    assert_eq!(h.reader().tenant("t").unwrap().usage.nodes, 2);
    // The same write alone, in an entry of its own, fits.
    h.write("t", vec![big()]).unwrap();
}

#[tokio::test]
async fn a_used_sequence_with_another_request_is_refused_not_answered() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    for t in ["a", "b"] {
        h.create_tenant(t, Quotas::unlimited()).unwrap();
    }
    let write = |tenant: &str, seq| {
        Request::new(
            42,
            seq,
            seq as i64,
            Command::Write(WriteRequest {
                tenant: tenant.into(),
                preconditions: vec![],
                operations: vec![create_node(&[], &[])],
            }),
        )
        .unwrap()
    };
    let first = h.apply(write("a", 1));
    // The same request, re-stamped by a new leader: the stored response.
    let mut again = write("a", 1);
    again.timestamp_micros = 99;
    assert_eq!(h.apply(again), first);
    // Another tenant's request under the same (client, sequence): refused, nothing leaks.
    let other = h.apply(write("b", 1)).outcome.unwrap_err();
    assert_eq!(
        other,
        ApplyError::SequenceReused {
            client_id: 42,
            sequence: 1
        }
    );
    assert_eq!(h.reader().tenant("b").unwrap().usage.nodes, 0);
    assert_eq!(
        h.reader()
            .session(Credential::Open, 42)
            .unwrap()
            .unwrap()
            .sequence,
        1
    );
}

#[tokio::test]
async fn tenant_configs_are_validated_replicated_and_read_back_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    h.create_tenant("t", Quotas::default()).unwrap();
    let provider = |key: Secret| LlmProviderConfig {
        provider: LlmProvider::Anthropic,
        model: "m".into(),
        endpoint: Some("https://example.invalid".into()),
        api_key: Some(key),
    };
    let config = |key| TenantConfig {
        llm: Some(provider(key)),
        ..TenantConfig::default()
    };
    let set = |c| Command::SetTenantConfig {
        tenant: "t".into(),
        config: c,
    };
    // A read's redacted placeholder sent back as a config is refused (it would erase the key).
    let err = h.run(0, set(config(Secret::Redacted))).outcome.unwrap_err();
    assert!(err.to_string().contains("llm.api_key"), "{err}");
    // A plain secret never enters the state: the API seals it before proposing, and apply
    // refuses one that was not.
    let err = h
        .run(0, set(config(Secret::new("sk-123"))))
        .outcome
        .unwrap_err();
    assert!(
        err.to_string().contains("llm.api_key") && err.to_string().contains("sealed"),
        "{err}"
    );
    h.run(0, set(config(sealed("sk-123", "t", "llm.api_key"))))
        .outcome
        .unwrap();
    let info = h.reader().tenant("t").unwrap();
    let llm = info.config.llm.unwrap();
    assert_eq!(
        (llm.model.as_str(), llm.api_key),
        ("m", Some(Secret::Redacted))
    );
}

/// Tenant pages are bounded in bytes as well as count: 24 configs of ~525 KB each (12.6 MB)
/// do not fit one page of the 8 MiB budget, and the cursor continues it without loss or repeat.
#[tokio::test]
async fn tenant_pages_stop_at_the_byte_budget_and_continue_by_cursor() {
    use raftgraph::state_machine::PAGE_BYTES_MAX;
    use raftgraph::tenant::ToolConfig;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    let long = |c: char| c.to_string().repeat(4096);
    let config = TenantConfig {
        tools: (0..64)
            .map(|i| ToolConfig {
                name: format!("tool{i}"),
                description: long('d'),
                enabled: true,
                api_key: Some(sealed(&long('k'), "t", "tools.api_key")),
            })
            .collect(),
        ..TenantConfig::default()
    };
    for i in 0..24 {
        let cmd = Command::CreateTenant {
            tenant: format!("t{i:02}"),
            quotas: Quotas::unlimited(),
            config: config.clone(),
        };
        h.run(0, cmd).outcome.unwrap();
    }
    let rd = h.reader();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let p = rd.tenants(after.as_deref(), 1000).unwrap();
        pages += 1;
        assert!(!p.items.is_empty());
        // A page stops once its records reach the budget: about 8 MiB / 525 KB = 16 of them.
        let most = PAGE_BYTES_MAX / (64 * 2 * 4096) + 1;
        assert!(
            p.items.len() <= most,
            "{} tenants in one page",
            p.items.len()
        );
        seen.extend(p.items.iter().map(|t| t.id.clone()));
        match p.next {
            Some(n) => after = Some(String::from_utf8(n).unwrap()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..24).map(|i| format!("t{i:02}")).collect();
    assert_eq!(seen, expected);
    assert_eq!(pages, 2);
    // An exact-count page that ends the list carries no cursor.
    let all = rd.tenants(Some("t21"), 2).unwrap();
    assert_eq!(all.items.len(), 2);
    assert!(all.next.is_none());
}

/// The byte bound stops buffering as soon as it is passed, also inside one operation's cascade.
#[tokio::test]
async fn a_cascade_stops_buffering_at_the_byte_bound() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    let limits = ClusterLimits {
        entry_write_bytes_max: 1 << 20,
        ..ClusterLimits::default()
    };
    h.run(0, Command::SetLimits(limits)).outcome.unwrap();
    h.create_tenant("t", Quotas::unlimited()).unwrap();
    let hub = created(&h.write("t", vec![create_node(&[], &[])]).unwrap()[0]);
    let long_type = "x".repeat(256);
    for _ in 0..3 {
        let ops = (0..1000)
            .map(|_| Op::CreateEdge {
                source: NodeRef::Id(hub),
                target: NodeRef::Id(hub),
                edge_type: long_type.clone(),
                properties: Default::default(),
            })
            .collect();
        h.write("t", ops).unwrap();
    }
    let err = h
        .write(
            "t",
            vec![Op::DeleteNode {
                node: NodeRef::Id(hub),
            }],
        )
        .unwrap_err();
    let ApplyError::RequestTooLarge { written, limit, .. } = err else {
        panic!("{err}")
    };
    // At most one key (≤ 300 bytes here) past the limit was buffered, not the whole cascade.
    assert!(
        written > limit && written <= limit + 300,
        "{written} vs {limit}"
    );
    assert_eq!(h.reader().tenant("t").unwrap().usage.edges, 3000);
}

#[tokio::test]
async fn pages_of_large_nodes_stop_at_the_byte_budget_and_continue_by_cursor() {
    use raftgraph::state_machine::PAGE_BYTES_MAX;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    h.create_tenant("t", Quotas::unlimited()).unwrap();
    // 8 nodes of three 1 MiB values each (~3 MiB): 24 MiB in all, over the page byte budget.
    for i in 0..8u8 {
        let mb = |b: u8| Value::Bytes(vec![b; 1 << 20]);
        h.write(
            "t",
            vec![create_node(
                &["Big"],
                &[("a", mb(i)), ("b", mb(i)), ("c", mb(i))],
            )],
        )
        .unwrap();
    }
    let rd = h.reader();
    type Pager<'a> =
        Box<dyn Fn(Option<&[u8]>) -> raftgraph::state_machine::Page<raftgraph::command::Node> + 'a>;
    let pagers: [(&str, Pager); 2] = [
        (
            "by label",
            Box::new(|after| rd.nodes_by_label("t", "Big", after, 1000).unwrap()),
        ),
        (
            "scan",
            Box::new(|after| rd.scan_nodes("t", after, 1000).unwrap()),
        ),
    ];
    for (what, page) in pagers {
        let mut seen = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        let mut pages = 0;
        loop {
            let p = page(after.as_deref());
            pages += 1;
            assert!(!p.items.is_empty(), "{what}: empty page");
            // At most the budget plus the one node that crossed it.
            assert!(
                p.items.len() <= PAGE_BYTES_MAX / (3 << 20) + 1,
                "{what}: {}",
                p.items.len()
            );
            seen.extend(p.items.iter().map(|n| n.id));
            match p.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        // Each ~3 MiB node counts whole: a page closes at the first node that reaches the
        // budget.
        let per_page = PAGE_BYTES_MAX.div_ceil(3 << 20);
        assert_eq!(pages, 8usize.div_ceil(per_page), "{what}");
        assert_eq!(
            seen,
            (1..=8).collect::<Vec<u64>>(),
            "{what}: every node once, in order"
        );
    }
}

/// Tokens in the replicated state: only hashes stored, a tenant's tokens need the tenant and go
/// with it (a tenant re-created under the same id is not open to them), a tenant admin's revoke
/// reaches its own tenant's tokens only, and the count is bounded.
#[tokio::test]
async fn tokens_are_stored_as_hashes_and_die_with_their_tenant() {
    use raftgraph::auth::{Role, Scope, Token};
    use raftgraph::command::NewToken;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    use rand::{RngCore, SeedableRng};
    let rng = std::cell::RefCell::new(rand::rngs::SmallRng::seed_from_u64(7));
    let random = |b: &mut [u8]| rng.borrow_mut().fill_bytes(b);
    let new = |t: &Token, scope: Scope, expires: Option<i64>| NewToken {
        id: t.id,
        scope,
        hash: t.hash(),
        expires_micros: expires,
        last4: t.last4(),
    };
    let of_a = |role| Scope::Tenant {
        tenant: "a".into(),
        role,
    };
    let mut client = 100;
    let mut run = |h: &mut Harness, c: Command| {
        client += 1;
        h.run(client, c).outcome
    };
    let t1 = Token::generate(&random);
    // The tenant must exist.
    let r = run(
        &mut h,
        Command::CreateToken(new(&t1, of_a(Role::Write), None)),
    );
    assert!(matches!(r, Err(ApplyError::TenantNotFound { .. })), "{r:?}");
    h.create_tenant("a", Quotas::unlimited()).unwrap();
    h.create_tenant("b", Quotas::unlimited()).unwrap();
    let r = run(
        &mut h,
        Command::CreateToken(new(&t1, of_a(Role::Write), None)),
    );
    let Ok(Outcome::Token(info)) = r else {
        panic!("{r:?}")
    };
    assert_eq!((info.id, info.last4.as_str()), (t1.id, &t1.expose()[81..]));
    let stored = h.reader().token(t1.id).unwrap().unwrap();
    assert!(stored.matches(&t1));
    // The same id again, an expiry not after the creation time: refused.
    let r = run(
        &mut h,
        Command::CreateToken(new(&t1, of_a(Role::Read), None)),
    );
    assert!(matches!(r, Err(ApplyError::TokenExists { .. })), "{r:?}");
    let t2 = Token::generate(&random);
    let r = run(
        &mut h,
        Command::CreateToken(new(&t2, Scope::Cluster, Some(i64::MIN))),
    );
    assert!(
        matches!(r, Err(ApplyError::InvalidArgument { .. })),
        "{r:?}"
    );
    let r = run(&mut h, Command::CreateToken(new(&t2, Scope::Cluster, None)));
    assert!(r.is_ok(), "{r:?}");
    // b's admin cannot revoke a's token: it answers as a missing one.
    let r = run(
        &mut h,
        Command::RevokeToken {
            id: t1.id,
            tenant: Some("b".into()),
        },
    );
    assert!(matches!(r, Err(ApplyError::TokenNotFound { .. })), "{r:?}");
    assert!(h.reader().token(t1.id).unwrap().is_some());
    let listed = h.reader().tokens(Some("a"), None, 10).unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(h.reader().tokens(None, None, 10).unwrap().items.len(), 2);
    // Deleting tenant a deletes its token; a new tenant a is not open to it.
    let r = run(&mut h, Command::DeleteTenant { tenant: "a".into() });
    assert!(r.is_ok(), "{r:?}");
    assert!(h.reader().token(t1.id).unwrap().is_none());
    assert!(h.reader().token(t2.id).unwrap().is_some(), "others stay");
    h.create_tenant("a", Quotas::unlimited()).unwrap();
    assert!(h.reader().token(t1.id).unwrap().is_none());
    // One tenant cannot use up the cluster's tokens: 1,000 each.
    for i in 0..=raftgraph::auth::TOKENS_PER_TENANT_MAX {
        let t = Token::generate(&random);
        let b = Scope::Tenant {
            tenant: "b".into(),
            role: Role::Read,
        };
        let r = run(&mut h, Command::CreateToken(new(&t, b, None)));
        if i < raftgraph::auth::TOKENS_PER_TENANT_MAX {
            assert!(r.is_ok(), "{i}: {r:?}");
        } else {
            let e = r.unwrap_err().to_string();
            assert!(e.contains("tenant b has its limit of 1000 tokens"), "{e}");
        }
    }
    let r = run(&mut h, Command::DeleteTenant { tenant: "b".into() });
    assert!(r.is_ok(), "{r:?}");
    // Revoked by a cluster admin: gone.
    let r = run(
        &mut h,
        Command::RevokeToken {
            id: t2.id,
            tenant: None,
        },
    );
    assert!(r.is_ok(), "{r:?}");
    assert!(h.reader().tokens(None, None, 10).unwrap().items.is_empty());
    // Nothing of a token but its hash is in the database.
    let secret = t2.expose()[21..].to_string();
    for e in walk(dir.path()) {
        let bytes = std::fs::read(&e).unwrap_or_default();
        assert!(
            !bytes.windows(64).any(|w| w == secret.as_bytes()),
            "{} holds a token",
            e.display()
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `ResealSecrets` replaces a secret only where the config still holds the sealed value it was
/// read as: a secret changed since (a config set in between) is left as it is.
#[tokio::test]
async fn a_reseal_replaces_only_the_secrets_it_read() {
    use raftgraph::command::Resealed;
    use raftgraph::tenant::{Keyring, ToolConfig};
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    let old = |plain: &str, field: &str| match sealed(plain, "t", field) {
        Secret::Sealed(s) => s,
        other => panic!("{other:?}"),
    };
    let tool = |key: Secret| ToolConfig {
        name: "x".into(),
        description: String::new(),
        enabled: true,
        api_key: Some(key),
    };
    let config = TenantConfig {
        tools: vec![
            tool(sealed("a", "t", "tools[0].api_key")),
            tool(sealed("b", "t", "tools[1].api_key")),
        ],
        ..TenantConfig::default()
    };
    let create = Command::CreateTenant {
        tenant: "t".into(),
        quotas: Quotas::default(),
        config,
    };
    h.run(0, create).outcome.unwrap();
    let k2 = Keyring::parse(&format!("k1 {}\nk2 {}\n", "5a".repeat(32), "77".repeat(32))).unwrap();
    let reseal = |plain: &str, field: &str, was: &str| Resealed {
        field: field.into(),
        old: old(was, field),
        new: k2.seal(plain, "t", field),
    };
    // The second secret was changed to "c" before the reseal (which read "b") applies.
    let cmd = Command::ResealSecrets {
        tenant: "t".into(),
        secrets: vec![
            reseal("a", "tools[0].api_key", "a"),
            reseal("b", "tools[1].api_key", "c"),
        ],
    };
    let r = h.run(0, cmd).outcome.unwrap();
    assert_eq!(r, Outcome::Resealed(1));
    let mut stored = h.reader().sealed_config("t").unwrap();
    let ids: Vec<String> = stored
        .secrets_mut()
        .into_iter()
        .map(|(_, s)| match s {
            Secret::Sealed(s) => s.key_id.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids, ["k2", "k1"]);
    let Secret::Sealed(s) = &*stored.secrets_mut()[0].1 else {
        panic!()
    };
    assert_eq!(k2.open(s, "t", "tools[0].api_key").unwrap().as_str(), "a");
}

#[tokio::test]
async fn rate_limits_are_stored_apart_checked_and_die_with_their_tenant() {
    use raftgraph::tenant::RateLimits;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    h.create_tenant("r", Quotas::default()).unwrap();
    let set = |limits| Command::SetRateLimits {
        tenant: "r".into(),
        limits,
    };
    // A tenant has none until they are set.
    assert_eq!(
        h.reader().rate_limits("r").unwrap(),
        Some(RateLimits::UNLIMITED)
    );
    assert_eq!(h.reader().rate_limits("none").unwrap(), None);
    assert_eq!(h.reader().rate_limits("Bad Id").unwrap(), None);
    let limits = RateLimits {
        requests_per_sec: Some(100),
        bytes_per_sec: Some(1 << 20),
    };
    match h.run(0, set(limits)).outcome.unwrap() {
        Outcome::RateLimits(t, l) => {
            assert_eq!((t.id.as_str(), l), ("r", limits));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.reader().rate_limits("r").unwrap(), Some(limits));
    // Out of range: refused, naming the field; nothing changed.
    for (bad, field) in [
        (
            RateLimits {
                requests_per_sec: Some(0),
                bytes_per_sec: None,
            },
            "requests_per_sec",
        ),
        (
            RateLimits {
                requests_per_sec: None,
                bytes_per_sec: Some(1),
            },
            "bytes_per_sec",
        ),
    ] {
        let err = h.run(0, set(bad)).outcome.unwrap_err();
        assert!(
            matches!(&err, ApplyError::InvalidArgument { field: f, .. } if f == field),
            "{err}"
        );
    }
    assert_eq!(h.reader().rate_limits("r").unwrap(), Some(limits));
    let err = h
        .run(
            0,
            Command::SetRateLimits {
                tenant: "none".into(),
                limits,
            },
        )
        .outcome
        .unwrap_err();
    assert!(matches!(err, ApplyError::TenantNotFound { .. }), "{err}");
    // Deleted with the tenant: one created again under the same id starts unlimited.
    h.run(0, Command::DeleteTenant { tenant: "r".into() })
        .outcome
        .unwrap();
    assert_eq!(h.reader().rate_limits("r").unwrap(), None);
    h.create_tenant("r", Quotas::default()).unwrap();
    assert_eq!(
        h.reader().rate_limits("r").unwrap(),
        Some(RateLimits::UNLIMITED)
    );
}

/// A label page reads the index and the nodes at one point: a node deleted (or changed) by an
/// entry applied between the two is still returned as it was. (Regression: the nodes were read
/// from the latest state, so a concurrent delete made the read fail as "corrupt: label index
/// names missing node", and a concurrent update mixed states in one page.)
#[tokio::test]
async fn a_label_page_is_one_point_in_time_while_entries_apply() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::open(dir.path()).await;
    h.create_tenant("t", Quotas::unlimited()).unwrap();
    let r = h
        .write(
            "t",
            vec![
                create_node(&["acct"], &[("v", Value::Int(50))]),
                create_node(&["acct"], &[("v", Value::Int(50))]),
            ],
        )
        .unwrap();
    let (a, b) = (created(&r[0]), created(&r[1]));
    let rd = h.reader();
    let page = rd
        .nodes_by_label_with("t", "acct", None, 10, || {
            // Between the index and the nodes: a transfer from b to a, then b deleted.
            h.write(
                "t",
                vec![
                    Op::UpdateNode {
                        node: NodeRef::Id(a),
                        set: props(&[("v", Value::Int(100))]),
                        remove: Default::default(),
                    },
                    Op::DeleteNode {
                        node: NodeRef::Id(b),
                    },
                ],
            )
            .unwrap();
        })
        .expect("a page, not an error");
    let seen: Vec<(u64, Option<&Value>)> = page
        .items
        .iter()
        .map(|n| (n.id, n.properties.get("v")))
        .collect();
    assert_eq!(
        seen,
        vec![(a, Some(&Value::Int(50))), (b, Some(&Value::Int(50)))],
        "the state before the entry, whole"
    );
    let after = rd.nodes_by_label("t", "acct", None, 10).unwrap();
    assert_eq!(
        after.items.len(),
        1,
        "and the entry's effect on the next read"
    );
}
