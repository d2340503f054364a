//! The reads of the graph service ([`Reads`]): routed by consistency (served here after a read
//! index, or forwarded to the leader), charged to the tenant's rate where they are served, for
//! the unary calls and the calls of a read stream alike.

use prost::Message;
use tonic::transport::Channel;
use tonic::{Response, Status};

use super::{call_error, client};
use crate::api::auth::{Auth, Caller, need_tenant};
use crate::api::convert;
use crate::api::rate::Throttle;
use crate::api::route;
use crate::api::status::{invalid, read_error};
use crate::auth::Role;
use crate::command::Direction;
use crate::proto::v1 as pb;
use crate::proto::v1::graph_service_client::GraphServiceClient;
use crate::state_machine::{GraphReader, Raft};

/// What a read needs, shared by the unary and the streamed path (cheap to clone).
#[derive(Clone)]
pub(super) struct Reads {
    pub(super) raft: Raft,
    pub(super) reader: GraphReader,
    pub(super) router: route::Router,
    pub(super) throttle: Throttle,
}

impl Reads {
    /// Where `consistency` says the read must be served: `None` here (after a read index when
    /// linearizable), or the leader's client to forward it to.
    async fn route(
        &self,
        consistency: i32,
        via: &route::Via,
    ) -> Result<Option<GraphServiceClient<Channel>>, Status> {
        match route::read_route(&self.raft, &self.router, consistency, via.forwarded).await? {
            None => Ok(None),
            Some(leader) => client(&self.router, &leader).await.map(Some),
        }
    }

    pub(super) async fn get_node(
        &self,
        msg: pb::GetNodeRequest,
        via: route::Via,
    ) -> Result<pb::Node, Status> {
        // A tenant over its rate is refused before routing costs a read index.
        self.throttle.precheck(&msg.tenant).await?;
        if let Some(mut leader) = self.route(msg.consistency, &via).await? {
            return Box::pin(async move { leader.get_node(via.forward(msg)).await })
                .await
                .map(Response::into_inner);
        }
        self.served(&msg.tenant, || {
            match self
                .reader
                .node(&msg.tenant, msg.id)
                .map_err(|e| read_error(&e))?
            {
                Some(n) => Ok(convert::node_to_proto(&n)),
                None => Err(Status::not_found(format!(
                    "tenant {}: node {} not found",
                    msg.tenant, msg.id
                ))),
            }
        })
        .await
    }

    pub(super) async fn get_edge(
        &self,
        msg: pb::GetEdgeRequest,
        via: route::Via,
    ) -> Result<pb::Edge, Status> {
        // A tenant over its rate is refused before routing costs a read index.
        self.throttle.precheck(&msg.tenant).await?;
        if let Some(mut leader) = self.route(msg.consistency, &via).await? {
            return Box::pin(async move { leader.get_edge(via.forward(msg)).await })
                .await
                .map(Response::into_inner);
        }
        self.served(&msg.tenant, || {
            match self
                .reader
                .edge(&msg.tenant, msg.id)
                .map_err(|e| read_error(&e))?
            {
                Some(e) => Ok(convert::edge_to_proto(&e)),
                None => Err(Status::not_found(format!(
                    "tenant {}: edge {} not found",
                    msg.tenant, msg.id
                ))),
            }
        })
        .await
    }

    pub(super) async fn neighbors(
        &self,
        msg: pb::NeighborsRequest,
        via: route::Via,
    ) -> Result<pb::NeighborsResponse, Status> {
        // A tenant over its rate is refused before routing costs a read index.
        self.throttle.precheck(&msg.tenant).await?;
        if let Some(mut leader) = self.route(msg.consistency, &via).await? {
            return Box::pin(async move { leader.neighbors(via.forward(msg)).await })
                .await
                .map(Response::into_inner);
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
        self.served(&msg.tenant, || {
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
            Ok(pb::NeighborsResponse {
                neighbors: page.items.iter().map(convert::neighbor_to_proto).collect(),
                next: page.next.unwrap_or_default(),
            })
        })
        .await
    }

    pub(super) async fn nodes_by_label(
        &self,
        msg: pb::NodesByLabelRequest,
        via: route::Via,
    ) -> Result<pb::NodesPage, Status> {
        // A tenant over its rate is refused before routing costs a read index.
        self.throttle.precheck(&msg.tenant).await?;
        if let Some(mut leader) = self.route(msg.consistency, &via).await? {
            return Box::pin(async move { leader.nodes_by_label(via.forward(msg)).await })
                .await
                .map(Response::into_inner);
        }
        let after = (!msg.after.is_empty()).then_some(msg.after.as_slice());
        self.served(&msg.tenant, || {
            let page = self
                .reader
                .nodes_by_label(&msg.tenant, &msg.label, after, route::limit(msg.limit))
                .map_err(|e| read_error(&e))?;
            Ok(pb::NodesPage {
                nodes: page.items.iter().map(convert::node_to_proto).collect(),
                next: page.next.unwrap_or_default(),
            })
        })
        .await
    }

    /// Serves a read here, charged to `tenant`: one request before it, its answer's bytes
    /// after.
    async fn served<A: Message>(
        &self,
        tenant: &str,
        read: impl FnOnce() -> Result<A, Status>,
    ) -> Result<A, Status> {
        self.throttle.admit(tenant, 0).await?;
        let answer = read()?;
        self.throttle.charge(tenant, answer.encoded_len() as u64);
        Ok(answer)
    }

    /// One call of a read stream, answered as the unary read would be; the stream's caller is
    /// checked again first.
    pub(super) async fn call(
        &self,
        call: pb::ReadCall,
        forwarded: bool,
        auth: &Auth,
        caller: &Caller,
    ) -> pb::ReadAnswer {
        use pb::read_answer::Result as R;
        use pb::read_call::Read;
        let via = route::Via::of_call(
            forwarded,
            call.timeout_ms,
            caller.header.clone(),
            caller.by_member(),
        );
        let tenant = match &call.read {
            Some(Read::GetNode(m)) => Some(&m.tenant),
            Some(Read::GetEdge(m)) => Some(&m.tenant),
            Some(Read::Neighbors(m)) => Some(&m.tenant),
            Some(Read::NodesByLabel(m)) => Some(&m.tenant),
            None => None,
        };
        if let Some(tenant) = tenant
            && let Err(denied) = auth
                .recheck(caller)
                .and_then(|()| need_tenant(caller, tenant, Role::Read))
        {
            return pb::ReadAnswer {
                call_id: call.call_id,
                result: Some(R::Error(call_error(&denied))),
            };
        }
        let result = match call.read {
            Some(Read::GetNode(m)) => self.get_node(m, via).await.map(R::Node),
            Some(Read::GetEdge(m)) => self.get_edge(m, via).await.map(R::Edge),
            Some(Read::Neighbors(m)) => self.neighbors(m, via).await.map(R::Neighbors),
            Some(Read::NodesByLabel(m)) => self.nodes_by_label(m, via).await.map(R::NodesPage),
            None => Err(invalid("read", "missing from the call")),
        };
        pb::ReadAnswer {
            call_id: call.call_id,
            result: Some(result.unwrap_or_else(|s| R::Error(call_error(&s)))),
        }
    }
}
