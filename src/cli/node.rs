//! `raftgraph node …`: graph nodes (vertices) — create, get, update, delete, by label.

use clap::Subcommand;
use serde_json::Value as Json;
use tonic::Status;

use super::json::*;
use super::{Global, client, consistency, node_ref, print, write};
use crate::proto::v1 as pb;

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// Create a node: `--label L` (repeatable), `--prop key=value` (value as JSON, else text).
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long = "label")]
        labels: Vec<String>,
        #[arg(long = "prop")]
        props: Vec<String>,
    },
    Get {
        #[arg(long)]
        tenant: String,
        id: u64,
    },
    /// Set properties on a node.
    Set {
        #[arg(long)]
        tenant: String,
        id: u64,
        #[arg(long = "prop", required = true)]
        props: Vec<String>,
    },
    /// Delete a node and its edges.
    Delete {
        #[arg(long)]
        tenant: String,
        id: u64,
    },
    /// Nodes with a label (first page, up to --limit).
    ByLabel {
        #[arg(long)]
        tenant: String,
        label: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

pub async fn node(g: &Global, cmd: NodeCmd) -> Result<(), Status> {
    use pb::operation::Op;
    let c = client(g)?;
    let v = match cmd {
        NodeCmd::Create {
            tenant,
            labels,
            props: p,
        } => {
            let op = Op::CreateNode(pb::CreateNode {
                labels,
                properties: props(&p)?,
            });
            write(&c, &tenant, op).await?
        }
        NodeCmd::Get { tenant, id } => node_json(
            &c.get_node(pb::GetNodeRequest {
                tenant,
                id,
                consistency: consistency(g),
            })
            .await?,
        ),
        NodeCmd::Set {
            tenant,
            id,
            props: p,
        } => {
            let op = Op::UpdateNode(pb::UpdateNode {
                node: node_ref(id),
                set: props(&p)?,
                remove: vec![],
            });
            write(&c, &tenant, op).await?
        }
        NodeCmd::Delete { tenant, id } => {
            let op = Op::DeleteNode(pb::DeleteNode { node: node_ref(id) });
            write(&c, &tenant, op).await?
        }
        NodeCmd::ByLabel {
            tenant,
            label,
            limit,
        } => {
            let page = c
                .nodes_by_label(pb::NodesByLabelRequest {
                    tenant,
                    label,
                    after: vec![],
                    limit,
                    consistency: consistency(g),
                })
                .await?;
            Json::Array(page.nodes.iter().map(node_json).collect())
        }
    };
    print(g, v);
    Ok(())
}
