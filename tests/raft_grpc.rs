//! Three nodes in-process on loopback (port 0) with real WALs and RocksDB state machines, Raft
//! over the gRPC network: writes replicate; a node that joins after the log was purged behind a
//! snapshot catches up by the snapshot streamed over gRPC; garbage RPCs are refused; the graph
//! and tenant services forward writes from a follower once, apply a retried request id once,
//! answer linearizable reads on every node, and return the right codes. Each test builds its own
//! cluster through the same steps ([`three_members`]) and then checks one thing. Waits use
//! openraft's metrics with generous bounds, never a timing assertion.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::{Config, SnapshotPolicy};
use raftgraph::api::{Clock, GraphApi};
use raftgraph::api::{Secrets, TenantApi};
use raftgraph::command::{Command, Op, Outcome, Request, WriteRequest};
use raftgraph::peer::GrpcNetworkFactory;
use raftgraph::peer::{FreeSpace, RaftGrpc};
use raftgraph::proto::v1 as pb;
use raftgraph::proto::v1::graph_service_client::GraphServiceClient;
use raftgraph::proto::v1::graph_service_server::GraphServiceServer;
use raftgraph::proto::v1::tenant_service_client::TenantServiceClient;
use raftgraph::proto::v1::tenant_service_server::TenantServiceServer;
use raftgraph::raft::Member;
use raftgraph::state_machine::Raft;
use raftgraph::state_machine::{
    DiskHook, DiskStep, GraphReader, Phase, Stager, StateMachine, StateMachineConfig,
};
use raftgraph::tenant::{Quotas, TenantConfig};
use raftgraph::transport::Dialer;
use raftgraph::wal::{IoRuntime, StdFs, Wal, WalConfig};
use raftgraph::wire::PEER_MESSAGE_BYTES_MAX;
use tokio::net::TcpListener;

mod helpers;
use helpers::certs::TestCa;

/// The cluster's CA (one per test process).
fn ca() -> &'static TestCa {
    static CA: std::sync::OnceLock<TestCa> = std::sync::OnceLock::new();
    CA.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("raft_grpc-certs");
        TestCa::new(&dir, "test")
    })
}

/// A dialer that speaks TLS as member `id` (its certificate from [`ca`]).
fn dialer(id: u64) -> Dialer {
    static DIALERS: std::sync::Mutex<BTreeMap<u64, Dialer>> =
        std::sync::Mutex::new(BTreeMap::new());
    DIALERS
        .lock()
        .unwrap()
        .entry(id)
        .or_insert_with(|| ca().dialer_as(&ca().member(id)))
        .clone()
}

/// A channel to `addr` presenting member 1's certificate (every service here is behind the
/// peer plane's mutual TLS).
fn channel(addr: &str) -> tonic::transport::Channel {
    dialer(1).channel(addr).unwrap()
}

const WAIT: Option<Duration> = Some(Duration::from_secs(60));

struct Node {
    raft: Raft,
    reader: GraphReader,
    stager: Stager,
}

fn config() -> Arc<Config> {
    let c = Config {
        heartbeat_interval: 50,
        election_timeout_min: 300,
        election_timeout_max: 600,
        enable_pre_vote: Some(true),
        // Snapshots only when the test asks for one.
        snapshot_policy: SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: 0,
        ..Default::default()
    };
    Arc::new(c.validate().unwrap())
}

async fn start(id: u64, dir: &Path, on_disk: Option<DiskHook>) -> Node {
    let wal = Wal::open(
        WalConfig::new(dir.join("wal")),
        Arc::new(StdFs),
        IoRuntime::Thread,
    )
    .await
    .unwrap();
    let mut sm_config = StateMachineConfig::new(dir.join("sm"));
    sm_config.on_disk = on_disk;
    let sm = StateMachine::open(sm_config).await.unwrap();
    let reader = sm.reader();
    let stager = sm.stager();
    let network = GrpcNetworkFactory {
        cluster_id: "test".into(),
        dialer: dialer(id),
        ..Default::default()
    };
    let raft = Raft::new(id, config(), network, wal, sm).await.unwrap();
    Node {
        raft,
        reader,
        stager,
    }
}

/// Serves member `id`'s Raft, graph and tenant services on `listener`, all behind mutual TLS
/// (the peer listener's config: a client certificate of the CA required).
fn serve(id: u64, node: &Node, listener: TcpListener) {
    serve_with(id, node, listener, Arc::new(raftgraph::peer::free_bytes));
}

