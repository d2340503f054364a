//! A client that asks for large pages and never reads an answer — on many read streams, then as
//! unary calls on as many HTTP/2 streams — or that starts large writes and never finishes them,
//! leaves the server process's resident memory within a stated bound of what it was before, and
//! other clients keep being served meanwhile.
//!
//! One `raftgraph server` process (plaintext client listener: what is measured is the server's
//! memory, not TLS), its RSS read from `/proc/<pid>/status`. Polls are bounded waits; nothing
//! asserts how long anything took.
// Real processes on the real clock: these polls are bounded waits, not simulated time.
#![allow(clippy::disallowed_methods)]

use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use raftgraph::proto::v1 as pb;
use raftgraph::proto::v1::graph_service_client::GraphServiceClient;
use raftgraph::proto::v1::tenant_service_client::TenantServiceClient;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_raftgraph");

/// Streams the client opens on its one connection, and page calls it sends on each.
const STREAMS: usize = 16;
const CALLS: usize = 256;
/// Unary page calls the client makes on one connection (each its own HTTP/2 stream).
const UNARY_CALLS: usize = 512;
/// Unfinished writes the client starts on one connection, and the size each declares.
const UNFINISHED_CALLS: usize = 64;
const UNFINISHED_BYTES: usize = 15 << 20;

