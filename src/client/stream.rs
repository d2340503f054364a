//! Calls multiplexed over one stream per connection: `WriteStream` for writes ([`WriteMux`]),
//! `ReadStream` for reads ([`ReadMux`]). Each call has an id and is sent on the connection's
//! stream; a task reads the answers and hands each to its caller. On a loaded client this
//! replaces an HTTP/2 stream, its headers and trailers per call with one data frame each way.
//!
//! A call whose stream breaks before its answer fails with UNAVAILABLE (for a write: outcome
//! unknown), which the client retries (a write with the same request id, so it still applies
//! at most once). A broken stream is replaced on the next call.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};

use crate::proto::v1 as pb;
use crate::proto::v1::graph_service_client::GraphServiceClient;
use crate::wire::{
    AUTHORIZATION_HEADER, CLIENT_ANSWER_BYTES_MAX, CLIENT_REQUEST_BYTES_MAX, PROPOSAL_BYTES_MAX,
    RETRY_PUSHBACK_HEADER,
};

/// What kind of calls a stream carries: its messages and how to open it.
pub trait Kind: Send + Sync + 'static {
    /// One call as sent on the stream.
    type Call: Message + Send + 'static;
    /// One answer as it comes back.
    type Answer: Send + 'static;
    /// What a successful answer gives the caller.
    type Output: Send + 'static;
    /// "write" or "read", for messages.
    const WHAT: &'static str;
    /// What a caller whose stream ended must do.
    const RETRY: &'static str;
    /// Opens the stream on `client`, sending `calls` (the request carries the pool's
    /// `authorization`).
    fn open(
        client: GraphServiceClient<Channel>,
        calls: Request<UnboundedReceiverStream<Self::Call>>,
    ) -> BoxFuture<'static, Result<Streaming<Self::Answer>, Status>>;
    fn call_id(a: &Self::Answer) -> u64;
    /// The answer as the unary call's result.
    fn outcome(a: Self::Answer) -> Result<Self::Output, Status>;
    /// Said after a call's size when it is over the transport's limit.
    fn size_note() -> String {
        String::new()
    }
}

/// Writes on a `WriteStream`.
pub struct Writes;

impl Kind for Writes {
    type Call = pb::WriteCall;
    type Answer = pb::WriteAnswer;
    type Output = pb::WriteResponse;
    const WHAT: &'static str = "write";
    const RETRY: &'static str = "outcome unknown, retry with the same request id";

    fn open(
        mut client: GraphServiceClient<Channel>,
        calls: Request<UnboundedReceiverStream<pb::WriteCall>>,
    ) -> BoxFuture<'static, Result<Streaming<pb::WriteAnswer>, Status>> {
        Box::pin(async move { client.write_stream(calls).await.map(|r| r.into_inner()) })
    }

    fn size_note() -> String {
        format!(" (a proposal's limit is {PROPOSAL_BYTES_MAX})")
    }

    fn call_id(a: &pb::WriteAnswer) -> u64 {
        a.call_id
    }

    fn outcome(a: pb::WriteAnswer) -> Result<pb::WriteResponse, Status> {
        match (a.response, a.error) {
            (_, Some(e)) => Err(call_status(e)),
            (Some(r), None) => Ok(r),
            (None, None) => Err(Status::internal(format!(
                "write stream answer to call {} has neither a response nor an error",
                a.call_id
            ))),
        }
    }
}

/// Reads on a `ReadStream`.
pub struct Reads;

impl Kind for Reads {
    type Call = pb::ReadCall;
    type Answer = pb::ReadAnswer;
    type Output = pb::read_answer::Result;
    const WHAT: &'static str = "read";
    const RETRY: &'static str = "retry";

    fn open(
        mut client: GraphServiceClient<Channel>,
        calls: Request<UnboundedReceiverStream<pb::ReadCall>>,
    ) -> BoxFuture<'static, Result<Streaming<pb::ReadAnswer>, Status>> {
        Box::pin(async move { client.read_stream(calls).await.map(|r| r.into_inner()) })
    }

    fn call_id(a: &pb::ReadAnswer) -> u64 {
        a.call_id
    }

    fn outcome(a: pb::ReadAnswer) -> Result<pb::read_answer::Result, Status> {
        match a.result {
            Some(pb::read_answer::Result::Error(e)) => Err(call_status(e)),
            Some(r) => Ok(r),
            None => Err(Status::internal(format!(
                "read stream answer to call {} has neither a result nor an error",
                a.call_id
            ))),
        }
    }
}

type Answer<K> = Result<<K as Kind>::Output, Status>;

struct Calls<K: Kind> {
    next_id: u64,
    /// Ordered, not hashed: when a stream breaks, its callers are failed in call order (the
    /// simulation's schedule must not depend on hash order).
    waiting: BTreeMap<u64, oneshot::Sender<Answer<K>>>,
    /// Why the stream ended, once it has.
    ended: Option<Status>,
}

