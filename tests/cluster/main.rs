//! Whole nodes (`raftgraph::server::Node`: data directory, WAL, RocksDB, every gRPC service) in
//! one process, each on its own tokio runtime over real loopback gRPC, driven through the Rust
//! client and the cluster service. A crash is the node's runtime shut down with its tasks
//! aborted where they stand (no graceful shutdown, no leadership hand-off); a restart opens the
//! same data directory on the same port without `init`.
//!
//! Waits are on openraft metrics or on client calls with generous bounds (60 s); nothing asserts
//! how long something took. The one fixed wait — ten election timeouts of a cut-off node in the
//! pre-vote test — is the scenario itself, and a slow machine only makes it milder.

mod harness;
#[path = "../helpers/mod.rs"]
mod helpers;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use raftgraph::client::{Client, ClientOptions};
use raftgraph::proto::v1 as pb;
use raftgraph::proto::v1::cluster_service_client::ClusterServiceClient;
use raftgraph::proto::v1::graph_service_client::GraphServiceClient;
use raftgraph::proto::v1::raft_service_client::RaftServiceClient;

use harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_leader_is_replaced_no_acknowledged_write_is_lost_and_it_rejoins_on_restart() {
    let mut cluster = Cluster::start(3, FAST, false).await;
    let client = cluster.client(1);
    create_tenant(&client, "t").await;

    // Writes through the leader and through a follower (the client is pointed at one node).
    let mut acknowledged = BTreeMap::new();
    write_named(&client, "t", "before", 30, &mut acknowledged).await;
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let via_follower = Client::new(
        vec![cluster.nodes[&follower].advertise()],
        ClientOptions {
            client_id: Some(2),
            deadline: WAIT,
            ..Default::default()
        },
    )
    .unwrap();
    write_named(&via_follower, "t", "follower", 10, &mut acknowledged).await;

    // Writes sent to the follower itself are forwarded: the leader's batcher proposes and
    // counts them; the follower's counts nothing (its proposals are refused with the
    // leader's address).
    let (leader_addr, follower_addr) = (
        cluster.nodes[&leader].advertise(),
        cluster.nodes[&follower].advertise(),
    );
    let (leader_before, follower_before) =
        (batched(&leader_addr).await, batched(&follower_addr).await);
    let mut direct = GraphServiceClient::connect(format!("http://{follower_addr}"))
        .await
        .unwrap();
    for seq in 1..=5u64 {
        let name = format!("forwarded-{seq}");
        let r = direct
            .write(pb::WriteRequest {
                tenant: "t".into(),
                request_id: Some(pb::RequestId {
                    client_id: 3,
                    sequence: seq,
                    resent: false,
                }),
                preconditions: vec![],
                operations: vec![node_op(&name)],
            })
            .await
            .unwrap_or_else(|s| panic!("write {name} through node {follower}: {s}"))
            .into_inner();
        match r.results[0].result {
            Some(pb::op_result::Result::NodeCreated(id)) => acknowledged.insert(id, name),
            ref other => panic!("unexpected result {other:?}"),
        };
    }
    let (writes, entries) = batched(&leader_addr).await;
    assert!(
        writes >= leader_before.0 + 5 && entries > leader_before.1 && entries <= writes,
        "leader {leader}: batched {leader_before:?} before, {:?} after",
        (writes, entries)
    );
    assert_eq!(
        batched(&follower_addr).await,
        follower_before,
        "follower {follower}"
    );
    // A linearizable read after a write, from every node.
    let (last_id, last_name) = acknowledged.last_key_value().unwrap();
    for n in cluster.nodes.values() {
        let got = read_at(&n.advertise(), "t", *last_id).await.unwrap();
        assert_eq!(&name_of(&got), last_name);
    }

    // Follower reads are served after the leader's read index: the leader answers an index
    // covering every acknowledged write; a follower refuses to give one.
    let applied = cluster.nodes[&leader]
        .node()
        .raft()
        .metrics()
        .borrow_watched()
        .last_applied
        .unwrap()
        .index;
    let mut peer = RaftServiceClient::new(cluster.peer_channel(leader, follower));
    let index = peer
        .read_index(pb::ReadIndexRequest {})
        .await
        .unwrap()
        .into_inner()
        .index;
    assert!(index >= applied, "read index {index} < applied {applied}");
    let mut peer = RaftServiceClient::new(cluster.peer_channel(follower, leader));
    let s = peer.read_index(pb::ReadIndexRequest {}).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");

    // The leader crashes; writes go on (the client retries until a new leader answers).
    let old_term = cluster.term(leader);
    cluster.crash(leader).await;
    write_named(&client, "t", "after", 30, &mut acknowledged).await;
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    assert!(
        cluster.term(new_leader) > old_term,
        "a new term elected the new leader"
    );

    // Every acknowledged write is readable, linearizably, from each survivor.
    for (id, n) in cluster.live() {
        let addr = cluster.nodes[&id].advertise();
        for (node_id, name) in &acknowledged {
            let got = read_at(&addr, "t", *node_id).await.unwrap();
            assert_eq!(
                &name_of(&got),
                name,
                "node {node_id} read through node {id}"
            );
        }
        assert_eq!(
            n.reader().tenant("t").unwrap().usage.nodes,
            acknowledged.len() as u64
        );
    }

    // The crashed node restarts from its data directory (no init) and catches up.
    cluster.restart(leader).await;
    write_named(&client, "t", "rejoined", 10, &mut acknowledged).await;
    cluster.assert_same_state().await;
    let rejoined = cluster.nodes[&leader].node();
    assert_eq!(
        rejoined.reader().tenant("t").unwrap().usage.nodes,
        acknowledged.len() as u64
    );
    let (last_id, last_name) = acknowledged.last_key_value().unwrap();
    let got = read_at(&cluster.nodes[&leader].advertise(), "t", *last_id)
        .await
        .unwrap();
    assert_eq!(&name_of(&got), last_name);

    // A retried write (same client id and sequence) applies once, even through another node.
    let req = pb::WriteRequest {
        tenant: "t".into(),
        request_id: Some(pb::RequestId {
            client_id: 777,
            sequence: 1,
            resent: false,
        }),
        preconditions: vec![],
        operations: vec![node_op("once")],
    };
    let mut answers = BTreeSet::new();
    for n in cluster.nodes.values() {
        let mut g = GraphServiceClient::connect(format!("http://{}", n.advertise()))
            .await
            .unwrap();
        let r = g.write(req.clone()).await.unwrap().into_inner();
        answers.insert(format!("{:?}", r.results));
    }
    assert_eq!(answers.len(), 1, "every retry got the first answer");
    cluster.converge().await;
    for (_, n) in cluster.live() {
        assert_eq!(
            n.reader().tenant("t").unwrap().usage.nodes,
            acknowledged.len() as u64 + 1
        );
    }

    // Bad requests get the right code and a message naming the problem; the node keeps serving.
    let addr = cluster.nodes[&follower].advertise();
    let mut g = GraphServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let s = g
        .get_node(linearizable("no-such-tenant", 1))
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::NotFound, "{s:?}");
    assert!(s.message().contains("no-such-tenant"), "{}", s.message());
    let s = g
        .write(pb::WriteRequest {
            tenant: "t".into(),
            request_id: Some(pb::RequestId {
                client_id: 9,
                sequence: 1,
                resent: false,
            }),
            preconditions: vec![],
            operations: vec![pb::Operation { op: None }],
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("operations[0]"), "{}", s.message());
    client
        .set_tenant_enabled(pb::SetTenantEnabledRequest {
            request_id: None,
            id: "t".into(),
            enabled: false,
        })
        .await
        .unwrap();
    let s = client
        .write(pb::WriteRequest {
            tenant: "t".into(),
            request_id: None,
            preconditions: vec![],
            operations: vec![node_op("refused")],
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
    assert!(
        s.message().contains("t") && s.message().contains("disabled"),
        "{}",
        s.message()
    );
    // Reads of a disabled tenant are refused the same way; enabled again, it serves.
    let s = read_at(&addr, "t", *last_id).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
    client
        .set_tenant_enabled(pb::SetTenantEnabledRequest {
            request_id: None,
            id: "t".into(),
            enabled: true,
        })
        .await
        .unwrap();
    let got = read_at(&addr, "t", *last_id).await.unwrap();
    assert_eq!(&name_of(&got), last_name, "still serving reads");

    // A new client whose first write is refused at the edge (never reaching the log) is not
    // stuck: its next write goes out in a fresh session and applies.
    let fresh = cluster.client(4242);
    let s = fresh
        .write(pb::WriteRequest {
            tenant: "t".into(),
            request_id: None,
            preconditions: vec![],
            operations: vec![pb::Operation { op: None }],
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    let id = write_node(&fresh, "t", "after-refusal").await;
    assert_eq!(
        name_of(&read_at(&addr, "t", id).await.unwrap()),
        "after-refusal"
    );
    cluster.stop().await;
}

/// Regression: a leader that restarted within its term resumed leading at once (openraft's
/// leader restore) with the committed id it read back, which may lag what it acknowledged,
/// and answered a linearizable read that missed an acknowledged write (the simulation, after
/// a power cut of all three nodes). A restarted cluster must elect a leader in a new term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cluster_restart_elects_a_leader_in_a_new_term_before_serving() {
    let mut cluster = Cluster::start(3, FAST, false).await;
    let client = cluster.client(1);
    create_tenant(&client, "t").await;
    let mut acknowledged = BTreeMap::new();
    write_named(&client, "t", "before", 20, &mut acknowledged).await;

    // Every node stops where it stands, the leader first, and all restart together.
    let leader = cluster.leader().await;
    let old_term = cluster.term(leader);
    let order: Vec<u64> = std::iter::once(leader)
        .chain((1..=3).filter(|id| *id != leader))
        .collect();
    for id in &order {
        cluster.crash(*id).await;
    }
    for id in &order {
        cluster.restart(*id).await;
    }

    // Whoever leads now was elected in a later term: the old leader did not resume its own.
    let new_leader = cluster.leader().await;
    let term = cluster.term(new_leader);
    assert!(
        term > old_term,
        "node {new_leader} leads in term {term}, the term before the restart was {old_term}"
    );
    // And every acknowledged write is read back linearizably through every node.
    for n in cluster.nodes.values() {
        for (node_id, name) in &acknowledged {
            let got = read_at(&n.advertise(), "t", *node_id).await.unwrap();
            assert_eq!(&name_of(&got), name, "node {node_id}");
        }
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_joins_as_learner_is_promoted_an_old_node_is_removed_and_leadership_moves() {
    let mut cluster = Cluster::start(3, FAST, false).await;
    let client = cluster.client(1);
    create_tenant(&client, "t").await;
    let mut written = BTreeMap::new();
    write_named(&client, "t", "n", 20, &mut written).await;

    // Node 4 joins as a learner through a follower (forwarded to the leader) and catches up.
    cluster.add_node(4, false).await;
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let mut cc =
        ClusterServiceClient::connect(format!("http://{}", cluster.nodes[&follower].advertise()))
            .await
            .unwrap();
    let r = cc
        .add_learner(pb::AddLearnerRequest {
            member: Some(pb::Member {
                id: 4,
                addr: cluster.nodes[&4].advertise(),
                peer_addr: cluster.nodes[&4].peer_advertise(),
            }),
            wait: true,
        })
        .await
        .unwrap()
        .into_inner();
    let m = r.membership.unwrap();
    assert_eq!(m.learners.iter().map(|m| m.id).collect::<Vec<_>>(), [4]);
    let r = cc
        .promote(pb::PromoteRequest { ids: vec![4] })
        .await
        .unwrap()
        .into_inner();
    let voters: BTreeSet<u64> = r.membership.unwrap().voters.iter().map(|m| m.id).collect();
    assert_eq!(voters, BTreeSet::from([1, 2, 3, 4]));

    // Writes continue while node 1 is removed (it may be the leader; leadership then moves).
    let writer = tokio::spawn({
        let client = cluster.client(2);
        async move {
            let mut w = BTreeMap::new();
            write_named(&client, "t", "during", 30, &mut w).await;
            w
        }
    });
    let r = cc
        .remove(pb::RemoveRequest { ids: vec![1] })
        .await
        .unwrap()
        .into_inner();
    let voters: BTreeSet<u64> = r.membership.unwrap().voters.iter().map(|m| m.id).collect();
    assert_eq!(voters, BTreeSet::from([2, 3, 4]));
    written.extend(writer.await.unwrap());
    // A retried remove (as after a lost reply) succeeds and changes nothing. Through the
    // client: right after the leader removed itself, nodes may briefly know no leader.
    let r = cluster
        .client(3)
        .cluster(|mut cc| async move { cc.remove(pb::RemoveRequest { ids: vec![1] }).await })
        .await
        .unwrap();
    let voters: BTreeSet<u64> = r.membership.unwrap().voters.iter().map(|m| m.id).collect();
    assert_eq!(voters, BTreeSet::from([2, 3, 4]));
    cluster.crash(1).await;
    cluster.nodes.remove(&1);

    // No write lost, on any remaining node, node 4 included.
    let leader = cluster.leader().await;
    cluster.converge().await;
    for (id, n) in cluster.live() {
        assert_eq!(
            n.reader().tenant("t").unwrap().usage.nodes,
            written.len() as u64,
            "node {id}"
        );
    }
    let addr4 = cluster.nodes[&4].advertise();
    for (node_id, name) in &written {
        assert_eq!(
            &name_of(&read_at(&addr4, "t", *node_id).await.unwrap()),
            name
        );
    }

    // Leadership moves to a chosen voter on request (sent to a non-leader: forwarded).
    let to = [2, 3, 4].into_iter().find(|id| *id != leader).unwrap();
    let asked = [2, 3, 4]
        .into_iter()
        .find(|id| *id != leader && *id != to)
        .unwrap();
    let mut cc =
        ClusterServiceClient::connect(format!("http://{}", cluster.nodes[&asked].advertise()))
            .await
            .unwrap();
    cc.transfer_leadership(pb::TransferLeadershipRequest { to })
        .await
        .unwrap();
    cluster.nodes[&to]
        .node()
        .raft()
        .wait(Some(WAIT))
        .metrics(|m| m.current_leader == Some(to), "the chosen node leads")
        .await
        .unwrap();
    // The node asked learns of the new leader by its first heartbeat; then its status says so.
    cluster.nodes[&asked]
        .node()
        .raft()
        .wait(Some(WAIT))
        .metrics(|m| m.current_leader == Some(to), "the asked node follows")
        .await
        .unwrap();
    let status = cc.status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.leader_id, Some(to));
    assert_eq!(status.leader_addr, cluster.nodes[&to].advertise());
    let s = cc
        .transfer_leadership(pb::TransferLeadershipRequest { to: 1 })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::NotFound, "{s:?}");
    // Writes work under the new leader.
    let id = write_node(&client, "t", "after-transfer").await;
    assert_eq!(
        name_of(&read_at(&addr4, "t", id).await.unwrap()),
        "after-transfer"
    );
    // init on a running cluster is refused.
    let s = cc
        .init(pb::InitRequest {
            members: vec![pb::Member {
                id: asked,
                addr: cluster.nodes[&asked].advertise(),
                peer_addr: cluster.nodes[&asked].peer_advertise(),
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_for_ten_election_timeouts_neither_raises_the_term_nor_deposes_the_leader() {
    // Slower timing than FAST: the healthy pair must not see spurious timeouts on a busy machine.
    let timing = Timing {
        heartbeat_ms: 100,
        election_min_ms: 800,
        election_max_ms: 1600,
    };
    let cluster = Cluster::start(3, timing, true).await;
    let client = cluster.client(1);
    create_tenant(&client, "t").await;
    write_node(&client, "t", "before").await;
    cluster.converge().await;
    let leader = cluster.leader().await;
    let cut = (1..=3).find(|id| *id != leader).unwrap();
    let term = |id: u64| cluster.term(id);
    let term_before = term(leader);

    // Nothing reaches `cut` (its proxy drops every connection); its own requests still reach
    // the others, so without pre-vote its higher-term vote requests would depose the leader.
    cluster.nodes[&cut]
        .proxy
        .as_ref()
        .unwrap()
        .cut
        .send_replace(true);
    tokio::time::sleep(Duration::from_millis(10 * timing.election_max_ms)).await;
    // The cluster kept working without it.
    let id = write_node(&client, "t", "during").await;
    assert_eq!(term(cut), term_before, "the cut-off node's term rose");
    assert_eq!(term(leader), term_before, "the leader's term rose");

    cluster.nodes[&cut]
        .proxy
        .as_ref()
        .unwrap()
        .cut
        .send_replace(false);
    // Read right after healing, before the node has caught up: a linearizable read there waits
    // for the leader's read index to be applied locally, so it sees the write it missed.
    let got = read_at(&cluster.nodes[&cut].advertise(), "t", id)
        .await
        .unwrap();
    assert_eq!(name_of(&got), "during");
    cluster.converge().await;
    assert_eq!(cluster.leader().await, leader, "the leader was deposed");
    assert_eq!(term(leader), term_before);
    assert_eq!(term(cut), term_before);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maximum_size_entry_replicates_and_a_larger_one_is_refused() {
    let cluster = Cluster::start(3, FAST, false).await;
    let client = cluster.client(1);
    create_tenant(&client, "t").await;
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let follower_addr = cluster.nodes[&follower].advertise();
    // `ops` nodes each holding one 1 MiB bytes value (the per-value limit).
    let big = |ops: usize, client_id: u64| pb::WriteRequest {
        tenant: "t".into(),
        request_id: Some(pb::RequestId {
            client_id,
            sequence: 1,
            resent: false,
        }),
        preconditions: vec![],
        operations: (0..ops)
            .map(|i| pb::Operation {
                op: Some(pb::operation::Op::CreateNode(pb::CreateNode {
                    labels: vec!["Blob".into()],
                    properties: [(
                        "data".to_string(),
                        pb::Value {
                            kind: Some(pb::value::Kind::BytesValue(vec![i as u8; 1 << 20])),
                        },
                    )]
                    .into(),
                })),
            })
            .collect(),
    };
    let mut g = GraphServiceClient::connect(format!("http://{follower_addr}"))
        .await
        .unwrap()
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    // 14 MiB of values: the largest whole number of them under the 15 MiB proposal limit. Sent
    // to a follower, so it also crosses the forward to the leader.
    let r = g.write(big(14, 50)).await.unwrap().into_inner();
    assert_eq!(r.results.len(), 14);
    let last = cluster.converge().await;
    for (id, n) in cluster.live() {
        assert!(
            n.raft()
                .metrics()
                .borrow_watched()
                .last_applied
                .unwrap()
                .index
                >= last
        );
        let t = n.reader().tenant("t").unwrap();
        assert_eq!(t.usage.nodes, 14, "node {id}");
        assert!(t.usage.storage_bytes >= 14 << 20, "node {id}");
    }
    cluster.assert_same_state().await;

    // 15 MiB of values: a message the transport takes (under 16 MiB) but over the proposal
    // limit once encoded: refused at the edge with the limit named.
    let s = g.write(big(15, 51)).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("limit 15728640"), "{}", s.message());
    // 16 MiB: over the client message limit, refused by the transport before it is decoded,
    // naming the limit. Nothing applied either way; the node serves on.
    let s = g.write(big(16, 52)).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::OutOfRange, "{s:?}");
    assert!(
        s.message().contains("limit is: 16777216"),
        "{}",
        s.message()
    );
    let id = write_node(&client, "t", "small").await;
    assert_eq!(
        name_of(&read_at(&follower_addr, "t", id).await.unwrap()),
        "small"
    );
    for (_, n) in cluster.live() {
        assert_eq!(n.reader().tenant("t").unwrap().usage.nodes, 15);
    }
    cluster.stop().await;
}
