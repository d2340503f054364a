//! `raftgraph cluster …`: init, status, membership, leadership, snapshots.

use clap::Subcommand;
use serde_json::{Value as Json, json};
use tonic::Status;

use super::json::*;
use super::{Global, client, print};
use crate::proto::v1 as pb;

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Bootstrap a new cluster on the first endpoint: `--member 1=127.0.0.1:7001` per voter.
    Init {
        #[arg(long = "member", required = true)]
        members: Vec<String>,
    },
    /// Each endpoint's view: state, term, leader, log positions.
    Status,
    /// Add a learner (`--wait`: until it has caught up).
    AddLearner {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        addr: String,
        #[arg(long)]
        wait: bool,
    },
    /// Make learners voters.
    Promote { ids: Vec<u64> },
    /// Remove members.
    Remove { ids: Vec<u64> },
    /// Make a voter the leader.
    Transfer {
        #[arg(long)]
        to: u64,
    },
    /// Build a snapshot on the first endpoint.
    Snapshot,
}

fn member(s: &str) -> Result<pb::Member, Status> {
    let bad = || Status::invalid_argument(format!("--member {s:?}: expected ID=HOST:PORT"));
    let (id, addr) = s.split_once('=').ok_or_else(bad)?;
    Ok(pb::Member {
        id: id.parse().map_err(|_| bad())?,
        addr: addr.into(),
    })
}

pub async fn cluster(g: &Global, cmd: ClusterCmd) -> Result<(), Status> {
    let c = client(g)?;
    let first = g.endpoints[0].clone();
    let v = match cmd {
        ClusterCmd::Init { members } => {
            let members = members
                .iter()
                .map(|m| member(m))
                .collect::<Result<_, _>>()?;
            let mut cc = crate::proto::v1::cluster_service_client::ClusterServiceClient::connect(
                format!("http://{first}"),
            )
            .await
            .map_err(|e| Status::unavailable(format!("{first}: {e}")))?;
            cc.init(pb::InitRequest { members }).await?;
            json!({"initialized": first})
        }
        ClusterCmd::Status => {
            let mut rows = Vec::new();
            for e in &g.endpoints {
                rows.push(match c.status_of(e).await {
                    Ok(s) => status_json(e, &s),
                    Err(s) => json!({"endpoint": e, "node": Json::Null, "state": format!("unreachable: {}", s.message())}),
                });
            }
            Json::Array(rows)
        }
        ClusterCmd::AddLearner { id, addr, wait } => {
            let req = pb::AddLearnerRequest {
                member: Some(pb::Member { id, addr }),
                wait,
            };
            let r = c
                .cluster(|mut cc| {
                    let req = req.clone();
                    async move { cc.add_learner(req).await }
                })
                .await?;
            membership_json(&r.membership)
        }
        ClusterCmd::Promote { ids } => {
            let r = c
                .cluster(|mut cc| {
                    let ids = ids.clone();
                    async move { cc.promote(pb::PromoteRequest { ids }).await }
                })
                .await?;
            membership_json(&r.membership)
        }
        ClusterCmd::Remove { ids } => {
            let r = c
                .cluster(|mut cc| {
                    let ids = ids.clone();
                    async move { cc.remove(pb::RemoveRequest { ids }).await }
                })
                .await?;
            membership_json(&r.membership)
        }
        ClusterCmd::Transfer { to } => {
            c.cluster(|mut cc| async move {
                cc.transfer_leadership(pb::TransferLeadershipRequest { to })
                    .await
            })
            .await?;
            json!({"transfer_requested_to": to})
        }
        ClusterCmd::Snapshot => {
            let mut cc = crate::proto::v1::cluster_service_client::ClusterServiceClient::connect(
                format!("http://{first}"),
            )
            .await
            .map_err(|e| Status::unavailable(format!("{first}: {e}")))?;
            cc.trigger_snapshot(pb::TriggerSnapshotRequest {}).await?;
            json!({"snapshot_triggered_on": first})
        }
    };
    print(g, v);
    Ok(())
}
