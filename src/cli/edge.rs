//! `raftgraph edge …`: create, get, delete, neighbors.

use clap::Subcommand;
use serde_json::{Value as Json, json};
use tonic::Status;

use super::json::*;
use super::{Global, client, consistency, node_ref, print, write};
use crate::proto::v1 as pb;

#[derive(Subcommand, Debug)]
pub enum EdgeCmd {
    /// Create an edge `--from A --to B --type T`.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: u64,
        #[arg(long = "type")]
        edge_type: String,
        #[arg(long = "prop")]
        props: Vec<String>,
    },
    Get {
        #[arg(long)]
        tenant: String,
        id: u64,
    },
    Delete {
        #[arg(long)]
        tenant: String,
        id: u64,
    },
    /// A node's neighbors (first page, up to --limit).
    Neighbors {
        #[arg(long)]
        tenant: String,
        node: u64,
        #[arg(long, value_parser = ["out", "in"], default_value = "out")]
        direction: String,
        #[arg(long = "type")]
        edge_type: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

pub async fn edge(g: &Global, cmd: EdgeCmd) -> Result<(), Status> {
    use pb::operation::Op;
    let c = client(g)?;
    let v = match cmd {
        EdgeCmd::Create {
            tenant,
            from,
            to,
            edge_type,
            props: p,
        } => {
            let op = Op::CreateEdge(pb::CreateEdge {
                source: node_ref(from),
                target: node_ref(to),
                edge_type,
                properties: props(&p)?,
            });
            write(&c, &tenant, op).await?
        }
        EdgeCmd::Get { tenant, id } => edge_json(
            &c.get_edge(pb::GetEdgeRequest {
                tenant,
                id,
                consistency: consistency(g),
            })
            .await?,
        ),
        EdgeCmd::Delete { tenant, id } => {
            write(&c, &tenant, Op::DeleteEdge(pb::DeleteEdge { edge: id })).await?
        }
        EdgeCmd::Neighbors {
            tenant,
            node,
            direction,
            edge_type,
            limit,
        } => {
            let direction = if direction == "in" {
                pb::Direction::In
            } else {
                pb::Direction::Out
            };
            let page = c
                .neighbors(pb::NeighborsRequest {
                    tenant,
                    node,
                    direction: direction as i32,
                    edge_type,
                    after: vec![],
                    limit,
                    consistency: consistency(g),
                })
                .await?;
            Json::Array(
                page.neighbors
                    .iter()
                    .map(|n| json!({"edge": n.edge, "type": n.edge_type, "node": n.node}))
                    .collect(),
            )
        }
    };
    print(g, v);
    Ok(())
}
