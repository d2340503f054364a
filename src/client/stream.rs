//! Writes multiplexed over one `WriteStream` per connection: each write is a call with an id,
//! sent on the connection's stream; a task reads the answers and hands each to its caller. On
//! a loaded client this replaces an HTTP/2 stream, its headers and trailers per write with one
//! data frame each way.
//!
//! A call whose stream breaks before its answer fails with UNAVAILABLE (outcome unknown), which
//! the client retries with the same request id, so it still applies at most once. A broken
//! stream is replaced on the next call.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::proto::v1 as pb;
use crate::proto::v1::graph_service_client::GraphServiceClient;
use crate::raft::network::MESSAGE_BYTES_MAX;
use crate::server::admission::RETRY_PUSHBACK_HEADER;

type Answer = Result<pb::WriteResponse, Status>;

#[derive(Default)]
struct Calls {
    next_id: u64,
    /// Ordered, not hashed: when a stream breaks, its callers are failed in call order (the
    /// simulation's schedule must not depend on hash order).
    waiting: BTreeMap<u64, oneshot::Sender<Answer>>,
    /// Why the stream ended, once it has.
    ended: Option<Status>,
}

/// One connection's write stream. Cheap to share (`Arc`).
pub struct WriteMux {
    send: mpsc::UnboundedSender<pb::WriteCall>,
    calls: Arc<Mutex<Calls>>,
}

impl std::fmt::Debug for WriteMux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteMux")
            .field("ended", &self.ended())
            .finish_non_exhaustive()
    }
}

/// Removes a call from the waiting set when its caller stops waiting (answered, timed out or
/// dropped), so an abandoned call's answer is discarded and the set stays bounded.
struct Waiting {
    calls: Arc<Mutex<Calls>>,
    id: u64,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.calls.lock().expect("calls").waiting.remove(&self.id);
    }
}

impl WriteMux {
    /// Opens a write stream on `channel` (to `addr`, for messages); calls may be sent at once,
    /// they queue until the stream is up.
    pub fn open(addr: &str, channel: Channel) -> WriteMux {
        let (send, queued) = mpsc::unbounded_channel();
        let calls = Arc::new(Mutex::new(Calls::default()));
        tokio::spawn(read_answers(
            addr.to_string(),
            channel,
            UnboundedReceiverStream::new(queued),
            calls.clone(),
        ));
        WriteMux { send, calls }
    }

    /// Whether the stream has ended (a new one is needed).
    pub fn ended(&self) -> bool {
        self.calls.lock().expect("calls").ended.is_some() || self.send.is_closed()
    }

    /// Sends `write` (with the caller's `timeout`, which a forwarding follower keeps) and waits
    /// for its answer. The caller bounds the wait.
    pub async fn call(&self, write: pb::WriteRequest, timeout: Duration) -> Answer {
        // A message over the transport's limit would end the stream (and fail every call on
        // it, each then retried to its deadline); refuse it here instead, as a unary call's
        // encoder would.
        let len = write.encoded_len();
        if len > MESSAGE_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "invalid argument write: {len} bytes encoded, limit {MESSAGE_BYTES_MAX} \
                 (a proposal's limit is {})",
                crate::server::route::PROPOSAL_BYTES_MAX
            )));
        }
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
        let call = pb::WriteCall {
            call_id: id,
            write: Some(write),
            timeout_ms: timeout.as_millis().clamp(1, u64::MAX as u128) as u64,
        };
        if self.send.send(call).is_err() {
            return Err(Status::unavailable(
                "write stream closed before the write was sent; retry",
            ));
        }
        rx.await.unwrap_or_else(|_| {
            Err(Status::unavailable(
                "write stream ended before the answer (outcome unknown); retry with the same \
                 request id",
            ))
        })
    }
}

/// The stream's reader: opens it, hands out answers until it ends, then fails every waiting
/// call and refuses new ones.
async fn read_answers(
    addr: String,
    channel: Channel,
    queued: UnboundedReceiverStream<pb::WriteCall>,
    calls: Arc<Mutex<Calls>>,
) {
    let mut client = GraphServiceClient::new(channel)
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    let why = match client.write_stream(queued).await {
        Err(s) => s,
        Ok(answers) => {
            let mut answers = answers.into_inner();
            loop {
                match answers.message().await {
                    Ok(Some(a)) => deliver(&calls, a),
                    Ok(None) => break Status::unavailable("the node closed the stream"),
                    Err(s) => break s,
                }
            }
        }
    };
    let ended = Status::unavailable(format!(
        "write stream to {addr} ended ({:?}: {}); outcome unknown, retry with the same request id",
        why.code(),
        why.message()
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
fn deliver(calls: &Mutex<Calls>, a: pb::WriteAnswer) {
    let Some(tx) = calls.lock().expect("calls").waiting.remove(&a.call_id) else {
        return;
    };
    let answer = match (a.response, a.error) {
        (_, Some(e)) => Err(call_status(e)),
        (Some(r), None) => Ok(r),
        (None, None) => Err(Status::internal(format!(
            "write stream answer to call {} has neither a response nor an error",
            a.call_id
        ))),
    };
    let _ = tx.send(answer);
}

/// A stream call's error as the status a unary write would have returned.
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
        let mux = WriteMux::open("127.0.0.1:9", channel);
        let big = pb::WriteRequest {
            tenant: "t".into(),
            operations: vec![pb::Operation {
                op: Some(pb::operation::Op::CreateNode(pb::CreateNode {
                    labels: vec![],
                    properties: [(
                        "v".to_string(),
                        pb::Value {
                            kind: Some(pb::value::Kind::BytesValue(vec![0; MESSAGE_BYTES_MAX])),
                        },
                    )]
                    .into(),
                })),
            }],
            ..Default::default()
        };
        let s = mux.call(big, Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("limit 83886080"), "{}", s.message());
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
        let calls = Mutex::new(Calls::default());
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
