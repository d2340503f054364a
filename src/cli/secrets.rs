//! `raftgraph secrets …`: the keyring tenant secrets are sealed with (`keygen`, local), and
//! re-sealing every secret under its newest key (`rotate`, through the cluster).

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::json;
use tonic::Status;

use super::{Global, client, print};
use crate::tenant::Keyring;

#[derive(Subcommand, Debug)]
pub enum SecretsCmd {
    /// Append a new key to a keyring file (created with mode 0600); the last key seals from
    /// then on. Give every member the same file (`secrets_key_file`) and restart them, then run
    /// `secrets rotate`. Keep the old lines until the rotation is done.
    Keygen {
        /// The new key's id: 1 to 32 characters of A-Z, a-z, 0-9, - and _.
        #[arg(long)]
        id: String,
        #[arg(long)]
        file: PathBuf,
    },
    /// Re-seal every tenant secret under the cluster's current key (cluster-admin).
    Rotate,
}

fn os_random(buf: &mut [u8]) {
    use rand::TryRngCore;
    rand::rngs::OsRng
        .try_fill_bytes(buf)
        .expect("the operating system's random generator failed");
}

/// Appends a new key line to `file`, refusing a file others may read or one that does not
/// parse (so the result always loads).
fn keygen(id: &str, file: &Path) -> Result<serde_json::Value, Status> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let fail = |e: String| Status::failed_precondition(format!("{}: {e}", file.display()));
    let existing = match std::fs::read_to_string(file) {
        Ok(text) => {
            let text = zeroize::Zeroizing::new(text);
            let mode = std::fs::metadata(file)
                .map_err(|e| fail(e.to_string()))?
                .permissions()
                .mode()
                & 0o777;
            if mode & 0o077 != 0 {
                return Err(fail(format!(
                    "mode {mode:o} lets others read the keys; chmod 600 it first"
                )));
            }
            Some(text)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(fail(e.to_string())),
    };
    let line = zeroize::Zeroizing::new(
        Keyring::new_line(id, &os_random)
            .map_err(|e| Status::invalid_argument(format!("--id: {e}")))?,
    );
    let before = existing.as_ref().map_or("", |t| t.as_str());
    let text = zeroize::Zeroizing::new(format!("{before}{}", line.as_str()));
    let ring = Keyring::parse(&text).map_err(|e| fail(e.to_string()))?;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(file)
        .map_err(|e| fail(e.to_string()))?;
    f.write_all(line.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| fail(e.to_string()))?;
    Ok(json!({"file": file.display().to_string(), "current_key": ring.current()}))
}

pub async fn secrets(g: &Global, cmd: SecretsCmd) -> Result<(), Status> {
    let v = match cmd {
        SecretsCmd::Keygen { id, file } => keygen(&id, &file)?,
        SecretsCmd::Rotate => {
            let r = client(g)?.rotate_secrets().await?;
            json!({
                "key_id": r.key_id,
                "tenants_changed": r.tenants_changed,
                "secrets_resealed": r.secrets_resealed,
                "unreadable": r.unreadable,
            })
        }
    };
    print(g, v);
    Ok(())
}
