//! `raftgraph tenant …`: create, get, list, quotas, rate limits, enable, delete, tokens.

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
    /// Replace a tenant's throughput limits (an omitted limit becomes unlimited). Past one, a
    /// graph call is refused with RESOURCE_EXHAUSTED and a retry hint.
    RateLimit {
        id: String,
        /// Graph calls per second (each read, write, stream call and scan is one).
        #[arg(long)]
        requests_per_sec: Option<u64>,
        /// Bytes per second: writes' requests and reads' answers, encoded (at least 1024).
        #[arg(long)]
        bytes_per_sec: Option<u64>,
    },
    Enable {
        id: String,
    },
    Disable {
        id: String,
    },
    /// Delete a tenant and all its data (its tokens are revoked).
    Delete {
        id: String,
    },
    /// Bearer tokens: create, revoke, list.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Make a token, shown this once (or written to `--output-file`, mode 0600). TENANT is
    /// required for the read, write and admin roles, and omitted for cluster-admin.
    Create {
        tenant: Option<String>,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Seconds until it expires (0: never).
        #[arg(long, default_value_t = 0)]
        expires_in_secs: u64,
        #[arg(long)]
        output_file: Option<std::path::PathBuf>,
    },
    /// Revoke a token by its id (16 hex digits, as `list` shows).
    Revoke { id: String },
    /// List tokens (a tenant's, or with a cluster-admin token and no TENANT, all).
    List { tenant: Option<String> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    Read,
    Write,
    Admin,
    ClusterAdmin,
}

fn token_json(t: &pb::TokenInfo) -> Json {
    let role = match pb::Role::try_from(t.role) {
        Ok(pb::Role::Read) => "read",
        Ok(pb::Role::Write) => "write",
        Ok(pb::Role::Admin) => "admin",
        Ok(pb::Role::ClusterAdmin) => "cluster-admin",
        _ => "unknown",
    };
    json!({
        "id": t.id,
        "tenant": t.tenant,
        "role": role,
        "created_micros": t.created_micros,
        "expires_micros": t.expires_micros,
        "last4": t.last4,
    })
}

async fn token(g: &Global, c: &crate::client::Client, cmd: TokenCmd) -> Result<Json, Status> {
    Ok(match cmd {
        TokenCmd::Create {
            tenant,
            role,
            expires_in_secs,
            output_file,
        } => {
            let role = match role {
                RoleArg::Read => pb::Role::Read,
                RoleArg::Write => pb::Role::Write,
                RoleArg::Admin => pb::Role::Admin,
                RoleArg::ClusterAdmin => pb::Role::ClusterAdmin,
            };
            let r = c
                .create_token(pb::CreateTokenRequest {
                    tenant: tenant.unwrap_or_default(),
                    role: role as i32,
                    expires_in_seconds: expires_in_secs,
                })
                .await?;
            let mut v = r.info.as_ref().map(token_json).unwrap_or(Json::Null);
            match &output_file {
                Some(path) => {
                    super::write_secret(path, &r.token)?;
                    v["token_file"] = json!(path.display().to_string());
                }
                None => v["token"] = json!(r.token),
            }
            v
        }
        TokenCmd::Revoke { id } => {
            c.revoke_token(pb::RevokeTokenRequest { id: id.clone() })
                .await?;
            json!({"revoked": id})
        }
        TokenCmd::List { tenant } => {
            let mut all = Vec::new();
            let mut after = String::new();
            loop {
                let page = c
                    .list_tokens(pb::ListTokensRequest {
                        tenant: tenant.clone().unwrap_or_default(),
                        after: after.clone(),
                        limit: 0,
                        consistency: consistency(g),
                    })
                    .await?;
                all.extend(page.tokens.iter().map(token_json));
                if page.next.is_empty() {
                    break;
                }
                after = page.next;
            }
            Json::Array(all)
        }
    })
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
        TenantCmd::RateLimit {
            id,
            requests_per_sec,
            bytes_per_sec,
        } => tenant_json(
            &c.set_rate_limits(pb::SetRateLimitsRequest {
                request_id: None,
                id,
                rate_limits: Some(pb::RateLimits {
                    requests_per_second: requests_per_sec,
                    bytes_per_second: bytes_per_sec,
                }),
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
        TenantCmd::Token { cmd } => token(g, &c, cmd).await?,
    };
    print(g, v);
    Ok(())
}
