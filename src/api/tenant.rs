//! The tenant service: admin commands go through Raft like writes (one forward from a
//! follower); reads are local, after a read index when linearizable. Responses never carry a
//! secret (see `convert`); configs' secrets are sealed before they are proposed, and
//! `RotateSecrets` ([`rotate`]) seals them again under a new key.

mod rotate;

use crate::raft::Member;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::admission::Admission;
use super::auth::{Auth, audit, need_tenant, shown};
use super::convert;
use super::route::{self, Proposed};
use super::secrets::Secrets;
use super::sources::{Clock, Random};
use super::status::{apply_error, read_error};
use prost::Message;

use super::paced::{SMALL_ANSWER_RESERVE, hold_answer, reserve_answer};
use crate::auth::{AuthMode, Role, Scope};
use crate::command::{ApplyError, Outcome};
use crate::proto::v1 as pb;
use crate::proto::v1::tenant_service_client::TenantServiceClient;
use crate::proto::v1::tenant_service_server::TenantService;
use crate::state_machine::PAGE_BYTES_MAX;
use crate::state_machine::Raft;
use crate::state_machine::{GraphReader, ReadError};
use crate::tenant::TenantInfo;
use crate::wire::{CLIENT_ANSWER_BYTES_MAX, CLIENT_REQUEST_BYTES_MAX};

/// The tenant service of one server.
pub struct TenantApi {
    raft: Raft,
    reader: GraphReader,
    clock: Clock,
    admission: Admission,
    router: route::Router,
    auth: Auth,
    secrets: Secrets,
    /// Client ids of the re-seal proposals.
    random: Random,
}

impl TenantApi {
    /// Authentication is on, with no member certificate accepted, until
    /// [`TenantApi::with_auth`].
    pub fn new(raft: Raft, reader: GraphReader, clock: Clock) -> Self {
        TenantApi {
            auth: Auth::new(reader.clone(), clock.clone(), AuthMode::On, ""),
            raft,
            reader,
            clock,
            admission: Admission::default(),
            router: route::Router::default(),
            secrets: Secrets::default(),
            random: super::sources::os_random(),
        }
    }

    /// Seals tenant secrets with `secrets` (none by default: configs with secrets are refused);
    /// `random` picks the client ids of re-seal proposals.
    pub fn with_secrets(mut self, secrets: Secrets, random: Random) -> Self {
        self.secrets = secrets;
        self.random = random;
        self
    }

    /// Shares `admission` (the server's in-flight proposal budget) instead of a private default.
    pub fn with_admission(mut self, admission: Admission) -> Self {
        self.admission = admission;
        self
    }

    /// Reaches the leader through `router` (the server's dialer) instead of a private TCP one.
    pub fn with_router(mut self, router: route::Router) -> Self {
        self.router = router;
        self
    }

    /// Authenticates calls with `auth` (the server's).
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// Proposes an admin command; `Ok(Err(leader))` means "forward to this leader".
    async fn admin(
        &self,
        req: crate::command::Request,
        was_forwarded: bool,
    ) -> Result<Result<Outcome, Member>, Status> {
        match route::propose(&self.raft, req, was_forwarded).await? {
            Proposed::Applied(Ok(o)) => Ok(Ok(o)),
            Proposed::Applied(Err(e)) => Err(apply_error(&e)),
            Proposed::Forward(leader) => Ok(Err(leader)),
        }
    }
}

async fn client(
    router: &route::Router,
    node: &Member,
) -> Result<TenantServiceClient<Channel>, Status> {
    Ok(TenantServiceClient::new(router.channel(node)?)
        .max_decoding_message_size(CLIENT_ANSWER_BYTES_MAX)
        .max_encoding_message_size(CLIENT_REQUEST_BYTES_MAX))
}

impl TenantApi {
    /// `t` as answered, with the rate limits this member has applied for it (stored apart from
    /// the record; unlimited if the tenant is gone meanwhile).
    fn answer(&self, t: &TenantInfo) -> Result<pb::Tenant, Status> {
        let rates = self
            .reader
            .rate_limits(&t.id)
            .map_err(|e| read_error(&e))?
            .unwrap_or_default();
        Ok(convert::tenant_to_proto(t, rates))
    }

