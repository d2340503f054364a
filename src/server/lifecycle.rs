//! A running server's life after start: serving until a signal or a fatal error, the graceful
//! shutdown, and the stop after Raft's fatal error (see the module docs of `server`).

use std::future::Future;
use std::time::Duration;

use futures::{Stream, StreamExt};
use openraft::async_runtime::WatchReceiver;
use tonic_health::ServingStatus;

use tokio::task::JoinHandle;

use super::{CLOSE_WAIT, DRAIN, DataDir, FATAL_DRAIN, SERVICES, Served, Server, ServerError};

/// How long the listeners' tasks may take to end once their connections are cut (they end at
/// their next poll); past it they are aborted.
const CUT_WAIT: Duration = Duration::from_secs(2);

/// Waits (until `deadline`) for a listener's task to end after its connections were cut.
async fn ended(
    which: &str,
    task: &mut JoinHandle<Result<(), tonic::transport::Error>>,
    deadline: tokio::time::Instant,
) -> Served {
    match tokio::time::timeout_at(deadline, &mut *task).await {
        Ok(served) => served,
        Err(_) => {
            tracing::warn!(
                "the {which} had not ended {CUT_WAIT:?} after its connections were cut; aborting it"
            );
            task.abort();
            Ok(Ok(()))
        }
    }
}

impl Server {
    /// Serves until `signal` resolves or the server fails, then shuts down gracefully.
    /// `reload` yields each time the certificates should be re-read (SIGHUP). If Raft stops on
    /// a fatal error (a failed write or sync of the WAL or the state machine, corruption
    /// found), the server stops too — health NOT_SERVING, in-flight calls given
    /// [`FATAL_DRAIN`], listeners closed, no leadership hand-off — and returns
    /// [`ServerError::RaftStopped`].
    pub async fn run_until(
        mut self,
        signal: impl Future<Output = ()>,
        mut reload: impl Stream<Item = ()> + Unpin,
    ) -> Result<(), ServerError> {
        let mut signal = std::pin::pin!(signal);
        let mut metrics = self.raft.metrics();
        let mut fatal = std::pin::pin!(async move {
            loop {
                if let Err(e) = &metrics.borrow_watched().running_state {
                    return e.to_string();
                }
                if metrics.changed().await.is_err() {
                    return "its metrics channel closed".to_string();
                }
            }
        });
        loop {
            tokio::select! {
                // A fatal error first: a signal arriving with it must not hide it.
                biased;
                why = &mut fatal => return self.stop_after_fatal(why).await,
                _ = &mut signal => return self.shutdown().await,
                Some(()) = reload.next() => {
                    if let Err(e) = self.reload_tls() {
                        tracing::error!("certificates not reloaded, the old ones stay: {e}");
                    }
                }
                r = &mut self.api_server => return self.failed("client listener", r).await,
                r = &mut self.peer_server => return self.failed("peer listener", r).await,
            }
        }
    }

    async fn failed(mut self, which: &str, r: Served) -> Result<(), ServerError> {
        // The other listener stops too, and no connection of either outlives the server.
        self.stop_accepting();
        self.cut.0.cancel();
        let _ = self.raft.shutdown().await;
        match r {
            Ok(Ok(())) => Err(ServerError::Serve(format!("{which} stopped"))),
            Ok(Err(e)) => Err(ServerError::Serve(format!("{which}: {e}"))),
            Err(e) => Err(ServerError::Serve(format!("{which}: {e}"))),
        }
    }

    /// Raft stopped on a fatal error: this member can take no write and serve no read any
    /// more, so it stops serving rather than answer every call with an error. Health goes
    /// NOT_SERVING and the listeners close (in-flight calls get [`FATAL_DRAIN`]); no
    /// leadership hand-off, since a stopped Raft cannot transfer it (the others elect a leader
    /// after an election timeout, as after a crash). The binary then exits non-zero with the
    /// reason; a restart recovers from what is on disk.
    async fn stop_after_fatal(mut self, why: String) -> Result<(), ServerError> {
        tracing::error!(%why, "Raft stopped on a fatal error; the server stops serving");
        self.not_serving().await;
        let _ = self.close_listeners(FATAL_DRAIN).await;
        let _ = self.raft.shutdown().await;
        Err(ServerError::RaftStopped(why))
    }

