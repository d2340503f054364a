//! Tenants as pure logic: ids, quotas, usage accounting, rate limits and their token bucket,
//! per-tenant configs and their redaction.
//!
//! Nothing here does I/O. The state machine (`crate::state_machine`) stores these records in its
//! `meta` column family and calls these checks while it applies an entry, so every decision made
//! here is a function of the log alone and identical on every replica.
//!
//! **Invariants**
//! - A tenant id that passes [`validate_tenant_id`] is 1..=[`TENANT_ID_BYTES_MAX`] bytes of
//!   `[a-z0-9_-]`, starting with a letter or digit; it contains no byte the key encoding or the
//!   column-family naming uses as a separator.
//! - [`check_quotas`] rejects a change only when it grows a resource past its limit: a request
//!   that shrinks usage always passes, even while the tenant is over a (lowered) limit.
//! - No read path returns a [`Secret`] in plain text: [`TenantConfig::redacted`] replaces every
//!   secret, and `Secret`'s `Debug` prints `***`.
//! - A stored config holds sealed secrets only ([`Keyring`] seals them before a proposal;
//!   [`TenantConfig::validate`], which apply runs, refuses a plain one).
//!
//! **Caveats**
//! - Storage usage counts logical key + value bytes written by the state machine (indexes
//!   included), not RocksDB's file sizes, which differ between replicas with compaction timing.

mod config;
mod quota;
mod rate;
mod sealed;

pub use config::{
    AgentConfig, AutoEmbedConfig, LlmProvider, LlmProviderConfig, NlqConfig, Secret, TenantConfig,
    ToolConfig,
};
pub use quota::{QuotaExceeded, Quotas, Resource, Usage, check_quotas};
pub use rate::{BYTES_PER_SEC_MIN, Bucket, RATE_MAX, RateLimits};
pub use sealed::{
    KEY_BYTES, KEY_ID_BYTES_MAX, KEYS_MAX, Keyring, KeyringError, NONCE_BYTES, OpenError, Sealed,
    TAG_BYTES, valid_key_id,
};

use serde::{Deserialize, Serialize};

/// The longest tenant id, in bytes.
pub const TENANT_ID_BYTES_MAX: usize = 48;

/// Why a tenant id, quota or config was refused. Deterministic: part of an apply result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum TenantError {
    #[error("invalid tenant id {id:?}: {reason}")]
    InvalidId { id: String, reason: String },
    #[error("tenant {tenant}: invalid config field {field}: {reason}")]
    InvalidConfig {
        tenant: String,
        field: String,
        reason: String,
    },
    #[error(transparent)]
    Quota(#[from] QuotaExceeded),
}

/// Checks that `id` may name a tenant (and so a column family and a key prefix).
pub fn validate_tenant_id(id: &str) -> Result<(), TenantError> {
    let bad = |reason: String| {
        Err(TenantError::InvalidId {
            id: id.chars().take(TENANT_ID_BYTES_MAX + 8).collect(),
            reason,
        })
    };
    if id.is_empty() {
        return bad("empty".into());
    }
    if id.len() > TENANT_ID_BYTES_MAX {
        return bad(format!("{} bytes, limit {TENANT_ID_BYTES_MAX}", id.len()));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
    {
        return bad(format!(
            "character {c:?} not allowed (use a-z, 0-9, '_', '-')"
        ));
    }
    if !id.as_bytes()[0].is_ascii_alphanumeric() {
        return bad("must start with a letter or digit".into());
    }
    Ok(())
}

/// A tenant's registry record, as stored (secrets included). Never returned to clients as is:
/// reads go through [`TenantRecord::info`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub id: String,
    pub quotas: Quotas,
    pub config: TenantConfig,
    pub enabled: bool,
    /// Leader-stamped times (microseconds since the Unix epoch) of creation and last change.
    pub created_micros: i64,
    pub updated_micros: i64,
}

/// A tenant's counters, kept apart from the record because every write changes them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantCounters {
    pub usage: Usage,
    /// The next node and edge id to assign (ids start at 1 and are never reused).
    pub next_node_id: u64,
    pub next_edge_id: u64,
}

impl TenantCounters {
    pub fn new() -> Self {
        TenantCounters {
            usage: Usage::default(),
            next_node_id: 1,
            next_edge_id: 1,
        }
    }
}

/// What a read returns about a tenant: the record with secrets redacted, plus usage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TenantInfo {
    pub id: String,
    pub quotas: Quotas,
    pub usage: Usage,
    pub config: TenantConfig,
    pub enabled: bool,
    pub created_micros: i64,
    pub updated_micros: i64,
}

impl TenantRecord {
    /// The client-facing view: every secret redacted.
    pub fn info(&self, counters: &TenantCounters) -> TenantInfo {
        TenantInfo {
            id: self.id.clone(),
            quotas: self.quotas.clone(),
            usage: counters.usage.clone(),
            config: self.config.redacted(),
            enabled: self.enabled,
            created_micros: self.created_micros,
            updated_micros: self.updated_micros,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_checked_before_they_become_names() {
        for ok in ["t", "t1", "t1a", "acme-prod_2", "0abc", &"a".repeat(48)] {
            assert_eq!(validate_tenant_id(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "T",
            "a.b",
            "a/b",
            "a\0b",
            "-a",
            "_a",
            "é",
            "a b",
            &"a".repeat(49),
        ] {
            let err = validate_tenant_id(bad).unwrap_err();
            assert!(
                matches!(err, TenantError::InvalidId { .. }),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn info_never_carries_a_secret() {
        let config = TenantConfig {
            llm: Some(LlmProviderConfig {
                provider: LlmProvider::OpenAi,
                model: "gpt".into(),
                endpoint: None,
                api_key: Some(Secret::new("sk-live-123")),
            }),
            ..TenantConfig::default()
        };
        let rec = TenantRecord {
            id: "t".into(),
            quotas: Quotas::default(),
            config,
            enabled: true,
            created_micros: 1,
            updated_micros: 2,
        };
        let info = rec.info(&TenantCounters::new());
        let shown = format!("{info:?}");
        assert!(!shown.contains("sk-live-123"), "{shown}");
        assert!(
            !format!("{rec:?}").contains("sk-live-123"),
            "Debug of the record leaks"
        );
        let key = info.config.llm.unwrap().api_key.unwrap();
        assert!(key.is_redacted());
    }
}