impl<K: Kind> Default for Calls<K> {
    fn default() -> Self {
        Calls {
            next_id: 0,
            waiting: BTreeMap::new(),
            ended: None,
        }
    }
}

/// One connection's stream of `K` calls. Cheap to share (`Arc`).
pub struct Mux<K: Kind> {
    send: mpsc::UnboundedSender<K::Call>,
    calls: Arc<Mutex<Calls<K>>>,
    kind: PhantomData<K>,
}

/// One connection's write stream.
pub type WriteMux = Mux<Writes>;
/// One connection's read stream.
pub type ReadMux = Mux<Reads>;

impl<K: Kind> std::fmt::Debug for Mux<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mux")
            .field("kind", &K::WHAT)
            .field("ended", &self.ended())
            .finish_non_exhaustive()
    }
}

/// Removes a call from the waiting set when its caller stops waiting (answered, timed out or
/// dropped), so an abandoned call's answer is discarded and the set stays bounded.
struct Waiting<K: Kind> {
    calls: Arc<Mutex<Calls<K>>>,
    id: u64,
}

impl<K: Kind> Drop for Waiting<K> {
    fn drop(&mut self) {
        self.calls.lock().expect("calls").waiting.remove(&self.id);
    }
}

/// The caller's timeout as sent in a call (a follower forwarding the call keeps it).
fn timeout_ms(timeout: Duration) -> u64 {
    timeout.as_millis().clamp(1, u64::MAX as u128) as u64
}

impl<K: Kind> Mux<K> {
    /// Opens a stream on `channel` (to `addr`, for messages); calls may be sent at once, they
    /// queue until the stream is up.
    pub fn open(
        addr: &str,
        channel: Channel,
        authorization: Option<tonic::metadata::AsciiMetadataValue>,
    ) -> Mux<K> {
        let (send, queued) = mpsc::unbounded_channel();
        let calls = Arc::new(Mutex::new(Calls::default()));
        tokio::spawn(read_answers::<K>(
            addr.to_string(),
            channel,
            stream_request(UnboundedReceiverStream::new(queued), authorization),
            calls.clone(),
        ));
        Mux {
            send,
            calls,
            kind: PhantomData,
        }
    }

    /// Whether the stream has ended (a new one is needed).
    pub fn ended(&self) -> bool {
        self.calls.lock().expect("calls").ended.is_some() || self.send.is_closed()
    }

    /// Sends the call `make(id)` makes and waits for its answer. The caller bounds the wait.
    async fn send_call(&self, make: impl FnOnce(u64) -> K::Call) -> Answer<K> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut calls = self.calls.lock().expect("calls");
            if let Some(s) = &calls.ended {
                return Err(s.clone());
            }
            calls.next_id += 1;
            let id = calls.next_id;
            calls.waiting.insert(id, tx);
            id
        };
        let _waiting = Waiting {
            calls: self.calls.clone(),
            id,
        };
        let call = make(id);
        // A message over the transport's limit would end the stream (and fail every call on
        // it, each then retried to its deadline); refuse it here instead, as a unary call's
        // encoder would.
        let len = call.encoded_len();
        if len > CLIENT_REQUEST_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "invalid argument {}: {len} bytes encoded, limit {CLIENT_REQUEST_BYTES_MAX}{}",
                K::WHAT,
                K::size_note()
            )));
        }
        if self.send.send(call).is_err() {
            return Err(Status::unavailable(format!(
                "{} stream closed before the {} was sent; {}",
                K::WHAT,
                K::WHAT,
                K::RETRY
            )));
        }
        rx.await.unwrap_or_else(|_| {
            Err(Status::unavailable(format!(
                "{} stream ended before the answer; {}",
                K::WHAT,
                K::RETRY
            )))
        })
    }
}

impl Mux<Writes> {
    /// Sends `write` (with the caller's `timeout`, which a forwarding follower keeps) and waits
    /// for its answer. The caller bounds the wait.
    pub async fn call(&self, write: pb::WriteRequest, timeout: Duration) -> Answer<Writes> {
        self.send_call(|call_id| pb::WriteCall {
            call_id,
            write: Some(write),
            timeout_ms: timeout_ms(timeout),
        })
        .await
    }
}

impl Mux<Reads> {
    /// Sends `read` (with the caller's `timeout`) and waits for its answer: the unary call's
    /// result, as the answer's variant of the same kind. The caller bounds the wait.
    pub async fn call(&self, read: pb::read_call::Read, timeout: Duration) -> Answer<Reads> {
        self.send_call(|call_id| pb::ReadCall {
            call_id,
            timeout_ms: timeout_ms(timeout),
            read: Some(read),
        })
        .await
    }
}

/// The request that opens a stream of `calls`, with `authorization` when given.
fn stream_request<C>(
    calls: UnboundedReceiverStream<C>,
    authorization: Option<tonic::metadata::AsciiMetadataValue>,
) -> Request<UnboundedReceiverStream<C>> {
    let mut r = Request::new(calls);
    if let Some(a) = authorization {
        r.metadata_mut().insert(AUTHORIZATION_HEADER, a);
    }
    r
}

