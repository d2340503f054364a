//! Per-tenant configs (auto-embed, NLQ, agent, tools, LLM provider) and secret redaction.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::TenantError;
use super::sealed::{Sealed, TAG_BYTES};

/// The longest string any config field may hold, in bytes.
pub const CONFIG_STRING_BYTES_MAX: usize = 4096;
/// The most entries in any config list (tools, labels, properties).
pub const CONFIG_LIST_ITEMS_MAX: usize = 64;

/// A secret (an API key). Never shown: `Debug` prints `***` and every read path returns
/// [`Secret::Redacted`] in its place. A client sends it [`Secret::Plain`]; the member that
/// proposes it seals it first ([`super::Keyring`]), and apply refuses a plain one, so the log,
/// snapshots and RocksDB hold [`Secret::Sealed`] only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Secret {
    Plain(String),
    /// What reads return: a secret is set, its value withheld.
    Redacted,
    /// Sealed under a cluster key (appended last: bincode names a variant by its position).
    Sealed(Sealed),
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret::Plain(value.into())
    }

    pub fn is_redacted(&self) -> bool {
        matches!(self, Secret::Redacted)
    }

    /// The plain value as a client sent it, before it is sealed (never for a client response);
    /// `None` once sealed or redacted.
    pub fn expose(&self) -> Option<&str> {
        match self {
            Secret::Plain(s) => Some(s),
            Secret::Redacted | Secret::Sealed(_) => None,
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// LLM providers a tenant may configure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LlmProvider {
    OpenAi,
    Ollama,
    Gemini,
    AzureOpenAi,
    Anthropic,
    Mock,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmProviderConfig {
    pub provider: LlmProvider,
    pub model: String,
    pub endpoint: Option<String>,
    pub api_key: Option<Secret>,
}

/// Which labels/properties get embeddings, with which provider and model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoEmbedConfig {
    pub enabled: bool,
    pub provider: LlmProviderConfig,
    pub labels: Vec<String>,
    pub properties: Vec<String>,
    pub dimensions: u32,
}

/// Natural-language queries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NlqConfig {
    pub enabled: bool,
    pub provider: LlmProviderConfig,
    pub system_prompt: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentConfig {
    pub enabled: bool,
    pub provider: LlmProviderConfig,
    pub tools: Vec<String>,
    pub max_iterations: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolConfig {
    pub name: String,
    pub description: String,
    pub enabled: bool,
    pub api_key: Option<Secret>,
}

/// Everything configurable on a tenant. `Default` is "nothing configured".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantConfig {
    pub auto_embed: Option<AutoEmbedConfig>,
    pub nlq: Option<NlqConfig>,
    pub agent: Option<AgentConfig>,
    pub tools: Vec<ToolConfig>,
    pub llm: Option<LlmProviderConfig>,
}

fn redact(s: &Option<Secret>) -> Option<Secret> {
    s.as_ref().map(|_| Secret::Redacted)
}

impl LlmProviderConfig {
    fn redacted(&self) -> Self {
        LlmProviderConfig {
            api_key: redact(&self.api_key),
            ..self.clone()
        }
    }
}

impl TenantConfig {
    /// A copy with every secret replaced by [`Secret::Redacted`].
    pub fn redacted(&self) -> TenantConfig {
        TenantConfig {
            auto_embed: self.auto_embed.as_ref().map(|c| AutoEmbedConfig {
                provider: c.provider.redacted(),
                ..c.clone()
            }),
            nlq: self.nlq.as_ref().map(|c| NlqConfig {
                provider: c.provider.redacted(),
                ..c.clone()
            }),
            agent: self.agent.as_ref().map(|c| AgentConfig {
                provider: c.provider.redacted(),
                ..c.clone()
            }),
            tools: self
                .tools
                .iter()
                .map(|t| ToolConfig {
                    api_key: redact(&t.api_key),
                    ..t.clone()
                })
                .collect(),
            llm: self.llm.as_ref().map(LlmProviderConfig::redacted),
        }
    }

    /// Every secret with its field name (`llm.api_key`, `tools[2].api_key`, …, the names
    /// [`TenantConfig::validate`] reports), in a fixed order: for sealing before a proposal and
    /// re-sealing under a new key.
    pub fn secrets_mut(&mut self) -> Vec<(String, &mut Secret)> {
        let mut out = Vec::new();
        let TenantConfig {
            auto_embed,
            nlq,
            agent,
            tools,
            llm,
        } = self;
        if let Some(c) = auto_embed {
            push(&mut out, "auto_embed.provider", &mut c.provider.api_key);
        }
        if let Some(c) = nlq {
            push(&mut out, "nlq.provider", &mut c.provider.api_key);
        }
        if let Some(c) = agent {
            push(&mut out, "agent.provider", &mut c.provider.api_key);
        }
        for (i, t) in tools.iter_mut().enumerate() {
            push(&mut out, &format!("tools[{i}]"), &mut t.api_key);
        }
        if let Some(c) = llm {
            push(&mut out, "llm", &mut c.api_key);
        }
        out
    }

    /// Bounds every string and list, and refuses a redacted placeholder as a secret to store
    /// (it means a client echoed a read back; storing it would silently drop the real key) and
    /// a plain one (secrets are sealed before they are proposed).
    pub fn validate(&self, tenant: &str) -> Result<(), TenantError> {
        let mut v = Validator { tenant, err: None };
        if let Some(c) = &self.auto_embed {
            v.provider("auto_embed.provider", &c.provider);
            v.list("auto_embed.labels", &c.labels);
            v.list("auto_embed.properties", &c.properties);
        }
        if let Some(c) = &self.nlq {
            v.provider("nlq.provider", &c.provider);
            v.opt_str("nlq.system_prompt", &c.system_prompt);
        }
        if let Some(c) = &self.agent {
            v.provider("agent.provider", &c.provider);
            v.list("agent.tools", &c.tools);
        }
        v.len("tools", self.tools.len());
        for (i, t) in self.tools.iter().enumerate() {
            v.str(&format!("tools[{i}].name"), &t.name);
            v.str(&format!("tools[{i}].description"), &t.description);
            v.secret(&format!("tools[{i}].api_key"), &t.api_key);
        }
        if let Some(c) = &self.llm {
            v.provider("llm", c);
        }
        v.err.map_or(Ok(()), Err)
    }
}

/// Collects the first invalid field, in a fixed order.
struct Validator<'a> {
    tenant: &'a str,
    err: Option<TenantError>,
}

