//! Conversions between the gRPC messages and the state machine's types: the server's edge.
//! Everything from the network is checked here or by `WriteRequest::validate` before it is
//! proposed; a problem becomes `INVALID_ARGUMENT` naming the field.

use std::collections::BTreeMap;
use std::fmt;

use tonic::Status;

use super::secrets::Secrets;
use super::status::{apply_error, invalid};
use crate::command::{
    Command, Edge, Node, NodeRef, Op, OpResult, Precondition, Properties, Request, Value,
    WriteRequest,
};
use crate::proto::v1 as pb;
use crate::state_machine::Neighbor;
use crate::tenant::{
    AgentConfig, AutoEmbedConfig, LlmProvider, LlmProviderConfig, NlqConfig, Quotas, RateLimits,
    Secret, TenantConfig, TenantInfo, ToolConfig,
};

/// Where a value sits in a request: built for every field of every write, formatted only
/// when something is wrong with it (formatting each path up front was an allocation or three
/// per field on the leader's hot path).
#[derive(Clone, Copy)]
enum Field<'a> {
    /// A top-level field.
    Name(&'a str),
    /// `parent.name`
    Member(&'a Field<'a>, &'a str),
    /// `parent[i]`
    Index(&'a Field<'a>, usize),
}

impl fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Name(n) => f.write_str(n),
            Field::Member(p, n) => write!(f, "{p}.{n}"),
            Field::Index(p, i) => write!(f, "{p}[{i}]"),
        }
    }
}

fn bad(field: Field<'_>, reason: &str) -> Status {
    invalid(&field.to_string(), reason)
}

/// A property value from the wire. Recursion is bounded by prost's decoding depth (100);
/// `WriteRequest::validate` then bounds nesting to `VALUE_DEPTH_MAX`.
pub fn value_from_proto(field: &str, v: &pb::Value) -> Result<Value, Status> {
    value_at(Field::Name(field), v)
}

fn value_at(field: Field<'_>, v: &pb::Value) -> Result<Value, Status> {
    use pb::value::Kind;
    let kind = v
        .kind
        .as_ref()
        .ok_or_else(|| bad(field, "value has no kind set"))?;
    Ok(match kind {
        Kind::NullValue(_) => Value::Null,
        Kind::BoolValue(b) => Value::Bool(*b),
        Kind::IntValue(i) => Value::Int(*i),
        Kind::FloatValue(f) => Value::Float(*f),
        Kind::StringValue(s) => Value::String(s.clone()),
        Kind::BytesValue(b) => Value::Bytes(b.clone()),
        Kind::DatetimeMicros(t) => Value::DateTime(*t),
        Kind::DurationNanos(d) => Value::Duration(*d),
        Kind::ListValue(l) => Value::List(
            l.values
                .iter()
                .enumerate()
                .map(|(i, v)| value_at(Field::Index(&field, i), v))
                .collect::<Result<_, _>>()?,
        ),
        Kind::MapValue(m) => Value::Map(props_from_proto(field, &m.entries)?),
        Kind::VectorValue(v) => Value::Vector(v.values.clone()),
    })
}

pub fn value_to_proto(v: &Value) -> pb::Value {
    use pb::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(pb::Null {}),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Int(i) => Kind::IntValue(*i),
        Value::Float(f) => Kind::FloatValue(*f),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Bytes(b) => Kind::BytesValue(b.clone()),
        Value::DateTime(t) => Kind::DatetimeMicros(*t),
        Value::Duration(d) => Kind::DurationNanos(*d),
        Value::List(l) => Kind::ListValue(pb::ValueList {
            values: l.iter().map(value_to_proto).collect(),
        }),
        Value::Map(m) => Kind::MapValue(pb::ValueMap {
            entries: props_to_proto(m),
        }),
        Value::Vector(v) => Kind::VectorValue(pb::FloatVector { values: v.clone() }),
    };
    pb::Value { kind: Some(kind) }
}

fn props_from_proto(
    field: Field<'_>,
    m: &BTreeMap<String, pb::Value>,
) -> Result<Properties, Status> {
    m.iter()
        .map(|(k, v)| Ok((k.clone(), value_at(Field::Member(&field, k), v)?)))
        .collect()
}

fn props_to_proto(m: &Properties) -> BTreeMap<String, pb::Value> {
    m.iter()
        .map(|(k, v)| (k.clone(), value_to_proto(v)))
        .collect()
}

