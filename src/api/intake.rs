//! Request messages are counted from their first byte, before tonic decodes them.
//!
//! tonic reads a whole request message (up to [`CLIENT_REQUEST_BYTES_MAX`]) into memory and
//! decodes it before a handler runs, so admission (which counts proposals in the handler) came
//! too late for the bytes themselves: a client could open 1,024 HTTP/2 streams on one
//! connection and send each a message declaring 16 MiB, and the server held all it sent.
//! [`Metered`] wraps a service so that each message of a request body reserves its declared size
//! (read from its 5-byte gRPC header) of its connection's budget
//! ([`CONNECTION_REQUEST_BYTES_MAX`], `ConnInfo::requests`) before any of its bytes reach tonic,
//! and gives it back once tonic has taken the message (at the body's next read) or the body
//! ends. A message that does not fit is refused at once — UNAVAILABLE, the call (or stream)
//! ends, nothing of it was applied — never waited for: a message that holds its reservation
//! needs nothing more to complete, so no two calls can wait on each other.
//!
//! What a connection holds of undecoded requests is thus at most its budget, plus HTTP/2's
//! receive windows. Connections per client are not limited here (see `docs/security.md`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Status;
use tonic::server::NamedService;
use tower::Service;

use crate::budget::{ByteBudget, Reservation};
use crate::tls::ConnInfo;
use crate::wire::{CLIENT_REQUEST_BYTES_MAX, CONNECTION_REQUEST_BYTES_MAX};

/// Bytes of a gRPC message's header: a compression flag and a 4-byte big-endian length.
const GRPC_HEADER_BYTES: usize = 5;

/// A service whose request messages are counted against their connection's budget (see the
/// module docs). Without a budget (no `ConnInfo`), and on a connection whose certificate names a
/// member (a follower forwarding its clients' calls, counted on the follower), requests pass as
/// they are.
#[derive(Clone)]
pub struct Metered<S>(pub S);

impl<S: NamedService> NamedService for Metered<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Metered<S>
where
    S: Service<http::Request<Counted<B>>>,
    B: HttpBody<Data = Bytes>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // A member's calls (forwards) were counted where their clients sent them.
        let budget = request
            .extensions()
            .get::<ConnInfo>()
            .filter(|c| c.member.is_none())
            .map(|c| c.requests.clone());
        self.0
            .call(request.map(|inner| Counted::new(inner, budget)))
    }
}

/// A request body whose messages hold their declared size of a budget while they are read.
pub struct Counted<B> {
    inner: B,
    budget: Option<Arc<ByteBudget>>,
    /// The header of the message being read, as far as it has come.
    header: [u8; GRPC_HEADER_BYTES],
    header_len: usize,
    /// Payload bytes of the current message still to come (0: a header comes next).
    left: usize,
    /// Header and declared payload of the current message.
    current: usize,
    /// What messages begun and not yet taken by tonic hold.
    held: Option<Reservation>,
    /// Bytes of `held` whose messages are complete: given back at the next read.
    done: usize,
}

impl<B> Counted<B> {
    fn new(inner: B, budget: Option<Arc<ByteBudget>>) -> Self {
        Counted {
            inner,
            budget,
            header: [0; GRPC_HEADER_BYTES],
            header_len: 0,
            left: 0,
            current: 0,
            held: None,
            done: 0,
        }
    }

    /// Walks `data` through the message framing, reserving each message that begins in it;
    /// the refusal if one does not fit.
    fn count(&mut self, data: &[u8]) -> Result<(), Status> {
        let Some(budget) = &self.budget else {
            return Ok(());
        };
        let mut at = 0;
        while at < data.len() {
            if self.left == 0 {
                let take = (GRPC_HEADER_BYTES - self.header_len).min(data.len() - at);
                self.header[self.header_len..self.header_len + take]
                    .copy_from_slice(&data[at..at + take]);
                self.header_len += take;
                at += take;
                if self.header_len < GRPC_HEADER_BYTES {
                    break;
                }
                let declared = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
                // tonic refuses a longer one itself once it reads this header.
                let need = GRPC_HEADER_BYTES + declared.min(CLIENT_REQUEST_BYTES_MAX);
                let Some(r) = budget.try_reserve(need) else {
                    return Err(Status::unavailable(format!(
                        "this connection has {} bytes of requests on their way in, and a \
                         message of {declared} bytes does not fit its {} bytes: nothing was \
                         done; retry, or spread large requests over connections",
                        budget.used(),
                        CONNECTION_REQUEST_BYTES_MAX
                    )));
                };
                match &mut self.held {
                    Some(h) => h.absorb(r),
                    None => self.held = Some(r),
                }
                self.current = need;
                self.left = declared;
            } else {
                let take = self.left.min(data.len() - at);
                self.left -= take;
                at += take;
            }
            if self.left == 0 && self.header_len == GRPC_HEADER_BYTES {
                self.done += self.current;
                self.header_len = 0;
            }
        }
        Ok(())
    }

    /// Gives back what complete messages held: tonic has decoded them by the time it reads on.
    fn release_done(&mut self) {
        if self.done == 0 {
            return;
        }
        if let Some(h) = &mut self.held {
            let keep = h.bytes().saturating_sub(self.done);
            h.resize(keep);
        }
        self.done = 0;
    }
}

impl<B> HttpBody for Counted<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Data = Bytes;
    type Error = tonic::codegen::StdError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        this.release_done();
        match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref()
                    && let Err(refusal) = this.count(data)
                {
                    this.held = None;
                    this.done = 0;
                    return Poll::Ready(Some(Err(Box::new(refusal))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            None => {
                this.held = None;
                this.done = 0;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(budget: &Arc<ByteBudget>) -> Counted<tonic::body::Body> {
        Counted::new(tonic::body::Body::empty(), Some(budget.clone()))
    }

    fn message(len: usize) -> Vec<u8> {
        let mut m = vec![0u8];
        m.extend_from_slice(&(len as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len));
        m
    }

    #[test]
    fn each_message_holds_its_declared_size_until_the_next_read() {
        let budget = ByteBudget::new(1_000);
        let mut body = counted(&budget);
        // A header split over two chunks, then part of the payload.
        let m = message(300);
        body.count(&m[..3]).unwrap();
        assert_eq!(budget.used(), 0, "nothing until the header is whole");
        body.count(&m[3..100]).unwrap();
        assert_eq!(budget.used(), 305);
        // The rest, a whole empty message and the start of a third in one chunk.
        let mut chunk = m[100..].to_vec();
        chunk.extend(message(0));
        chunk.extend(&message(200)[..50]);
        body.count(&chunk).unwrap();
        assert_eq!(budget.used(), 305 + 5 + 205);
        body.release_done();
        assert_eq!(budget.used(), 205, "the complete ones given back");
        // A message that does not fit beside what is held is refused.
        let mut other = counted(&budget);
        let refused = other.count(&message(900)[..5]).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        assert!(refused.message().contains("does not fit"), "{refused:?}");
        drop(body);
        assert_eq!(budget.used(), 0);
        // Alone, the largest message passes even past the budget.
        let mut alone = counted(&budget);
        alone.count(&message(5_000)[..5]).unwrap();
        assert_eq!(budget.used(), 5_005);
    }
}
