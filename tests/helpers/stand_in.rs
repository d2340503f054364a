//! A graph service that answers writes with a function and refuses every other call: a
//! stand-in server on loopback for tests of what the Rust client sends and does with answers.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use futures::future::BoxFuture;
use raftgraph::proto::v1 as pb;
use raftgraph::proto::v1::graph_service_server::{GraphService, GraphServiceServer};
use tonic::{Request, Response, Status, Streaming};

type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What the stand-in does with one (unary) write.
pub type WriteFn = Arc<
    dyn Fn(Request<pb::WriteRequest>) -> BoxFuture<'static, Result<pb::WriteResponse, Status>>
        + Send
        + Sync,
>;

struct WritesOnly(WriteFn);

fn writes_only() -> Status {
    Status::unimplemented("a stand-in for unary writes only")
}

#[tonic::async_trait]
impl GraphService for WritesOnly {
    async fn write(
        &self,
        request: Request<pb::WriteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        (self.0)(request).await.map(Response::new)
    }

    type WriteStreamStream = Answers<pb::WriteAnswer>;
    async fn write_stream(
        &self,
        _: Request<Streaming<pb::WriteCall>>,
    ) -> Result<Response<Self::WriteStreamStream>, Status> {
        Err(writes_only())
    }

    type ReadStreamStream = Answers<pb::ReadAnswer>;
    async fn read_stream(
        &self,
        _: Request<Streaming<pb::ReadCall>>,
    ) -> Result<Response<Self::ReadStreamStream>, Status> {
        Err(writes_only())
    }

    async fn get_node(&self, _: Request<pb::GetNodeRequest>) -> Result<Response<pb::Node>, Status> {
        Err(writes_only())
    }

    async fn get_edge(&self, _: Request<pb::GetEdgeRequest>) -> Result<Response<pb::Edge>, Status> {
        Err(writes_only())
    }

    async fn neighbors(
        &self,
        _: Request<pb::NeighborsRequest>,
    ) -> Result<Response<pb::NeighborsResponse>, Status> {
        Err(writes_only())
    }

    async fn nodes_by_label(
        &self,
        _: Request<pb::NodesByLabelRequest>,
    ) -> Result<Response<pb::NodesPage>, Status> {
        Err(writes_only())
    }

    type ScanStream = Answers<pb::ScanItem>;
    async fn scan(
        &self,
        _: Request<pb::ScanRequest>,
    ) -> Result<Response<Self::ScanStream>, Status> {
        Err(writes_only())
    }
}

/// Serves a stand-in answering writes with `write` on a loopback port (plaintext); its address.
pub async fn serve(write: WriteFn) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(GraphServiceServer::new(WritesOnly(write)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}