fn node_ref(field: Field<'_>, r: &Option<pb::NodeRef>) -> Result<NodeRef, Status> {
    match r.as_ref().and_then(|r| r.r#ref.as_ref()) {
        Some(pb::node_ref::Ref::Id(id)) => Ok(NodeRef::Id(*id)),
        Some(pb::node_ref::Ref::Created(i)) => Ok(NodeRef::Created(*i)),
        None => Err(bad(field, "node reference not set")),
    }
}

fn op_from_proto(field: Field<'_>, op: &pb::Operation) -> Result<Op, Status> {
    use pb::operation::Op as P;
    let set = |s: &[String]| s.iter().cloned().collect();
    let at = |name| Field::Member(&field, name);
    let op = op
        .op
        .as_ref()
        .ok_or_else(|| bad(field, "no operation set"))?;
    Ok(match op {
        P::CreateNode(c) => Op::CreateNode {
            labels: set(&c.labels),
            properties: props_from_proto(at("properties"), &c.properties)?,
        },
        P::UpdateNode(u) => Op::UpdateNode {
            node: node_ref(at("node"), &u.node)?,
            set: props_from_proto(at("set"), &u.set)?,
            remove: set(&u.remove),
        },
        P::AddLabels(a) => Op::AddLabels {
            node: node_ref(at("node"), &a.node)?,
            labels: set(&a.labels),
        },
        P::RemoveLabels(r) => Op::RemoveLabels {
            node: node_ref(at("node"), &r.node)?,
            labels: set(&r.labels),
        },
        P::DeleteNode(d) => Op::DeleteNode {
            node: node_ref(at("node"), &d.node)?,
        },
        P::CreateEdge(c) => Op::CreateEdge {
            source: node_ref(at("source"), &c.source)?,
            target: node_ref(at("target"), &c.target)?,
            edge_type: c.edge_type.clone(),
            properties: props_from_proto(at("properties"), &c.properties)?,
        },
        P::UpdateEdge(u) => Op::UpdateEdge {
            edge: u.edge,
            set: props_from_proto(at("set"), &u.set)?,
            remove: set(&u.remove),
        },
        P::DeleteEdge(d) => Op::DeleteEdge { edge: d.edge },
    })
}

fn precondition_from_proto(field: Field<'_>, p: &pb::Precondition) -> Result<Precondition, Status> {
    use pb::precondition::Check;
    let check = p.check.as_ref().ok_or_else(|| bad(field, "no check set"))?;
    let value = |v: &Option<pb::Value>| {
        v.as_ref()
            .map(|v| value_at(Field::Member(&field, "value"), v))
            .transpose()
    };
    Ok(match check {
        Check::NodeExists(e) => Precondition::NodeExists {
            node: e.id,
            exists: e.exists,
        },
        Check::EdgeExists(e) => Precondition::EdgeExists {
            edge: e.id,
            exists: e.exists,
        },
        Check::NodeProperty(p) => Precondition::NodePropertyEquals {
            node: p.id,
            key: p.key.clone(),
            value: value(&p.value)?,
        },
        Check::EdgeProperty(p) => Precondition::EdgePropertyEquals {
            edge: p.id,
            key: p.key.clone(),
            value: value(&p.value)?,
        },
        Check::NodeVersion(v) => Precondition::NodeVersion {
            node: v.id,
            version: v.version,
        },
        Check::EdgeVersion(v) => Precondition::EdgeVersion {
            edge: v.id,
            version: v.version,
        },
    })
}

/// The `(client_id, sequence)` of a mutating request, the sequence marked
/// [`crate::command::RESENT`] if the client says so; sequences are 1..2^63.
pub fn request_id(id: Option<&pb::RequestId>) -> Result<(u64, u64), Status> {
    let id = id.ok_or_else(|| invalid("request_id", "required (client_id, sequence)"))?;
    if id.sequence == 0 {
        return Err(invalid("request_id.sequence", "0; sequences start at 1"));
    }
    if id.sequence >= crate::command::RESENT {
        return Err(invalid(
            "request_id.sequence",
            format!("{}; sequences are below 2^63", id.sequence),
        ));
    }
    let resent = if id.resent { crate::command::RESENT } else { 0 };
    Ok((id.client_id, id.sequence | resent))
}

