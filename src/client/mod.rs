//! The Rust client: a list of endpoints, leader discovery, a deadline per call and per attempt,
//! and retries that reuse the request id so a retried write applies once.
//!
//! **Exactly-once.** A [`Client`] is one session: a client id and a sequence that grows by one
//! per proposal (write or tenant admin command). Proposals from one `Client` go one at a time
//! (the server keeps one outstanding request per session); for concurrency use several clients.
//! Every retry of a proposal resends the same `(client_id, sequence)`, so the cluster applies it
//! at most once and answers a repeat with the first answer. After any error the session ends
//! and the next proposal starts a new one (a new client id): whether the failed sequence reached
//! the session table is not knowable from every error (a refusal at the edge does not, a refusal
//! at apply does, an unknown outcome may), and a fresh session can neither collide with it nor
//! be refused as a gap. A proposal refused at its first attempt because the server evicted the
//! session (`session expired`, nothing applied under that sequence) is resent once in a new
//! session. Refused so after an attempt that went unanswered, it is never resent: that attempt
//! may have applied before the eviction, so the call fails with an unknown outcome
//! ([`is_outcome_unknown`]) and the caller decides (read, then write again or not); so does a
//! refusal of the credentials or a full entry after an unanswered attempt. Sessions live in the
//! space of the credential that made them, so only this token's own sessions can evict this
//! one. A proposal refused at its first attempt because the Raft entry it was batched into had
//! no byte budget left for it (`EntryTooLarge`, ABORTED, nothing applied) is resent up to
//! [`ENTRY_FULL_RESENDS`] times, each landing in another entry.
//!
//! A session's *first* proposal (sequence 1) has no session to be deduplicated against
//! once its session is evicted, so every attempt after the first is marked resent
//! (`RequestId.resent`): one that finds no session, from a token that has had sessions evicted,
//! is refused as session-expired rather than taken for a new session's first request, and the
//! call fails with an unknown outcome as above.
//!
//! **Routing.** Proposals and linearizable reads go to the leader when it is known (learned
//! from `Status` at the start of a proposal; any member would forward, this saves the hop),
//! serializable reads to the endpoints in turn. UNAVAILABLE, DEADLINE_EXCEEDED (one attempt's),
//! CANCELLED and UNKNOWN (transport) are retried with jittered exponential backoff (or the
//! server's `grpc-retry-pushback-ms`) until the call's deadline; after a failed attempt the
//! leader is forgotten and the listed endpoints are tried in turn (they forward), so an
//! advertised leader address the client cannot reach costs one attempt, not the call. Every
//! attempt is bounded by `attempt_timeout` on the client side too. Every other code is the
//! answer.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::proto::v1 as pb;
use crate::proto::v1::cluster_service_client::ClusterServiceClient;
use crate::proto::v1::graph_service_client::GraphServiceClient;
use crate::proto::v1::tenant_service_client::TenantServiceClient;
use crate::proto::v1::token_service_client::TokenServiceClient;
use crate::transport::check_addr;
use crate::wire::{
    AUTHORIZATION_HEADER, CLIENT_ANSWER_BYTES_MAX, CLIENT_REQUEST_BYTES_MAX, RETRY_PUSHBACK_HEADER,
};
use tonic::service::interceptor::InterceptedService;

mod outcome;
mod pool;
mod stream;

use outcome::outcome_unknown;
pub use outcome::{OUTCOME_HEADER, is_outcome_unknown};
pub use pool::Pool;

/// How a client behaves.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The session's client id; `None` picks a random one (two clients must never share one).
    pub client_id: Option<u64>,
    /// One attempt's deadline.
    pub attempt_timeout: Duration,
    /// A whole call's deadline, retries included.
    pub deadline: Duration,
    /// Seed of the backoff jitter; `None` derives it from the client id.
    pub jitter_seed: Option<u64>,
    /// The connections (TCP by default; the simulation supplies its network). Clients whose
    /// options hold clones of one pool share its connections and streams.
    pub pool: Pool,
    /// Writes go over the connection's `WriteStream` (shared by the clients of one pool)
    /// instead of one unary call each. Same answers and guarantees; less work per write.
    pub write_stream: bool,
    /// Reads (`get_node`, `get_edge`, `neighbors`, `nodes_by_label`) go over the connection's
    /// `ReadStream` instead of one unary call each. Same answers; less work per read.
    pub read_stream: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            client_id: None,
            attempt_timeout: Duration::from_secs(5),
            deadline: Duration::from_secs(30),
            jitter_seed: None,
            pool: Pool::default(),
            write_stream: true,
            read_stream: true,
        }
    }
}

