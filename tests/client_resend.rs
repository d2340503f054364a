//! The Rust client resends a write the server refused with `EntryTooLarge` (ABORTED: the Raft
//! entry it was batched into had no byte budget left; nothing applied) in a new session, so it
//! lands in another entry, at most `ENTRY_FULL_RESENDS` times; any other ABORTED is the answer.
//!
//! The server is a stand-in graph service on loopback that refuses the first `refusals` writes
//! and records each request id it sees.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use raftgraph::client::{Client, ClientOptions, ENTRY_FULL_RESENDS};
use raftgraph::proto::v1 as pb;
use raftgraph::proto::v1::graph_service_server::{GraphService, GraphServiceServer};
use tonic::{Code, Request, Response, Status, Streaming};

type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Refuses the first `refusals` writes with `message`, then answers; records every request id.
struct Refusing {
    refusals: usize,
    message: &'static str,
    seen: Arc<Mutex<Vec<(u64, u64)>>>,
}

#[tonic::async_trait]
impl GraphService for Refusing {
    async fn write(
        &self,
        request: Request<pb::WriteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let id = request.into_inner().request_id.expect("request id");
        let mut seen = self.seen.lock().unwrap();
        seen.push((id.client_id, id.sequence));
        if seen.len() <= self.refusals {
            return Err(Status::aborted(self.message));
        }
        Ok(Response::new(pb::WriteResponse::default()))
    }

    type WriteStreamStream = Answers<pb::WriteAnswer>;
    async fn write_stream(
        &self,
        _: Request<Streaming<pb::WriteCall>>,
    ) -> Result<Response<Self::WriteStreamStream>, Status> {
        Err(Status::unimplemented("unary writes only"))
    }

    type ReadStreamStream = Answers<pb::ReadAnswer>;
    async fn read_stream(
        &self,
        _: Request<Streaming<pb::ReadCall>>,
    ) -> Result<Response<Self::ReadStreamStream>, Status> {
        Err(Status::unimplemented("writes only"))
    }

    async fn get_node(&self, _: Request<pb::GetNodeRequest>) -> Result<Response<pb::Node>, Status> {
        Err(Status::unimplemented("writes only"))
    }

    async fn get_edge(&self, _: Request<pb::GetEdgeRequest>) -> Result<Response<pb::Edge>, Status> {
        Err(Status::unimplemented("writes only"))
    }

    async fn neighbors(
        &self,
        _: Request<pb::NeighborsRequest>,
    ) -> Result<Response<pb::NeighborsResponse>, Status> {
        Err(Status::unimplemented("writes only"))
    }

    async fn nodes_by_label(
        &self,
        _: Request<pb::NodesByLabelRequest>,
    ) -> Result<Response<pb::NodesPage>, Status> {
        Err(Status::unimplemented("writes only"))
    }

    type ScanStream = Answers<pb::ScanItem>;
    async fn scan(
        &self,
        _: Request<pb::ScanRequest>,
    ) -> Result<Response<Self::ScanStream>, Status> {
        Err(Status::unimplemented("writes only"))
    }
}

const ENTRY_FULL: &str = "tenant t: this request writes at least 10 bytes after the 100 bytes of \
                          the requests batched before it in the same Raft entry, limit 100 per \
                          entry; retry it with a new sequence";

/// A write through a client of the stand-in server; the request ids the server saw.
async fn write(refusals: usize, message: &'static str) -> (Result<(), Status>, Vec<(u64, u64)>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let service = Refusing {
        refusals,
        message,
        seen: seen.clone(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(GraphServiceServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let client = Client::new(
        vec![addr],
        ClientOptions {
            client_id: Some(7),
            attempt_timeout: Duration::from_secs(10),
            deadline: Duration::from_secs(30),
            write_stream: false,
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let r = client
        .write(pb::WriteRequest {
            tenant: "t".into(),
            ..Default::default()
        })
        .await
        .map(drop);
    let seen = seen.lock().unwrap().clone();
    (r, seen)
}

#[tokio::test]
async fn a_write_refused_for_a_full_entry_is_resent_in_a_new_session() {
    let (r, seen) = write(2, ENTRY_FULL).await;
    r.expect("the third attempt is answered");
    assert_eq!(seen.len(), 3, "{seen:?}");
    // Each attempt in a session of its own, starting at sequence 1: a new request, never a
    // repeat of the refused one (which the session table would answer with the refusal).
    assert_eq!(seen[0], (7, 1));
    for (i, (client, sequence)) in seen.iter().enumerate().skip(1) {
        assert_eq!(*sequence, 1, "{seen:?}");
        assert!(
            seen[..i].iter().all(|(c, _)| c != client),
            "attempt {i} reused a session: {seen:?}"
        );
    }
}

#[tokio::test]
async fn a_full_entry_is_resent_a_bounded_number_of_times_and_other_aborts_are_answers() {
    let (r, seen) = write(usize::MAX, ENTRY_FULL).await;
    assert_eq!(r.unwrap_err().code(), Code::Aborted);
    assert_eq!(seen.len(), 1 + ENTRY_FULL_RESENDS as usize, "{seen:?}");

    let (r, seen) = write(usize::MAX, "aborted for another reason").await;
    assert_eq!(r.unwrap_err().code(), Code::Aborted);
    assert_eq!(seen.len(), 1, "{seen:?}");
}
