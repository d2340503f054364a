//! `GetLimits` and `SetLimits`: the replicated cluster limits, read from the member asked and
//! changed through the log on the leader (a follower forwards once); the changes are merged
//! with the limits in force at apply.

use tonic::{Request, Response, Status};

use super::{ClusterApi, client};
use crate::api::route::{self, Proposed};
use crate::api::status::apply_error;
use crate::command::{ClusterLimits, Command, LimitChanges, Outcome, Request as Proposal};
use crate::proto::v1 as pb;

pub fn to_proto(l: &ClusterLimits) -> pb::ClusterLimits {
    pb::ClusterLimits {
        tenants_max: l.tenants_max,
        sessions_per_principal_max: l.sessions_per_principal_max,
        session_bytes_per_principal_max: l.session_bytes_per_principal_max,
        cascade_edges_max: l.cascade_edges_max,
        entry_write_bytes_max: l.entry_write_bytes_max,
    }
}

/// The changes a request names.
fn changes(req: &pb::SetLimitsRequest) -> LimitChanges {
    LimitChanges {
        tenants_max: req.tenants_max,
        sessions_per_principal_max: req.sessions_per_principal_max,
        session_bytes_per_principal_max: req.session_bytes_per_principal_max,
        cascade_edges_max: req.cascade_edges_max,
        entry_write_bytes_max: req.entry_write_bytes_max,
    }
}

impl ClusterApi {
    pub(super) fn do_get_limits(&self) -> Result<Response<pb::ClusterLimits>, Status> {
        let reader = self.reader()?;
        let limits = reader
            .limits()
            .map_err(|e| Status::unavailable(format!("reading the limits failed ({e}); retry")))?;
        Ok(Response::new(to_proto(&limits)))
    }

    pub(super) async fn do_set_limits(
        &self,
        request: Request<pb::SetLimitsRequest>,
        caller: &crate::api::Caller,
    ) -> Result<Response<pb::ClusterLimits>, Status> {
        let via = route::Via::of(&request);
        let msg = request.into_inner();
        let (client_id, sequence) = crate::api::convert::request_id(msg.request_id.as_ref())?;
        let command = Command::UpdateLimits(changes(&msg));
        let req = Proposal::new(client_id, sequence, (self.clock)(), command)
            .map_err(|e| Status::internal(format!("encoding the limits: {e}")))?
            .by(caller.principal.via);
        match route::propose(&self.raft, req, via.forwarded).await? {
            Proposed::Applied(Ok(Outcome::Limits(l))) => Ok(Response::new(to_proto(&l))),
            Proposed::Applied(Ok(other)) => Err(Status::internal(format!(
                "set limits answered with {other:?}"
            ))),
            Proposed::Applied(Err(e)) => Err(apply_error(&e)),
            Proposed::Forward(leader) => client(&self.router, &leader)
                .await?
                .set_limits(via.forward(msg))
                .await
                .map_err(route::forwarded_outcome),
        }
    }
}