    /// The answer to a tenant command this member applied.
    fn tenant_of(&self, o: Outcome) -> Result<Response<pb::Tenant>, Status> {
        match o {
            Outcome::Tenant(t) => self.answer(&t).map(Response::new),
            Outcome::RateLimits(t, rates) => Ok(Response::new(convert::tenant_to_proto(&t, rates))),
            other => Err(Status::internal(format!(
                "tenant command answered with {other:?}"
            ))),
        }
    }
}

#[tonic::async_trait]
impl TenantService for TenantApi {
    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let caller = self.auth.admin(&request, "create tenants")?;
        let via = route::Via::of(&request);
        let fwd = via.forwarded;
        let msg = request.into_inner();
        let action = format!("create tenant {:?}", shown(&msg.id));
        let result = async {
            let req = convert::create_tenant(msg.clone(), (self.clock)(), &self.secrets)?
                .by(caller.principal.via);
            let _permit = self.admission.admit(msg.encoded_len())?;
            match self.admin(req, fwd).await? {
                Ok(o) => self.tenant_of(o),
                Err(leader) => client(&self.router, &leader)
                    .await?
                    .create_tenant(via.forward(msg))
                    .await
                    .map_err(route::forwarded_outcome),
            }
        }
        .await;
        audit(&caller, &action, &result);
        result
    }

    async fn get_tenant(
        &self,
        request: Request<pb::GetTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let caller = self.auth.caller(&request)?;
        need_tenant(&caller, &request.get_ref().id, Role::Read)?;
        let via = route::Via::of(&request);
        let fwd = via.forwarded;
        let hold = reserve_answer(&request, SMALL_ANSWER_RESERVE).await;
        let msg = request.into_inner();
        let answer = if let Some(leader) =
            route::read_route(&self.raft, &self.router, msg.consistency, fwd).await?
        {
            client(&self.router, &leader)
                .await?
                .get_tenant(via.forward(msg))
                .await?
                .into_inner()
        } else {
            let t = self.reader.tenant(&msg.id).map_err(|e| read_error(&e))?;
            self.answer(&t)?
        };
        let bytes = answer.encoded_len();
        Ok(hold_answer(Response::new(answer), hold, bytes))
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let caller = self.auth.caller(&request)?;
        // A tenant's token lists its own tenant only.
        let own = match &caller.principal.scope {
            Scope::Cluster => None,
            Scope::Tenant { tenant, .. } => Some(tenant.clone()),
        };
        let via = route::Via::of(&request);
        let fwd = via.forwarded;
        let hold = reserve_answer(&request, PAGE_BYTES_MAX).await;
        let msg = request.into_inner();
        let answer = if let Some(leader) =
            route::read_route(&self.raft, &self.router, msg.consistency, fwd).await?
        {
            client(&self.router, &leader)
                .await?
                .list_tenants(via.forward(msg))
                .await?
                .into_inner()
        } else if let Some(own) = own {
            let listed = msg.after.is_empty() || msg.after < own;
            let tenants = match self.reader.tenant(&own) {
                Ok(t) if listed => vec![self.answer(&t)?],
                Ok(_) | Err(ReadError::Refused(ApplyError::TenantNotFound { .. })) => vec![],
                Err(e) => return Err(read_error(&e)),
            };
            pb::ListTenantsResponse {
                tenants,
                next: String::new(),
            }
        } else {
            let after = (!msg.after.is_empty()).then_some(msg.after.as_str());
            let page = self
                .reader
                .tenants(after, route::limit(msg.limit))
                .map_err(|e| read_error(&e))?;
            pb::ListTenantsResponse {
                tenants: page
                    .items
                    .iter()
                    .map(|t| self.answer(t))
                    .collect::<Result<_, _>>()?,
                next: page
                    .next
                    .map(|n| String::from_utf8_lossy(&n).into_owned())
                    .unwrap_or_default(),
            }
        };
        let bytes = answer.encoded_len();
        Ok(hold_answer(Response::new(answer), hold, bytes))
    }

    async fn update_quotas(
        &self,
        request: Request<pb::UpdateQuotasRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let caller = self.auth.admin(&request, "change quotas")?;
        let via = route::Via::of(&request);
        let fwd = via.forwarded;
        let msg = request.into_inner();
        let action = format!("update quotas of tenant {:?}", shown(&msg.id));
        let result = async {
            let req = convert::update_quotas(msg.clone(), (self.clock)())?.by(caller.principal.via);
            let _permit = self.admission.admit(msg.encoded_len())?;
            match self.admin(req, fwd).await? {
                Ok(o) => self.tenant_of(o),
                Err(leader) => client(&self.router, &leader)
                    .await?
                    .update_quotas(via.forward(msg))
                    .await
                    .map_err(route::forwarded_outcome),
            }
        }
        .await;
        audit(&caller, &action, &result);
        result
    }

    async fn set_rate_limits(
        &self,
        request: Request<pb::SetRateLimitsRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let caller = self.auth.admin(&request, "change rate limits")?;
        let via = route::Via::of(&request);
        let fwd = via.forwarded;
        let msg = request.into_inner();
        let action = format!("set rate limits of tenant {:?}", shown(&msg.id));
        let result = async {
            let req =
                convert::set_rate_limits(msg.clone(), (self.clock)())?.by(caller.principal.via);
            let _permit = self.admission.admit(msg.encoded_len())?;
            match self.admin(req, fwd).await? {
                Ok(o) => self.tenant_of(o),
                Err(leader) => client(&self.router, &leader)
                    .await?
                    .set_rate_limits(via.forward(msg))
                    .await
                    .map_err(route::forwarded_outcome),
            }
        }
        .await;
        audit(&caller, &action, &result);
        result
    }

    async fn set_tenant_config(
        &self,
        request: Request<pb::SetTenantConfigRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let caller = self.auth.admin(&request, "change tenant configs")?;
        let via = route::Via::of(&request);
        let fwd = via.forwarded;
        let msg = request.into_inner();
        let action = format!("set config of tenant {:?}", shown(&msg.id));
        let result = async {
            let req = convert::set_tenant_config(msg.clone(), (self.clock)(), &self.secrets)?
                .by(caller.principal.via);
            let _permit = self.admission.admit(msg.encoded_len())?;
            match self.admin(req, fwd).await? {
                Ok(o) => self.tenant_of(o),
                Err(leader) => client(&self.router, &leader)
                    .await?
                    .set_tenant_config(via.forward(msg))
                    .await
                    .map_err(route::forwarded_outcome),
            }
        }
        .await;
        audit(&caller, &action, &result);
        result
    }

    async fn set_tenant_enabled(
        &self,
        request: Request<pb::SetTenantEnabledRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let caller = self.auth.admin(&request, "enable or disable tenants")?;
        let via = route::Via::of(&request);
        let fwd = via.forwarded;
        let msg = request.into_inner();
        let action = format!("enable/disable tenant {:?}", shown(&msg.id));
        let result = async {
            let req =
                convert::set_tenant_enabled(msg.clone(), (self.clock)())?.by(caller.principal.via);
            let _permit = self.admission.admit(msg.encoded_len())?;
            match self.admin(req, fwd).await? {
                Ok(o) => self.tenant_of(o),
                Err(leader) => client(&self.router, &leader)
                    .await?
                    .set_tenant_enabled(via.forward(msg))
                    .await
                    .map_err(route::forwarded_outcome),
            }
        }
        .await;
        audit(&caller, &action, &result);
        result
    }

    async fn rotate_secrets(
        &self,
        request: Request<pb::RotateSecretsRequest>,
    ) -> Result<Response<pb::RotateSecretsResponse>, Status> {
        let caller = self.auth.admin(&request, "rotate secrets")?;
        let result = self.do_rotate(request, &caller).await.map(Response::new);
        audit(&caller, "rotate secrets", &result);
        result
    }

    async fn delete_tenant(
        &self,
        request: Request<pb::DeleteTenantRequest>,
    ) -> Result<Response<pb::DeleteTenantResponse>, Status> {
        let caller = self.auth.admin(&request, "delete tenants")?;
        let via = route::Via::of(&request);
        let fwd = via.forwarded;
        let msg = request.into_inner();
        let action = format!("delete tenant {:?}", shown(&msg.id));
        let result = async {
            let req = convert::delete_tenant(msg.clone(), (self.clock)())?.by(caller.principal.via);
            let _permit = self.admission.admit(msg.encoded_len())?;
            match self.admin(req, fwd).await? {
                Ok(Outcome::Deleted) => Ok(Response::new(pb::DeleteTenantResponse {})),
                Ok(other) => Err(Status::internal(format!("delete answered with {other:?}"))),
                Err(leader) => client(&self.router, &leader)
                    .await?
                    .delete_tenant(via.forward(msg))
                    .await
                    .map_err(route::forwarded_outcome),
            }
        }
        .await;
        audit(&caller, &action, &result);
        result
    }
}
