//! The command-line client: `raftgraph tenant|node|edge|cluster|secrets …`. Each command makes one
//! [`Client`] (a fresh session), runs one call with the client's retries, and prints the answer
//! as a table or as JSON (`--output json`, one document on stdout). Errors go to stderr with
//! the gRPC code and the server's message, and the process exits non-zero.
//!
//! One file per command family: [`tenant()`], [`node()`], [`edge()`], [`cluster()`]; `json.rs`
//! turns answers into JSON and tables.

mod certs;
mod cluster;
mod edge;
mod json;
mod node;
mod secrets;
mod tenant;

use clap::{Args, ValueEnum};
use serde_json::Value as Json;
use tonic::Status;

use crate::client::{Client, ClientOptions, Pool};
use crate::proto::v1 as pb;
use crate::transport::Dialer;

pub use certs::{CertsCmd, certs};
pub use cluster::{ClusterCmd, cluster};
pub use edge::{EdgeCmd, edge};
pub use json::{parse_prop, table};
pub use node::{NodeCmd, node};
pub use secrets::{SecretsCmd, secrets};
pub use tenant::{QuotaArgs, TenantCmd, tenant};

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Options every client command takes.
#[derive(Args, Clone, Debug)]
pub struct Global {
    /// Servers (cluster members) to talk to, `host:port`, comma separated.
    #[arg(
        long,
        global = true,
        env = "RAFTGRAPH_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    )]
    pub endpoints: Vec<String>,
    #[arg(long, global = true, value_enum, default_value = "table")]
    pub output: Output,
    /// Read from the server asked without a read index (may be stale).
    #[arg(long, global = true)]
    pub serializable: bool,
    /// Whole-call deadline in seconds, retries included.
    #[arg(long, global = true, default_value_t = 30)]
    pub timeout: u64,
    /// The cluster's CA certificate (PEM): connect with TLS and trust the servers it signed.
    /// Without it the client speaks plaintext, which a server with TLS on refuses. From the
    /// environment: `RAFTGRAPH_CA`, or else `RAFTGRAPH_CA_CERT`.
    #[arg(long, alias = "ca-cert", global = true, env = "RAFTGRAPH_CA")]
    pub ca: Option<std::path::PathBuf>,
    /// The bearer token every call carries (`raftgraph cluster init` makes the first
    /// cluster-admin token; `raftgraph tenant token create` makes more).
    #[arg(long, global = true, env = "RAFTGRAPH_TOKEN", hide_env_values = true)]
    pub token: Option<crate::client::SecretArg>,
    /// A client certificate and key from the cluster's CA to present (optional).
    #[arg(
        long,
        global = true,
        env = "RAFTGRAPH_CLIENT_CERT",
        requires = "client_key"
    )]
    pub client_cert: Option<std::path::PathBuf>,
    #[arg(
        long,
        global = true,
        env = "RAFTGRAPH_CLIENT_KEY",
        requires = "client_cert"
    )]
    pub client_key: Option<std::path::PathBuf>,
}

/// The dialer `g` asks for: TLS trusting `--ca` (with `--client-cert` when given), or
/// plaintext.
pub fn dialer(g: &Global) -> Result<Dialer, Status> {
    let Some(ca) = &ca(g) else {
        return Ok(Dialer::default());
    };
    let identity = g.client_cert.as_deref().zip(g.client_key.as_deref());
    let config = crate::tls::client_config_from_files(ca, identity)
        .map_err(|e| Status::invalid_argument(format!("--ca/--client-cert: {e}")))?;
    Ok(Dialer::default().with_tls(std::sync::Arc::new(move || config.clone())))
}

/// `--ca`, `RAFTGRAPH_CA`, or else `RAFTGRAPH_CA_CERT` (clap reads one variable per flag).
fn ca(g: &Global) -> Option<std::path::PathBuf> {
    g.ca.clone().or_else(|| {
        std::env::var_os("RAFTGRAPH_CA_CERT")
            .filter(|v| !v.is_empty())
            .map(std::path::PathBuf::from)
    })
}

pub(super) fn client(g: &Global) -> Result<Client, Status> {
    if g.token.is_some() && ca(g).is_none() {
        eprintln!(
            "warning: sending the token over plaintext (no --ca): anyone on the network can read \
             and reuse it"
        );
    }
    Client::new(
        g.endpoints.clone(),
        ClientOptions {
            deadline: std::time::Duration::from_secs(g.timeout.max(1)),
            pool: match &g.token {
                Some(t) => Pool::new(dialer(g)?).with_token(&t.0)?,
                None => Pool::new(dialer(g)?),
            },
            ..Default::default()
        },
    )
}

/// Writes `secret` to a new file at `path`, readable by its owner only (mode 0600, created so:
/// never readable by others, even for a moment), synced. Refuses to overwrite a file.
pub(super) fn write_secret(path: &std::path::Path, secret: &str) -> Result<(), Status> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| {
        Status::failed_precondition(format!(
            "writing the token to {}: {e} (it was made: revoke it by id if it is lost)",
            path.display()
        ))
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(fail)?;
    f.write_all(format!("{secret}\n").as_bytes())
        .map_err(fail)?;
    f.sync_all().map_err(fail)
}

pub(super) fn consistency(g: &Global) -> i32 {
    if g.serializable {
        pb::Consistency::Serializable as i32
    } else {
        pb::Consistency::Linearizable as i32
    }
}

pub(super) fn print(g: &Global, v: Json) {
    match g.output {
        Output::Json => println!("{v}"),
        Output::Table => print!("{}", table(&v)),
    }
}

pub(super) fn node_ref(id: u64) -> Option<pb::NodeRef> {
    Some(pb::NodeRef {
        r#ref: Some(pb::node_ref::Ref::Id(id)),
    })
}

pub(super) async fn write(c: &Client, tenant: &str, op: pb::operation::Op) -> Result<Json, Status> {
    let r = c
        .write(pb::WriteRequest {
            tenant: tenant.into(),
            request_id: None,
            preconditions: vec![],
            operations: vec![pb::Operation { op: Some(op) }],
        })
        .await?;
    Ok(json::results_json(&r))
}
