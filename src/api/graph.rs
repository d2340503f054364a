//! The graph service: writes go through Raft on the leader (a follower forwards them once),
//! reads are served locally — after a read index for `CONSISTENCY_LINEARIZABLE` (a follower
//! asks the leader for it and waits for its own apply to reach it; only if the leader cannot
//! give one is the read forwarded), straight from the replica for `CONSISTENCY_SERIALIZABLE`.

mod reads;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::raft::Member;
use futures::{Stream, StreamExt};
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use super::admission::Admission;
use super::auth::{Auth, Caller, need_tenant};
use super::batch::{BatchStats, Batcher};
use super::convert;
use super::paced::{SMALL_ANSWER_RESERVE, answer_budget, hold_answer, reserve_answer, reserve_of};
use super::rate::Throttle;
use super::route::{self, Proposed};
use super::sources::Clock;
use super::status::{apply_error, invalid, read_error};
use crate::auth::{AuthMode, Credential, Role};
use crate::budget::{ByteBudget, Reservation};
use crate::command::Outcome;
use crate::proto::v1 as pb;
use crate::proto::v1::graph_service_client::GraphServiceClient;
use crate::proto::v1::graph_service_server::GraphService;
use crate::state_machine::GraphReader;
use crate::state_machine::PAGE_BYTES_MAX;
use crate::state_machine::Raft;
use crate::wire::{
    CLIENT_ANSWER_BYTES_MAX, CLIENT_REQUEST_BYTES_MAX, RETRY_PUSHBACK_HEADER,
    STREAM_ANSWER_BYTES_MAX, STREAM_CALLS_MAX,
};
use reads::Reads;

/// The graph service of one server.
pub struct GraphApi {
    raft: Raft,
    reader: GraphReader,
    clock: Clock,
    admission: Admission,
    router: route::Router,
    batcher: Batcher,
    auth: Auth,
    throttle: Throttle,
}

impl GraphApi {
    /// The write batcher's counters.
    pub fn batch_stats(&self) -> &Arc<BatchStats> {
        self.batcher.stats()
    }

    /// Authentication is on, with no member certificate accepted, until [`GraphApi::with_auth`].
    pub fn new(raft: Raft, reader: GraphReader, clock: Clock) -> Self {
        GraphApi {
            auth: Auth::new(reader.clone(), clock.clone(), AuthMode::On, ""),
            throttle: Throttle::new(reader.clone()),
            reader,
            clock,
            admission: Admission::default(),
            router: route::Router::default(),
            batcher: Batcher::spawn(raft.clone()),
            raft,
        }
    }

    /// Shares `admission` (the server's in-flight proposal budget) instead of a private default.
    pub fn with_admission(mut self, admission: Admission) -> Self {
        self.admission = admission;
        self
    }

    /// Authenticates calls with `auth` (the server's).
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    fn reads(&self) -> Reads {
        Reads {
            raft: self.raft.clone(),
            reader: self.reader.clone(),
            router: self.router.clone(),
            throttle: self.throttle.clone(),
        }
    }

    fn writes(&self) -> Writes {
        Writes {
            clock: self.clock.clone(),
            admission: self.admission.clone(),
            router: self.router.clone(),
            batcher: self.batcher.clone(),
            throttle: self.throttle.clone(),
            raft: self.raft.clone(),
        }
    }

    /// Reaches the leader through `router` (the server's dialer) instead of a private TCP one.
    pub fn with_router(mut self, router: route::Router) -> Self {
        self.router = router;
        self
    }
}

impl GraphApi {
    /// Refuses a read unless its caller may read the tenant `tenant_of` names.
    fn read_allowed<T>(
        &self,
        request: &Request<T>,
        tenant_of: impl Fn(&T) -> &String,
    ) -> Result<(), Status> {
        let caller = self.auth.caller(request)?;
        need_tenant(&caller, tenant_of(request.get_ref()), Role::Read)
    }
}

async fn client(
    router: &route::Router,
    node: &Member,
) -> Result<GraphServiceClient<Channel>, Status> {
    Ok(GraphServiceClient::new(router.channel(node)?)
        .max_decoding_message_size(CLIENT_ANSWER_BYTES_MAX)
        .max_encoding_message_size(CLIENT_REQUEST_BYTES_MAX))
}

