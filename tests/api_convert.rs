//! The gRPC edge: every message converts to the state machine's types and back without loss,
//! anything missing or malformed is INVALID_ARGUMENT naming the field, and no response carries
//! a secret.

use std::collections::BTreeMap;

use prost::Message;
use raftgraph::api::Secrets;
use raftgraph::api::convert;
use raftgraph::command::{Command, NodeRef, Op, Value};
use raftgraph::proto::v1 as pb;
use raftgraph::tenant::{
    LlmProvider, LlmProviderConfig, Quotas, Secret, TenantConfig, TenantInfo, Usage,
};
use tonic::Code;

fn pv(kind: pb::value::Kind) -> pb::Value {
    pb::Value { kind: Some(kind) }
}

fn all_values() -> Value {
    Value::List(vec![
        Value::Null,
        Value::Bool(true),
        Value::Int(-7),
        Value::Float(2.5),
        Value::String("s".into()),
        Value::Bytes(vec![0, 255]),
        Value::DateTime(1_700_000_000_000_000),
        Value::Duration(-5),
        Value::Map(BTreeMap::from([(
            "k".to_string(),
            Value::Vector(vec![0.5, -1.0]),
        )])),
    ])
}

fn id(client_id: u64, sequence: u64) -> Option<pb::RequestId> {
    Some(pb::RequestId {
        client_id,
        sequence,
        resent: false,
    })
}

fn create_node(props: BTreeMap<String, pb::Value>) -> pb::Operation {
    pb::Operation {
        op: Some(pb::operation::Op::CreateNode(pb::CreateNode {
            labels: vec!["L".into()],
            properties: props,
        })),
    }
}

#[test]
fn every_value_kind_round_trips() {
    let v = all_values();
    let wire = convert::value_to_proto(&v);
    // Through the wire encoding too.
    let decoded = pb::Value::decode(wire.encode_to_vec().as_slice()).unwrap();
    assert_eq!(convert::value_from_proto("v", &decoded).unwrap(), v);
}

#[test]
fn a_write_converts_with_the_leader_timestamp_and_references() {
    let req = pb::WriteRequest {
        tenant: "t".into(),
        request_id: id(7, 3),
        preconditions: vec![pb::Precondition {
            check: Some(pb::precondition::Check::NodeProperty(pb::PropertyEquals {
                id: 1,
                key: "k".into(),
                value: None,
            })),
        }],
        operations: vec![
            create_node(BTreeMap::from([(
                "a".to_string(),
                convert::value_to_proto(&all_values()),
            )])),
            pb::Operation {
                op: Some(pb::operation::Op::DeleteNode(pb::DeleteNode {
                    node: Some(pb::NodeRef {
                        r#ref: Some(pb::node_ref::Ref::Created(0)),
                    }),
                })),
            },
        ],
    };
    let r = convert::write_request(&req, 42).unwrap();
    assert_eq!((r.client_id, r.sequence, r.timestamp_micros), (7, 3, 42));
    let Command::Write(w) = r.command else {
        panic!()
    };
    assert_eq!(
        w.operations[1],
        Op::DeleteNode {
            node: NodeRef::Created(0)
        }
    );
    let Op::CreateNode { properties, .. } = &w.operations[0] else {
        panic!()
    };
    assert_eq!(properties["a"], all_values());
}

#[test]
fn missing_or_malformed_fields_are_refused_by_name() {
    let base = || pb::WriteRequest {
        tenant: "t".into(),
        request_id: id(1, 1),
        preconditions: vec![],
        operations: vec![create_node(BTreeMap::new())],
    };
    let refused = |req: pb::WriteRequest| {
        let s = convert::write_request(&req, 0).unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        s.message().to_string()
    };
    let mut r = base();
    r.request_id = None;
    assert!(refused(r).contains("request_id"));
    let mut r = base();
    r.request_id = id(1, 0);
    assert!(refused(r).contains("request_id.sequence"));
    let mut r = base();
    r.operations.push(pb::Operation { op: None });
    assert!(refused(r).contains("operations[1]: no operation set"));
    let mut r = base();
    r.operations = vec![pb::Operation {
        op: Some(pb::operation::Op::AddLabels(pb::AddLabels {
            node: None,
            labels: vec![],
        })),
    }];
    assert!(refused(r).contains("operations[0].node"));
    // A value without a kind, nested in a map: the path names it.
    let inner = pv(pb::value::Kind::MapValue(pb::ValueMap {
        entries: BTreeMap::from([("b".to_string(), pb::Value { kind: None })]),
    }));
    let r = pb::WriteRequest {
        operations: vec![create_node(BTreeMap::from([("a".to_string(), inner)]))],
        ..base()
    };
    assert!(refused(r).contains("operations[0].properties.a.b"));
    // Bounds from WriteRequest::validate, with the tenant and sub-field named.
    let mut r = base();
    r.operations = vec![pb::Operation {
        op: Some(pb::operation::Op::CreateNode(pb::CreateNode {
            labels: vec!["x".repeat(300)],
            properties: BTreeMap::new(),
        })),
    }];
    let m = refused(r);
    assert!(
        m.contains("tenant t: operations[0].labels") && m.contains("limit 256"),
        "{m}"
    );
    let mut r = base();
    r.tenant = "Bad/Id".into();
    assert!(refused(r).contains("invalid tenant id"));
}