/// [`serve`], with the Raft service reading free space through `free_space`.
fn serve_with(id: u64, node: &Node, listener: TcpListener, free_space: FreeSpace) {
    let svc = RaftGrpc::new(node.raft.clone(), "test", node.stager.clone())
        .with_free_space(free_space)
        .into_service();
    let clock: Clock = Arc::new(|| 1_700_000_000_000_000);
    let (raft, reader) = (node.raft.clone(), node.reader.clone());
    let router = raftgraph::api::Router {
        dialer: dialer(id),
        peer_dialer: dialer(id),
        cluster_id: "test".into(),
        ..Default::default()
    };
    // Open to every caller: these tests are of the peer plane (tests/auth.rs is of callers).
    let open = raftgraph::api::Auth::new(
        reader.clone(),
        clock.clone(),
        raftgraph::auth::AuthMode::Off,
        "test",
    );
    let graph = GraphServiceServer::new(
        GraphApi::new(raft.clone(), reader.clone(), clock.clone())
            .with_router(router.clone())
            .with_auth(open.clone()),
    )
    .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
    .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
    let tenants = TenantServiceServer::new(
        TenantApi::new(raft, reader, clock)
            .with_router(router)
            .with_auth(open)
            .with_secrets(secrets(), raftgraph::api::os_random()),
    );
    let tls = raftgraph::tls::Credentials::load(&ca().member(id))
        .unwrap()
        .peer_server()
        .unwrap();
    let incoming = raftgraph::tls::accept(listener, move || tls.clone(), "test");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .add_service(graph)
            .add_service(tenants)
            .serve_with_incoming(incoming),
    );
}

fn request(seq: u64, command: Command) -> Request {
    Request::new(1, seq, seq as i64, command).unwrap()
}

/// Proposes `req` alone on `raft` and returns its one outcome.
async fn propose(raft: &Raft, req: Request) -> Result<Outcome, raftgraph::command::ApplyError> {
    let r = raft.client_write(req.into()).await.unwrap();
    let [one] = <[_; 1]>::try_from(r.data.responses).expect("one response per request");
    one.outcome
}

/// Three members serving (see [`three_members`]).
struct Cluster {
    nodes: Vec<Node>,
    leader_id: u64,
    // Last: the directories are removed after the nodes that use them are dropped.
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    fn leader(&self) -> &Node {
        &self.nodes[(self.leader_id - 1) as usize]
    }
}

/// What the graph-service check hands to the stream checks.
struct ViaFollower {
    client: GraphServiceClient<tonic::transport::Channel>,
    /// The unary write (client 9, sequence 1) and the node it created.
    write: pb::WriteRequest,
    id: u64,
}