type AnswerStream<A> = Pin<Box<dyn Stream<Item = Result<A, Status>> + Send + 'static>>;

/// What a write needs, shared by the unary and the streamed path (cheap to clone).
#[derive(Clone)]
struct Writes {
    clock: Clock,
    admission: Admission,
    router: route::Router,
    batcher: Batcher,
    throttle: Throttle,
    raft: Raft,
}

impl Writes {
    /// One client write, through the batcher here or forwarded once to the leader.
    async fn write(
        &self,
        msg: pb::WriteRequest,
        owner: Credential,
        via: route::Via,
    ) -> Result<pb::WriteResponse, Status> {
        // Held until the answer is sent, including a forward to the leader.
        let bytes = msg.encoded_len();
        let permit = self.admission.admit(bytes)?;
        // Charged where it is proposed: a follower forwards it to the leader, which charges it.
        if route::leads(&self.raft)
            && let Err(refused) = self.throttle.try_admit(&msg.tenant, bytes as u64)
        {
            // Held without the request or its share of the in-flight budget.
            drop((msg, permit));
            return Err(refused.answer().await);
        }
        let req = convert::write_request(&msg, (self.clock)())?.by(owner);
        match self.batcher.propose(req, via.forwarded).await? {
            Proposed::Applied(Ok(Outcome::Write(results))) => Ok(convert::write_response(&results)),
            Proposed::Applied(Ok(other)) => {
                Err(Status::internal(format!("write answered with {other:?}")))
            }
            Proposed::Applied(Err(e)) => Err(apply_error(&e)),
            // Boxed: a forward's future is large and rare; inline it would make every write's
            // task that much larger to create and move.
            Proposed::Forward(leader) => {
                let router = self.router.clone();
                Box::pin(async move {
                    client(&router, &leader)
                        .await?
                        .write(via.forward(msg))
                        .await
                        .map(Response::into_inner)
                        .map_err(route::forwarded_outcome)
                })
                .await
            }
        }
    }

    /// One call of a write stream, answered as the unary write would be; the stream's caller
    /// is checked again first.
    async fn call(
        &self,
        call: pb::WriteCall,
        forwarded: bool,
        auth: &Auth,
        caller: &Caller,
    ) -> pb::WriteAnswer {
        let via = route::Via::of_call(
            forwarded,
            call.timeout_ms,
            caller.header.clone(),
            caller.by_member(),
        );
        let result = match call.write {
            Some(w) => match auth
                .recheck(caller)
                .and_then(|()| need_tenant(caller, &w.tenant, Role::Write))
            {
                Ok(()) => self.write(w, caller.principal.via, via).await,
                Err(denied) => Err(denied),
            },
            None => Err(invalid("write", "missing from the call")),
        };
        match result {
            Ok(response) => pb::WriteAnswer {
                call_id: call.call_id,
                response: Some(response),
                error: None,
            },
            Err(status) => pb::WriteAnswer {
                call_id: call.call_id,
                response: None,
                error: Some(call_error(&status)),
            },
        }
    }
}

