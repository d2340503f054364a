//! The server side of the Raft network: checks who is calling, decodes peer RPCs, hands them to
//! openraft, encodes the replies.
//!
//! **Who may call.** Every RPC first checks the identity the connection's transport reports
//! ([`crate::tls::ConnInfo`]): it must name this cluster and a member (see [`PeerGate`], put in
//! front by [`RaftGrpc::into_service`]). The check runs on the request's headers, before the
//! message body is read or a payload decoded. A payload that does not decode is
//! INVALID_ARGUMENT and changes nothing.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use openraft::async_runtime::WatchReceiver;
use openraft::raft::{
    AppendEntriesRequest, StreamAppendResult, TransferLeaderRequest, VoteRequest,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::Write;
use tonic::{Request, Response, Status, Streaming};

use super::gate::{Gated, PeerGate, membership_of};
use super::network::SnapshotHeader;
use crate::codec;
use crate::proto::v1::raft_service_server::{RaftService, RaftServiceServer};
use crate::proto::v1::{
    PeerMembershipRequest, RaftPayload, ReadIndexRequest, ReadIndexResponse, SnapshotChunk,
    snapshot_chunk,
};
use crate::raft::TypeConfig;
use crate::state_machine::{Blocking, Raft, SnapshotFile, Stager};
use crate::transport::Dialer;
use crate::wire::PEER_MESSAGE_BYTES_MAX;
type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotFile>;

/// The Raft RPC service of one server.
pub struct RaftGrpc {
    raft: Raft,
    /// The cluster callers' certificates must name.
    cluster_id: String,
    /// Where incoming snapshot streams are written before install (the state machine's
    /// `snapshots/` directory: `*.tmp` there is removed on open).
    recv_dir: PathBuf,
    /// Builds a received snapshot's database before openraft installs it.
    stager: Stager,
    seq: AtomicU64,
    /// One snapshot received at a time: each may be as large as the whole state.
    receiving: tokio::sync::Semaphore,
    /// Where the received file is written, synced and verified.
    blocking: Blocking,
    /// How a transfer is bounded.
    limits: SnapshotLimits,
    /// Why the last transfer to this member was refused (reported by `Status`).
    refused: Arc<Mutex<Option<String>>>,
    /// How free space is read (statvfs; a test's script in its place).
    free_space: FreeSpace,
    /// How the gate's asker dials the members this one knows.
    peer_dialer: Dialer,
}

/// Reads the bytes free on the file system holding a directory: [`free_bytes`] by default.
pub type FreeSpace = Arc<dyn Fn(&Path) -> std::io::Result<u64> + Send + Sync>;

/// What a snapshot transfer to this member may take.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotLimits {
    /// The longest wait for the next chunk: a sender that stalls past it loses the receive slot
    /// (the transfer is abandoned and its file removed), so the real leader can send again. Per
    /// chunk only: a sender that trickles one chunk inside it each time keeps the slot.
    pub chunk_timeout: Duration,
    /// The most bytes one transfer may declare and send.
    pub bytes_max: u64,
}

impl Default for SnapshotLimits {
    fn default() -> Self {
        SnapshotLimits {
            chunk_timeout: Duration::from_secs(30),
            bytes_max: 1 << 40,
        }
    }
}

/// Free space a transfer of `n` bytes needs where it is received: the stream itself, and about
/// twice more while it is installed (the SST files cut from it and the new database).
pub const SNAPSHOT_SPACE_FACTOR: u64 = 3;

/// Where in a transfer free space is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Before the first byte is received: room for the stream and its install.
    Receive,
    /// Received and verified, before openraft installs it: room for the install.
    Install,
}

/// Whether `free` bytes leave room for a transfer of `total` bytes at `stage`; otherwise the
/// refusal's words.
fn room_for(stage: Stage, total: u64, free: u64) -> Result<(), String> {
    let (need, what) = match stage {
        Stage::Receive => (
            total.saturating_mul(SNAPSHOT_SPACE_FACTOR),
            "free to receive and install",
        ),
        // The stream is on disk already; installing it takes the rest.
        Stage::Install => (
            total.saturating_mul(SNAPSHOT_SPACE_FACTOR - 1),
            "free to install it after receiving",
        ),
    };
    if free >= need {
        return Ok(());
    }
    Err(format!(
        "a snapshot of {total} bytes needs {need} bytes {what}; {free} are; the member keeps \
         serving its current state"
    ))
}