#[test]
fn decoding_bounds_the_nesting_of_values() {
    // prost refuses messages nested past its recursion limit (100) before conversion recurses.
    let mut v = pv(pb::value::Kind::IntValue(1));
    for _ in 0..150 {
        v = pv(pb::value::Kind::ListValue(pb::ValueList {
            values: vec![v],
        }));
    }
    assert!(pb::Value::decode(v.encode_to_vec().as_slice()).is_err());
    // Within prost's limit but past ours (16): converted, then refused by validation.
    let mut v = pv(pb::value::Kind::IntValue(1));
    for _ in 0..20 {
        v = pv(pb::value::Kind::ListValue(pb::ValueList {
            values: vec![v],
        }));
    }
    let req = pb::WriteRequest {
        tenant: "t".into(),
        request_id: id(1, 1),
        preconditions: vec![],
        operations: vec![create_node(BTreeMap::from([("a".to_string(), v)]))],
    };
    let s = convert::write_request(&req, 0).unwrap_err();
    assert!(
        s.message().contains("nested deeper than 16"),
        "{}",
        s.message()
    );
}

fn llm(key: Option<Secret>) -> LlmProviderConfig {
    LlmProviderConfig {
        provider: LlmProvider::Gemini,
        model: "m".into(),
        endpoint: None,
        api_key: key,
    }
}

#[test]
fn tenants_go_out_without_secrets_and_echoed_reads_are_refused() {
    // Even if a plain secret reached the edge, the response would not carry it.
    let info = TenantInfo {
        id: "t".into(),
        quotas: Quotas::default(),
        usage: Usage::default(),
        config: TenantConfig {
            llm: Some(llm(Some(Secret::new("sk-secret")))),
            ..TenantConfig::default()
        },
        enabled: true,
        created_micros: 1,
        updated_micros: 2,
    };
    let wire = convert::tenant_to_proto(&info, raftgraph::tenant::RateLimits::UNLIMITED);
    let bytes = wire.encode_to_vec();
    assert!(!bytes.windows(9).any(|w| w == b"sk-secret"));
    let out = wire.config.clone().unwrap().llm.unwrap();
    assert_eq!((out.api_key, out.api_key_set), (None, true));

    // Sending that config back (api_key_set without a key) is refused, not stored as "no key".
    let req = pb::SetTenantConfigRequest {
        request_id: id(1, 1),
        id: "t".into(),
        config: wire.config,
    };
    let s = convert::set_tenant_config(req, 0, &Secrets::default()).unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(
        s.message().contains("config.llm.api_key"),
        "{}",
        s.message()
    );

    // A key sent is stored; an unknown provider number is refused.
    let mut p = convert::tenant_to_proto(&info, raftgraph::tenant::RateLimits::UNLIMITED)
        .config
        .unwrap()
        .llm
        .unwrap();
    p.api_key = Some("sk-new".into());
    let cfg = pb::TenantConfig {
        llm: Some(p.clone()),
        ..Default::default()
    };
    let c = convert::config_from_proto(Some(cfg)).unwrap();
    assert_eq!(c.llm.unwrap().api_key.unwrap().expose(), Some("sk-new"));
    p.provider = 99;
    let cfg = pb::TenantConfig {
        llm: Some(p),
        ..Default::default()
    };
    let s = convert::config_from_proto(Some(cfg)).unwrap_err();
    assert!(
        s.message().contains("unknown provider 99"),
        "{}",
        s.message()
    );
}

#[test]
fn absent_quotas_mean_defaults_and_absent_limits_mean_unlimited() {
    assert_eq!(convert::quotas_from_proto(None), Quotas::default());
    let q = pb::Quotas {
        max_nodes: Some(5),
        max_edges: None,
        max_storage_bytes: None,
    };
    let q = convert::quotas_from_proto(Some(q));
    assert_eq!(
        (q.max_nodes, q.max_edges, q.max_storage_bytes),
        (Some(5), None, None)
    );
    let req = pb::UpdateQuotasRequest {
        request_id: id(1, 1),
        id: "t".into(),
        quotas: None,
    };
    assert_eq!(
        convert::update_quotas(req, 0).unwrap_err().code(),
        Code::InvalidArgument
    );
}

/// A config's secrets are sealed at the edge, before the request is fingerprinted: the
/// request that reaches the log holds no plain secret, a retry seals to the same bytes (the
/// same fingerprint, so exactly-once holds), and a server without a key refuses, naming the
/// field.
#[test]
fn secrets_are_sealed_before_the_request_is_made() {
    use raftgraph::tenant::Keyring;
    let keyring = Keyring::parse(&format!("k1 {}\n", "42".repeat(32))).unwrap();
    let secrets = Secrets::new(Some(keyring));
    let p = pb::LlmProviderConfig {
        provider: pb::LlmProvider::Gemini as i32,
        model: "m".into(),
        api_key: Some("sk-PLANTED-7f3a".into()),
        ..Default::default()
    };
    let req = pb::SetTenantConfigRequest {
        request_id: id(1, 1),
        id: "t".into(),
        config: Some(pb::TenantConfig {
            llm: Some(p),
            ..Default::default()
        }),
    };
    let a = convert::set_tenant_config(req.clone(), 0, &secrets).unwrap();
    let bytes = raftgraph::codec::encode(&a).unwrap();
    assert!(!bytes.windows(15).any(|w| w == b"sk-PLANTED-7f3a"));
    let Command::SetTenantConfig { config, .. } = &a.command else {
        panic!("{:?}", a.command)
    };
    let Some(Secret::Sealed(s)) = &config.llm.as_ref().unwrap().api_key else {
        panic!("not sealed: {config:?}")
    };
    assert_eq!(s.key_id, "k1");
    let b = convert::set_tenant_config(req.clone(), 5, &secrets).unwrap();
    assert_eq!(a.fingerprint, b.fingerprint, "a retry is the same request");
    let e = convert::set_tenant_config(req, 0, &Secrets::default()).unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("config.llm.api_key"),
        "{}",
        e.message()
    );
}