/// A status as a stream call's error (the retry hint kept).
pub fn call_error(s: &Status) -> pb::CallError {
    pb::CallError {
        code: s.code() as i32,
        message: s.message().to_string(),
        retry_pushback_ms: s
            .metadata()
            .get(RETRY_PUSHBACK_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    }
}

/// What a stream call reserves of its stream's and connection's answer budgets before it runs:
/// its answer's likely size, resized to the real one once computed (see [`serve_calls`]).
trait StreamCall {
    /// Reserved before a call is read (its kind unknown yet): a stream whose budget is spent
    /// stops before it holds another decoded call.
    const BEFORE_READ: usize;
    fn answer_reserve(&self) -> usize;
}

/// A write's answer: ids and a status, a few KiB at most for the largest write.
const WRITE_ANSWER_RESERVE: usize = 4 << 10;

impl StreamCall for pb::WriteCall {
    // Small, so the stream's budget never caps writes below STREAM_CALLS_MAX in flight.
    const BEFORE_READ: usize = WRITE_ANSWER_RESERVE;
    fn answer_reserve(&self) -> usize {
        WRITE_ANSWER_RESERVE
    }
}

impl StreamCall for pb::ReadCall {
    const BEFORE_READ: usize = SMALL_ANSWER_RESERVE;
    fn answer_reserve(&self) -> usize {
        use pb::read_call::Read;
        match self.read {
            // A page may be as large as the page byte budget.
            Some(Read::Neighbors(_) | Read::NodesByLabel(_)) => PAGE_BYTES_MAX,
            Some(Read::GetNode(_) | Read::GetEdge(_)) | None => SMALL_ANSWER_RESERVE,
        }
    }
}

/// An answer with what it holds of its stream's bounds.
struct Held<A> {
    answer: Result<A, Status>,
    hold: Hold,
}

/// A call's count slot and answer bytes (of the stream's budget and the connection's).
struct Hold {
    _slot: OwnedSemaphorePermit,
    _bytes: Option<(Reservation, Reservation)>,
}

/// The answers as the transport takes them. An answer's hold is given back when the transport
/// asks for the next one: the service is served [`Paced`](super::Paced), so the body asks again
/// only once the previous answer has been handed to HTTP/2 piece by piece as the client's window
/// allowed (tonic's encoder takes small answers until it has 32 KiB: those few leave uncounted).
struct Answers<A> {
    rx: mpsc::UnboundedReceiver<Held<A>>,
    last: Option<Hold>,
}

impl<A> Stream for Answers<A> {
    type Item = Result<A, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.last = None;
        self.rx.poll_recv(cx).map(|held| {
            held.map(|h| {
                self.last = Some(h.hold);
                h.answer
            })
        })
    }
}

/// The answer stream of a write or read stream: a task reads the calls and answers each with
/// `handle(call, forwarded)` as it completes (`forwarded`: whether a follower forwarded the
/// stream).
fn answer_calls<C, A, F, Fut>(
    request: Request<Streaming<C>>,
    handle: F,
) -> Response<AnswerStream<A>>
where
    C: StreamCall + Send + 'static,
    A: prost::Message + Send + 'static,
    F: Fn(C, bool) -> Fut + Send + 'static,
    Fut: Future<Output = A> + Send + 'static,
{
    let forwarded = route::Via::of(&request).forwarded;
    // The connection's budget, shared by its streams; a private one if the transport has none.
    let connection = answer_budget(&request)
        .unwrap_or_else(|| ByteBudget::new(crate::wire::CONNECTION_ANSWER_BYTES_MAX));
    // Every answer waits here until the transport takes it; the bounds are in `serve_calls`.
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(serve_calls(
        request.into_inner(),
        tx,
        connection,
        move |call| handle(call, forwarded),
    ));
    Response::new(Box::pin(Answers { rx, last: None }))
}

/// Reads a stream's calls and answers each as it completes (`handle` runs each as its own
/// task). What a client that stops reading answers can make the server hold is bounded:
/// - at most [`STREAM_CALLS_MAX`] calls running or answered and not yet taken by the transport;
/// - at most [`STREAM_ANSWER_BYTES_MAX`] bytes of answers of this stream and
///   [`CONNECTION_ANSWER_BYTES_MAX`](crate::wire::CONNECTION_ANSWER_BYTES_MAX) of all streams of its connection, counted from before a
///   call runs (its [`StreamCall::answer_reserve`]) and resized to the answer's encoded size
///   when it is computed.
///
/// Past a bound the stream stops reading calls (HTTP/2 flow control then holds the client back)
/// until answers go out. The bytes may pass a bound by what the answers of the calls then
/// running turn out to be beyond their reservations (point reads of records over 64 KiB).
/// Calls still running when the client closes its side are answered; if the client goes away
/// they finish unanswered, like abandoned unary calls.
async fn serve_calls<C, A, F, Fut>(
    mut calls: Streaming<C>,
    answers: mpsc::UnboundedSender<Held<A>>,
    connection: Arc<ByteBudget>,
    handle: F,
) where
    C: StreamCall + Send + 'static,
    A: prost::Message + Send + 'static,
    F: Fn(C) -> Fut,
    Fut: Future<Output = A> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(STREAM_CALLS_MAX));
    let stream = ByteBudget::new(STREAM_ANSWER_BYTES_MAX);
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // Reserved before the call is read: a stream past its bound holds no decoded call.
        let mut bytes = (
            stream.reserve(C::BEFORE_READ).await,
            connection.reserve(C::BEFORE_READ).await,
        );
        let call = match calls.message().await {
            Ok(Some(call)) => call,
            Ok(None) => return,
            Err(status) => {
                let _ = answers.send(Held {
                    answer: Err(status),
                    hold: Hold {
                        _slot: slot,
                        _bytes: None,
                    },
                });
                return;
            }
        };
        let more = call.answer_reserve().saturating_sub(C::BEFORE_READ);
        if more > 0 {
            bytes.0.absorb(stream.reserve(more).await);
            bytes.1.absorb(connection.reserve(more).await);
        }
        let answering = handle(call);
        let answers = answers.clone();
        tokio::spawn(async move {
            let answer = answering.await;
            let size = answer.encoded_len();
            bytes.0.resize(size);
            bytes.1.resize(size);
            // The client may have gone; its calls' outcomes are then read back by retrying.
            let _ = answers.send(Held {
                answer: Ok(answer),
                hold: Hold {
                    _slot: slot,
                    _bytes: Some(bytes),
                },
            });
        });
    }
}

