//! openraft's network over tonic: one lazily connected channel per peer (mutual TLS in
//! production: the peer's certificate must name the member dialled), a deadline on every
//! unary RPC (openraft's `hard_ttl`), pipelined appends on one bidirectional stream, and
//! snapshots streamed in 1 MiB chunks read from the snapshot file.

use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use openraft::OptionalSend;
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;

use crate::codec;
use crate::proto::v1::raft_service_client::RaftServiceClient;
use crate::proto::v1::{RaftPayload, SnapshotChunk, snapshot_chunk};
use crate::raft::{Member, NodeId, SnapshotMeta, TypeConfig};
use crate::state_machine::{Blocking, SnapshotFile};
use crate::transport::{CONNECT_TIMEOUT, Dialer};
use crate::wire::{PEER_MESSAGE_BYTES_MAX, SNAPSHOT_CHUNK_BYTES};

type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotFile>;

/// Creates one [`GrpcNetwork`] per peer; peers are dialled at [`Member::peer_addr`], and (with
/// TLS) must present a certificate naming them ([`crate::tls::member_name`]).
#[derive(Clone, Debug, Default)]
pub struct GrpcNetworkFactory {
    /// The cluster the peers' certificates must name.
    pub cluster_id: String,
    /// Time allowed to connect a channel. Default [`CONNECT_TIMEOUT`].
    pub connect_timeout: Option<Duration>,
    /// How channels are dialled (TCP by default).
    pub dialer: Dialer,
    /// Where reads of the snapshot file being sent run.
    pub blocking: Blocking,
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetworkFactory {
    type Network = GrpcNetwork;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> GrpcNetwork {
        GrpcNetwork::new(
            target,
            &node.peer_addr,
            &crate::tls::member_name(&self.cluster_id, target),
            &self.dialer,
            self.connect_timeout,
            self.blocking,
        )
    }
}

/// The client side of one peer. The channel reconnects by itself after a failure.
pub struct GrpcNetwork {
    target: NodeId,
    client: Result<RaftServiceClient<Channel>, String>,
    blocking: Blocking,
}

fn unreachable(msg: impl ToString) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(msg))
}

fn status_error(target: NodeId, s: tonic::Status) -> RPCError<TypeConfig> {
    use tonic::Code::*;
    let msg = format!("node {target}: {}: {}", s.code(), s.message());
    match s.code() {
        // Nothing is known to have reached the peer: back off and retry.
        Unavailable | DeadlineExceeded | Cancelled | Unknown => unreachable(msg),
        _ => RPCError::Network(NetworkError::from_string(msg)),
    }
}

fn encode<T: Serialize>(v: &T) -> Result<RaftPayload, RPCError<TypeConfig>> {
    codec::encode(v)
        .map(|data| RaftPayload { data })
        .map_err(|e| RPCError::Network(NetworkError::from_string(format!("encode: {e}"))))
}

/// Decodes a reply: `Result<T, String>` where the error is the peer's.
fn decode_reply<T: DeserializeOwned>(
    target: NodeId,
    p: RaftPayload,
) -> Result<T, RPCError<TypeConfig>> {
    let r: Result<T, String> = codec::decode(&p.data).map_err(|e| {
        RPCError::Network(NetworkError::from_string(format!(
            "node {target}: undecodable reply: {e}"
        )))
    })?;
    // The peer could not handle it (e.g. it is shutting down): treat like an unreachable member.
    r.map_err(|e| unreachable(format!("node {target}: {e}")))
}

impl GrpcNetwork {
    /// The client of member `target` at `addr`, whose certificate must name `name`.
    pub fn new(
        target: NodeId,
        addr: &str,
        name: &str,
        dialer: &Dialer,
        connect_timeout: Option<Duration>,
        blocking: Blocking,
    ) -> Self {
        let client = dialer
            .dial_named(addr, Some(name), connect_timeout.unwrap_or(CONNECT_TIMEOUT))
            .map(|c| {
                RaftServiceClient::new(c)
                    .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
            })
            .map_err(|e| format!("node {target}: bad address {addr:?}: {e}"));
        GrpcNetwork {
            target,
            client,
            blocking,
        }
    }

    fn client(&self) -> Result<RaftServiceClient<Channel>, RPCError<TypeConfig>> {
        self.client.clone().map_err(unreachable)
    }