impl Validator<'_> {
    fn fail(&mut self, field: &str, reason: String) {
        if self.err.is_none() {
            self.err = Some(TenantError::InvalidConfig {
                tenant: self.tenant.to_string(),
                field: field.to_string(),
                reason,
            });
        }
    }

    fn str(&mut self, field: &str, s: &str) {
        if s.len() > CONFIG_STRING_BYTES_MAX {
            let reason = format!("{} bytes, limit {CONFIG_STRING_BYTES_MAX}", s.len());
            self.fail(field, reason);
        }
    }

    fn opt_str(&mut self, field: &str, s: &Option<String>) {
        if let Some(s) = s {
            self.str(field, s);
        }
    }

    fn len(&mut self, field: &str, n: usize) {
        if n > CONFIG_LIST_ITEMS_MAX {
            self.fail(field, format!("{n} items, limit {CONFIG_LIST_ITEMS_MAX}"));
        }
    }

    fn list(&mut self, field: &str, items: &[String]) {
        self.len(field, items.len());
        for (i, s) in items.iter().enumerate() {
            self.str(&format!("{field}[{i}]"), s);
        }
    }

    fn secret(&mut self, field: &str, s: &Option<Secret>) {
        match s {
            Some(Secret::Redacted) => self.fail(
                field,
                "a redacted placeholder cannot be stored as a secret".into(),
            ),
            Some(Secret::Plain(_)) => self.fail(
                field,
                "a secret must be sealed before it is proposed (plain secrets never enter the \
                 log)"
                    .into(),
            ),
            Some(Secret::Sealed(s)) => {
                if !super::sealed::valid_key_id(&s.key_id) {
                    self.fail(field, "sealed under an invalid key id".into());
                } else if s.ciphertext.len() < TAG_BYTES {
                    self.fail(field, "sealed value shorter than its tag".into());
                } else if s.ciphertext.len() > CONFIG_STRING_BYTES_MAX + TAG_BYTES {
                    let plain = s.ciphertext.len().saturating_sub(TAG_BYTES);
                    let reason = format!("{plain} bytes, limit {CONFIG_STRING_BYTES_MAX}");
                    self.fail(field, reason);
                }
            }
            None => {}
        }
    }

    fn provider(&mut self, field: &str, p: &LlmProviderConfig) {
        self.str(&format!("{field}.model"), &p.model);
        self.opt_str(&format!("{field}.endpoint"), &p.endpoint);
        self.secret(&format!("{field}.api_key"), &p.api_key);
    }
}