/// A connection to a raftgraph cluster. Cheap to share by reference; see the module docs.
pub struct Client {
    endpoints: Vec<String>,
    options: ClientOptions,
    leader: Mutex<Option<String>>,
    next: Mutex<usize>,
    rng: Mutex<SmallRng>,
    /// (client id, last sequence used); held across a proposal and its retries.
    session: tokio::sync::Mutex<(u64, u64)>,
}

/// Where a call should go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Leader,
    Any,
}

/// The longest deadline a call may have (one day).
pub const DEADLINE_MAX: Duration = Duration::from_secs(24 * 3600);

/// How many times a proposal refused with `EntryTooLarge` is resent (see the module docs).
pub const ENTRY_FULL_RESENDS: u32 = 3;

/// Where a read of `consistency` goes.
fn read_target(consistency: i32) -> Target {
    if consistency == pb::Consistency::Serializable as i32 {
        Target::Any
    } else {
        Target::Leader
    }
}

/// `msg` as a gRPC request with `timeout` (sent as grpc-timeout, which the server keeps).
fn unary<M>(msg: M, timeout: Duration) -> Request<M> {
    let mut r = Request::new(msg);
    r.set_timeout(timeout);
    r
}

/// `s` with the causes of a transport failure (refused connection, TLS handshake, a server
/// that wants TLS) in its message: tonic's own message for them is only "transport error".
pub fn explained(s: Status) -> Status {
    let mut why = String::new();
    let mut source = std::error::Error::source(&s);
    while let Some(e) = source {
        let text = e.to_string();
        if !why.contains(&text) && !s.message().contains(&text) {
            why.push_str(": ");
            why.push_str(&text);
        }
        source = e.source();
    }
    if why.is_empty() {
        return s;
    }
    let mut out = Status::new(s.code(), format!("{}{why}", s.message()));
    *out.metadata_mut() = s.metadata().clone();
    out
}

fn retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    )
}

fn pushback(s: &Status) -> Option<Duration> {
    retry_after(s).map(|d| d.min(Duration::from_secs(10)))
}

/// The wait the server asked for before a retry (`grpc-retry-pushback-ms`), if it named one:
/// RESOURCE_EXHAUSTED from a tenant's rate limit (returned to the caller, never retried by
/// the client; nothing was done), or UNAVAILABLE from an overloaded server (retried).
pub fn retry_after(s: &Status) -> Option<Duration> {
    let ms = s.metadata().get(RETRY_PUSHBACK_HEADER)?.to_str().ok()?;
    ms.parse::<u64>().ok().map(Duration::from_millis)
}

impl Client {
    /// A client for `endpoints` (`host:port` each). Channels connect lazily.
    pub fn new(endpoints: Vec<String>, options: ClientOptions) -> Result<Client, Status> {
        if endpoints.is_empty() {
            return Err(Status::invalid_argument("endpoints: none given"));
        }
        for e in &endpoints {
            check_addr(e).map_err(|e| {
                Status::invalid_argument(format!("invalid argument endpoints: {e}"))
            })?;
        }
        let client_id = options
            .client_id
            .unwrap_or_else(|| SmallRng::from_os_rng().random());
        // Seeds the jitter and later session ids: distinct client ids give distinct streams
        // even under one shared jitter seed, so renewed sessions do not collide.
        let seed = client_id
            ^ options
                .jitter_seed
                .unwrap_or(0)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut options = options;
        // Bounded so `now + deadline` cannot overflow.
        options.deadline = options.deadline.min(DEADLINE_MAX);
        options.attempt_timeout = options
            .attempt_timeout
            .clamp(Duration::from_millis(1), DEADLINE_MAX);
        Ok(Client {
            endpoints,
            options,
            leader: Mutex::new(None),
            next: Mutex::new(0),
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
            session: tokio::sync::Mutex::new((client_id, 0)),
        })
    }