/// Bytes available to this process on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `st` is written by statvfs before it is read.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

impl RaftGrpc {
    /// Refuses (logged, in `Status`) a transfer of `total` bytes without room for it at `stage`.
    async fn check_room(&self, stage: Stage, total: u64) -> Result<(), Status> {
        let dir = self.recv_dir.clone();
        let free_space = self.free_space.clone();
        let free = self
            .blocking
            .run(move || free_space(&dir))
            .await
            .map_err(|e| {
                self.refuse(Status::unavailable(format!(
                    "free space of the snapshot directory: {e}"
                )))
            })?;
        room_for(stage, total, free).map_err(|why| self.refuse(Status::resource_exhausted(why)))
    }
}

/// Removes a partly received snapshot when the transfer ends in any way, including the
/// handler being dropped because the sender reset the stream.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl RaftGrpc {
    /// The service of `raft`, whose state machine `stager` stages snapshots for.
    pub fn new(raft: Raft, cluster_id: &str, stager: Stager) -> Self {
        RaftGrpc {
            raft,
            cluster_id: cluster_id.into(),
            recv_dir: stager.snapshots_dir(),
            stager,
            seq: AtomicU64::new(0),
            receiving: tokio::sync::Semaphore::new(1),
            blocking: Blocking::Pool,
            limits: SnapshotLimits::default(),
            free_space: Arc::new(free_bytes),
            refused: Arc::default(),
            peer_dialer: Dialer::default(),
        }
    }

    /// Dials other members with `dialer` (the peer plane's, mutual TLS) when the gate asks
    /// them for their membership.
    pub fn with_peer_dialer(mut self, dialer: Dialer) -> Self {
        self.peer_dialer = dialer;
        self
    }

    /// Bounds transfers by `limits`.
    pub fn with_limits(mut self, limits: SnapshotLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Where the reason of a refused transfer is left for `Status`.
    pub fn with_refusals(mut self, refused: Arc<Mutex<Option<String>>>) -> Self {
        self.refused = refused;
        self
    }

    /// Logs and records why a transfer was refused; the status to answer.
    fn refuse(&self, status: Status) -> Status {
        tracing::warn!("snapshot transfer refused: {}", status.message());
        *self.refused.lock().expect("refusal") = Some(status.message().to_string());
        status
    }

    /// The service as it is served: behind [`PeerGate`], which checks the caller on the
    /// request's headers before tonic reads and decodes the message body, with the peer message
    /// limit both ways. The handlers rely on the gate: serve a `RaftGrpc` only this way. Spawns
    /// the gate's asker, which ends with the service: call this on the server's runtime.
    pub fn into_service(self) -> Gated<RaftServiceServer<RaftGrpc>> {
        let (gate, asker) = PeerGate::new(
            self.raft.clone(),
            &self.cluster_id,
            self.peer_dialer.clone(),
        );
        tokio::spawn(asker.run());
        Gated::new(
            RaftServiceServer::new(self)
                .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX),
            gate,
        )
    }

    /// Runs the received file's I/O `blocking`'s way (inline in the simulation).
    /// Reads free space with `f` instead of statvfs (tests: a disk that fills up).
    pub fn with_free_space(mut self, f: FreeSpace) -> Self {
        self.free_space = f;
        self
    }

    pub fn with_blocking(mut self, blocking: Blocking) -> Self {
        self.blocking = blocking;
        self
    }
}

/// The next chunk of a transfer, or DEADLINE_EXCEEDED when none comes within `timeout`.
async fn next_chunk(
    chunks: &mut Streaming<SnapshotChunk>,
    timeout: Duration,
) -> Result<Option<SnapshotChunk>, Status> {
    match tokio::time::timeout(timeout, chunks.message()).await {
        Ok(r) => r,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no snapshot chunk within {timeout:?}: transfer abandoned"
        ))),
    }
}

/// The answer to a transfer that failed with `e` while `doing`: INVALID_ARGUMENT when the
/// sender's bytes were at fault, RESOURCE_EXHAUSTED when this member's disk is full, otherwise
/// UNAVAILABLE. The member keeps serving its current state either way.
fn io_status(doing: &str, e: &std::io::Error) -> Status {
    let msg = format!("{doing}: {e}; the member keeps serving its current state");
    match e.kind() {
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => {
            Status::invalid_argument(msg)
        }
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            Status::resource_exhausted(msg)
        }
        _ => Status::unavailable(msg),
    }
}

