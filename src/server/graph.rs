//! The graph service: writes go through Raft on the leader (a follower forwards them once),
//! reads are served locally — after a read index for `CONSISTENCY_LINEARIZABLE` (a follower
//! asks the leader for it and waits for its own apply to reach it; only if the leader cannot
//! give one is the read forwarded), straight from the replica for `CONSISTENCY_SERIALIZABLE`.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use openraft::BasicNode;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::admission::Admission;
use super::batch::{BatchStats, Batcher};
use super::convert;
use super::route::{self, Proposed};
use super::status::{apply_error, invalid, read_error};
use crate::proto::v1 as pb;
use crate::proto::v1::graph_service_client::GraphServiceClient;
use crate::proto::v1::graph_service_server::GraphService;
use crate::raft::network::MESSAGE_BYTES_MAX;
use crate::raft::service::Raft;
use crate::state_machine::{Direction, GraphReader, Outcome};

/// Wall-clock microseconds since the Unix epoch, injected (the simulation supplies its own).
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The graph service of one node.
pub struct GraphApi {
    raft: Raft,
    reader: GraphReader,
    clock: Clock,
    admission: Admission,
    router: route::Router,
    batcher: Batcher,
}

impl GraphApi {
    /// The write batcher's counters.
    pub fn batch_stats(&self) -> &Arc<BatchStats> {
        self.batcher.stats()
    }

    pub fn new(raft: Raft, reader: GraphReader, clock: Clock) -> Self {
        GraphApi {
            reader,
            clock,
            admission: Admission::default(),
            router: route::Router::default(),
            batcher: Batcher::spawn(raft.clone()),
            raft,
        }
    }

    /// Shares `admission` (the node's in-flight proposal budget) instead of a private default.
    pub fn with_admission(mut self, admission: Admission) -> Self {
        self.admission = admission;
        self
    }

    /// Reaches the leader through `router` (the node's dialer) instead of a private TCP one.
    pub fn with_router(mut self, router: route::Router) -> Self {
        self.router = router;
        self
    }
}

async fn client(
    router: &route::Router,
    node: &BasicNode,
) -> Result<GraphServiceClient<Channel>, Status> {
    Ok(GraphServiceClient::new(router.channel(node)?)
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX))
}

type ScanStream = Pin<Box<dyn Stream<Item = Result<pb::ScanItem, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl GraphService for GraphApi {
    async fn write(
        &self,
        request: Request<pb::WriteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        // Held until the answer is sent, including a forward to the leader.
        let _permit = self.admission.admit()?;
        let via = route::Via::of(&request);
        let was_forwarded = via.forwarded;
        let msg = request.into_inner();
        let req = convert::write_request(msg.clone(), (self.clock)())?;
        match self.batcher.propose(req, was_forwarded).await? {
            Proposed::Applied(Ok(Outcome::Write(results))) => {
                Ok(Response::new(convert::write_response(&results)))
            }
            Proposed::Applied(Ok(other)) => {
                Err(Status::internal(format!("write answered with {other:?}")))
            }
            Proposed::Applied(Err(e)) => Err(apply_error(&e)),
            Proposed::Forward(leader) => client(&self.router, &leader)
                .await?
                .write(via.forward(msg))
                .await
                .map_err(route::forwarded_outcome),
        }
    }

    async fn get_node(
        &self,
        request: Request<pb::GetNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let via = route::Via::of(&request);
        let was_forwarded = via.forwarded;
        let msg = request.into_inner();
        if let Some(leader) =
            route::read_route(&self.raft, &self.router, msg.consistency, was_forwarded).await?
        {
            return client(&self.router, &leader)
                .await?
                .get_node(via.forward(msg))
                .await;
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
        let via = route::Via::of(&request);
        let was_forwarded = via.forwarded;
        let msg = request.into_inner();
        if let Some(leader) =
            route::read_route(&self.raft, &self.router, msg.consistency, was_forwarded).await?
        {
            return client(&self.router, &leader)
                .await?
                .get_edge(via.forward(msg))
                .await;
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
        let via = route::Via::of(&request);
        let was_forwarded = via.forwarded;
        let msg = request.into_inner();
        if let Some(leader) =
            route::read_route(&self.raft, &self.router, msg.consistency, was_forwarded).await?
        {
            return client(&self.router, &leader)
                .await?
                .neighbors(via.forward(msg))
                .await;
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
                route::limit(msg.limit),
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
        let via = route::Via::of(&request);
        let was_forwarded = via.forwarded;
        let msg = request.into_inner();
        if let Some(leader) =
            route::read_route(&self.raft, &self.router, msg.consistency, was_forwarded).await?
        {
            return client(&self.router, &leader)
                .await?
                .nodes_by_label(via.forward(msg))
                .await;
        }
        let after = (!msg.after.is_empty()).then_some(msg.after.as_slice());
        let page = self
            .reader
            .nodes_by_label(&msg.tenant, &msg.label, after, route::limit(msg.limit))
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
        let via = route::Via::of(&request);
        let was_forwarded = via.forwarded;
        let msg = request.into_inner();
        if let Some(leader) =
            route::read_route(&self.raft, &self.router, msg.consistency, was_forwarded).await?
        {
            let remote = client(&self.router, &leader)
                .await?
                .scan(via.forward(msg))
                .await?
                .into_inner();
            return Ok(Response::new(Box::pin(remote)));
        }
        let page_size = route::limit(msg.page_size);
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