/// The cluster every test starts from, each step asserting what it shows: nodes 1 and 2 elect a
/// leader and replicate a tenant and 100 writes; node 3 joins after the log was purged, its disk
/// full once while it stages the streamed snapshot, catches up by the snapshot and is promoted;
/// writes replicate to all three.
async fn three_members() -> Cluster {
    let (cluster, node3) = two_members_elect_a_leader_while_a_third_waits().await;
    let li = writes_replicate_to_both_members(&cluster).await;
    let cluster =
        a_learner_catches_up_from_a_streamed_snapshot_and_is_promoted(cluster, node3, li).await;
    writes_replicate_to_all_three(&cluster).await;
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_replicate_and_a_learner_catches_up_from_a_streamed_snapshot() {
    three_members().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_network_is_refused_and_the_member_keeps_serving() {
    check_garbage_is_refused(&three_members().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graph_service_forwards_once_and_reads_linearizably() {
    check_graph_service(&three_members().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_stream_answers_each_call_by_id() {
    let cluster = three_members().await;
    let via = check_graph_service(&cluster).await;
    check_write_stream(&via).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_stream_answers_each_read_by_id() {
    let cluster = three_members().await;
    let via = check_graph_service(&cluster).await;
    let streamed_id = check_write_stream(&via).await;
    check_read_stream(&via, streamed_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_service_stores_a_key_and_never_returns_it() {
    let cluster = three_members().await;
    let (addrs, follower) = addresses_and_a_follower(&cluster);
    check_tenant_service(&addrs, follower).await;
}

/// Every member's client address, and a member that does not lead.
fn addresses_and_a_follower(cluster: &Cluster) -> (BTreeMap<u64, String>, u64) {
    let addrs: BTreeMap<u64, String> = cluster
        .leader()
        .raft
        .metrics()
        .borrow_watched()
        .membership_config
        .nodes()
        .map(|(id, n)| (*id, n.api_addr.clone()))
        .collect();
    let follower = addrs
        .keys()
        .copied()
        .find(|id| *id != cluster.leader_id)
        .unwrap();
    (addrs, follower)
}

/// A member-to-be that is not serving yet: its listener and its address.
struct Waiting {
    dir: tempfile::TempDir,
    listener: TcpListener,
    node: Node,
    addr: Member,
    /// Set once its disk has been "full" while it staged a snapshot.
    full_while_staging: Arc<AtomicBool>,
}

/// A state-machine disk that is full once, when the first received snapshot's database is
/// created (staging); `fired` is set then.
fn full_once_while_staging(fired: Arc<AtomicBool>) -> DiskHook {
    DiskHook(Arc::new(move |phase, step| {
        if phase == Phase::Stage
            && matches!(step, DiskStep::CreateDatabase(_))
            && !fired.swap(true, Ordering::SeqCst)
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "no space left on device (the test's full disk)",
            ));
        }
        Ok(())
    }))
}

async fn two_members_elect_a_leader_while_a_third_waits() -> (Cluster, Waiting) {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut listeners = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=3u64 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap().to_string();
        members.insert(id, Member::new(a.clone(), a));
        listeners.push(Some(l));
    }

    // Nodes 1 and 2 form the cluster; node 3 exists but is not a member yet.
    let mut nodes = Vec::new();
    let full_while_staging = Arc::new(AtomicBool::new(false));
    for (i, id) in (1..=3u64).enumerate() {
        let hook = (id == 3).then(|| full_once_while_staging(full_while_staging.clone()));
        let node = start(id, dirs[i].path(), hook).await;
        if id != 3 {
            serve(id, &node, listeners[i].take().unwrap());
        }
        nodes.push(node);
    }
    let node3 = members.remove(&3).unwrap();
    nodes[0].raft.initialize(members).await.unwrap();
    // A leader is ready once it has applied the blank entry of its own term.
    let ready = |m: &openraft::RaftMetrics<raftgraph::raft::TypeConfig>| {
        m.current_leader == Some(m.id)
            && m.last_applied
                .as_ref()
                .is_some_and(|l| l.committed_leader_id().term == m.current_term)
    };
    let m = nodes[0]
        .raft
        .wait(WAIT)
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await
        .unwrap();
    let leader_id = m.current_leader.unwrap();
    let leader = &nodes[(leader_id - 1) as usize];
    leader
        .raft
        .wait(WAIT)
        .metrics(|m| ready(m), "the leader applied its term's first entry")
        .await
        .unwrap();
    assert_ne!(m.current_leader, Some(3), "node 3 cannot have been elected");
    let mut dirs = dirs;
    let waiting = Waiting {
        dir: dirs.pop().unwrap(),
        listener: listeners.pop().unwrap().unwrap(),
        node: nodes.pop().unwrap(),
        addr: node3,
        full_while_staging,
    };
    let cluster = Cluster {
        nodes,
        leader_id,
        _dirs: dirs,
    };
    (cluster, waiting)
}

/// Returns the index of the last write, which every member has applied.
async fn writes_replicate_to_both_members(cluster: &Cluster) -> u64 {
    let (nodes, leader) = (&cluster.nodes, cluster.leader());
    // A tenant and 100 writes proposed concurrently (pipelined, group-committed).
    let create = Command::CreateTenant {
        tenant: "t".into(),
        quotas: Quotas::unlimited(),
        config: TenantConfig::default(),
    };
    let r = propose(&leader.raft, request(1, create)).await;
    assert!(matches!(r, Ok(Outcome::Tenant(_))), "{r:?}");
    let writes = (0..100u64).map(|i| {
        let op = Op::CreateNode {
            labels: ["L".to_string()].into(),
            properties: Default::default(),
        };
        let cmd = Command::Write(WriteRequest {
            tenant: "t".into(),
            preconditions: vec![],
            operations: vec![op],
        });
        let req = Request::new(100 + i, 1, 0, cmd).unwrap();
        propose(&leader.raft, req)
    });
    for r in futures::future::join_all(writes).await {
        assert!(matches!(r, Ok(Outcome::Write(_))), "{r:?}");
    }
    let last = leader.raft.metrics().borrow_watched().last_log_index;
    for n in &nodes[..2] {
        n.raft
            .wait(WAIT)
            .applied_index_at_least(last, "applied")
            .await
            .unwrap();
        assert_eq!(n.reader.tenant("t").unwrap().usage.nodes, 100);
    }
    assert_eq!(
        nodes[0].reader.digest().unwrap(),
        nodes[1].reader.digest().unwrap()
    );
    last.unwrap()
}

async fn a_learner_catches_up_from_a_streamed_snapshot_and_is_promoted(
    mut cluster: Cluster,
    node3: Waiting,
    li: u64,
) -> Cluster {
    // Snapshot on the leader and purge its log; then node 3 joins as a learner and can
    // only catch up from the snapshot, streamed over gRPC; then it is promoted to voter. Its
    // disk is "full" twice: after the first snapshot is received, the check before installing
    // finds no room; on the second, creating the staged database fails with ENOSPC. Both
    // transfers are refused (not fatal: the member serves on, what they wrote is removed), and
    // the leader's third attempt installs.
    let leader = cluster.leader().raft.clone();
    leader.trigger().snapshot().await.unwrap();
    let at_least = |id: Option<
        &openraft::type_config::alias::LogIdOf<raftgraph::raft::TypeConfig>,
    >| { id.is_some_and(|l| l.index >= li) };
    leader
        .wait(WAIT)
        .metrics(|m| at_least(m.snapshot.as_ref()), "snapshot built")
        .await
        .unwrap();
    leader.trigger().purge_log(li).await.unwrap();
    leader
        .wait(WAIT)
        .metrics(|m| at_least(m.purged.as_ref()), "log purged")
        .await
        .unwrap();
    let checks = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let full_once: FreeSpace = {
        let checks = checks.clone();
        Arc::new(move |dir: &Path| {
            // The second check is the first transfer's check before installing.
            match checks.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                1 => Ok(0),
                _ => raftgraph::peer::free_bytes(dir),
            }
        })
    };
    let node3_sm = node3.dir.path().join("sm");
    let node3_snapshots = node3_sm.join("snapshots");
    serve_with(3, &node3.node, node3.listener, full_once);
    cluster.nodes.push(node3.node);
    cluster._dirs.push(node3.dir);
    let nodes = &cluster.nodes;
    leader.add_learner(3, node3.addr, true).await.unwrap();
    // Compare at one applied index: the leader's last entry (the learner's membership entry).
    let joined = leader.metrics().borrow_watched().last_log_index;
    for n in nodes {
        n.raft
            .wait(WAIT)
            .applied_index_at_least(joined, "node 3 caught up")
            .await
            .unwrap();
    }
    assert_eq!(
        nodes[2].reader.digest().unwrap(),
        nodes[0].reader.digest().unwrap()
    );
    let snap = nodes[2].raft.metrics().borrow_watched().snapshot;
    assert!(
        snap.is_some_and(|s| s.index >= li),
        "node 3 installed the snapshot"
    );
    // Refused once before installing (the second check), once while staging, then received
    // and installed: at least six checks.
    let n = checks.load(std::sync::atomic::Ordering::SeqCst);
    assert!(n >= 6, "{n} free-space checks");
    assert!(
        node3.full_while_staging.load(Ordering::SeqCst),
        "the disk was full while a snapshot was staged"
    );
    let mut sm_files: Vec<_> = std::fs::read_dir(&node3_sm)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("db-"))
        .collect();
    sm_files.sort();
    assert_eq!(
        sm_files.len(),
        1,
        "one database, no staging left: {sm_files:?}"
    );
    let left: Vec<_> = std::fs::read_dir(node3_snapshots)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("incoming-") || n.ends_with(".recv"))
        .collect();
    assert!(left.is_empty(), "received files left behind: {left:?}");
    leader.change_membership([1, 2, 3], false).await.unwrap();
    cluster
}

async fn writes_replicate_to_all_three(cluster: &Cluster) {
    let (nodes, leader) = (&cluster.nodes, cluster.leader());
    // Writes keep replicating to all three.
    let more = Command::Write(WriteRequest {
        tenant: "t".into(),
        preconditions: vec![],
        operations: vec![Op::DeleteNode {
            node: raftgraph::command::NodeRef::Id(1),
        }],
    });
    let r = propose(&leader.raft, request(2, more)).await;
    assert!(matches!(r, Ok(Outcome::Write(_))), "{r:?}");
    let last = leader.raft.metrics().borrow_watched().last_log_index;
    for n in nodes {
        n.raft
            .wait(WAIT)
            .applied_index_at_least(last, "applied")
            .await
            .unwrap();
        assert_eq!(n.reader.tenant("t").unwrap().usage.nodes, 99);
    }
}

async fn check_garbage_is_refused(cluster: &Cluster) {
    let (leader, leader_id) = (cluster.leader(), cluster.leader_id);
    // Garbage from the network is refused by name and the node keeps serving.
    let addr = leader
        .raft
        .metrics()
        .borrow_watched()
        .membership_config
        .nodes()
        .find(|(id, _)| **id == leader_id)
        .unwrap()
        .1
        .peer_addr
        .clone();
    let mut peer =
        raftgraph::proto::v1::raft_service_client::RaftServiceClient::new(channel(&addr));
    let bad = raftgraph::proto::v1::RaftPayload {
        data: vec![1, 2, 3],
    };
    let s = peer.vote(bad.clone()).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(s.message().starts_with("vote:"), "{}", s.message());
    let s = peer.append_entries(bad).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    let no_header = raftgraph::proto::v1::SnapshotChunk {
        part: Some(raftgraph::proto::v1::snapshot_chunk::Part::Data(vec![
            0;
            10
        ])),
        total_bytes: 10,
    };
    let s = peer
        .install_snapshot(futures::stream::iter([no_header]))
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    // A transfer whose stream does not verify is refused before openraft sees it (a failed
    // install would stop the node).
    let cur = leader.raft.get_snapshot().await.unwrap().unwrap();
    let vote = leader.raft.metrics().borrow_watched().vote;
    let header = raftgraph::codec::encode(&(vote, cur.meta.clone())).unwrap();
    let torn = [
        raftgraph::proto::v1::SnapshotChunk {
            part: Some(raftgraph::proto::v1::snapshot_chunk::Part::Header(header)),
            total_bytes: 8,
        },
        raftgraph::proto::v1::SnapshotChunk {
            part: Some(raftgraph::proto::v1::snapshot_chunk::Part::Data(
                b"RGSNAP\0\0".to_vec(),
            )),
            total_bytes: 0,
        },
    ];
    let s = peer
        .install_snapshot(futures::stream::iter(torn))
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(
        s.message().contains("receiving snapshot"),
        "{}",
        s.message()
    );
    let again = Command::Write(WriteRequest {
        tenant: "t".into(),
        preconditions: vec![],
        operations: vec![Op::DeleteNode {
            node: raftgraph::command::NodeRef::Id(2),
        }],
    });
    let r = propose(&leader.raft, request(3, again)).await;
    assert!(matches!(r, Ok(Outcome::Write(_))), "{r:?}");
}

async fn check_graph_service(cluster: &Cluster) -> ViaFollower {
    // The graph service. A write sent to a follower is forwarded to the leader once;
    // linearizable reads from every node see it; errors carry the right codes.
    let (addrs, follower) = addresses_and_a_follower(cluster);
    let mut via_follower = GraphServiceClient::new(channel(&addrs[&follower]));
    let create = pb::Operation {
        op: Some(pb::operation::Op::CreateNode(pb::CreateNode {
            labels: vec!["Via".into()],
            properties: [(
                "k".to_string(),
                pb::Value {
                    kind: Some(pb::value::Kind::IntValue(7)),
                },
            )]
            .into(),
        })),
    };
    let write = pb::WriteRequest {
        tenant: "t".into(),
        request_id: Some(pb::RequestId {
            client_id: 9,
            sequence: 1,
            resent: false,
        }),
        preconditions: vec![],
        operations: vec![create],
    };
    let reply = via_follower
        .write(write.clone())
        .await
        .unwrap()
        .into_inner();
    let Some(pb::op_result::Result::NodeCreated(id)) = reply.results[0].result else {
        panic!("{reply:?}")
    };
    // A retry of the same request (same id, sequence) returns the same node id: applied once.
    let retry = via_follower
        .write(write.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retry, reply);
    for (n, addr) in &addrs {
        let mut c = GraphServiceClient::new(channel(addr));
        let get = pb::GetNodeRequest {
            tenant: "t".into(),
            id,
            consistency: pb::Consistency::Linearizable as i32,
        };
        let node = c
            .get_node(get)
            .await
            .unwrap_or_else(|s| panic!("node {n}: {s:?}"))
            .into_inner();
        assert_eq!(node.labels, vec!["Via".to_string()], "node {n}");
        let missing = pb::GetNodeRequest {
            tenant: "t".into(),
            id: 10_000,
            consistency: 0,
        };
        assert_eq!(
            c.get_node(missing).await.unwrap_err().code(),
            tonic::Code::NotFound
        );
        let no_tenant = pb::GetNodeRequest {
            tenant: "nope".into(),
            id,
            consistency: 0,
        };
        assert_eq!(
            c.get_node(no_tenant).await.unwrap_err().code(),
            tonic::Code::NotFound
        );
        let page = pb::NodesByLabelRequest {
            tenant: "t".into(),
            label: "Via".into(),
            after: vec![],
            limit: 10,
            consistency: 0,
        };
        assert_eq!(
            c.nodes_by_label(page)
                .await
                .unwrap()
                .into_inner()
                .nodes
                .len(),
            1
        );
    }
    // A scan streams every node: as many as the tenant's usage counts (the write above was
    // applied on the leader before it was answered).
    let want = cluster.leader().reader.tenant("t").unwrap().usage.nodes;
    assert!(want >= 99, "{want}");
    let scan = pb::ScanRequest {
        tenant: "t".into(),
        kind: pb::ScanKind::Nodes as i32,
        page_size: 7,
        consistency: 0,
    };
    let mut stream = via_follower.scan(scan).await.unwrap().into_inner();
    let mut count = 0;
    while let Some(item) = stream.message().await.unwrap() {
        assert!(matches!(item.item, Some(pb::scan_item::Item::Node(_))));
        count += 1;
    }
    assert_eq!(count, want);
    // A write past the proposal limit is refused before it reaches the log.
    let big = |i: u32| pb::Operation {
        op: Some(pb::operation::Op::CreateNode(pb::CreateNode {
            labels: vec![format!("Big{i}")],
            properties: [(
                "v".to_string(),
                pb::Value {
                    kind: Some(pb::value::Kind::BytesValue(vec![0; 1 << 20])),
                },
            )]
            .into(),
        })),
    };
    let huge = pb::WriteRequest {
        tenant: "t".into(),
        request_id: Some(pb::RequestId {
            client_id: 9,
            sequence: 2,
            resent: false,
        }),
        preconditions: vec![],
        operations: (0..16).map(big).collect(),
    };
    let s = via_follower.write(huge).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(s.message().contains("limit 15728640"), "{}", s.message());
    // Bad input: INVALID_ARGUMENT naming the field, and nothing proposed.
    let bad = pb::WriteRequest {
        tenant: "t".into(),
        request_id: Some(pb::RequestId {
            client_id: 9,
            sequence: 3,
            resent: false,
        }),
        preconditions: vec![],
        operations: vec![pb::Operation { op: None }],
    };
    let s = via_follower.write(bad).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(s.message().contains("operations[0]"), "{}", s.message());
    ViaFollower {
        client: via_follower,
        write,
        id,
    }
}

/// Returns the id of the node the streamed write created.
async fn check_write_stream(via: &ViaFollower) -> u64 {
    let (mut via_follower, write, id) = (via.client.clone(), &via.write, via.id);
    // The write stream, through the follower: each call is answered by id, as the unary write
    // would be; a bad call fails alone and the stream keeps serving; a retried request id
    // applies once; closing the client's side ends the stream.
    let (calls, queued) = tokio::sync::mpsc::unbounded_channel();
    let mut answers = via_follower
        .write_stream(tokio_stream::wrappers::UnboundedReceiverStream::new(queued))
        .await
        .unwrap()
        .into_inner();
    let streamed = pb::WriteRequest {
        request_id: Some(pb::RequestId {
            client_id: 11,
            sequence: 1,
            resent: false,
        }),
        ..write.clone()
    };
    let call = |call_id: u64, write: Option<pb::WriteRequest>| pb::WriteCall {
        call_id,
        write,
        timeout_ms: 30_000,
    };
    let bad_op = pb::WriteRequest {
        request_id: Some(pb::RequestId {
            client_id: 12,
            sequence: 1,
            resent: false,
        }),
        operations: vec![pb::Operation { op: None }],
        ..write.clone()
    };
    calls.send(call(1, Some(streamed.clone()))).unwrap();
    calls.send(call(2, None)).unwrap();
    calls.send(call(3, Some(bad_op))).unwrap();
    let mut by_id = BTreeMap::new();
    for _ in 0..3 {
        let a = answers
            .message()
            .await
            .unwrap()
            .expect("an answer per call");
        assert!(by_id.insert(a.call_id, a).is_none(), "one answer per call");
    }
    let first = by_id[&1].response.clone().expect("call 1 applied");
    assert!(by_id[&1].error.is_none());
    let Some(pb::op_result::Result::NodeCreated(streamed_id)) = first.results[0].result else {
        panic!("{first:?}")
    };
    assert_ne!(streamed_id, id, "a new node");
    for (call_id, field) in [(2, "write"), (3, "operations[0]")] {
        let e = by_id[&call_id].error.clone().expect("a bad call fails");
        assert_eq!(e.code, tonic::Code::InvalidArgument as i32, "{e:?}");
        assert!(e.message.contains(field), "{}", e.message);
        assert!(by_id[&call_id].response.is_none());
    }
    calls.send(call(4, Some(streamed))).unwrap();
    let again = answers.message().await.unwrap().unwrap();
    assert_eq!(again.call_id, 4);
    assert_eq!(
        again.response,
        Some(first),
        "the retry returns the first answer"
    );
    drop(calls);
    assert!(
        answers.message().await.unwrap().is_none(),
        "the stream ends"
    );
    streamed_id
}

async fn check_read_stream(via: &ViaFollower, streamed_id: u64) {
    let (mut via_follower, id) = (via.client.clone(), via.id);
    // The read stream, through the follower: each kind of read is answered by id with the
    // unary call's result (a linearizable one by the follower's read index, so it sees the
    // streamed write), and a bad or missing call fails alone.
    use pb::read_answer::Result as R;
    use pb::read_call::Read;
    let (calls, queued) = tokio::sync::mpsc::unbounded_channel();
    let mut answers = via_follower
        .read_stream(tokio_stream::wrappers::UnboundedReceiverStream::new(queued))
        .await
        .unwrap()
        .into_inner();
    let read = |call_id: u64, read: Option<Read>| pb::ReadCall {
        call_id,
        timeout_ms: 30_000,
        read,
    };
    let lin = pb::Consistency::Linearizable as i32;
    let reads = [
        Read::GetNode(pb::GetNodeRequest {
            tenant: "t".into(),
            id: streamed_id,
            consistency: lin,
        }),
        Read::GetNode(pb::GetNodeRequest {
            tenant: "t".into(),
            id: 10_000,
            consistency: 0,
        }),
        Read::GetEdge(pb::GetEdgeRequest {
            tenant: "t".into(),
            id: 10_000,
            consistency: lin,
        }),
        Read::Neighbors(pb::NeighborsRequest {
            tenant: "t".into(),
            node: id,
            direction: 7,
            ..Default::default()
        }),
        Read::Neighbors(pb::NeighborsRequest {
            tenant: "t".into(),
            node: id,
            consistency: lin,
            ..Default::default()
        }),
        Read::NodesByLabel(pb::NodesByLabelRequest {
            tenant: "t".into(),
            label: "Via".into(),
            limit: 10,
            consistency: lin,
            ..Default::default()
        }),
    ];
    for (i, r) in reads.into_iter().enumerate() {
        calls.send(read(i as u64 + 1, Some(r))).unwrap();
    }
    calls.send(read(7, None)).unwrap();
    let mut by_id = BTreeMap::new();
    for _ in 0..7 {
        let a = answers
            .message()
            .await
            .unwrap()
            .expect("an answer per call");
        assert!(
            by_id.insert(a.call_id, a.result).is_none(),
            "one answer per call"
        );
    }
    let Some(R::Node(n)) = &by_id[&1] else {
        panic!("{:?}", by_id[&1])
    };
    assert_eq!((n.id, &n.labels), (streamed_id, &vec!["Via".to_string()]));
    let failed = |call_id: u64| match &by_id[&call_id] {
        Some(R::Error(e)) => (tonic::Code::from_i32(e.code), e.message.clone()),
        other => panic!("call {call_id}: {other:?}"),
    };
    assert_eq!(failed(2).0, tonic::Code::NotFound);
    assert!(failed(2).1.contains("node 10000"), "{}", failed(2).1);
    assert_eq!(failed(3).0, tonic::Code::NotFound);
    assert_eq!(failed(4).0, tonic::Code::InvalidArgument);
    assert!(failed(4).1.contains("direction"), "{}", failed(4).1);
    assert!(
        matches!(&by_id[&5], Some(R::Neighbors(p)) if p.neighbors.is_empty()),
        "{:?}",
        by_id[&5]
    );
    let Some(R::NodesPage(p)) = &by_id[&6] else {
        panic!("{:?}", by_id[&6])
    };
    assert_eq!(p.nodes.len(), 2, "the unary and the streamed write");
    assert_eq!(failed(7).0, tonic::Code::InvalidArgument);
    assert!(failed(7).1.contains("read"), "{}", failed(7).1);
    drop(calls);
    assert!(
        answers.message().await.unwrap().is_none(),
        "the stream ends"
    );
}

async fn check_tenant_service(addrs: &BTreeMap<u64, String>, follower: u64) {
    // The tenant service, through a follower. The key is stored, never returned.
    let mut admin = TenantServiceClient::new(channel(&addrs[&follower]));
    let llm = pb::LlmProviderConfig {
        provider: pb::LlmProvider::Anthropic as i32,
        model: "m".into(),
        endpoint: None,
        api_key: Some("sk-secret".into()),
        api_key_set: false,
    };
    let create = pb::CreateTenantRequest {
        request_id: Some(pb::RequestId {
            client_id: 50,
            sequence: 1,
            resent: false,
        }),
        id: "u".into(),
        quotas: None,
        config: Some(pb::TenantConfig {
            llm: Some(llm),
            ..Default::default()
        }),
    };
    let made = admin.create_tenant(create).await.unwrap().into_inner();
    assert_eq!(
        made.quotas.unwrap().max_nodes,
        Some(1_000_000),
        "absent quotas: the defaults"
    );
    for (n, addr) in addrs {
        let mut c = TenantServiceClient::new(channel(addr));
        let get = pb::GetTenantRequest {
            id: "u".into(),
            consistency: 0,
        };
        let t = c
            .get_tenant(get)
            .await
            .unwrap_or_else(|s| panic!("node {n}: {s:?}"))
            .into_inner();
        let llm = t.config.unwrap().llm.unwrap();
        assert_eq!((llm.api_key, llm.api_key_set), (None, true), "node {n}");
        let list = pb::ListTenantsRequest {
            after: String::new(),
            limit: 10,
            consistency: 0,
        };
        let ids: Vec<_> = c
            .list_tenants(list)
            .await
            .unwrap()
            .into_inner()
            .tenants
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(ids, vec!["t".to_string(), "u".to_string()], "node {n}");
    }
    let again = pb::CreateTenantRequest {
        request_id: Some(pb::RequestId {
            client_id: 50,
            sequence: 2,
            resent: false,
        }),
        id: "u".into(),
        quotas: None,
        config: None,
    };
    assert_eq!(
        admin.create_tenant(again).await.unwrap_err().code(),
        tonic::Code::AlreadyExists
    );
    let delete = pb::DeleteTenantRequest {
        request_id: Some(pb::RequestId {
            client_id: 50,
            sequence: 3,
            resent: false,
        }),
        id: "u".into(),
    };
    admin.delete_tenant(delete).await.unwrap();
    let get = pb::GetTenantRequest {
        id: "u".into(),
        consistency: 0,
    };
    assert_eq!(
        admin.get_tenant(get).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
}

/// Regression: with openraft's default leader ids a node that had voted in a term granted a
/// second vote in the same term to a candidate with a higher node id, and two nodes led one
/// term (simulation seed 97). raftgraph's leader ids are standard Raft's: one vote per term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_votes_for_at_most_one_candidate_per_term() {
    use openraft::raft::VoteRequest;
    use openraft::type_config::alias::VoteOf;
    use raftgraph::raft::TypeConfig;

    let dir = tempfile::tempdir().unwrap();
    let node = start(1, dir.path(), None).await;
    let ask = |candidate: u64| {
        let raft = node.raft.clone();
        async move {
            let vote = VoteOf::<TypeConfig>::new(2, candidate);
            raft.vote(VoteRequest::new(vote, None)).await.unwrap()
        }
    };
    assert!(ask(2).await.vote_granted, "the first candidate of term 2");
    let second = ask(3).await;
    assert!(
        !second.vote_granted,
        "a second candidate of term 2 got the vote: {second:?}"
    );
    assert!(ask(2).await.vote_granted, "the same candidate again");
    node.raft.shutdown().await.unwrap();
}

/// The members' keyring (one key): configs with secrets are sealed with it.
fn secrets() -> Secrets {
    let keyring = raftgraph::tenant::Keyring::parse(&format!("k1 {}\n", "3c".repeat(32)));
    Secrets::new(Some(keyring.unwrap()))
}
