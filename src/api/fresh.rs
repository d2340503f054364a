//! Read-your-token at the edge: a call whose bearer token this member has no record of waits,
//! before it is authenticated, until the member has applied what the leader had committed
//! when the call arrived (a read index, [`route::read_route`]). A token is then usable on
//! every member as soon as its creation was answered, not only on the members that happened
//! to have applied it: without this, a client that created a token and used it at once on a
//! follower a heartbeat behind was told UNAUTHENTICATED.
//!
//! A member that cannot catch up (it knows no leader: partitioned, or not a member yet) cannot
//! tell a new token from a made-up one: it answers UNAVAILABLE, naming why, and the client
//! tries another member, instead of UNAUTHENTICATED, which clients take as final. `Status`,
//! open to every caller, is let through to answer what it can ([`STATUS_PATH`]).
//!
//! **Bounds.** A token that does not exist costs its call one read index, then the usual
//! UNAUTHENTICATED; so does a revoked one (revoking deletes the record). At most
//! [`CATCH_UPS_MAX`] calls wait at once on a member (past that, a call is authenticated on
//! what the member has, without waiting), each at most [`CATCH_UP_MAX`]. A malformed token, a
//! known one (expired or not) and a call without one never wait.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;
use tower::Service;

use super::auth::Auth;
use super::route::{self, Router};
use crate::proto::v1 as pb;
use crate::state_machine::Raft;

/// The cluster service's `Status`, never answered UNAVAILABLE here: a member not yet added
/// answers it (to the operator adding it) with the routing view.
pub const STATUS_PATH: &str = "/raftgraph.v1.ClusterService/Status";

/// Calls waiting to catch up at once, per member.
pub const CATCH_UPS_MAX: usize = 32;

/// The longest a call waits to catch up before it is authenticated anyway.
pub const CATCH_UP_MAX: Duration = Duration::from_secs(5);

/// What a call with an unknown token waits on (cheap to clone).
#[derive(Clone)]
pub struct Gate {
    auth: Auth,
    raft: Raft,
    router: Router,
    waiting: Arc<Semaphore>,
}

impl Gate {
    pub fn new(auth: Auth, raft: Raft, router: Router) -> Gate {
        Gate {
            auth,
            raft,
            router,
            waiting: Arc::new(Semaphore::new(CATCH_UPS_MAX)),
        }
    }

    /// Waits until this member has applied the leader's commit index as of now, for at most
    /// [`CATCH_UP_MAX`]. `Ok` when it has, or when [`CATCH_UPS_MAX`] calls are waiting already
    /// (the call is then authenticated on what this member has); otherwise why it could not.
    async fn catch_up(&self) -> Result<(), String> {
        let Ok(_waiting) = self.waiting.clone().try_acquire_owned() else {
            return Ok(());
        };
        let linearizable = pb::Consistency::Linearizable as i32;
        match tokio::time::timeout(
            CATCH_UP_MAX,
            route::read_route(&self.raft, &self.router, linearizable, false),
        )
        .await
        {
            Ok(Ok(None)) => Ok(()),
            Ok(Ok(Some(leader))) => Err(format!(
                "the leader ({}) gave no read index",
                leader.api_addr
            )),
            Ok(Err(s)) => Err(s.message().to_string()),
            Err(_) => Err(format!("no read index in {CATCH_UP_MAX:?}")),
        }
    }
}

/// A service whose calls with an unknown token wait on a [`Gate`] first.
#[derive(Clone)]
pub struct Fresh<S> {
    inner: S,
    gate: Gate,
}

impl<S> Fresh<S> {
    pub fn new(inner: S, gate: Gate) -> Fresh<S> {
        Fresh { inner, gate }
    }
}

impl<S: NamedService> NamedService for Fresh<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Fresh<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if !self.gate.auth.token_unknown(authorization(&request)) {
            return Box::pin(self.inner.call(request));
        }
        // The service made ready answers (tower's contract); a clone takes its place.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let gate = self.gate.clone();
        Box::pin(async move {
            if let Err(why) = gate.catch_up().await
                && request.uri().path() != STATUS_PATH
                && gate.auth.token_unknown(authorization(&request))
            {
                return Ok(Status::unavailable(format!(
                    "this member does not know the token and cannot catch up with the \
                     cluster to tell whether it exists ({why}); retry on another member"
                ))
                .into_http());
            }
            inner.call(request).await
        })
    }
}

fn authorization<B>(request: &http::Request<B>) -> Option<&[u8]> {
    request
        .headers()
        .get(crate::wire::AUTHORIZATION_HEADER)
        .map(|v| v.as_bytes())
}
