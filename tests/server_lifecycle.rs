//! A node's life outside Raft proper: configuration (file, validation, the shipped samples),
//! the data directory's lock and identity, the standard health service and server reflection,
//! graceful shutdown (a leader hands leadership off), and admission control.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use raftgraph::api::Admission;
use raftgraph::proto::v1 as pb;
use raftgraph::proto::v1::cluster_service_client::ClusterServiceClient;
use raftgraph::server::{
    DataDir, DataDirError, Identity, Listeners, Server, ServerConfig, ServerError, TlsMode,
};
use tokio::net::TcpListener;

mod helpers;
use helpers::certs::TestCa;

const WAIT: Duration = Duration::from_secs(60);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn valid(dir: &Path) -> ServerConfig {
    ServerConfig::new("c1", 1, addr("127.0.0.1:7001"), addr("127.0.0.1:7101"), dir)
}

/// A change that makes a valid config invalid.
type Change = Box<dyn Fn(&mut ServerConfig)>;

#[test]
fn validate_refuses_bad_values_and_combinations_naming_the_field() {
    let dir = Path::new("/tmp/x");
    valid(dir).validate().unwrap();
    let cases: Vec<(&str, Change)> = vec![
        ("member_id", Box::new(|c| c.member_id = 0)),
        ("cluster_id", Box::new(|c| c.cluster_id = "a..b".into())),
        (
            "peer_advertise",
            Box::new(|c| c.peer_listen = addr("0.0.0.0:7101")),
        ),
        (
            "peer_advertise",
            Box::new(|c| c.peer_advertise = Some("http://x:1".into())),
        ),
        ("peer_listen", Box::new(|c| c.peer_listen = c.listen)),
        ("cluster_id", Box::new(|c| c.cluster_id = String::new())),
        ("cluster_id", Box::new(|c| c.cluster_id = "a b".into())),
        ("cluster_id", Box::new(|c| c.cluster_id = "x".repeat(65))),
        ("data_dir", Box::new(|c| c.data_dir = "".into())),
        ("advertise", Box::new(|c| c.listen = addr("0.0.0.0:7001"))),
        ("advertise", Box::new(|c| c.listen = addr("127.0.0.1:0"))),
        (
            "advertise",
            Box::new(|c| c.advertise = Some("nohost".into())),
        ),
        ("advertise", Box::new(|c| c.advertise = Some("h:0".into()))),
        ("raft.heartbeat_ms", Box::new(|c| c.raft.heartbeat_ms = 0)),
        (
            "raft.election_timeout_min_ms",
            Box::new(|c| c.raft.election_timeout_min_ms = 250),
        ),
        (
            "raft.election_timeout_max_ms",
            Box::new(|c| c.raft.election_timeout_max_ms = 1000),
        ),
        (
            "server.proposals_in_flight_max",
            Box::new(|c| c.server.proposals_in_flight_max = 0),
        ),
        (
            "server.worker_threads",
            Box::new(|c| c.server.worker_threads = Some(0)),
        ),
        (
            "server.worker_threads",
            Box::new(|c| c.server.worker_threads = Some(100_000)),
        ),
        ("storage", Box::new(|c| c.storage.write_buffer_bytes = 1)),
        (
            "storage.wal_segment_bytes",
            Box::new(|c| c.storage.wal_segment_bytes = 1),
        ),
    ];
    for (field, change) in cases {
        let mut c = valid(dir);
        change(&mut c);
        let e = c.validate().expect_err(field);
        assert_eq!(e.field, field, "{e}");
        assert!(
            e.to_string().starts_with(&format!("config {field}:")),
            "{e}"
        );
    }
    // A wildcard listen address is fine with an advertised one.
    let mut c = valid(dir);
    c.listen = addr("0.0.0.0:7001");
    c.advertise = Some("node1.internal:7001".into());
    c.validate().unwrap();
}

