//! `raftgraph certs …`: a CA for a cluster, member certificates that name their member, client
//! certificates. PEM files; keys are written 0600 and never printed.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::{Value as Json, json};

use crate::tls::{Generated, generate_ca, generate_client, generate_member, write_pem_files};

#[derive(Subcommand, Debug)]
pub enum CertsCmd {
    /// Create the cluster's CA: `<dir>/ca.pem` and `<dir>/ca.key` (keep the key offline if you
    /// can: whoever holds it can mint members).
    Init {
        #[arg(long, env = "RAFTGRAPH_CLUSTER_ID")]
        cluster_id: String,
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Replace existing files instead of refusing.
        #[arg(long)]
        replace: bool,
    },
    /// A member's certificate, signed by `<dir>/ca.key`: `<dir>/member-<id>.pem` and `.key`.
    /// It names the member (`m<id>.<cluster id>.raftgraph`) and every `--host`: the names and
    /// IP addresses clients dial it by.
    Member {
        #[arg(long, env = "RAFTGRAPH_CLUSTER_ID")]
        cluster_id: String,
        #[arg(long)]
        id: u64,
        #[arg(long = "host")]
        hosts: Vec<String>,
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long, default_value_t = 825)]
        days: u32,
        #[arg(long)]
        replace: bool,
    },
    /// A client certificate, signed by `<dir>/ca.key`: `<dir>/client-<name>.pem` and `.key`.
    Client {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long, default_value_t = 825)]
        days: u32,
        #[arg(long)]
        replace: bool,
    },
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e} (create the CA first: raftgraph certs init)",
            path.display()
        )
    })
}

fn written(dir: &Path, stem: &str, g: &Generated, replace: bool) -> anyhow::Result<Json> {
    let (cert, key) = write_pem_files(dir, stem, g, replace)?;
    Ok(json!({"cert": cert.display().to_string(), "key": key.display().to_string()}))
}

/// Runs one `certs` command; prints the files written as JSON.
pub fn certs(cmd: CertsCmd) -> anyhow::Result<()> {
    #[allow(clippy::disallowed_methods)] // certificate validity starts now; not simulated code
    let now = std::time::SystemTime::now();
    let out = match cmd {
        CertsCmd::Init {
            cluster_id,
            dir,
            days,
            replace,
        } => written(&dir, "ca", &generate_ca(&cluster_id, now, days)?, replace)?,
        CertsCmd::Member {
            cluster_id,
            id,
            hosts,
            dir,
            days,
            replace,
        } => {
            let (ca, key) = (read(&dir.join("ca.pem"))?, read(&dir.join("ca.key"))?);
            let g = generate_member(&ca, &key, &cluster_id, id, &hosts, now, days)?;
            written(&dir, &format!("member-{id}"), &g, replace)?
        }
        CertsCmd::Client {
            name,
            dir,
            days,
            replace,
        } => {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            {
                anyhow::bail!("--name {name:?}: use letters, digits, '_', '.' and '-'");
            }
            let (ca, key) = (read(&dir.join("ca.pem"))?, read(&dir.join("ca.key"))?);
            let g = generate_client(&ca, &key, &name, now, days)?;
            written(&dir, &format!("client-{name}"), &g, replace)?
        }
    };
    println!("{out}");
    Ok(())
}