/// The stream's reader: opens it, hands out answers until it ends, then fails every waiting
/// call and refuses new ones.
async fn read_answers<K: Kind>(
    addr: String,
    channel: Channel,
    queued: Request<UnboundedReceiverStream<K::Call>>,
    calls: Arc<Mutex<Calls<K>>>,
) {
    let client = GraphServiceClient::new(channel)
        .max_decoding_message_size(CLIENT_ANSWER_BYTES_MAX)
        .max_encoding_message_size(CLIENT_REQUEST_BYTES_MAX);
    let why = match K::open(client, queued).await {
        Err(s) => s,
        Ok(mut answers) => loop {
            match answers.message().await {
                Ok(Some(a)) => deliver(&calls, a),
                Ok(None) => break Status::unavailable("the node closed the stream"),
                Err(s) => break s,
            }
        },
    };
    let ended = Status::unavailable(format!(
        "{} stream to {addr} ended ({:?}: {}); {}",
        K::WHAT,
        why.code(),
        why.message(),
        K::RETRY
    ));
    let waiting = {
        let mut calls = calls.lock().expect("calls");
        calls.ended = Some(ended.clone());
        std::mem::take(&mut calls.waiting)
    };
    for (_, tx) in waiting {
        let _ = tx.send(Err(ended.clone()));
    }
}

/// Hands one answer to its caller (none if the caller stopped waiting).
fn deliver<K: Kind>(calls: &Mutex<Calls<K>>, a: K::Answer) {
    let Some(tx) = calls.lock().expect("calls").waiting.remove(&K::call_id(&a)) else {
        return;
    };
    let _ = tx.send(K::outcome(a));
}

/// A stream call's error as the status the unary call would have returned.
fn call_status(e: pb::CallError) -> Status {
    let mut s = Status::new(Code::from_i32(e.code), e.message);
    if e.retry_pushback_ms > 0
        && let Ok(v) = MetadataValue::try_from(e.retry_pushback_ms.to_string())
    {
        s.metadata_mut().insert(RETRY_PUSHBACK_HEADER, v);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_over_the_message_limit_is_refused_without_touching_the_stream() {
        // Never connects: the call must be refused before anything is sent.
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        let mux = WriteMux::open("127.0.0.1:9", channel, None);
        let big = pb::WriteRequest {
            tenant: "t".into(),
            operations: vec![pb::Operation {
                op: Some(pb::operation::Op::CreateNode(pb::CreateNode {
                    labels: vec![],
                    properties: [(
                        "v".to_string(),
                        pb::Value {
                            kind: Some(pb::value::Kind::BytesValue(vec![
                                0;
                                CLIENT_REQUEST_BYTES_MAX
                            ])),
                        },
                    )]
                    .into(),
                })),
            }],
            ..Default::default()
        };
        let s = mux.call(big, Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("limit 16777216"), "{}", s.message());
        assert!(mux.calls.lock().unwrap().waiting.is_empty());
        assert!(
            mux.calls.lock().unwrap().ended.is_none(),
            "the stream is untouched"
        );
    }

    #[test]
    fn call_errors_keep_code_message_and_pushback() {
        let s = call_status(pb::CallError {
            code: Code::Unavailable as i32,
            message: "node overloaded".into(),
            retry_pushback_ms: 50,
        });
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.message(), "node overloaded");
        assert_eq!(
            s.metadata()
                .get(RETRY_PUSHBACK_HEADER)
                .map(|v| v.to_str().unwrap()),
            Some("50")
        );
        let s = call_status(pb::CallError {
            code: 9999,
            message: "?".into(),
            retry_pushback_ms: 0,
        });
        assert_eq!(s.code(), Code::Unknown);
        assert!(s.metadata().get(RETRY_PUSHBACK_HEADER).is_none());
    }

    #[test]
    fn an_answer_reaches_only_its_own_waiting_caller() {
        let calls = Mutex::new(Calls::<Writes>::default());
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        calls.lock().unwrap().waiting.insert(1, tx1);
        calls.lock().unwrap().waiting.insert(2, tx2);
        deliver(
            &calls,
            pb::WriteAnswer {
                call_id: 2,
                response: Some(pb::WriteResponse::default()),
                error: None,
            },
        );
        assert!(rx2.try_recv().unwrap().is_ok());
        assert!(rx1.try_recv().is_err(), "call 1 must still wait");
        // An answer for a call nobody waits for (abandoned, or unknown) is dropped.
        deliver(
            &calls,
            pb::WriteAnswer {
                call_id: 7,
                response: None,
                error: None,
            },
        );
        deliver(
            &calls,
            pb::WriteAnswer {
                call_id: 1,
                response: None,
                error: None,
            },
        );
        assert_eq!(rx1.try_recv().unwrap().unwrap_err().code(), Code::Internal);
        assert!(calls.lock().unwrap().waiting.is_empty());
    }
}