    /// `msg` as a request with `timeout` and this client's token.
    fn unary<M>(&self, msg: M, timeout: Duration) -> Request<M> {
        let mut r = unary(msg, timeout);
        if let Some(a) = self.options.pool.authorization() {
            r.metadata_mut().insert(AUTHORIZATION_HEADER, a.clone());
        }
        r
    }

    /// The current session's client id.
    pub async fn client_id(&self) -> u64 {
        self.session.lock().await.0
    }

    fn channel(&self, addr: &str) -> Result<Channel, Status> {
        self.options
            .pool
            .channel(addr)
            .map_err(|e| Status::invalid_argument(format!("endpoint {addr:?}: {e}")))
    }

    /// The next target: the leader if wanted and known, else the endpoints in turn.
    fn pick(&self, target: Target) -> String {
        if target == Target::Leader
            && let Some(l) = self.leader.lock().expect("leader").clone()
        {
            return l;
        }
        let mut next = self.next.lock().expect("rotation");
        let addr = self.endpoints[*next % self.endpoints.len()].clone();
        *next = next.wrapping_add(1);
        addr
    }

    fn backoff(&self, attempt: u32, status: &Status) -> Duration {
        if let Some(d) = pushback(status) {
            return d;
        }
        let base = Duration::from_millis(25u64 << attempt.min(5)); // 25 ms .. 800 ms
        let jitter = self.rng.lock().expect("rng").random_range(0.5..1.5);
        base.mul_f64(jitter)
    }

    /// Asks the endpoints (in order, at most 1 s each) who leads; remembers the answer.
    pub async fn discover_leader(&self) -> Option<String> {
        let each = self.options.attempt_timeout.min(Duration::from_secs(1));
        for addr in &self.endpoints {
            let Ok(ch) = self.channel(addr) else { continue };
            let req = self.unary(pb::StatusRequest {}, each);
            let answer =
                tokio::time::timeout(each, ClusterServiceClient::new(ch).status(req)).await;
            if let Ok(Ok(s)) = answer {
                let s = s.into_inner();
                if !s.leader_addr.is_empty() {
                    *self.leader.lock().expect("leader") = Some(s.leader_addr.clone());
                    return Some(s.leader_addr);
                }
            }
        }
        None
    }

