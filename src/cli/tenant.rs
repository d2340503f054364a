//! `raftgraph tenant …`: create, get, list, quotas, config, enable, delete.

use clap::{Args, Subcommand};
use serde_json::{Value as Json, json};
use tonic::Status;

use super::json::*;
use super::{Global, client, consistency, print};
use crate::proto::v1 as pb;

#[derive(Subcommand, Debug)]
pub enum TenantCmd {
    /// Create a tenant (absent quotas: 1,000,000 nodes, 10,000,000 edges, 10 GiB).
    Create {
        id: String,
        #[command(flatten)]
        quotas: QuotaArgs,
    },
    Get {
        id: String,
    },
    List,
    /// Replace a tenant's quotas (an omitted limit becomes unlimited).
    Quotas {
        id: String,
        #[command(flatten)]
        quotas: QuotaArgs,
    },
    Enable {
        id: String,
    },
    Disable {
        id: String,
    },
    /// Delete a tenant and all its data.
    Delete {
        id: String,
    },
}

#[derive(Args, Debug)]
pub struct QuotaArgs {
    #[arg(long)]
    pub max_nodes: Option<u64>,
    #[arg(long)]
    pub max_edges: Option<u64>,
    #[arg(long)]
    pub max_storage_bytes: Option<u64>,
}

fn quotas(q: &QuotaArgs) -> pb::Quotas {
    pb::Quotas {
        max_nodes: q.max_nodes,
        max_edges: q.max_edges,
        max_storage_bytes: q.max_storage_bytes,
    }
}

pub async fn tenant(g: &Global, cmd: TenantCmd) -> Result<(), Status> {
    let c = client(g)?;
    let v = match cmd {
        TenantCmd::Create { id, quotas: q } => {
            let has =
                q.max_nodes.is_some() || q.max_edges.is_some() || q.max_storage_bytes.is_some();
            let t = c
                .create_tenant(pb::CreateTenantRequest {
                    request_id: None,
                    id,
                    quotas: has.then(|| quotas(&q)),
                    config: None,
                })
                .await?;
            tenant_json(&t)
        }
        TenantCmd::Get { id } => tenant_json(
            &c.get_tenant(pb::GetTenantRequest {
                id,
                consistency: consistency(g),
            })
            .await?,
        ),
        TenantCmd::List => {
            let mut all = Vec::new();
            let mut after = String::new();
            loop {
                let page = c
                    .list_tenants(pb::ListTenantsRequest {
                        after: after.clone(),
                        limit: 0,
                        consistency: consistency(g),
                    })
                    .await?;
                all.extend(page.tenants.iter().map(tenant_json));
                if page.next.is_empty() {
                    break;
                }
                after = page.next;
            }
            Json::Array(all)
        }
        TenantCmd::Quotas { id, quotas: q } => tenant_json(
            &c.update_quotas(pb::UpdateQuotasRequest {
                request_id: None,
                id,
                quotas: Some(quotas(&q)),
            })
            .await?,
        ),
        TenantCmd::Enable { id } => tenant_json(
            &c.set_tenant_enabled(pb::SetTenantEnabledRequest {
                request_id: None,
                id,
                enabled: true,
            })
            .await?,
        ),
        TenantCmd::Disable { id } => tenant_json(
            &c.set_tenant_enabled(pb::SetTenantEnabledRequest {
                request_id: None,
                id,
                enabled: false,
            })
            .await?,
        ),
        TenantCmd::Delete { id } => {
            c.delete_tenant(pb::DeleteTenantRequest {
                request_id: None,
                id: id.clone(),
            })
            .await?;
            json!({"deleted": id})
        }
    };
    print(g, v);
    Ok(())
}
