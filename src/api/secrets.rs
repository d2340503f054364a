//! Sealing tenant secrets at the edge: a config's plain secrets are sealed under the server's
//! keyring before the request is fingerprinted and proposed, so no plain secret reaches the log.

use std::sync::Arc;

use tonic::Status;

use crate::command::{Command, Request};
use crate::tenant::{Keyring, Secret, TenantConfig};

/// The keyring a server seals with (`secrets_key_file`), if it has one. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Secrets {
    keyring: Option<Arc<Keyring>>,
}

impl Secrets {
    pub fn new(keyring: Option<Keyring>) -> Secrets {
        Secrets {
            keyring: keyring.map(Arc::new),
        }
    }

    /// The keyring, or FAILED_PRECONDITION saying there is none.
    pub fn keyring(&self) -> Result<&Keyring, Status> {
        self.keyring.as_deref().ok_or_else(|| {
            Status::failed_precondition(
                "this server has no secrets key (`secrets_key_file`), so it cannot seal or \
                 re-seal tenant secrets; give every member the same key file",
            )
        })
    }

    /// Seals every plain secret of `config`, tenant `tenant`'s. Without a keyring a config
    /// holding a secret is refused, naming the field.
    pub fn seal(&self, tenant: &str, config: &mut TenantConfig) -> Result<(), Status> {
        for (field, slot) in config.secrets_mut() {
            if let Secret::Plain(plain) = &*slot {
                let keyring = self.keyring().map_err(|s| {
                    Status::failed_precondition(format!("config.{field}: {}", s.message()))
                })?;
                *slot = Secret::Sealed(keyring.seal(plain, tenant, &field));
            }
        }
        Ok(())
    }
}

/// Refuses a request that would put a plain secret into the log (a bug of this server: every
/// path seals first), before it is proposed.
pub fn refuse_plain(req: &Request) -> Result<(), Status> {
    let (Command::CreateTenant { config, .. } | Command::SetTenantConfig { config, .. }) =
        &req.command
    else {
        return Ok(());
    };
    let mut config = config.clone();
    for (field, secret) in config.secrets_mut() {
        if matches!(secret, Secret::Plain(_)) {
            return Err(Status::internal(format!(
                "refusing to propose config.{field} unsealed"
            )));
        }
    }
    Ok(())
}