    /// Runs `call` until it answers, a non-retryable error comes back, or the deadline.
    async fn retry<T, F, Fut>(&self, target: Target, call: F) -> Result<T, Status>
    where
        F: FnMut(&str, Channel, Duration) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.options.deadline;
        self.retry_until(target, deadline, call).await
    }

    /// [`Client::retry`] within an absolute deadline.
    async fn retry_until<T, F, Fut>(
        &self,
        target: Target,
        deadline: tokio::time::Instant,
        mut call: F,
    ) -> Result<T, Status>
    where
        F: FnMut(&str, Channel, Duration) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let mut attempt = 0u32;
        loop {
            let addr = self.pick(target);
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let timeout = self.options.attempt_timeout.min(left);
            let result = match self.channel(&addr) {
                // Bounded here too: a server that ignores grpc-timeout cannot hang the call.
                Ok(ch) => match tokio::time::timeout(timeout, call(&addr, ch, timeout)).await {
                    Ok(r) => r,
                    Err(_) => Err(Status::deadline_exceeded(format!(
                        "{addr}: no answer within {timeout:?}"
                    ))),
                },
                Err(e) => Err(e),
            };
            let status = match result {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if !retryable(&s) => return Err(explained(s)),
                Err(s) => explained(s),
            };
            tracing::debug!(%addr, code = ?status.code(), msg = status.message(), "retrying");
            if matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled) {
                // The connection may be stalled rather than closed: dial afresh next time.
                self.options.pool.forget(&addr);
            }
            // The leader may have moved or be unreachable from here: forget it and go through
            // the endpoints (which forward); the next proposal asks again.
            *self.leader.lock().expect("leader") = None;
            let pause = self.backoff(attempt, &status);
            if tokio::time::Instant::now() + pause >= deadline {
                return Err(Status::new(
                    status.code(),
                    format!(
                        "gave up after {} attempts within {:?}: {}",
                        attempt + 1,
                        self.options.deadline,
                        status.message()
                    ),
                ));
            }
            tokio::time::sleep(pause).await;
            attempt += 1;
        }
    }

    /// A proposal: one sequence for all its retries; see the module docs.
    ///
    /// `call` gets the message to send (a clone: retries resend the same one) and the
    /// attempt's timeout; [`unary`] makes it a gRPC request.
    async fn propose<Req, T, F, Fut>(&self, msg: Req, mut call: F) -> Result<T, Status>
    where
        Req: Clone + WithRequestId,
        F: FnMut(&str, Channel, Req, Duration) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        // One deadline for the whole call: leader discovery and the resend in a new session
        // included.
        let deadline = tokio::time::Instant::now() + self.options.deadline;
        let mut session = self.session.lock().await;
        if self.leader.lock().expect("leader").is_none() {
            self.discover_leader().await;
        }
        let mut resent = false;
        let mut rebatched = 0;
        loop {
            session.1 += 1;
            let (client_id, sequence) = *session;
            let mut sent = 0u32;
            let r = self
                .retry_until(Target::Leader, deadline, |addr, ch, timeout| {
                    sent += 1;
                    // Every attempt after the first is marked: an earlier one may have
                    // applied (see the module docs).
                    let mut msg = msg.clone();
                    msg.set_request_id(pb::RequestId {
                        client_id,
                        sequence,
                        resent: sent > 1,
                    });
                    call(addr, ch, msg, timeout)
                })
                .await;
            let Err(s) = &r else { return r };
            // End the session (see the module docs).
            *session = (self.rng.lock().expect("rng").random(), 0);
            let expired =
                s.code() == Code::FailedPrecondition && s.message().contains("session expired");
            // Refused at the first attempt: nothing was applied under this sequence, so
            // sending it again in a new session is safe. After an unanswered attempt, the
            // first one may have applied before the session was evicted: the caller must
            // find out (read) rather than have it applied twice.
            // So can a refusal of the credentials after an unanswered attempt (revoked or
            // expired in between: apply checks them before it reads the session), and a
            // full-entry refusal then (an evicted session's retry may run anew).
            let credentials = matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied);
            let entry_full = s.code() == Code::Aborted && s.message().contains("same Raft entry");
            if sent > 1 && (expired || credentials || entry_full) {
                return Err(outcome_unknown(client_id, sequence, s));
            }
            if expired && !resent {
                resent = true;
                continue;
            }
            // Refused at apply because the entry it was batched into had spent its byte budget:
            // nothing was applied, so sending it again (in the new session) is safe, and it
            // lands in another entry.
            if entry_full && rebatched < ENTRY_FULL_RESENDS {
                rebatched += 1;
                continue;
            }
            return r;
        }
    }

    fn tenants(ch: Channel) -> TenantServiceClient<Channel> {
        TenantServiceClient::new(ch)
            .max_decoding_message_size(CLIENT_ANSWER_BYTES_MAX)
            .max_encoding_message_size(CLIENT_REQUEST_BYTES_MAX)
    }

    fn graph(ch: Channel) -> GraphServiceClient<Channel> {
        GraphServiceClient::new(ch)
            .max_decoding_message_size(CLIENT_ANSWER_BYTES_MAX)
            .max_encoding_message_size(CLIENT_REQUEST_BYTES_MAX)
    }

    /// An atomic write batch (`request_id` is set by the client).
    pub async fn write(&self, req: pb::WriteRequest) -> Result<pb::WriteResponse, Status> {
        let streamed = self.options.write_stream;
        let pool = &self.options.pool;
        self.propose(req, |addr, ch, m, timeout| {
            // The stream carries the timeout in the call: no gRPC request (and its
            // grpc-timeout header, formatted per call) is made for it.
            let stream = streamed.then(|| pool.write_stream(addr, ch.clone()));
            async move {
                match stream {
                    Some(s) => s.call(m, timeout).await.map(Response::new),
                    None => Self::graph(ch).write(self.unary(m, timeout)).await,
                }
            }
        })
        .await
    }

    /// A read: serializable ones go to any endpoint, linearizable ones to the leader.
    async fn read<Req, T, F, Fut>(
        &self,
        consistency: i32,
        msg: Req,
        mut call: F,
    ) -> Result<T, Status>
    where
        Req: Clone,
        F: FnMut(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.retry(read_target(consistency), |_, ch, t| {
            call(ch, self.unary(msg.clone(), t))
        })
        .await
    }

    /// A graph read, as [`Client::read`] but over the connection's read stream unless
    /// `read_stream` is off: `read` wraps the request as a stream call, `pick` takes the
    /// answer's result apart, `call` is the unary call.
    async fn graph_read<Req, T, W, P, F, Fut>(
        &self,
        consistency: i32,
        msg: Req,
        read: W,
        pick: P,
        call: F,
    ) -> Result<T, Status>
    where
        Req: Clone,
        W: Fn(Req) -> pb::read_call::Read,
        P: Fn(pb::read_answer::Result) -> Option<T> + Copy,
        F: FnMut(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        if !self.options.read_stream {
            return self.read(consistency, msg, call).await;
        }
        let pool = &self.options.pool;
        self.retry(read_target(consistency), |addr, ch, t| {
            let stream = pool.read_stream(addr, ch);
            let r = read(msg.clone());
            let addr = addr.to_string();
            async move {
                let answer = stream.call(r, t).await?;
                match pick(answer) {
                    Some(v) => Ok(Response::new(v)),
                    None => Err(Status::internal(format!(
                        "{addr}: read stream answered with a result of another kind"
                    ))),
                }
            }
        })
        .await
    }

    pub async fn get_node(&self, req: pb::GetNodeRequest) -> Result<pb::Node, Status> {
        use pb::read_answer::Result as R;
        self.graph_read(
            req.consistency,
            req,
            pb::read_call::Read::GetNode,
            |a| if let R::Node(n) = a { Some(n) } else { None },
            |ch, r| async move { Self::graph(ch).get_node(r).await },
        )
        .await
    }

    pub async fn get_edge(&self, req: pb::GetEdgeRequest) -> Result<pb::Edge, Status> {
        use pb::read_answer::Result as R;
        self.graph_read(
            req.consistency,
            req,
            pb::read_call::Read::GetEdge,
            |a| if let R::Edge(e) = a { Some(e) } else { None },
            |ch, r| async move { Self::graph(ch).get_edge(r).await },
        )
        .await
    }

    pub async fn neighbors(
        &self,
        req: pb::NeighborsRequest,
    ) -> Result<pb::NeighborsResponse, Status> {
        use pb::read_answer::Result as R;
        self.graph_read(
            req.consistency,
            req,
            pb::read_call::Read::Neighbors,
            |a| {
                if let R::Neighbors(n) = a {
                    Some(n)
                } else {
                    None
                }
            },
            |ch, r| async move { Self::graph(ch).neighbors(r).await },
        )
        .await
    }

    pub async fn nodes_by_label(
        &self,
        req: pb::NodesByLabelRequest,
    ) -> Result<pb::NodesPage, Status> {
        use pb::read_answer::Result as R;
        self.graph_read(
            req.consistency,
            req,
            pb::read_call::Read::NodesByLabel,
            |a| {
                if let R::NodesPage(p) = a {
                    Some(p)
                } else {
                    None
                }
            },
            |ch, r| async move { Self::graph(ch).nodes_by_label(r).await },
        )
        .await
    }

    pub async fn create_tenant(&self, req: pb::CreateTenantRequest) -> Result<pb::Tenant, Status> {
        self.propose(req, |_, ch, m, t| async move {
            Self::tenants(ch).create_tenant(self.unary(m, t)).await
        })
        .await
    }

    /// Re-seals every tenant secret under the cluster's current key (see `RotateSecrets`).
    /// Retried like a read: a run again re-seals only what is left.
    pub async fn rotate_secrets(&self) -> Result<pb::RotateSecretsResponse, Status> {
        self.retry(Target::Leader, |_, ch, t| async move {
            Self::tenants(ch)
                .rotate_secrets(self.unary(pb::RotateSecretsRequest {}, t))
                .await
        })
        .await
    }

    /// The replicated cluster limits, as the member asked has applied them.
    pub async fn get_limits(&self) -> Result<pb::ClusterLimits, Status> {
        self.retry(Target::Leader, |_, ch, t| async move {
            ClusterServiceClient::new(ch)
                .get_limits(self.unary(pb::GetLimitsRequest {}, t))
                .await
        })
        .await
    }

    /// Changes the cluster limits `req` names (exactly-once, like every proposal).
    pub async fn set_limits(&self, req: pb::SetLimitsRequest) -> Result<pb::ClusterLimits, Status> {
        self.propose(req, |_, ch, m, t| async move {
            ClusterServiceClient::new(ch)
                .set_limits(self.unary(m, t))
                .await
        })
        .await
    }

    pub async fn update_quotas(&self, req: pb::UpdateQuotasRequest) -> Result<pb::Tenant, Status> {
        self.propose(req, |_, ch, m, t| async move {
            Self::tenants(ch).update_quotas(self.unary(m, t)).await
        })
        .await
    }

    /// Sets every throughput limit of a tenant (an absent one becomes unlimited).
    pub async fn set_rate_limits(
        &self,
        req: pb::SetRateLimitsRequest,
    ) -> Result<pb::Tenant, Status> {
        self.propose(req, |_, ch, m, t| async move {
            Self::tenants(ch).set_rate_limits(self.unary(m, t)).await
        })
        .await
    }

    pub async fn set_tenant_config(
        &self,
        req: pb::SetTenantConfigRequest,
    ) -> Result<pb::Tenant, Status> {
        self.propose(req, |_, ch, m, t| async move {
            Self::tenants(ch).set_tenant_config(self.unary(m, t)).await
        })
        .await
    }

    pub async fn set_tenant_enabled(
        &self,
        req: pb::SetTenantEnabledRequest,
    ) -> Result<pb::Tenant, Status> {
        self.propose(req, |_, ch, m, t| async move {
            Self::tenants(ch).set_tenant_enabled(self.unary(m, t)).await
        })
        .await
    }

    pub async fn delete_tenant(
        &self,
        req: pb::DeleteTenantRequest,
    ) -> Result<pb::DeleteTenantResponse, Status> {
        self.propose(req, |_, ch, m, t| async move {
            Self::tenants(ch).delete_tenant(self.unary(m, t)).await
        })
        .await
    }

    pub async fn get_tenant(&self, req: pb::GetTenantRequest) -> Result<pb::Tenant, Status> {
        self.read(req.consistency, req, |ch, r| async move {
            Self::tenants(ch).get_tenant(r).await
        })
        .await
    }

    pub async fn list_tenants(
        &self,
        req: pb::ListTenantsRequest,
    ) -> Result<pb::ListTenantsResponse, Status> {
        self.read(req.consistency, req, |ch, r| async move {
            Self::tenants(ch).list_tenants(r).await
        })
        .await
    }

    /// The status of the first endpoint that answers (not necessarily the leader's view).
    pub async fn status(&self) -> Result<pb::StatusResponse, Status> {
        self.retry(Target::Any, |_, ch, t| {
            let r = self.unary(pb::StatusRequest {}, t);
            async move { ClusterServiceClient::new(ch).status(r).await }
        })
        .await
    }

    /// The status of one endpoint, without retries.
    pub async fn status_of(&self, addr: &str) -> Result<pb::StatusResponse, Status> {
        let r = self.unary(pb::StatusRequest {}, self.options.attempt_timeout);
        let ch = self.channel(addr)?;
        Ok(ClusterServiceClient::new(ch)
            .status(r)
            .await
            .map_err(explained)?
            .into_inner())
    }

    /// `ch` with this client's token added to every call.
    fn authorized(&self, ch: Channel) -> Authorized {
        InterceptedService::new(ch, Authorize(self.options.pool.authorization().cloned()))
    }

    /// The cluster service of one endpoint, over this client's connection to it (TLS when the
    /// client's pool speaks it), with this client's token.
    pub fn cluster_client(&self, addr: &str) -> Result<ClusterServiceClient<Authorized>, Status> {
        Ok(ClusterServiceClient::new(
            self.authorized(self.channel(addr)?),
        ))
    }

    fn tokens(&self, ch: Channel) -> TokenServiceClient<Authorized> {
        TokenServiceClient::new(self.authorized(ch))
            .max_decoding_message_size(CLIENT_ANSWER_BYTES_MAX)
            .max_encoding_message_size(CLIENT_REQUEST_BYTES_MAX)
    }

    /// A new token, shown this once. Not deduplicated: a retry after an unknown outcome may
    /// leave an unused token behind (listed, revocable; its secret was never sent anywhere).
    pub async fn create_token(
        &self,
        req: pb::CreateTokenRequest,
    ) -> Result<pb::CreateTokenResponse, Status> {
        self.retry(Target::Leader, |_, ch, t| {
            let r = unary(req.clone(), t);
            let mut c = self.tokens(ch);
            async move { c.create_token(r).await }
        })
        .await
    }

    /// Revokes a token by id (NOT_FOUND if it does not exist, or was revoked by an earlier
    /// attempt of this call).
    pub async fn revoke_token(
        &self,
        req: pb::RevokeTokenRequest,
    ) -> Result<pb::RevokeTokenResponse, Status> {
        self.retry(Target::Leader, |_, ch, t| {
            let r = unary(req.clone(), t);
            let mut c = self.tokens(ch);
            async move { c.revoke_token(r).await }
        })
        .await
    }

    pub async fn list_tokens(
        &self,
        req: pb::ListTokensRequest,
    ) -> Result<pb::ListTokensResponse, Status> {
        self.retry(read_target(req.consistency), |_, ch, t| {
            let r = unary(req.clone(), t);
            let mut c = self.tokens(ch);
            async move { c.list_tokens(r).await }
        })
        .await
    }

    /// A cluster-service call, sent to the endpoints in turn with the retries of every call
    /// (non-leaders forward membership changes and transfers to the leader). Retrying is safe:
    /// adding a present learner, promoting a voter and removing an absent member are no-ops.
    pub async fn cluster<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: FnMut(ClusterServiceClient<Authorized>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let mut call = call;
        self.retry(Target::Any, |_, ch, _t| {
            call(ClusterServiceClient::new(self.authorized(ch)))
        })
        .await
    }
}