    /// One unary RPC: encode, send with openraft's deadline, decode the peer's reply.
    async fn unary<Req, Resp, F, Fut>(
        &self,
        rpc: &Req,
        option: &RPCOption,
        call: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(RaftServiceClient<Channel>, tonic::Request<RaftPayload>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let mut req = tonic::Request::new(encode(rpc)?);
        req.set_timeout(option.hard_ttl());
        let reply = call(self.client()?, req)
            .await
            .map_err(|s| status_error(self.target, s))?;
        decode_reply(self.target, reply.into_inner())
    }
}

/// Snapshot transfers report failures as `StreamingError`.
fn streaming(e: RPCError<TypeConfig>) -> StreamingError<TypeConfig> {
    match e {
        RPCError::Unreachable(u) => StreamingError::Unreachable(u),
        RPCError::Timeout(t) => StreamingError::Timeout(t),
        RPCError::Network(n) => StreamingError::Network(n),
        RPCError::RemoteError(r) => {
            StreamingError::Network(NetworkError::from_string(r.to_string()))
        }
    }
}

impl RaftNetworkV2<TypeConfig> for GrpcNetwork {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, &option, |mut c, r| async move {
            c.append_entries(r).await
        })
        .await
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        _option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        let target = self.target;
        let mut input = input;
        Box::pin(async move {
            // openraft applies its backoff while producing a request: take the first one before
            // dialling, so a peer that refuses connections (down, or its port closed) is retried
            // at the backoff's pace instead of in a tight reconnect loop.
            let Some(first) = input.next().await else {
                return Ok(Box::pin(futures::stream::empty()) as BoxStream<'s, _>);
            };
            let mut client = self.client()?;
            // An entry that cannot be encoded ends the stream; openraft then retries.
            let outbound = futures::stream::iter([first])
                .chain(input)
                .scan((), |_, rpc| {
                    futures::future::ready(
                        codec::encode(&rpc).ok().map(|data| RaftPayload { data }),
                    )
                });
            let replies = client
                .stream_append(outbound)
                .await
                .map_err(|s| status_error(target, s))?
                .into_inner();
            let results = replies.map(move |r| match r {
                Ok(p) => decode_reply::<StreamAppendResult<TypeConfig>>(target, p),
                Err(s) => Err(status_error(target, s)),
            });
            Ok(Box::pin(results) as BoxStream<'s, _>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, &option, |mut c, r| async move { c.vote(r).await })
            .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, &option, |mut c, r| async move { c.pre_vote(r).await })
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let target = self.target;
        let header = codec::encode(&(vote, snapshot.meta.clone()))
            .map_err(|e| streaming(RPCError::Network(NetworkError::from_string(e.to_string()))))?;
        let file = Arc::new(std::sync::Mutex::new(snapshot.snapshot.file));
        let blocking = self.blocking;
        {
            let file = file.clone();
            blocking
                .run(move || file.lock().expect("snapshot file").seek(SeekFrom::Start(0)))
                .await
                .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        }
        let total_bytes = {
            let file = file.clone();
            blocking
                .run(move || file.lock().expect("snapshot file").metadata())
                .await
                .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?
                .len()
        };
        let first = SnapshotChunk {
            part: Some(snapshot_chunk::Part::Header(header)),
            total_bytes,
        };
        // Chunks are read as the transport asks for them: memory stays at one chunk. A read
        // error ends the stream early; the receiver then refuses the incomplete snapshot.
        let data = futures::stream::unfold(Some(file), move |state| async move {
            let file = state?;
            let reading = file.clone();
            let chunk = blocking
                .run(move || {
                    let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
                    let mut f = reading.lock().expect("snapshot file");
                    let mut n = 0;
                    // Fill the whole chunk: chunk boundaries depend only on the stream's bytes.
                    while n < buf.len() {
                        match f.read(&mut buf[n..]) {
                            Ok(0) => break,
                            Ok(k) => n += k,
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(e),
                        }
                    }
                    buf.truncate(n);
                    Ok(buf)
                })
                .await;
            match chunk {
                Ok(buf) if !buf.is_empty() => {
                    let chunk = SnapshotChunk {
                        part: Some(snapshot_chunk::Part::Data(buf)),
                        total_bytes: 0,
                    };
                    Some((chunk, Some(file)))
                }
                _ => None,
            }
        });
        let outbound = futures::stream::iter([first]).chain(data);
        let mut client = self.client().map_err(streaming)?;
        let send = client.install_snapshot(outbound);
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = send => r,
        };
        let reply = reply.map_err(|s| streaming(status_error(target, s)))?;
        decode_reply(target, reply.into_inner()).map_err(streaming)
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&req, &option, |mut c, r| async move {
            c.transfer_leader(r).await
        })
        .await
    }
}

/// The vote and meta a snapshot transfer starts with.
pub type SnapshotHeader = (Vote, SnapshotMeta);
