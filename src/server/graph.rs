//! The graph service: writes go through Raft on the leader (a follower forwards them once),
//! reads are served locally — after a read index for `CONSISTENCY_LINEARIZABLE` (on a follower,
//! forwarded to the leader), straight from the replica for `CONSISTENCY_SERIALIZABLE`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use openraft::BasicNode;
use openraft::errors::{ClientWriteError, ForwardToLeader, LinearizableReadError, RaftError};
use openraft::raft::ReadPolicy;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::convert;
use super::status::{apply_error, invalid, read_error};
use crate::proto::v1 as pb;
use crate::proto::v1::graph_service_client::GraphServiceClient;
use crate::proto::v1::graph_service_server::GraphService;
use crate::raft::TypeConfig;
use crate::raft::network::MESSAGE_BYTES_MAX;
use crate::raft::service::Raft;
use crate::state_machine::{Direction, GraphReader, Outcome, PAGE_ITEMS_MAX};

/// Wall-clock microseconds since the Unix epoch, injected (the simulation supplies its own).
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Marks a request a follower forwarded, so it is forwarded at most once.
const FORWARDED: &str = "x-raftgraph-forwarded";
/// Deadline of a forwarded call.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// The graph service of one node.
pub struct GraphApi {
    raft: Raft,
    reader: GraphReader,
    clock: Clock,
}

impl GraphApi {
    pub fn new(raft: Raft, reader: GraphReader, clock: Clock) -> Self {
        GraphApi {
            raft,
            reader,
            clock,
        }
    }
}

/// Where a request must go instead: the leader's address, or UNAVAILABLE when no leader is
/// known or the request was already forwarded once.
fn leader_of(f: &ForwardToLeader<TypeConfig>, forwarded: bool) -> Result<BasicNode, Status> {
    match (&f.leader_node, forwarded) {
        (Some(n), false) => Ok(n.clone()),
        (Some(n), true) => Err(Status::unavailable(format!(
            "leadership is moving (leader {:?} at {}); retry",
            f.leader_id, n.addr
        ))),
        (None, _) => Err(Status::unavailable("no leader is known; retry")),
    }
}

async fn client(node: &BasicNode) -> Result<GraphServiceClient<Channel>, Status> {
    let endpoint = Endpoint::from_shared(format!("http://{}", node.addr))
        .map_err(|e| Status::unavailable(format!("leader address {}: {e}", node.addr)))?
        .connect_timeout(Duration::from_secs(2));
    let channel = endpoint.connect().await.map_err(|e| {
        Status::unavailable(format!("leader at {} cannot be reached: {e}", node.addr))
    })?;
    Ok(GraphServiceClient::new(channel)
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX))
}

fn forwarded<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(FORWARD_TIMEOUT);
    r.metadata_mut()
        .insert(FORWARDED, "1".parse().expect("ascii"));
    r
}

fn limit(l: u32) -> usize {
    // 0 means "the most a page may hold".
    if l == 0 { PAGE_ITEMS_MAX } else { l as usize }
}

impl GraphApi {
    /// `None`: serve the read here. `Some(leader)`: forward it.
    async fn read_route(
        &self,
        consistency: i32,
        was_forwarded: bool,
    ) -> Result<Option<BasicNode>, Status> {
        match pb::Consistency::try_from(consistency) {
            Ok(pb::Consistency::Serializable) => Ok(None),
            Ok(pb::Consistency::Linearizable) => {
                match self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
                    Ok(_) => Ok(None),
                    Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                        leader_of(&f, was_forwarded).map(Some)
                    }
                    Err(e) => Err(Status::unavailable(format!("read index: {e}"))),
                }
            }
            Err(_) => Err(invalid(
                "consistency",
                format!("unknown value {consistency}"),
            )),
        }
    }
}