/// Reads a received snapshot stream end to end; returns its meta.
fn verify_stream(path: &std::path::Path) -> std::io::Result<crate::raft::SnapshotMeta> {
    struct Discard;
    impl crate::state_machine::stream::StreamSink for Discard {
        fn cf(&mut self, _: &str) -> std::io::Result<()> {
            Ok(())
        }
        fn pair(&mut self, _: &[u8], _: &[u8]) -> std::io::Result<()> {
            Ok(())
        }
    }
    let file = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let (meta, _digest) = crate::state_machine::stream::read_stream(file, &mut Discard)?;
    codec::decode(&meta)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, Status> {
    codec::decode(bytes).map_err(|e| Status::invalid_argument(format!("{what}: {e}")))
}

/// Encodes a reply as `Result<T, String>`: the peer's error travels as text.
fn reply<T: Serialize, E: std::fmt::Display>(
    r: Result<T, E>,
) -> Result<Response<RaftPayload>, Status> {
    let r: Result<T, String> = r.map_err(|e| e.to_string());
    let data = codec::encode(&r).map_err(|e| Status::internal(format!("encode reply: {e}")))?;
    Ok(Response::new(RaftPayload { data }))
}

type PayloadStream = Pin<Box<dyn Stream<Item = Result<RaftPayload, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RaftService for RaftGrpc {
    async fn read_index(
        &self,
        _req: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        use openraft::errors::{LinearizableReadError, RaftError};
        match self
            .raft
            .get_read_log_id(openraft::raft::ReadPolicy::ReadIndex)
            .await
        {
            Ok((read, _applied)) => Ok(Response::new(ReadIndexResponse {
                index: read.index(),
            })),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => Err(
                Status::failed_precondition(format!("not the leader (leader: {:?})", f.leader_id)),
            ),
            Err(e) => Err(Status::unavailable(format!("read index: {e}"))),
        }
    }

    async fn membership(
        &self,
        _req: Request<PeerMembershipRequest>,
    ) -> Result<Response<RaftPayload>, Status> {
        let m = self.raft.metrics().borrow_watched().clone();
        reply(Ok::<_, String>(membership_of(&m)))
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: VoteRequest<TypeConfig> = decode("vote", &req.into_inner().data)?;
        reply(self.raft.vote(rpc).await)
    }

    async fn pre_vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: VoteRequest<TypeConfig> = decode("pre_vote", &req.into_inner().data)?;
        reply(self.raft.pre_vote(rpc).await)
    }

    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> =
            decode("append_entries", &req.into_inner().data)?;
        reply(self.raft.append_entries(rpc).await)
    }

    type StreamAppendStream = PayloadStream;

    async fn stream_append(
        &self,
        req: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<PayloadStream>, Status> {
        // A message that fails to arrive or decode ends the input; the leader then retries.
        let input = req.into_inner().scan((), |_, item| {
            let rpc = item
                .ok()
                .and_then(|p| codec::decode::<AppendEntriesRequest<TypeConfig>>(&p.data).ok());
            futures::future::ready(rpc)
        });
        let output = self.raft.stream_append(input).map(|r| {
            let r: Result<StreamAppendResult<TypeConfig>, String> = r.map_err(|e| e.to_string());
            codec::encode(&r)
                .map(|data| RaftPayload { data })
                .map_err(|e| Status::internal(format!("encode reply: {e}")))
        });
        Ok(Response::new(Box::pin(output)))
    }

    async fn transfer_leader(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: TransferLeaderRequest<TypeConfig> =
            decode("transfer_leader", &req.into_inner().data)?;
        reply(self.raft.handle_transfer_leader(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftPayload>, Status> {
        let mut chunks = req.into_inner();
        let limits = self.limits;
        let first = next_chunk(&mut chunks, limits.chunk_timeout)
            .await
            .map_err(|s| self.refuse(s))?;
        let (vote, meta, total): (_, _, u64) = match first {
            Some(SnapshotChunk {
                part: Some(snapshot_chunk::Part::Header(h)),
                total_bytes,
            }) => {
                let (vote, meta): SnapshotHeader = decode("snapshot header", &h)?;
                (vote, meta, total_bytes)
            }
            _ => {
                return Err(Status::invalid_argument(
                    "snapshot stream must start with its header",
                ));
            }
        };
        if total == 0 || total > limits.bytes_max {
            return Err(self.refuse(Status::resource_exhausted(format!(
                "a snapshot of {total} bytes declared; this member takes 1..={} bytes",
                limits.bytes_max
            ))));
        }
        let _one = self
            .receiving
            .try_acquire()
            .map_err(|_| Status::unavailable("a snapshot is already being received; retry"))?;
        self.check_room(Stage::Receive, total).await?;
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        let tmp = TempFile(self.recv_dir.join(format!("incoming-{n}.tmp")));
        let path = tmp.0.clone();
        let received = async {
            let blocking = self.blocking;
            let p = path.clone();
            let file = blocking.run(move || std::fs::File::create(p)).await?;
            let file = std::sync::Arc::new(std::sync::Mutex::new(file));
            let mut got: u64 = 0;
            while let Some(chunk) = next_chunk(&mut chunks, limits.chunk_timeout)
                .await
                .map_err(std::io::Error::other)?
            {
                match chunk.part {
                    Some(snapshot_chunk::Part::Data(d)) => {
                        got = got.saturating_add(d.len() as u64);
                        if got > total {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::InvalidData,
                                format!("the sender sent more than the {total} bytes it declared"),
                            ));
                        }
                        let f = file.clone();
                        blocking
                            .run(move || f.lock().expect("snapshot file").write_all(&d))
                            .await?
                    }
                    _ => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "snapshot chunk without data after the header",
                        ));
                    }
                }
            }
            if got != total {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("the sender declared {total} bytes and sent {got}"),
                ));
            }
            let f = file.clone();
            blocking
                .run(move || f.lock().expect("snapshot file").sync_all())
                .await?;
            drop(file);
            // Verify the whole stream (framing, checksums, digest, meta) before openraft sees
            // it: a failed install is fatal for the member, a refused transfer is not.
            let p = path.clone();
            let stream_meta = blocking.run(move || verify_stream(&p)).await?;
            if stream_meta != meta {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("stream holds {stream_meta:?}, header says {meta:?}"),
                ));
            }
            SnapshotFile::open(&path)
        }
        .await;
        let file = received.map_err(|e| self.refuse(io_status("receiving snapshot", &e)))?;
        // Space may have gone while the stream arrived (the WAL grows, other files).
        self.check_room(Stage::Install, total).await?;
        // The database is built and made durable here, where a failure (a full disk, an I/O
        // error) only refuses the transfer; openraft's install, where any error is fatal for the
        // member, then only switches to it. The received file is removed as `tmp` drops. A
        // transfer openraft will decline (an older vote, or nothing past what is applied) is not
        // staged: it would cost a whole database for nothing.
        let declined = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow_watched();
            vote < m.vote || meta.last_log_id <= m.last_applied
        };
        let file = if declined {
            file
        } else {
            self.stager
                .stage(&meta, file)
                .await
                .map_err(|e| self.refuse(io_status("staging snapshot", &e)))?
        };
        let snapshot = Snapshot {
            meta: meta.clone(),
            snapshot: file,
        };
        let last = meta.last_log_id;
        let r = self.raft.install_full_snapshot(vote, snapshot).await;
        drop(tmp);
        if r.is_ok() {
            tracing::info!(last = ?last, "installed a snapshot streamed from the leader");
            *self.refused.lock().expect("refusal") = None;
        }
        reply(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_three_times_the_stream_to_receive_and_twice_more_to_install() {
        assert!(room_for(Stage::Receive, 100, 300).is_ok());
        let why = room_for(Stage::Receive, 100, 299).unwrap_err();
        assert!(why.contains("needs 300 bytes free to receive"), "{why}");
        // Once received, the stream's own bytes are on disk: the install needs the other two.
        assert!(room_for(Stage::Install, 100, 200).is_ok());
        let why = room_for(Stage::Install, 100, 199).unwrap_err();
        assert!(why.contains("needs 200 bytes free to install"), "{why}");
        assert!(why.contains("keeps serving its current state"), "{why}");
        assert!(room_for(Stage::Receive, u64::MAX, u64::MAX - 1).is_err());
    }
}