/// The request to propose, fingerprinted here (see [`Request::fingerprint`]).
fn request(id: (u64, u64), timestamp_micros: i64, command: Command) -> Result<Request, Status> {
    Request::new(id.0, id.1, timestamp_micros, command)
        .map_err(|e| Status::internal(format!("client {} seq {}: {e}", id.0, id.1)))
}

/// A write from the wire, checked in full, as the command to propose. `timestamp_micros` is
/// the leader's clock. Takes the message by reference: the server keeps it to forward if this
/// member turns out not to lead, and copying out what the command needs is cheaper than cloning
/// the whole message first.
pub fn write_request(req: &pb::WriteRequest, timestamp_micros: i64) -> Result<Request, Status> {
    let id = request_id(req.request_id.as_ref())?;
    let operations = req
        .operations
        .iter()
        .enumerate()
        .map(|(i, op)| op_from_proto(Field::Index(&Field::Name("operations"), i), op))
        .collect::<Result<_, _>>()?;
    let preconditions = req
        .preconditions
        .iter()
        .enumerate()
        .map(|(i, p)| precondition_from_proto(Field::Index(&Field::Name("preconditions"), i), p))
        .collect::<Result<_, _>>()?;
    let write = WriteRequest {
        tenant: req.tenant.clone(),
        preconditions,
        operations,
    };
    write.validate().map_err(|e| apply_error(&e))?;
    request(id, timestamp_micros, Command::Write(write))
}

pub fn write_response(results: &[OpResult]) -> pb::WriteResponse {
    use pb::op_result::Result as R;
    let results = results
        .iter()
        .map(|r| pb::OpResult {
            result: Some(match r {
                OpResult::NodeCreated(id) => R::NodeCreated(*id),
                OpResult::EdgeCreated(id) => R::EdgeCreated(*id),
                OpResult::Done => R::Done(pb::Null {}),
            }),
        })
        .collect();
    pb::WriteResponse { results }
}

pub fn node_to_proto(n: &Node) -> pb::Node {
    pb::Node {
        id: n.id,
        labels: n.labels.iter().cloned().collect(),
        properties: props_to_proto(&n.properties),
        version: n.version,
    }
}

pub fn edge_to_proto(e: &Edge) -> pb::Edge {
    pb::Edge {
        id: e.id,
        source: e.source,
        target: e.target,
        edge_type: e.edge_type.clone(),
        properties: props_to_proto(&e.properties),
        version: e.version,
    }
}

pub fn neighbor_to_proto(n: &Neighbor) -> pb::Neighbor {
    pb::Neighbor {
        edge: n.edge,
        edge_type: n.edge_type.clone(),
        node: n.node,
    }
}

/// An absent message means the default quotas; an absent limit inside one, unlimited.
pub fn quotas_from_proto(q: Option<pb::Quotas>) -> Quotas {
    match q {
        None => Quotas::default(),
        Some(q) => Quotas {
            max_nodes: q.max_nodes,
            max_edges: q.max_edges,
            max_storage_bytes: q.max_storage_bytes,
        },
    }
}

pub fn quotas_to_proto(q: &Quotas) -> pb::Quotas {
    pb::Quotas {
        max_nodes: q.max_nodes,
        max_edges: q.max_edges,
        max_storage_bytes: q.max_storage_bytes,
    }
}

/// A write-only secret: a key to store, or none. `set` is output-only: a request that claims a
/// key is set without sending it (a read echoed back) is refused, since storing it would drop
/// the real key.
fn secret_from_proto(
    field: &str,
    key: Option<String>,
    set: bool,
) -> Result<Option<Secret>, Status> {
    match key {
        Some(k) if !k.is_empty() => Ok(Some(Secret::new(k))),
        _ if set => Err(invalid(
            field,
            "api_key_set is output-only: send the key to store it, or neither to clear it",
        )),
        _ => Ok(None),
    }
}

fn secret_to_proto(s: &Option<Secret>) -> (Option<String>, bool) {
    // Responses never carry a key, whatever the state machine returned.
    (None, s.is_some())
}