type ScanStream = Pin<Box<dyn Stream<Item = Result<pb::ScanItem, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl GraphService for GraphApi {
    async fn write(
        &self,
        request: Request<pb::WriteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let was_forwarded = request.metadata().contains_key(FORWARDED);
        let msg = request.into_inner();
        let req = convert::write_request(msg.clone(), (self.clock)())?;
        match self.raft.client_write(req).await {
            Ok(r) => match &r.response().outcome {
                Ok(Outcome::Write(results)) => Ok(Response::new(convert::write_response(results))),
                Ok(other) => Err(Status::internal(format!("write answered with {other:?}"))),
                Err(e) => Err(apply_error(e)),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                let leader = leader_of(&f, was_forwarded)?;
                client(&leader).await?.write(forwarded(msg)).await
            }
            // The outcome is unknown (e.g. leadership changed mid-proposal): retrying with the
            // same (client_id, sequence) applies it at most once.
            Err(e) => Err(Status::unavailable(format!(
                "write outcome unknown, retry: {e}"
            ))),
        }
    }

    async fn get_node(
        &self,
        request: Request<pb::GetNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let was_forwarded = request.metadata().contains_key(FORWARDED);
        let msg = request.into_inner();
        if let Some(leader) = self.read_route(msg.consistency, was_forwarded).await? {
            return client(&leader).await?.get_node(forwarded(msg)).await;
        }
        match self
            .reader
            .node(&msg.tenant, msg.id)
            .map_err(|e| read_error(&e))?
        {
            Some(n) => Ok(Response::new(convert::node_to_proto(&n))),
            None => Err(Status::not_found(format!(
                "tenant {}: node {} not found",
                msg.tenant, msg.id
            ))),
        }
    }

    async fn get_edge(
        &self,
        request: Request<pb::GetEdgeRequest>,
    ) -> Result<Response<pb::Edge>, Status> {
        let was_forwarded = request.metadata().contains_key(FORWARDED);
        let msg = request.into_inner();
        if let Some(leader) = self.read_route(msg.consistency, was_forwarded).await? {
            return client(&leader).await?.get_edge(forwarded(msg)).await;
        }
        match self
            .reader
            .edge(&msg.tenant, msg.id)
            .map_err(|e| read_error(&e))?
        {
            Some(e) => Ok(Response::new(convert::edge_to_proto(&e))),
            None => Err(Status::not_found(format!(
                "tenant {}: edge {} not found",
                msg.tenant, msg.id
            ))),
        }
    }

    async fn neighbors(
        &self,
        request: Request<pb::NeighborsRequest>,
    ) -> Result<Response<pb::NeighborsResponse>, Status> {
        let was_forwarded = request.metadata().contains_key(FORWARDED);
        let msg = request.into_inner();
        if let Some(leader) = self.read_route(msg.consistency, was_forwarded).await? {
            return client(&leader).await?.neighbors(forwarded(msg)).await;
        }
        let direction = match pb::Direction::try_from(msg.direction) {
            Ok(pb::Direction::Out) => Direction::Out,
            Ok(pb::Direction::In) => Direction::In,
            Err(_) => {
                return Err(invalid(
                    "direction",
                    format!("unknown value {}", msg.direction),
                ));
            }
        };
        let after = (!msg.after.is_empty()).then_some(msg.after.as_slice());
        let page = self
            .reader
            .neighbors(
                &msg.tenant,
                msg.node,
                direction,
                msg.edge_type.as_deref(),
                after,
                limit(msg.limit),
            )
            .map_err(|e| read_error(&e))?;
        Ok(Response::new(pb::NeighborsResponse {
            neighbors: page.items.iter().map(convert::neighbor_to_proto).collect(),
            next: page.next.unwrap_or_default(),
        }))
    }

    async fn nodes_by_label(
        &self,
        request: Request<pb::NodesByLabelRequest>,
    ) -> Result<Response<pb::NodesPage>, Status> {
        let was_forwarded = request.metadata().contains_key(FORWARDED);
        let msg = request.into_inner();
        if let Some(leader) = self.read_route(msg.consistency, was_forwarded).await? {
            return client(&leader).await?.nodes_by_label(forwarded(msg)).await;
        }
        let after = (!msg.after.is_empty()).then_some(msg.after.as_slice());
        let page = self
            .reader
            .nodes_by_label(&msg.tenant, &msg.label, after, limit(msg.limit))
            .map_err(|e| read_error(&e))?;
        Ok(Response::new(pb::NodesPage {
            nodes: page.items.iter().map(convert::node_to_proto).collect(),
            next: page.next.unwrap_or_default(),
        }))
    }

    type ScanStream = ScanStream;

    async fn scan(
        &self,
        request: Request<pb::ScanRequest>,
    ) -> Result<Response<ScanStream>, Status> {
        let was_forwarded = request.metadata().contains_key(FORWARDED);
        let msg = request.into_inner();
        if let Some(leader) = self.read_route(msg.consistency, was_forwarded).await? {
            let remote = client(&leader)
                .await?
                .scan(forwarded(msg))
                .await?
                .into_inner();
            return Ok(Response::new(Box::pin(remote)));
        }
        let page_size = limit(msg.page_size);
        let edges = match pb::ScanKind::try_from(msg.kind) {
            Ok(pb::ScanKind::Nodes) => false,
            Ok(pb::ScanKind::Edges) => true,
            Err(_) => return Err(invalid("kind", format!("unknown value {}", msg.kind))),
        };
        // One page per step, read as the client consumes: memory stays at one page.
        let reader = self.reader.clone();
        let tenant = msg.tenant;
        let pages = futures::stream::unfold(Some(None::<Vec<u8>>), move |cursor| {
            let (reader, tenant) = (reader.clone(), tenant.clone());
            async move {
                let after = cursor?;
                let page: Result<(Vec<pb::ScanItem>, Option<Vec<u8>>), Status> = if edges {
                    reader
                        .scan_edges(&tenant, after.as_deref(), page_size)
                        .map(|p| {
                            let items = p
                                .items
                                .iter()
                                .map(|e| pb::ScanItem {
                                    item: Some(pb::scan_item::Item::Edge(convert::edge_to_proto(
                                        e,
                                    ))),
                                })
                                .collect();
                            (items, p.next)
                        })
                } else {
                    reader
                        .scan_nodes(&tenant, after.as_deref(), page_size)
                        .map(|p| {
                            let items = p
                                .items
                                .iter()
                                .map(|n| pb::ScanItem {
                                    item: Some(pb::scan_item::Item::Node(convert::node_to_proto(
                                        n,
                                    ))),
                                })
                                .collect();
                            (items, p.next)
                        })
                }
                .map_err(|e| read_error(&e));
                match page {
                    Ok((items, next)) => {
                        let items: Vec<Result<pb::ScanItem, Status>> =
                            items.into_iter().map(Ok).collect();
                        Some((futures::stream::iter(items), next.map(Some)))
                    }
                    Err(s) => Some((futures::stream::iter(vec![Err(s)]), None)),
                }
            }
        })
        .flatten();
        Ok(Response::new(Box::pin(pages)))
    }
}