/// The bound this test holds the server to: growth of its RSS while the client holds its
/// answers unread. Unbounded, each unread page (~9.4 MB) would be held: 16 × 256 of them on the
/// streams is ~38 GB, 512 unary ones ~4.8 GB. Bounded: the connection's 64 MiB of unsent
/// answers, what the pages running when it filled turned out beyond their reservations, the
/// client's window and one 64 KiB piece per HTTP/2 stream, and the allocator's slack. Measured:
/// see `docs/testing.md`.
const RSS_GROWTH_MAX: u64 = 512 << 20;

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kb * 1024
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn connect(addr: &str) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            Ok(c) => return c,
            Err(e) => {
                assert!(Instant::now() < deadline, "server never listened: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn graph(ch: Channel) -> GraphServiceClient<Channel> {
    GraphServiceClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(16 << 20)
}

/// Each proposal's exactly-once id: one client, the next sequence.
fn request_id() -> Option<pb::RequestId> {
    static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    Some(pb::RequestId {
        client_id: 7,
        sequence: SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        resent: false,
    })
}

fn page_request() -> pb::NodesByLabelRequest {
    pb::NodesByLabelRequest {
        tenant: "t".into(),
        label: "Big".into(),
        limit: 1000,
        ..Default::default()
    }
}

fn page_call(call_id: u64) -> pb::ReadCall {
    pb::ReadCall {
        call_id,
        read: Some(pb::read_call::Read::NodesByLabel(page_request())),
        ..Default::default()
    }
}

#[test]
fn a_client_that_never_reads_its_streams_holds_bounded_server_memory() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    for args in [
        vec!["init"],
        vec!["member", "--id", "1", "--host", "127.0.0.1"],
    ] {
        let out = Command::new(BIN)
            .arg("certs")
            .args(&args)
            .args(["--cluster-id", "mem", "--dir", certs.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "certs {args:?}");
    }
    let (addr, peer) = (free_addr(), free_addr());
    let file = |f: &str| certs.join(f).to_str().unwrap().to_string();
    let mut cmd = Command::new(BIN);
    cmd.arg("server");
    for (k, _) in std::env::vars() {
        if k.starts_with("RAFTGRAPH_") {
            cmd.env_remove(k);
        }
    }
    // Plaintext and no authentication: what is measured is the server's memory, not who may
    // call (tests/auth.rs).
    cmd.args(["--cluster-id", "mem", "--member-id", "1", "--tls", "off"])
        .args(["--auth", "off"])
        .args(["--listen", &addr, "--peer-listen", &peer])
        .args(["--ca", &file("ca.pem"), "--cert", &file("member-1.pem")])
        .args(["--key", &file("member-1.key")])
        .args(["--data-dir", dir.path().join("data").to_str().unwrap()]);
    let server = Server(cmd.spawn().unwrap());
    let pid = server.0.id();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ch = connect(&addr).await;
        let out = Command::new(BIN)
            .args(["cluster", "init", "--endpoints", &addr])
            .args(["--member", &format!("1={addr}")])
            .env_remove("RAFTGRAPH_CA")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut tenants = TenantServiceClient::new(ch.clone());
        let deadline = Instant::now() + Duration::from_secs(60);
        // Retried with the same id until a leader answers (exactly once).
        let id = request_id();
        while let Err(e) = tenants
            .create_tenant(pb::CreateTenantRequest {
                id: "t".into(),
                request_id: id,
                ..Default::default()
            })
            .await
        {
            assert!(Instant::now() < deadline, "create tenant: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // 8 nodes of three 1 MiB values: a page of them stops at 3 nodes (~9.4 MB).
        let mut g = graph(ch.clone());
        for i in 0..8u8 {
            let mb = || pb::Value {
                kind: Some(pb::value::Kind::BytesValue(vec![i; 1 << 20])),
            };
            let props = [("a", mb()), ("b", mb()), ("c", mb())]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            g.write(pb::WriteRequest {
                tenant: "t".into(),
                operations: vec![pb::Operation {
                    op: Some(pb::operation::Op::CreateNode(pb::CreateNode {
                        labels: vec!["Big".into()],
                        properties: props,
                    })),
                }],
                request_id: request_id(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        // Warm up: a few pages read and dropped, so the baseline has what serving one costs.
        for _ in 0..4 {
            let page = g.nodes_by_label(page_request()).await.unwrap().into_inner();
            assert_eq!(page.nodes.len(), 3);
        }
        let before = rss_bytes(pid);

        // The attacker: one connection, STREAMS read streams of CALLS page calls each, and
        // answers never read (the response streams are kept, never polled).
        let attacker = connect(&addr).await;
        let mut held = Vec::new();
        for s in 0..STREAMS {
            let calls = (0..CALLS).map(move |i| page_call((s * CALLS + i) as u64));
            let answers = graph(attacker.clone())
                .read_stream(futures::stream::iter(calls))
                .await
                .unwrap();
            held.push(answers);
        }

        watch(&addr, pid, before, "unread streams").await;
        drop(held);

        // The same attacker asks for UNARY pages on as many HTTP/2 streams of one connection and
        // never reads an answer: each call is made as a server-streaming call of the unary
        // method, whose answer stream is kept, never polled (its task waits until the end).
        let before = rss_bytes(pid);
        let attacker = connect(&addr).await;
        let stop = Arc::new(tokio::sync::Notify::new());
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..UNARY_CALLS {
            let (ch, stop) = (attacker.clone(), stop.clone());
            calls.spawn(async move {
                let mut grpc = tonic::client::Grpc::new(ch).max_decoding_message_size(64 << 20);
                grpc.ready().await.unwrap();
                let path = PathAndQuery::from_static("/raftgraph.v1.GraphService/NodesByLabel");
                let codec =
                    tonic_prost::ProstCodec::<pb::NodesByLabelRequest, pb::NodesPage>::default();
                let unread = grpc
                    .server_streaming(tonic::Request::new(page_request()), path, codec)
                    .await;
                stop.notified().await;
                drop(unread);
            });
        }
        watch(&addr, pid, before, "unread unary pages").await;
        stop.notify_waiters();
        calls.abort_all();

        // The same attacker starts UNFINISHED writes on as many HTTP/2 streams of one
        // connection: each declares a message of 15 MiB and sends all of it but the last byte
        // (960 MiB declared in all). Each message holds its declared size of the connection's
        // request budget, and those that do not fit are refused at their header. (Without the
        // budget nothing is refused; the server's RSS then grew 13 MiB in the 10 s watched, as
        // flow control paced the sends: the refusal count is what shows the budget.)
        let before = rss_bytes(pid);
        let attacker = connect(&addr).await;
        let payload = bytes::Bytes::from(vec![0u8; UNFINISHED_BYTES - 1]);
        let mut header = vec![0u8];
        header.extend_from_slice(&(UNFINISHED_BYTES as u32).to_be_bytes());
        let header = bytes::Bytes::from(header);
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..UNFINISHED_CALLS {
            let mut ch = attacker.clone();
            let body = Unfinished(vec![header.clone(), payload.clone()]);
            calls.spawn(async move {
                use tower::Service;
                let request = http::Request::builder()
                    .method("POST")
                    .uri("/raftgraph.v1.GraphService/Write")
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(tonic::body::Body::new(body))
                    .unwrap();
                futures::future::poll_fn(|cx| ch.poll_ready(cx))
                    .await
                    .unwrap();
                let answer = ch.call(request).await.unwrap();
                answer
                    .headers()
                    .get("grpc-status")
                    .map(|s| s.to_str().unwrap().to_string())
            });
        }
        watch(&addr, pid, before, "unfinished writes").await;
        // Those that fit are still waiting for their last byte; the others were refused.
        let mut refused = 0;
        while let Some(Ok(code)) = calls.try_join_next() {
            assert_eq!(code.as_deref(), Some("14"), "refused as UNAVAILABLE");
            refused += 1;
        }
        let fit = raftgraph::wire::CONNECTION_REQUEST_BYTES_MAX / (UNFINISHED_BYTES + 5);
        assert_eq!(
            refused,
            UNFINISHED_CALLS - fit,
            "refused past the connection's budget"
        );
        calls.abort_all();
    });
}

/// A request body that sends its chunks, then neither ends nor sends more.
struct Unfinished(Vec<bytes::Bytes>);

impl http_body::Body for Unfinished {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        if self.0.is_empty() {
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(self.0.remove(0)))))
    }
}

/// For 10 s, another client writes and the server's RSS is sampled; its growth over `before`
/// must stay within [`RSS_GROWTH_MAX`] and the other client must be served.
async fn watch(addr: &str, pid: u32, before: u64, what: &str) {
    let mut other = graph(connect(addr).await);
    let mut most = before;
    let watch_until = Instant::now() + Duration::from_secs(10);
    let mut served = 0;
    while Instant::now() < watch_until {
        let w = other
            .write(pb::WriteRequest {
                tenant: "t".into(),
                operations: vec![pb::Operation {
                    op: Some(pb::operation::Op::CreateNode(pb::CreateNode {
                        labels: vec!["Small".into()],
                        properties: Default::default(),
                    })),
                }],
                request_id: request_id(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("another client's write while {what} are held: {e}"));
        assert_eq!(w.into_inner().results.len(), 1);
        served += 1;
        most = most.max(rss_bytes(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let growth = most.saturating_sub(before);
    eprintln!(
        "{what}: server RSS before {} MiB, highest while held {} MiB (growth {} MiB); {served} \
         writes of another client served",
        before >> 20,
        most >> 20,
        growth >> 20
    );
    assert!(served > 0);
    assert!(
        growth <= RSS_GROWTH_MAX,
        "server RSS grew {} MiB while a client held {what} (bound {} MiB)",
        growth >> 20,
        RSS_GROWTH_MAX >> 20
    );
}