#[test]
fn config_files_reject_unknown_keys_and_the_shipped_samples_are_valid() {
    let e = ServerConfig::from_toml(
        "cluster_id = \"c\"\nmember_id = 1\nlisten = \"127.0.0.1:1\"\npeer_listen = \"127.0.0.1:2\"\ndata_dir = \"d\"\nheartbeat = 5\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("heartbeat"), "{e}");
    let e = ServerConfig::from_toml("member_id = 1\n").unwrap_err();
    assert!(e.to_string().contains("cluster_id"), "{e}");
    // `node_id`, the key's older spelling, is still read.
    let c = ServerConfig::from_toml(
        "cluster_id = \"c\"\nnode_id = 7\nlisten = \"127.0.0.1:1\"\npeer_listen = \"127.0.0.1:2\"\ndata_dir = \"d\"\n",
    )
    .unwrap();
    assert_eq!(c.member_id, 7);
    assert_eq!(c.tls, TlsMode::On, "TLS on the client listener by default");
    for i in 1..=3u64 {
        let path = format!("{}/deploy/node{i}.toml", env!("CARGO_MANIFEST_DIR"));
        let c = ServerConfig::from_toml(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        c.validate().unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(c.member_id, i);
        assert_eq!(c.listen, addr(&format!("127.0.0.1:700{i}")));
        assert_eq!(
            c.server.worker_threads,
            Some(1),
            "{path}: one thread per local node"
        );
        c.raft_config().unwrap();
    }
}

#[test]
fn a_data_directory_is_locked_and_keeps_its_identity() {
    let dir = tempfile::tempdir().unwrap();
    let me = Identity::new("c1", 1);
    let held = DataDir::open(dir.path(), &me).unwrap();
    match DataDir::open(dir.path(), &me) {
        Err(DataDirError::Locked { .. }) => {}
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(held);
    drop(DataDir::open(dir.path(), &me).unwrap());
    for other in [Identity::new("c1", 2), Identity::new("c2", 1)] {
        let e = DataDir::open(dir.path(), &other).unwrap_err();
        assert!(matches!(e, DataDirError::WrongIdentity { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("\"c1\" member 1"), "{msg}");
    }
    // A directory of the previous data format (no `format` key) is refused, saying why.
    std::fs::write(
        dir.path().join("IDENTITY"),
        "cluster_id = \"c1\"\nnode_id = 1\n",
    )
    .unwrap();
    let e = DataDir::open(dir.path(), &me).unwrap_err();
    assert!(matches!(e, DataDirError::OldFormat { found: 1, .. }), "{e}");
    assert!(e.to_string().contains("format 1"), "{e}");
    // And one of format 2 (owners and sealed secrets came with format 3).
    std::fs::write(
        dir.path().join("IDENTITY"),
        "cluster_id = \"c1\"\nnode_id = 1\nformat = 2\n",
    )
    .unwrap();
    let e = DataDir::open(dir.path(), &me).unwrap_err();
    assert!(matches!(e, DataDirError::OldFormat { found: 2, .. }), "{e}");
    assert!(e.to_string().contains("sealed"), "{e}");
    std::fs::write(dir.path().join("IDENTITY"), "garbage = [").unwrap();
    let e = DataDir::open(dir.path(), &me).unwrap_err();
    assert!(matches!(e, DataDirError::BadIdentity { .. }), "{e}");
    // Data without an identity is not adopted.
    std::fs::remove_file(dir.path().join("IDENTITY")).unwrap();
    std::fs::create_dir(dir.path().join("wal")).unwrap();
    let e = DataDir::open(dir.path(), &me).unwrap_err();
    assert!(
        e.to_string()
            .contains("IDENTITY is missing but wal/ exists"),
        "{e}"
    );
}

/// Both listeners on free loopback ports, and a config for member `id` of cluster c1 on them
/// (its certificate from `ca`; the client listener plaintext).
async fn bound(ca: &TestCa, id: u64, dir: &Path) -> (ServerConfig, Listeners) {
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut c = ServerConfig::new(
        "c1",
        id,
        api.local_addr().unwrap(),
        peer.local_addr().unwrap(),
        dir,
    );
    c.tls = TlsMode::Off;
    c.auth = raftgraph::auth::AuthMode::Off;
    c.certs = Some(ca.member(id));
    (c, Listeners { api, peer })
}

async fn start(ca: &TestCa, id: u64, dir: &Path) -> Server {
    let (mut c, l) = bound(ca, id, dir).await;
    c.raft.heartbeat_ms = 50;
    c.raft.election_timeout_min_ms = 300;
    c.raft.election_timeout_max_ms = 600;
    c.storage.write_buffer_bytes = 8 << 20;
    c.storage.block_cache_bytes = 8 << 20;
    c.storage.wal_segment_bytes = 8 << 20;
    Server::start(c, l).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_a_running_nodes_directory_and_another_nodes_directory() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new(certs.path(), "c1");
    let node = start(&ca, 1, dir.path()).await;
    let (c, l) = bound(&ca, 1, dir.path()).await;
    match Server::start(c, l).await {
        Err(ServerError::DataDir(DataDirError::Locked { .. })) => {}
        Err(e) => panic!("expected a lock error, got {e}"),
        Ok(_) => panic!("a second node started on a locked directory"),
    }
    node.shutdown().await.unwrap();
    let (c, l) = bound(&ca, 2, dir.path()).await;
    match Server::start(c, l).await {
        Err(ServerError::DataDir(DataDirError::WrongIdentity { .. })) => {}
        Err(e) => panic!("expected an identity error, got {e}"),
        Ok(_) => panic!("node 2 started on node 1's directory"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer_stock_tools() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{FileDescriptorResponse, ServerReflectionRequest};

    let dir = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new(certs.path(), "c1");
    let node = start(&ca, 1, dir.path()).await;
    let url = format!("http://{}", node.local_addr());

    let channel = tonic::transport::Channel::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in [
        "",
        "raftgraph.v1.GraphService",
        "raftgraph.v1.ClusterService",
    ] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service:?}");
    }
    let s = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::NotFound);

    let mut refl = ServerReflectionClient::new(channel);
    let ask = |m: MessageRequest| {
        futures::stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(m),
        }])
    };
    let mut answers = refl
        .server_reflection_info(ask(MessageRequest::ListServices(String::new())))
        .await
        .unwrap()
        .into_inner();
    let listed = match answers.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    };
    for want in [
        "raftgraph.v1.GraphService",
        "raftgraph.v1.TenantService",
        "raftgraph.v1.ClusterService",
        "grpc.health.v1.Health",
    ] {
        assert!(listed.iter().any(|s| s == want), "{want} not in {listed:?}");
    }
    // The client listener does not serve (or list) the peers' service.
    assert!(
        !listed.iter().any(|s| s == "raftgraph.v1.RaftService"),
        "{listed:?}"
    );
    // grpcurl's `describe` needs the file that defines a symbol.
    let mut answers = refl
        .server_reflection_info(ask(MessageRequest::FileContainingSymbol(
            "raftgraph.v1.GraphService".into(),
        )))
        .await
        .unwrap()
        .into_inner();
    match answers.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::FileDescriptorResponse(FileDescriptorResponse {
            file_descriptor_proto,
        })) => assert!(!file_descriptor_proto.is_empty()),
        other => panic!("unexpected reflection answer {other:?}"),
    }
    node.shutdown().await.unwrap();
}