fn provider_from_proto(
    field: &str,
    p: Option<pb::LlmProviderConfig>,
) -> Result<LlmProviderConfig, Status> {
    let p = p.ok_or_else(|| invalid(field, "provider required"))?;
    let provider = match pb::LlmProvider::try_from(p.provider) {
        Ok(pb::LlmProvider::Openai) => LlmProvider::OpenAi,
        Ok(pb::LlmProvider::Ollama) => LlmProvider::Ollama,
        Ok(pb::LlmProvider::Gemini) => LlmProvider::Gemini,
        Ok(pb::LlmProvider::AzureOpenai) => LlmProvider::AzureOpenAi,
        Ok(pb::LlmProvider::Anthropic) => LlmProvider::Anthropic,
        Ok(pb::LlmProvider::Mock) => LlmProvider::Mock,
        Err(_) => {
            return Err(invalid(
                &format!("{field}.provider"),
                format!("unknown provider {}", p.provider),
            ));
        }
    };
    Ok(LlmProviderConfig {
        provider,
        model: p.model,
        endpoint: p.endpoint,
        api_key: secret_from_proto(&format!("{field}.api_key"), p.api_key, p.api_key_set)?,
    })
}

fn provider_to_proto(p: &LlmProviderConfig) -> pb::LlmProviderConfig {
    let provider = match p.provider {
        LlmProvider::OpenAi => pb::LlmProvider::Openai,
        LlmProvider::Ollama => pb::LlmProvider::Ollama,
        LlmProvider::Gemini => pb::LlmProvider::Gemini,
        LlmProvider::AzureOpenAi => pb::LlmProvider::AzureOpenai,
        LlmProvider::Anthropic => pb::LlmProvider::Anthropic,
        LlmProvider::Mock => pb::LlmProvider::Mock,
    };
    let (api_key, api_key_set) = secret_to_proto(&p.api_key);
    pb::LlmProviderConfig {
        provider: provider as i32,
        model: p.model.clone(),
        endpoint: p.endpoint.clone(),
        api_key,
        api_key_set,
    }
}

/// A tenant config from the wire (absent: nothing configured); bounds are checked at apply.
pub fn config_from_proto(c: Option<pb::TenantConfig>) -> Result<TenantConfig, Status> {
    let Some(c) = c else {
        return Ok(TenantConfig::default());
    };
    let auto_embed = c
        .auto_embed
        .map(|a| -> Result<_, Status> {
            Ok(AutoEmbedConfig {
                enabled: a.enabled,
                provider: provider_from_proto("config.auto_embed.provider", a.provider)?,
                labels: a.labels,
                properties: a.properties,
                dimensions: a.dimensions,
            })
        })
        .transpose()?;
    let nlq = c
        .nlq
        .map(|n| -> Result<_, Status> {
            Ok(NlqConfig {
                enabled: n.enabled,
                provider: provider_from_proto("config.nlq.provider", n.provider)?,
                system_prompt: n.system_prompt,
            })
        })
        .transpose()?;
    let agent = c
        .agent
        .map(|a| -> Result<_, Status> {
            Ok(AgentConfig {
                enabled: a.enabled,
                provider: provider_from_proto("config.agent.provider", a.provider)?,
                tools: a.tools,
                max_iterations: a.max_iterations,
            })
        })
        .transpose()?;
    let tools = c
        .tools
        .into_iter()
        .enumerate()
        .map(|(i, t)| -> Result<_, Status> {
            Ok(ToolConfig {
                api_key: secret_from_proto(
                    &format!("config.tools[{i}].api_key"),
                    t.api_key,
                    t.api_key_set,
                )?,
                name: t.name,
                description: t.description,
                enabled: t.enabled,
            })
        })
        .collect::<Result<_, _>>()?;
    let llm = c
        .llm
        .map(|p| provider_from_proto("config.llm", Some(p)))
        .transpose()?;
    Ok(TenantConfig {
        auto_embed,
        nlq,
        agent,
        tools,
        llm,
    })
}