type ScanStream = Pin<Box<dyn Stream<Item = Result<pb::ScanItem, Status>> + Send + 'static>>;

/// A scan page's items with the reservation of its bytes, given back when the last has been
/// taken (the page's iterator is dropped then).
struct HeldItems {
    items: std::vec::IntoIter<Result<pb::ScanItem, Status>>,
    _hold: Option<Reservation>,
}

impl Iterator for HeldItems {
    type Item = Result<pb::ScanItem, Status>;
    fn next(&mut self) -> Option<Self::Item> {
        self.items.next()
    }
}

#[tonic::async_trait]
impl GraphService for GraphApi {
    async fn write(
        &self,
        request: Request<pb::WriteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let caller = self.auth.caller(&request)?;
        need_tenant(&caller, &request.get_ref().tenant, Role::Write)?;
        let via = route::Via::of(&request);
        self.writes()
            .write(request.into_inner(), caller.principal.via, via)
            .await
            .map(Response::new)
    }

    type WriteStreamStream = AnswerStream<pb::WriteAnswer>;

    async fn write_stream(
        &self,
        request: Request<Streaming<pb::WriteCall>>,
    ) -> Result<Response<AnswerStream<pb::WriteAnswer>>, Status> {
        let caller = Arc::new(self.auth.caller(&request)?);
        // One handle per stream, shared by its calls (one count each, not one per field).
        let writes = Arc::new((self.writes(), self.auth.clone()));
        Ok(answer_calls(request, move |call, forwarded| {
            let (writes, caller) = (writes.clone(), caller.clone());
            async move { writes.0.call(call, forwarded, &writes.1, &caller).await }
        }))
    }

    type ReadStreamStream = AnswerStream<pb::ReadAnswer>;

    async fn read_stream(
        &self,
        request: Request<Streaming<pb::ReadCall>>,
    ) -> Result<Response<AnswerStream<pb::ReadAnswer>>, Status> {
        let caller = Arc::new(self.auth.caller(&request)?);
        let reads = Arc::new((self.reads(), self.auth.clone()));
        Ok(answer_calls(request, move |call, forwarded| {
            let (reads, caller) = (reads.clone(), caller.clone());
            async move { reads.0.call(call, forwarded, &reads.1, &caller).await }
        }))
    }

    async fn get_node(
        &self,
        request: Request<pb::GetNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        self.read_allowed(&request, |m| &m.tenant)?;
        let via = route::Via::of(&request);
        let hold = reserve_answer(&request, SMALL_ANSWER_RESERVE).await;
        let answer = self.reads().get_node(request.into_inner(), via).await?;
        let bytes = answer.encoded_len();
        Ok(hold_answer(Response::new(answer), hold, bytes))
    }

