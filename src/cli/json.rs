//! Answers as JSON (`--output json`) and as aligned tables, and `--prop key=value` parsing.

use std::collections::BTreeMap;

use serde_json::{Value as Json, json};
use tonic::Status;

use crate::proto::v1 as pb;

/// `key=value`: the value parsed as JSON (numbers, booleans, quoted strings, lists, objects);
/// anything that is not JSON is a string.
pub fn parse_prop(s: &str) -> Result<(String, pb::Value), Status> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| Status::invalid_argument(format!("--prop {s:?}: expected key=value")))?;
    let json = serde_json::from_str(v).unwrap_or_else(|_| Json::String(v.to_string()));
    Ok((k.to_string(), json_to_value(&json)))
}

pub(super) fn props(list: &[String]) -> Result<BTreeMap<String, pb::Value>, Status> {
    list.iter().map(|p| parse_prop(p)).collect()
}

pub(super) fn json_to_value(j: &Json) -> pb::Value {
    use pb::value::Kind;
    let kind = match j {
        Json::Null => Kind::NullValue(pb::Null {}),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Kind::IntValue(i),
            None => Kind::FloatValue(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(a) => Kind::ListValue(pb::ValueList {
            values: a.iter().map(json_to_value).collect(),
        }),
        Json::Object(o) => Kind::MapValue(pb::ValueMap {
            entries: o
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }),
    };
    pb::Value { kind: Some(kind) }
}

pub(super) fn value_json(v: &pb::Value) -> Json {
    use pb::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::IntValue(i)) => json!(i),
        Some(Kind::FloatValue(f)) => json!(f),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::BytesValue(b)) => json!({ "bytes": b.len() }),
        Some(Kind::DatetimeMicros(t)) => json!({ "datetime_micros": t }),
        Some(Kind::DurationNanos(d)) => json!({ "duration_nanos": d }),
        Some(Kind::ListValue(l)) => Json::Array(l.values.iter().map(value_json).collect()),
        Some(Kind::MapValue(m)) => Json::Object(
            m.entries
                .iter()
                .map(|(k, v)| (k.clone(), value_json(v)))
                .collect(),
        ),
        Some(Kind::VectorValue(f)) => json!(f.values),
    }
}

pub(super) fn props_json(p: &BTreeMap<String, pb::Value>) -> Json {
    Json::Object(p.iter().map(|(k, v)| (k.clone(), value_json(v))).collect())
}

pub(super) fn node_json(n: &pb::Node) -> Json {
    json!({"id": n.id, "labels": n.labels, "properties": props_json(&n.properties), "version": n.version})
}

pub(super) fn edge_json(e: &pb::Edge) -> Json {
    json!({"id": e.id, "source": e.source, "target": e.target, "type": e.edge_type,
           "properties": props_json(&e.properties), "version": e.version})
}

pub(super) fn limit_json(l: Option<u64>) -> Json {
    l.map_or(json!("unlimited"), |v| json!(v))
}

pub(super) fn tenant_json(t: &pb::Tenant) -> Json {
    let q = t.quotas.unwrap_or_default();
    let u = t.usage.unwrap_or_default();
    let r = t.rate_limits.unwrap_or_default();
    json!({"id": t.id, "enabled": t.enabled,
           "nodes": u.nodes, "max_nodes": limit_json(q.max_nodes),
           "edges": u.edges, "max_edges": limit_json(q.max_edges),
           "storage_bytes": u.storage_bytes, "max_storage_bytes": limit_json(q.max_storage_bytes),
           "requests_per_second": limit_json(r.requests_per_second),
           "bytes_per_second": limit_json(r.bytes_per_second)})
}

pub(super) fn results_json(r: &pb::WriteResponse) -> Json {
    use pb::op_result::Result as R;
    Json::Array(
        r.results
            .iter()
            .map(|r| match &r.result {
                Some(R::NodeCreated(id)) => json!({"result": "node created", "id": id}),
                Some(R::EdgeCreated(id)) => json!({"result": "edge created", "id": id}),
                _ => json!({"result": "done"}),
            })
            .collect(),
    )
}

pub(super) fn membership_json(m: &Option<pb::Membership>) -> Json {
    let m = m.clone().unwrap_or_default();
    let list = |v: &[pb::Member]| -> Vec<Json> {
        v.iter()
            .map(|m| json!({"id": m.id, "addr": m.addr}))
            .collect()
    };
    json!({"voters": list(&m.voters), "learners": list(&m.learners)})
}

pub(super) fn status_json(addr: &str, s: &pb::StatusResponse) -> Json {
    let pos = |p: &Option<pb::LogPosition>| p.as_ref().map_or(Json::Null, |p| json!(p.index));
    let m = s.membership.clone().unwrap_or_default();
    let ids = |v: &[pb::Member]| {
        v.iter()
            .map(|m| m.id.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    json!({"endpoint": addr, "member": s.member_id, "state": s.state, "term": s.term,
           "leader": s.leader_id, "last_log": s.last_log_index, "applied": pos(&s.applied),
           "snapshot": pos(&s.snapshot), "voters": ids(&m.voters), "learners": ids(&m.learners)})
}

pub(super) fn cell(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Renders JSON as a table: a list of objects as rows under their keys, one object as
/// key/value rows.
pub fn table(v: &Json) -> String {
    let rows: Vec<&serde_json::Map<String, Json>> = match v {
        Json::Array(a) => a.iter().filter_map(|r| r.as_object()).collect(),
        Json::Object(o) => {
            let w = o.keys().map(|k| k.len()).max().unwrap_or(0);
            return o
                .iter()
                .map(|(k, v)| format!("{k:<w$}  {}\n", cell(v)))
                .collect();
        }
        other => return format!("{}\n", cell(other)),
    };
    if rows.is_empty() {
        return "(none)\n".into();
    }
    let cols: Vec<&String> = rows[0].keys().collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| cols.iter().map(|c| cell(&r[c.as_str()])).collect())
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |vals: Vec<&str>| {
        let mut s: String = vals
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}  "))
            .collect();
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(cols.iter().map(|c| c.as_str()).collect());
    for r in &cells {
        out.push_str(&line(r.iter().map(|c| c.as_str()).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn props_parse_as_json_or_else_text() {
        use pb::value::Kind;
        let kind = |s: &str| parse_prop(s).unwrap().1.kind.unwrap();
        assert_eq!(kind("n=1815"), Kind::IntValue(1815));
        assert_eq!(kind("f=1.5"), Kind::FloatValue(1.5));
        assert_eq!(kind("b=true"), Kind::BoolValue(true));
        assert_eq!(kind("s=Ada"), Kind::StringValue("Ada".into()));
        assert_eq!(kind("q=\"42\""), Kind::StringValue("42".into()));
        assert_eq!(kind("e="), Kind::StringValue(String::new()));
        assert!(matches!(kind("l=[1,2]"), Kind::ListValue(l) if l.values.len() == 2));
        assert_eq!(parse_prop("k=a=b").unwrap().0, "k");
        let e = parse_prop("novalue").unwrap_err();
        assert!(e.message().contains("key=value"), "{}", e.message());
    }

    #[test]
    fn tables_align_columns_and_show_objects_as_rows() {
        let t = table(&json!([{"id": 1, "name": "Ada"}, {"id": 22, "name": null}]));
        assert_eq!(t, "id  name\n1   Ada\n22  -\n");
        let t = table(&json!({"id": "demo", "enabled": true}));
        assert_eq!(t, "id       demo\nenabled  true\n");
        assert_eq!(table(&json!([])), "(none)\n");
    }
}
