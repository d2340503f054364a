//! Answers leave in pieces, and large ones hold their bytes until they have left.
//!
//! HTTP/2 takes a whole body chunk into its send buffer whatever the client's flow-control
//! window, and hyper asks for the next chunk as soon as it has handed one over. So a client that
//! never reads could leave every answer it asked for in the server's memory: up to a page
//! (8 MiB and more) per stream, 1,024 streams per connection. [`Paced`] wraps a service so its
//! answers go out in pieces of at most [`PIECE_BYTES`]: hyper hands a piece over only once the
//! stream has send capacity, so what a client that stops reading leaves in HTTP/2 is its window
//! plus one piece per stream, and the rest of an answer stays in its body, where it is counted:
//! a handler that reserved the answer's bytes of the connection's budget ([`hold_answer`]) has
//! the reservation moved into the body, given back when the last piece has left.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::{Body as HttpBody, Frame};
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;
use tower::Service;

use crate::budget::{ByteBudget, Reservation};
use crate::tls::ConnInfo;

/// The largest piece of an answer handed to HTTP/2 at once.
pub const PIECE_BYTES: usize = 64 << 10;

/// What a point read's (or a write's, or a stream call's before it is read) answer reserves
/// of the budgets: small, resized when the record turns out larger.
pub const SMALL_ANSWER_RESERVE: usize = 64 << 10;

/// An answer's reservation, on its way from the handler to the body (a response extension;
/// extensions must be `Clone`).
#[derive(Clone)]
struct AnswerHold(Arc<Mutex<Option<Reservation>>>);

/// The connection's answer budget of a request, if its transport gave one.
pub fn answer_budget<T>(request: &tonic::Request<T>) -> Option<Arc<ByteBudget>> {
    request
        .extensions()
        .get::<ConnInfo>()
        .map(|c| c.answers.clone())
}

/// Reserves `bytes` of the request's connection budget for its answer (waiting while the
/// connection's unsent answers fill it); `None` without a budget.
pub async fn reserve_answer<T>(request: &tonic::Request<T>, bytes: usize) -> Option<Reservation> {
    reserve_of(answer_budget(request).as_ref(), bytes).await
}

/// Reserves `bytes` of `budget`, if there is one.
pub async fn reserve_of(budget: Option<&Arc<ByteBudget>>, bytes: usize) -> Option<Reservation> {
    match budget {
        Some(b) => Some(b.reserve(bytes).await),
        None => None,
    }
}

/// `response` carrying `hold`, resized to the answer's `bytes`, to its body (see the module
/// docs); without a hold, `response` as it is.
pub fn hold_answer<T>(
    mut response: tonic::Response<T>,
    hold: Option<Reservation>,
    bytes: usize,
) -> tonic::Response<T> {
    if let Some(mut h) = hold {
        h.resize(bytes);
        response
            .extensions_mut()
            .insert(AnswerHold(Arc::new(Mutex::new(Some(h)))));
    }
    response
}

/// A service whose answers leave in pieces (see the module docs).
#[derive(Clone)]
pub struct Paced<S>(pub S);

impl<S: NamedService> NamedService for Paced<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Paced<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let answering = self.0.call(request);
        Box::pin(async move {
            let mut response = answering.await?;
            let hold = response
                .extensions_mut()
                .remove::<AnswerHold>()
                .and_then(|h| h.0.lock().expect("answer hold").take());
            Ok(response.map(|inner| {
                Body::new(Pieces {
                    inner,
                    pending: Bytes::new(),
                    hold,
                })
            }))
        })
    }
}

/// A body handed out in pieces; `hold` is given back once the last data has left.
struct Pieces {
    inner: Body,
    pending: Bytes,
    hold: Option<Reservation>,
}

impl HttpBody for Pieces {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(PIECE_BYTES);
                return Poll::Ready(Some(Ok(Frame::data(this.pending.split_to(n)))));
            }
            match std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.pending = data,
                    Err(other) => {
                        this.hold = None;
                        return Poll::Ready(Some(Ok(other)));
                    }
                },
                end => {
                    this.hold = None;
                    return Poll::Ready(end);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.inner.is_end_stream()
    }
}