    async fn get_edge(
        &self,
        request: Request<pb::GetEdgeRequest>,
    ) -> Result<Response<pb::Edge>, Status> {
        self.read_allowed(&request, |m| &m.tenant)?;
        let via = route::Via::of(&request);
        let hold = reserve_answer(&request, SMALL_ANSWER_RESERVE).await;
        let answer = self.reads().get_edge(request.into_inner(), via).await?;
        let bytes = answer.encoded_len();
        Ok(hold_answer(Response::new(answer), hold, bytes))
    }

    async fn neighbors(
        &self,
        request: Request<pb::NeighborsRequest>,
    ) -> Result<Response<pb::NeighborsResponse>, Status> {
        self.read_allowed(&request, |m| &m.tenant)?;
        let via = route::Via::of(&request);
        let hold = reserve_answer(&request, PAGE_BYTES_MAX).await;
        let answer = self.reads().neighbors(request.into_inner(), via).await?;
        let bytes = answer.encoded_len();
        Ok(hold_answer(Response::new(answer), hold, bytes))
    }

    async fn nodes_by_label(
        &self,
        request: Request<pb::NodesByLabelRequest>,
    ) -> Result<Response<pb::NodesPage>, Status> {
        self.read_allowed(&request, |m| &m.tenant)?;
        let via = route::Via::of(&request);
        let hold = reserve_answer(&request, PAGE_BYTES_MAX).await;
        let answer = self
            .reads()
            .nodes_by_label(request.into_inner(), via)
            .await?;
        let bytes = answer.encoded_len();
        Ok(hold_answer(Response::new(answer), hold, bytes))
    }

    type ScanStream = ScanStream;

    async fn scan(
        &self,
        request: Request<pb::ScanRequest>,
    ) -> Result<Response<ScanStream>, Status> {
        // Checked when the scan opens and again before each page: a token revoked (or its
        // tenant deleted) while the scan is consumed stops it at the next page.
        let caller = self.auth.caller(&request)?;
        need_tenant(&caller, &request.get_ref().tenant, Role::Read)?;
        let auth = self.auth.clone();
        let via = route::Via::of(&request);
        let was_forwarded = via.forwarded;
        let budget = answer_budget(&request);
        let msg = request.into_inner();
        self.throttle.precheck(&msg.tenant).await?;
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
        // One request now; each page's bytes as it is read, and a tenant in debt waits before
        // its next page (the scan is paced to the tenant's rate rather than cut short).
        self.throttle.admit(&msg.tenant, 0).await?;
        let throttle = self.throttle.clone();
        // One page per step, read as the client consumes: memory stays at one page, reserved
        // of the connection's answer budget before it is read and held until its last item
        // has left (the items leave in pieces: `paced`).
        let reader = self.reader.clone();
        let tenant = msg.tenant;
        let caller = Arc::new(caller);
        let pages = futures::stream::unfold(Some(None::<Vec<u8>>), move |cursor| {
            let (reader, tenant, budget) = (reader.clone(), tenant.clone(), budget.clone());
            let (auth, caller, throttle) = (auth.clone(), caller.clone(), throttle.clone());
            async move {
                let after = cursor?;
                if after.is_some()
                    && let Some(wait) = throttle.debt(&tenant)
                {
                    tokio::time::sleep(wait).await;
                }
                if after.is_some()
                    && let Err(s) = auth.recheck(&caller)
                {
                    let items = HeldItems {
                        items: vec![Err(s)].into_iter(),
                        _hold: None,
                    };
                    return Some((futures::stream::iter(items), None));
                }
                let mut hold = reserve_of(budget.as_ref(), PAGE_BYTES_MAX).await;
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
                        let bytes = items.iter().map(prost::Message::encoded_len).sum();
                        throttle.charge(&tenant, bytes as u64);
                        if let Some(h) = &mut hold {
                            h.resize(bytes);
                        }
                        let items = HeldItems {
                            items: items.into_iter().map(Ok).collect::<Vec<_>>().into_iter(),
                            _hold: hold,
                        };
                        Some((futures::stream::iter(items), next.map(Some)))
                    }
                    Err(s) => {
                        let items = HeldItems {
                            items: vec![Err(s)].into_iter(),
                            _hold: None,
                        };
                        Some((futures::stream::iter(items), None))
                    }
                }
            }
        })
        .flatten();
        Ok(Response::new(Box::pin(pages)))
    }
}