    async fn not_serving(&self) {
        for svc in std::iter::once("").chain(SERVICES) {
            self.health
                .set_service_status(svc, ServingStatus::NotServing)
                .await;
        }
    }

    /// Graceful stop: see the module docs. If Raft had already stopped on a fatal error, that
    /// error is returned ([`ServerError::RaftStopped`]), not success.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        let fatal = match &self.raft.metrics().borrow_watched().running_state {
            Err(e) if !matches!(e, openraft::errors::Fatal::Stopped) => Some(e.to_string()),
            _ => None,
        };
        if let Some(why) = fatal {
            return self.stop_after_fatal(why).await;
        }
        self.not_serving().await;
        self.hand_off_leadership().await;
        let served = self.close_listeners(DRAIN).await;
        self.raft
            .shutdown()
            .await
            .map_err(|e| ServerError::Raft(format!("shutdown: {e}")))?;
        self.close().await;
        for r in served {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(ServerError::Serve(e.to_string())),
                Err(e) => return Err(ServerError::Serve(e.to_string())),
            }
        }
        Ok(())
    }

    /// Stops accepting client connections and lets in-flight client calls finish for at most
    /// `drain`. The peer listener serves on meanwhile, accepting too (a follower's linearizable
    /// read waits for its appends, perhaps from a leader it had no connection from). Then it
    /// stops as well, and every connection still open on either listener (long scans, open
    /// streams, idle clients, a leader's append stream) is cut, so none outlives the server.
    /// Returns how each listener's task ended.
    async fn close_listeners(&mut self, drain: Duration) -> [Served; 2] {
        if let Some(stop) = self.stop_api.take() {
            let _ = stop.send(true);
        }
        let drained = tokio::time::timeout(drain, &mut self.api_server).await;
        if drained.is_err() {
            tracing::warn!("client calls still running after {drain:?}; cutting them");
        }
        self.stop_accepting();
        self.cut.0.cancel();
        // One bound for both listeners' tasks.
        let deadline = tokio::time::Instant::now() + CUT_WAIT;
        let api = match drained {
            Ok(served) => served,
            Err(_) => ended("client listener", &mut self.api_server, deadline).await,
        };
        let peer = ended("peer listener", &mut self.peer_server, deadline).await;
        [api, peer]
    }

    /// Stops both accept loops (a listener already stopped stays so).
    fn stop_accepting(&mut self) {
        for stop in [self.stop_api.take(), self.stop_peer.take()]
            .into_iter()
            .flatten()
        {
            let _ = stop.send(true);
        }
    }

    /// Drops this server's handles on the state machine and waits (at most [`CLOSE_WAIT`])
    /// until no task holds its database any more, so that once a graceful shutdown returns
    /// the data directory can be opened again at once. The directory's lock goes last.
    async fn close(self) {
        let closing = self.reader.closing();
        let data_dir = self.into_data_dir();
        let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
        loop {
            let holders = closing.holders();
            if holders == 0 {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    holders,
                    "the state machine's database is still open {CLOSE_WAIT:?} after the \
                     shutdown; returning anyway"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(data_dir);
    }

    /// Everything but the data directory's lock is dropped here.
    fn into_data_dir(self) -> DataDir {
        self._data_dir
    }

    /// If this member leads, asks the most up-to-date other voter to take over and waits (at
    /// most two election timeouts) until this member has heard from the new leader. Best effort:
    /// on timeout the others elect a leader after an election timeout as after a crash.
    async fn hand_off_leadership(&self) {
        let m = self.raft.metrics().borrow_watched().clone();
        if m.current_leader != Some(m.id) {
            return;
        }
        let replication = m.replication.clone().unwrap_or_default();
        let target = m
            .membership_config
            .membership()
            .voter_ids()
            .filter(|v| *v != m.id)
            .max_by_key(|v| replication.get(v).cloned().flatten().map(|l| l.index));
        let Some(to) = target else { return };
        if self.raft.trigger().transfer_leader(to).await.is_err() {
            return;
        }
        let me = m.id;
        let _ = self
            .raft
            .wait(Some(2 * self.config.election_timeout_max()))
            .metrics(
                |m| m.current_leader.is_some_and(|l| l != me),
                "leadership handed off",
            )
            .await;
    }
}
