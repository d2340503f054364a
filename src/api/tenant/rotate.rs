//! `RotateSecrets`: every tenant secret sealed under another key than the leader's current one
//! is opened and sealed again under it, one `ResealSecrets` entry per tenant that has any.
//! Runs on the leader (a follower forwards once): the configs it reads are the ones it
//! replaces, and a secret changed in between is left as it is (apply compares each old value),
//! to be re-sealed by the next run if it needs to be.

use tonic::{Request, Status};

use super::{TenantApi, client};
use crate::api::Caller;
use crate::api::route::{self, Proposed};
use crate::api::status::apply_error;
use crate::command::{ApplyError, Command, Outcome, RESEALED_MAX, Request as Proposal, Resealed};
use crate::proto::v1 as pb;
use crate::state_machine::PAGE_ITEMS_MAX;
use crate::tenant::Secret;

/// Unreadable secrets listed in one answer, at most.
const UNREADABLE_LISTED_MAX: usize = 100;

impl TenantApi {
    pub(super) async fn do_rotate(
        &self,
        request: Request<pb::RotateSecretsRequest>,
        caller: &Caller,
    ) -> Result<pb::RotateSecretsResponse, Status> {
        let via = route::Via::of(&request);
        if let Some(leader) = route::leader_elsewhere(&self.raft, via.forwarded)? {
            return client(&self.router, &leader)
                .await?
                .rotate_secrets(via.forward(request.into_inner()))
                .await
                .map(tonic::Response::into_inner)
                .map_err(route::forwarded_outcome);
        }
        let keyring = self.secrets.keyring()?;
        let current = keyring.current().to_string();
        let mut answer = pb::RotateSecretsResponse {
            key_id: current.clone(),
            ..Default::default()
        };
        let mut after: Option<String> = None;
        loop {
            let page = self
                .reader
                .tenants(after.as_deref(), PAGE_ITEMS_MAX)
                .map_err(|e| crate::api::status::read_error(&e))?;
            for tenant in &page.items {
                let id = &tenant.id;
                let mut config = match self.reader.sealed_config(id) {
                    Ok(c) => c,
                    Err(crate::state_machine::ReadError::Refused(ApplyError::TenantNotFound {
                        ..
                    })) => continue,
                    Err(e) => return Err(crate::api::status::read_error(&e)),
                };
                let mut secrets = Vec::new();
                for (field, slot) in config.secrets_mut() {
                    let Secret::Sealed(old) = &*slot else {
                        continue;
                    };
                    if old.key_id == current {
                        continue;
                    }
                    match keyring.open(old, id, &field) {
                        Ok(plain) => secrets.push(Resealed {
                            new: keyring.seal(&plain, id, &field),
                            old: old.clone(),
                            field,
                        }),
                        Err(e) if answer.unreadable.len() < UNREADABLE_LISTED_MAX => {
                            answer.unreadable.push(format!("{id}/{field}: {e}"));
                        }
                        Err(_) => {}
                    }
                }
                for chunk in secrets.chunks(RESEALED_MAX) {
                    let command = Command::ResealSecrets {
                        tenant: id.clone(),
                        secrets: chunk.to_vec(),
                    };
                    let n = self.reseal(command, caller).await?;
                    answer.secrets_resealed += n;
                    answer.tenants_changed += u64::from(n > 0);
                }
            }
            match page.next {
                Some(next) => {
                    after = Some(String::from_utf8(next).map_err(|_| {
                        Status::internal("a tenant page cursor is not a tenant id")
                    })?);
                }
                None => break,
            }
        }
        Ok(answer)
    }

    /// Proposes one `ResealSecrets` in a session of its own; how many secrets it replaced.
    async fn reseal(&self, command: Command, caller: &Caller) -> Result<u64, Status> {
        let mut id = [0u8; 8];
        (self.random)(&mut id);
        let req = Proposal::new(u64::from_be_bytes(id), 1, (self.clock)(), command)
            .map_err(|e| Status::internal(format!("encoding a reseal: {e}")))?
            .by(caller.principal.via);
        match route::propose(&self.raft, req, true).await? {
            Proposed::Applied(Ok(Outcome::Resealed(n))) => Ok(n),
            // Deleted since it was read: nothing to re-seal.
            Proposed::Applied(Err(ApplyError::TenantNotFound { .. })) => Ok(0),
            Proposed::Applied(Ok(other)) => {
                Err(Status::internal(format!("reseal answered with {other:?}")))
            }
            Proposed::Applied(Err(e)) => Err(apply_error(&e)),
            Proposed::Forward(leader) => Err(Status::unavailable(format!(
                "leadership moved to {} during the rotation; run it again (what was re-sealed \
                 stays)",
                leader.api_addr
            ))),
        }
    }
}