/// A secret from the command line or the environment (a token): `Debug` does not show it.
#[derive(Clone)]
pub struct SecretArg(pub String);

impl std::fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretArg(..)")
    }
}

impl std::str::FromStr for SecretArg {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(SecretArg(s.to_string()))
    }
}

/// Adds a token to every call made through it (a pool's `authorization`).
#[derive(Clone, Debug)]
pub struct Authorize(Option<tonic::metadata::AsciiMetadataValue>);

impl tonic::service::Interceptor for Authorize {
    fn call(&mut self, mut r: Request<()>) -> Result<Request<()>, Status> {
        if let Some(a) = &self.0 {
            r.metadata_mut().insert(AUTHORIZATION_HEADER, a.clone());
        }
        Ok(r)
    }
}

/// A channel whose calls carry the client's token.
pub type Authorized = InterceptedService<Channel, Authorize>;

/// Requests that carry a [`pb::RequestId`].
pub trait WithRequestId {
    fn set_request_id(&mut self, id: pb::RequestId);
}

macro_rules! with_request_id {
    ($($t:ty),*) => {$(
        impl WithRequestId for $t {
            fn set_request_id(&mut self, id: pb::RequestId) {
                self.request_id = Some(id);
            }
        }
    )*};
}

with_request_id!(
    pb::WriteRequest,
    pb::CreateTenantRequest,
    pb::UpdateQuotasRequest,
    pb::SetRateLimitsRequest,
    pb::SetTenantConfigRequest,
    pb::SetTenantEnabledRequest,
    pb::DeleteTenantRequest,
    pb::SetLimitsRequest
);