/// A client that keeps a call open (a health watch never ends by itself) must not keep the
/// server's database open after a graceful shutdown: the drain ends, every connection still
/// open is cut, and once `shutdown` returns the same directory starts again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_cuts_calls_still_open_and_leaves_the_database_closed() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let dir = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new(certs.path(), "c1");
    let node = start(&ca, 1, dir.path()).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", node.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().is_some());

    node.shutdown().await.unwrap();
    // The watch was cut: it ends (after the NOT_SERVING it was told) instead of staying open.
    tokio::time::timeout(WAIT, async {
        // Ok(None) or the cut connection's error: either way the call is over.
        while let Ok(Some(_)) = watch.message().await {}
    })
    .await
    .expect("the watch stayed open after the shutdown");
    // Nothing holds the database any more: the same directory opens again at once.
    let again = start(&ca, 1, dir.path()).await;
    again.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_shuts_down_gracefully_hands_leadership_to_another_voter() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new(certs.path(), "c1");
    let mut nodes = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        nodes.push(Some(start(&ca, i as u64 + 1, d.path()).await));
    }
    let members = nodes
        .iter()
        .flatten()
        .map(|n| pb::Member {
            id: n.config().member_id,
            addr: n.local_addr().to_string(),
            peer_addr: n.peer_local_addr().to_string(),
        })
        .collect();
    let url = format!("http://{}", nodes[0].as_ref().unwrap().local_addr());
    let mut cc = ClusterServiceClient::connect(url).await.unwrap();
    // Init must name the node asked.
    let s = cc
        .init(pb::InitRequest {
            members: vec![pb::Member {
                id: 9,
                addr: "127.0.0.1:9".into(),
                peer_addr: "127.0.0.1:10".into(),
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    cc.init(pb::InitRequest { members }).await.unwrap();
    let m = nodes[0]
        .as_ref()
        .unwrap()
        .raft()
        .wait(Some(WAIT))
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await
        .unwrap();
    let leader = m.current_leader.unwrap();
    let old_term = m.current_term;
    let node = nodes[(leader - 1) as usize].take().unwrap();
    node.shutdown().await.unwrap();
    // Handed off: another node already leads the moment shutdown returns. Without the hand-off
    // the others would first wait out an election timeout (300..600 ms) after the last
    // heartbeat, and none would lead yet.
    let leads: Vec<u64> = nodes
        .iter()
        .flatten()
        .filter_map(|n| {
            let m = n.raft().metrics().borrow_watched().clone();
            (m.current_leader == Some(m.id)).then_some(m.id)
        })
        .collect();
    assert_eq!(
        leads.len(),
        1,
        "no node leads right after the leader shut down"
    );
    let m = nodes[(leads[0] - 1) as usize]
        .as_ref()
        .unwrap()
        .raft()
        .metrics()
        .borrow_watched()
        .clone();
    assert!(m.current_term > old_term);
    for n in nodes.into_iter().flatten() {
        n.shutdown().await.unwrap();
    }
}

#[test]
fn admission_refuses_past_the_limit_with_a_retry_hint_and_admits_again_after() {
    let a = Admission::new(2, 64 << 20);
    let p1 = a.admit(100).unwrap();
    let _p2 = a.admit(100).unwrap();
    assert_eq!(a.in_flight(), 2);
    let s = a.admit(100).unwrap_err();
    assert_eq!(s.code(), tonic::Code::Unavailable);
    assert!(s.message().contains("limit"), "{}", s.message());
    assert_eq!(
        s.metadata()
            .get("grpc-retry-pushback-ms")
            .unwrap()
            .to_str()
            .unwrap(),
        "50"
    );
    drop(p1);
    drop(a.admit(100).unwrap());
}

/// Bytes in flight are bounded too: a few large writes use up the budget that thousands of
/// small ones would not, and the refusal names the byte limit.
#[test]
fn admission_refuses_past_the_byte_budget_naming_it() {
    let mib = 1 << 20;
    let a = Admission::new(4096, 40 * mib);
    let big: Vec<_> = (0..2).map(|_| a.admit(16 * mib).unwrap()).collect();
    assert_eq!(a.bytes_in_flight(), 32 * mib);
    let s = a.admit(16 * mib).unwrap_err();
    assert_eq!(s.code(), tonic::Code::Unavailable);
    assert!(
        s.message()
            .contains("proposal_bytes_in_flight_max = 41943040"),
        "{}",
        s.message()
    );
    assert!(s.metadata().get("grpc-retry-pushback-ms").is_some());
    // A refused byte admission gave its count permit back.
    assert_eq!(a.in_flight(), 2);
    // Small proposals still fit in what is left.
    let small: Vec<_> = (0..1000).map(|_| a.admit(1000).unwrap()).collect();
    drop(big);
    drop(small);
    assert_eq!((a.in_flight(), a.bytes_in_flight()), (0, 0));
    // A budget below one largest request is raised to it: such a request is always admissible.
    let tiny = Admission::new(1, 1);
    drop(
        tiny.admit(raftgraph::wire::CLIENT_REQUEST_BYTES_MAX)
            .unwrap(),
    );
}