/// Adds `s` to `out` as `{field}.api_key` when it is set.
fn push<'a>(out: &mut Vec<(String, &'a mut Secret)>, field: &str, s: &'a mut Option<Secret>) {
    if let Some(s) = s {
        out.push((format!("{field}.api_key"), s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(key: &str) -> LlmProviderConfig {
        LlmProviderConfig {
            provider: LlmProvider::Anthropic,
            model: "m".into(),
            endpoint: Some("http://x".into()),
            api_key: Some(Secret::new(key)),
        }
    }

    fn full_config() -> TenantConfig {
        TenantConfig {
            auto_embed: Some(AutoEmbedConfig {
                enabled: true,
                provider: provider("k-embed"),
                labels: vec!["Doc".into()],
                properties: vec!["text".into()],
                dimensions: 768,
            }),
            nlq: Some(NlqConfig {
                enabled: true,
                provider: provider("k-nlq"),
                system_prompt: None,
            }),
            agent: Some(AgentConfig {
                enabled: true,
                provider: provider("k-agent"),
                tools: vec!["search".into()],
                max_iterations: 5,
            }),
            tools: vec![ToolConfig {
                name: "search".into(),
                description: "web".into(),
                enabled: true,
                api_key: Some(Secret::new("k-tool")),
            }],
            llm: Some(provider("k-llm")),
        }
    }

    /// [`full_config`] with every secret sealed, as the API stores it.
    fn sealed_config() -> TenantConfig {
        let keyring = super::super::Keyring::parse(&format!("k1 {}\n", "0f".repeat(32))).unwrap();
        let mut c = full_config();
        for (field, slot) in c.secrets_mut() {
            let plain = slot.expose().unwrap().to_string();
            *slot = Secret::Sealed(keyring.seal(&plain, "t", &field));
        }
        c
    }

    #[test]
    fn every_secret_is_listed_by_its_field_and_must_be_sealed() {
        let mut c = full_config();
        let fields: Vec<String> = c.secrets_mut().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "auto_embed.provider.api_key",
                "nlq.provider.api_key",
                "agent.provider.api_key",
                "tools[0].api_key",
                "llm.api_key"
            ]
        );
        let e = c.validate("t").unwrap_err().to_string();
        assert!(
            e.contains("auto_embed.provider.api_key") && e.contains("sealed"),
            "{e}"
        );
        let sealed = sealed_config();
        assert!(sealed.validate("t").is_ok());
        let bytes = crate::codec::encode(&sealed).unwrap();
        for k in ["k-embed", "k-nlq", "k-agent", "k-tool", "k-llm"] {
            assert!(!bytes.windows(k.len()).any(|w| w == k.as_bytes()), "{k}");
        }
    }

    #[test]
    fn redaction_covers_every_secret_field() {
        let c = sealed_config();
        let r = c.redacted();
        let shown = format!("{r:?} {:?}", crate::codec::encode(&r).unwrap());
        for k in ["k-embed", "k-nlq", "k-agent", "k-tool", "k-llm"] {
            assert!(c.validate("t").is_ok());
            assert!(!shown.contains(k), "{k} leaked");
            // The encoded bytes do not contain it either.
            let bytes = crate::codec::encode(&r).unwrap();
            assert!(
                !bytes.windows(k.len()).any(|w| w == k.as_bytes()),
                "{k} in bytes"
            );
        }
        assert!(r.llm.unwrap().api_key.unwrap().is_redacted());
        assert_eq!(r.tools[0].name, "search", "non-secret fields survive");
    }

    #[test]
    fn oversized_fields_and_echoed_placeholders_are_refused_by_name() {
        let mut c = sealed_config();
        c.tools[0].description = "x".repeat(CONFIG_STRING_BYTES_MAX + 1);
        let e = c.validate("acme").unwrap_err();
        assert_eq!(
            e.to_string(),
            "tenant acme: invalid config field tools[0].description: 4097 bytes, limit 4096"
        );
        let mut c = sealed_config();
        c.llm.as_mut().unwrap().api_key = Some(Secret::Redacted);
        let e = c.validate("acme").unwrap_err().to_string();
        assert!(e.contains("llm.api_key"), "{e}");
    }
}