fn config_to_proto(c: &TenantConfig) -> pb::TenantConfig {
    pb::TenantConfig {
        auto_embed: c.auto_embed.as_ref().map(|a| pb::AutoEmbedConfig {
            enabled: a.enabled,
            provider: Some(provider_to_proto(&a.provider)),
            labels: a.labels.clone(),
            properties: a.properties.clone(),
            dimensions: a.dimensions,
        }),
        nlq: c.nlq.as_ref().map(|n| pb::NlqConfig {
            enabled: n.enabled,
            provider: Some(provider_to_proto(&n.provider)),
            system_prompt: n.system_prompt.clone(),
        }),
        agent: c.agent.as_ref().map(|a| pb::AgentConfig {
            enabled: a.enabled,
            provider: Some(provider_to_proto(&a.provider)),
            tools: a.tools.clone(),
            max_iterations: a.max_iterations,
        }),
        tools: c
            .tools
            .iter()
            .map(|t| {
                let (api_key, api_key_set) = secret_to_proto(&t.api_key);
                pb::ToolConfig {
                    name: t.name.clone(),
                    description: t.description.clone(),
                    enabled: t.enabled,
                    api_key,
                    api_key_set,
                }
            })
            .collect(),
        llm: c.llm.as_ref().map(provider_to_proto),
    }
}

/// A tenant as answered, with the throughput limits it has.
pub fn tenant_to_proto(t: &TenantInfo, rates: RateLimits) -> pb::Tenant {
    pb::Tenant {
        id: t.id.clone(),
        quotas: Some(quotas_to_proto(&t.quotas)),
        usage: Some(pb::Usage {
            nodes: t.usage.nodes,
            edges: t.usage.edges,
            storage_bytes: t.usage.storage_bytes,
        }),
        config: Some(config_to_proto(&t.config)),
        enabled: t.enabled,
        created_micros: t.created_micros,
        updated_micros: t.updated_micros,
        rate_limits: Some(pb::RateLimits {
            requests_per_second: rates.requests_per_sec,
            bytes_per_second: rates.bytes_per_sec,
        }),
    }
}

/// A tenant creation, its config's secrets sealed with `secrets`.
pub fn create_tenant(
    req: pb::CreateTenantRequest,
    timestamp_micros: i64,
    secrets: &Secrets,
) -> Result<Request, Status> {
    let id = request_id(req.request_id.as_ref())?;
    let mut config = config_from_proto(req.config)?;
    secrets.seal(&req.id, &mut config)?;
    let command = Command::CreateTenant {
        tenant: req.id,
        quotas: quotas_from_proto(req.quotas),
        config,
    };
    request(id, timestamp_micros, command)
}

pub fn update_quotas(
    req: pb::UpdateQuotasRequest,
    timestamp_micros: i64,
) -> Result<Request, Status> {
    let id = request_id(req.request_id.as_ref())?;
    let quotas = req
        .quotas
        .ok_or_else(|| invalid("quotas", "required (absent limits inside it are unlimited)"))?;
    let command = Command::UpdateQuotas {
        tenant: req.id,
        quotas: quotas_from_proto(Some(quotas)),
    };
    request(id, timestamp_micros, command)
}

/// A change of every rate limit: absent ones become unlimited (checked at apply).
pub fn set_rate_limits(
    req: pb::SetRateLimitsRequest,
    timestamp_micros: i64,
) -> Result<Request, Status> {
    let id = request_id(req.request_id.as_ref())?;
    let r = req.rate_limits.unwrap_or_default();
    let command = Command::SetRateLimits {
        tenant: req.id,
        limits: RateLimits {
            requests_per_sec: r.requests_per_second,
            bytes_per_sec: r.bytes_per_second,
        },
    };
    request(id, timestamp_micros, command)
}

/// A config change, its secrets sealed with `secrets`.
pub fn set_tenant_config(
    req: pb::SetTenantConfigRequest,
    timestamp_micros: i64,
    secrets: &Secrets,
) -> Result<Request, Status> {
    let id = request_id(req.request_id.as_ref())?;
    let mut config = config_from_proto(req.config)?;
    secrets.seal(&req.id, &mut config)?;
    let command = Command::SetTenantConfig {
        tenant: req.id,
        config,
    };
    request(id, timestamp_micros, command)
}

pub fn set_tenant_enabled(
    req: pb::SetTenantEnabledRequest,
    timestamp_micros: i64,
) -> Result<Request, Status> {
    let id = request_id(req.request_id.as_ref())?;
    let command = Command::SetTenantEnabled {
        tenant: req.id,
        enabled: req.enabled,
    };
    request(id, timestamp_micros, command)
}

pub fn delete_tenant(
    req: pb::DeleteTenantRequest,
    timestamp_micros: i64,
) -> Result<Request, Status> {
    let id = request_id(req.request_id.as_ref())?;
    request(
        id,
        timestamp_micros,
        Command::DeleteTenant { tenant: req.id },
    )
}
