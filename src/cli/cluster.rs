//! `raftgraph cluster …`: init, status, membership, leadership, snapshots, limits.

use clap::Subcommand;
use serde_json::{Value as Json, json};
use tonic::Status;

use super::json::*;
use super::{Global, client, print};
use crate::proto::v1 as pb;

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Bootstrap a new cluster on the first endpoint: `--member 1=127.0.0.1:7001` per voter
    /// (its client address; its peer address is asked from it).
    /// Needs a member's certificate (`--client-cert`/`--client-key`) when the cluster
    /// authenticates; the answer carries the first cluster-admin token, written to
    /// `--admin-token-file` (mode 0600, never overwritten) or else printed, this once.
    Init {
        #[arg(long = "member", required = true)]
        members: Vec<String>,
        #[arg(long)]
        admin_token_file: Option<std::path::PathBuf>,
    },
    /// Each endpoint's view: state, term, leader, log positions.
    Status,
    /// Add a learner (`--wait`: until it has caught up). `--addr` is its client address; its
    /// peer address is asked from it.
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
    /// The replicated cluster limits (cluster-admin).
    #[command(subcommand)]
    Limits(LimitsCmd),
}

#[derive(Subcommand, Debug)]
pub enum LimitsCmd {
    /// Show the limits in force.
    Get,
    /// Change the limits given; the others keep their values. Ranges are checked by the
    /// cluster (a value outside one is refused, naming the field).
    Set {
        /// Tenants that may exist at once.
        #[arg(long)]
        tenants_max: Option<u64>,
        /// Exactly-once sessions one token (or member certificate) keeps.
        #[arg(long)]
        sessions_per_principal_max: Option<u64>,
        /// Bytes of one token's session records.
        #[arg(long)]
        session_bytes_per_principal_max: Option<u64>,
        /// Edges the node deletes of one Raft entry may cascade to.
        #[arg(long)]
        cascade_edges_max: Option<u64>,
        /// Bytes one Raft entry may write.
        #[arg(long)]
        entry_write_bytes_max: Option<u64>,
    },
}

fn limits_json(l: &pb::ClusterLimits) -> Json {
    json!({
        "tenants_max": l.tenants_max,
        "sessions_per_principal_max": l.sessions_per_principal_max,
        "session_bytes_per_principal_max": l.session_bytes_per_principal_max,
        "cascade_edges_max": l.cascade_edges_max,
        "entry_write_bytes_max": l.entry_write_bytes_max,
    })
}

fn member(s: &str) -> Result<(u64, String), Status> {
    let bad = || Status::invalid_argument(format!("--member {s:?}: expected ID=HOST:PORT"));
    let (id, addr) = s.split_once('=').ok_or_else(bad)?;
    Ok((id.parse().map_err(|_| bad())?, addr.into()))
}

/// Member `id` as the membership records it: its client address `addr`, and the peer address
/// the server at `addr` reports — after checking it is member `id` (over TLS with `--ca`, the
/// answer comes from a server the cluster's CA signed).
async fn discover(c: &crate::client::Client, id: u64, addr: String) -> Result<pb::Member, Status> {
    let s = c.status_of(&addr).await.map_err(|e| {
        Status::new(
            e.code(),
            format!("asking {addr} for its peer address: {}", e.message()),
        )
    })?;
    if s.member_id != id {
        return Err(Status::invalid_argument(format!(
            "{addr} is member {} (of cluster {:?}), not {id}",
            s.member_id, s.cluster_id
        )));
    }
    if s.peer_addr.is_empty() {
        return Err(Status::failed_precondition(format!(
            "{addr} reports no peer address (a server older than this client?)"
        )));
    }
    Ok(pb::Member {
        id,
        addr,
        peer_addr: s.peer_addr,
    })
}

pub async fn cluster(g: &Global, cmd: ClusterCmd) -> Result<(), Status> {
    let c = client(g)?;
    let first = g.endpoints[0].clone();
    let v = match cmd {
        ClusterCmd::Init {
            members,
            admin_token_file,
        } => {
            let mut found = Vec::new();
            for m in &members {
                let (id, addr) = member(m)?;
                found.push(discover(&c, id, addr).await?);
            }
            let mut cc = c.cluster_client(&first)?;
            let r = cc
                .init(pb::InitRequest { members: found })
                .await?
                .into_inner();
            let mut v = json!({"initialized": first});
            if !r.admin_token.is_empty() {
                v["admin_token_id"] = json!(r.admin_token_id);
                match &admin_token_file {
                    Some(path) => {
                        super::write_secret(path, &r.admin_token)?;
                        v["admin_token_file"] = json!(path.display().to_string());
                    }
                    None => v["admin_token"] = json!(r.admin_token),
                }
            }
            if !r.admin_token_error.is_empty() {
                v["admin_token_error"] = json!(r.admin_token_error);
            }
            v
        }
        ClusterCmd::Status => {
            let mut rows = Vec::new();
            for e in &g.endpoints {
                rows.push(match c.status_of(e).await {
                    Ok(s) => status_json(e, &s),
                    Err(s) => json!({"endpoint": e, "member": Json::Null, "state": format!("unreachable: {}", s.message())}),
                });
            }
            Json::Array(rows)
        }
        ClusterCmd::AddLearner { id, addr, wait } => {
            let req = pb::AddLearnerRequest {
                member: Some(discover(&c, id, addr).await?),
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
            let mut cc = c.cluster_client(&first)?;
            cc.trigger_snapshot(pb::TriggerSnapshotRequest {}).await?;
            json!({"snapshot_triggered_on": first})
        }
        ClusterCmd::Limits(LimitsCmd::Get) => limits_json(&c.get_limits().await?),
        ClusterCmd::Limits(LimitsCmd::Set {
            tenants_max,
            sessions_per_principal_max,
            session_bytes_per_principal_max,
            cascade_edges_max,
            entry_write_bytes_max,
        }) => {
            let req = pb::SetLimitsRequest {
                request_id: None,
                tenants_max,
                sessions_per_principal_max,
                session_bytes_per_principal_max,
                cascade_edges_max,
                entry_write_bytes_max,
            };
            limits_json(&c.set_limits(req).await?)
        }
    };
    print(g, v);
    Ok(())
}
