//! The command-line client: `raftgraph tenant|node|edge|cluster …`. Each command makes one
//! [`Client`] (a fresh session), runs one call with the client's retries, and prints the answer
//! as a table or as JSON (`--output json`, one document on stdout). Errors go to stderr with
//! the gRPC code and the server's message, and the process exits non-zero.

use std::collections::BTreeMap;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value as Json, json};
use tonic::Status;

use crate::client::{Client, ClientOptions};
use crate::proto::v1 as pb;

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Options every client command takes.
#[derive(Args, Clone, Debug)]
pub struct Global {
    /// Nodes to talk to, `host:port`, comma separated.
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
    /// Read from the node asked without a read index (may be stale).
    #[arg(long, global = true)]
    pub serializable: bool,
    /// Whole-call deadline in seconds, retries included.
    #[arg(long, global = true, default_value_t = 30)]
    pub timeout: u64,
}

#[derive(Subcommand, Debug)]
pub enum TenantCmd {
    /// Create a tenant (absent quotas: 1,000,000 nodes, 10,000,000 edges, 10 GiB).
    Create {
        id: String,
        #[command(flatten)]
        quotas: QuotaArgs,
    },
    Get {
        id: String,
    },
    List,
    /// Replace a tenant's quotas (an omitted limit becomes unlimited).
    Quotas {
        id: String,
        #[command(flatten)]
        quotas: QuotaArgs,
    },
    Enable {
        id: String,
    },
    Disable {
        id: String,
    },
    /// Delete a tenant and all its data.
    Delete {
        id: String,
    },
}

#[derive(Args, Debug)]
pub struct QuotaArgs {
    #[arg(long)]
    pub max_nodes: Option<u64>,
    #[arg(long)]
    pub max_edges: Option<u64>,
    #[arg(long)]
    pub max_storage_bytes: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// Create a node: `--label L` (repeatable), `--prop key=value` (value as JSON, else text).
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long = "label")]
        labels: Vec<String>,
        #[arg(long = "prop")]
        props: Vec<String>,
    },
    Get {
        #[arg(long)]
        tenant: String,
        id: u64,
    },
    /// Set properties on a node.
    Set {
        #[arg(long)]
        tenant: String,
        id: u64,
        #[arg(long = "prop", required = true)]
        props: Vec<String>,
    },
    /// Delete a node and its edges.
    Delete {
        #[arg(long)]
        tenant: String,
        id: u64,
    },
    /// Nodes with a label (first page, up to --limit).
    ByLabel {
        #[arg(long)]
        tenant: String,
        label: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum EdgeCmd {
    /// Create an edge `--from A --to B --type T`.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: u64,
        #[arg(long = "type")]
        edge_type: String,
        #[arg(long = "prop")]
        props: Vec<String>,
    },
    Get {
        #[arg(long)]
        tenant: String,
        id: u64,
    },
    Delete {
        #[arg(long)]
        tenant: String,
        id: u64,
    },
    /// A node's neighbors (first page, up to --limit).
    Neighbors {
        #[arg(long)]
        tenant: String,
        node: u64,
        #[arg(long, value_parser = ["out", "in"], default_value = "out")]
        direction: String,
        #[arg(long = "type")]
        edge_type: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Bootstrap a new cluster on the first endpoint: `--member 1=127.0.0.1:7001` per voter.
    Init {
        #[arg(long = "member", required = true)]
        members: Vec<String>,
    },
    /// Each endpoint's view: state, term, leader, log positions.
    Status,
    /// Add a learner (`--wait`: until it has caught up).
    AddLearner {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        addr: String,
        #[arg(long)]
        wait: bool,
    },
    /// Make learners voters.
    Promote { ids: Vec<u64> },
    /// Remove members.
    Remove { ids: Vec<u64> },
    /// Make a voter the leader.
    Transfer {
        #[arg(long)]
        to: u64,
    },
    /// Build a snapshot on the first endpoint.
    Snapshot,
}

fn client(g: &Global) -> Result<Client, Status> {
    Client::new(
        g.endpoints.clone(),
        ClientOptions {
            deadline: std::time::Duration::from_secs(g.timeout.max(1)),
            ..Default::default()
        },
    )
}

fn consistency(g: &Global) -> i32 {
    if g.serializable {
        pb::Consistency::Serializable as i32
    } else {
        pb::Consistency::Linearizable as i32
    }
}

/// `key=value`: the value parsed as JSON (numbers, booleans, quoted strings, lists, objects);
/// anything that is not JSON is a string.
pub fn parse_prop(s: &str) -> Result<(String, pb::Value), Status> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| Status::invalid_argument(format!("--prop {s:?}: expected key=value")))?;
    let json = serde_json::from_str(v).unwrap_or_else(|_| Json::String(v.to_string()));
    Ok((k.to_string(), json_to_value(&json)))
}

fn props(list: &[String]) -> Result<BTreeMap<String, pb::Value>, Status> {
    list.iter().map(|p| parse_prop(p)).collect()
}

fn json_to_value(j: &Json) -> pb::Value {
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

fn value_json(v: &pb::Value) -> Json {
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

fn props_json(p: &BTreeMap<String, pb::Value>) -> Json {
    Json::Object(p.iter().map(|(k, v)| (k.clone(), value_json(v))).collect())
}

fn node_json(n: &pb::Node) -> Json {
    json!({"id": n.id, "labels": n.labels, "properties": props_json(&n.properties), "version": n.version})
}

fn edge_json(e: &pb::Edge) -> Json {
    json!({"id": e.id, "source": e.source, "target": e.target, "type": e.edge_type,
           "properties": props_json(&e.properties), "version": e.version})
}

fn limit_json(l: Option<u64>) -> Json {
    l.map_or(json!("unlimited"), |v| json!(v))
}

fn tenant_json(t: &pb::Tenant) -> Json {
    let q = t.quotas.unwrap_or_default();
    let u = t.usage.unwrap_or_default();
    json!({"id": t.id, "enabled": t.enabled,
           "nodes": u.nodes, "max_nodes": limit_json(q.max_nodes),
           "edges": u.edges, "max_edges": limit_json(q.max_edges),
           "storage_bytes": u.storage_bytes, "max_storage_bytes": limit_json(q.max_storage_bytes)})
}

fn results_json(r: &pb::WriteResponse) -> Json {
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

fn membership_json(m: &Option<pb::Membership>) -> Json {
    let m = m.clone().unwrap_or_default();
    let list = |v: &[pb::Member]| -> Vec<Json> {
        v.iter()
            .map(|m| json!({"id": m.id, "addr": m.addr}))
            .collect()
    };
    json!({"voters": list(&m.voters), "learners": list(&m.learners)})
}

fn status_json(addr: &str, s: &pb::StatusResponse) -> Json {
    let pos = |p: &Option<pb::LogPosition>| p.as_ref().map_or(Json::Null, |p| json!(p.index));
    let m = s.membership.clone().unwrap_or_default();
    let ids = |v: &[pb::Member]| {
        v.iter()
            .map(|m| m.id.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    json!({"endpoint": addr, "node": s.node_id, "state": s.state, "term": s.term,
           "leader": s.leader_id, "last_log": s.last_log_index, "applied": pos(&s.applied),
           "snapshot": pos(&s.snapshot), "voters": ids(&m.voters), "learners": ids(&m.learners)})
}

fn cell(v: &Json) -> String {
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

fn print(g: &Global, v: Json) {
    match g.output {
        Output::Json => println!("{v}"),
        Output::Table => print!("{}", table(&v)),
    }
}

fn quotas(q: &QuotaArgs) -> pb::Quotas {
    pb::Quotas {
        max_nodes: q.max_nodes,
        max_edges: q.max_edges,
        max_storage_bytes: q.max_storage_bytes,
    }
}

fn node_ref(id: u64) -> Option<pb::NodeRef> {
    Some(pb::NodeRef {
        r#ref: Some(pb::node_ref::Ref::Id(id)),
    })
}

async fn write(c: &Client, tenant: &str, op: pb::operation::Op) -> Result<Json, Status> {
    let r = c
        .write(pb::WriteRequest {
            tenant: tenant.into(),
            request_id: None,
            preconditions: vec![],
            operations: vec![pb::Operation { op: Some(op) }],
        })
        .await?;
    Ok(results_json(&r))
}

pub async fn tenant(g: &Global, cmd: TenantCmd) -> Result<(), Status> {
    let c = client(g)?;
    let v = match cmd {
        TenantCmd::Create { id, quotas: q } => {
            let has =
                q.max_nodes.is_some() || q.max_edges.is_some() || q.max_storage_bytes.is_some();
            let t = c
                .create_tenant(pb::CreateTenantRequest {
                    request_id: None,
                    id,
                    quotas: has.then(|| quotas(&q)),
                    config: None,
                })
                .await?;
            tenant_json(&t)
        }
        TenantCmd::Get { id } => tenant_json(
            &c.get_tenant(pb::GetTenantRequest {
                id,
                consistency: consistency(g),
            })
            .await?,
        ),
        TenantCmd::List => {
            let mut all = Vec::new();
            let mut after = String::new();
            loop {
                let page = c
                    .list_tenants(pb::ListTenantsRequest {
                        after: after.clone(),
                        limit: 0,
                        consistency: consistency(g),
                    })
                    .await?;
                all.extend(page.tenants.iter().map(tenant_json));
                if page.next.is_empty() {
                    break;
                }
                after = page.next;
            }
            Json::Array(all)
        }
        TenantCmd::Quotas { id, quotas: q } => tenant_json(
            &c.update_quotas(pb::UpdateQuotasRequest {
                request_id: None,
                id,
                quotas: Some(quotas(&q)),
            })
            .await?,
        ),
        TenantCmd::Enable { id } => tenant_json(
            &c.set_tenant_enabled(pb::SetTenantEnabledRequest {
                request_id: None,
                id,
                enabled: true,
            })
            .await?,
        ),
        TenantCmd::Disable { id } => tenant_json(
            &c.set_tenant_enabled(pb::SetTenantEnabledRequest {
                request_id: None,
                id,
                enabled: false,
            })
            .await?,
        ),
        TenantCmd::Delete { id } => {
            c.delete_tenant(pb::DeleteTenantRequest {
                request_id: None,
                id: id.clone(),
            })
            .await?;
            json!({"deleted": id})
        }
    };
    print(g, v);
    Ok(())
}

pub async fn node(g: &Global, cmd: NodeCmd) -> Result<(), Status> {
    use pb::operation::Op;
    let c = client(g)?;
    let v = match cmd {
        NodeCmd::Create {
            tenant,
            labels,
            props: p,
        } => {
            let op = Op::CreateNode(pb::CreateNode {
                labels,
                properties: props(&p)?,
            });
            write(&c, &tenant, op).await?
        }
        NodeCmd::Get { tenant, id } => node_json(
            &c.get_node(pb::GetNodeRequest {
                tenant,
                id,
                consistency: consistency(g),
            })
            .await?,
        ),
        NodeCmd::Set {
            tenant,
            id,
            props: p,
        } => {
            let op = Op::UpdateNode(pb::UpdateNode {
                node: node_ref(id),
                set: props(&p)?,
                remove: vec![],
            });
            write(&c, &tenant, op).await?
        }
        NodeCmd::Delete { tenant, id } => {
            let op = Op::DeleteNode(pb::DeleteNode { node: node_ref(id) });
            write(&c, &tenant, op).await?
        }
        NodeCmd::ByLabel {
            tenant,
            label,
            limit,
        } => {
            let page = c
                .nodes_by_label(pb::NodesByLabelRequest {
                    tenant,
                    label,
                    after: vec![],
                    limit,
                    consistency: consistency(g),
                })
                .await?;
            Json::Array(page.nodes.iter().map(node_json).collect())
        }
    };
    print(g, v);
    Ok(())
}

pub async fn edge(g: &Global, cmd: EdgeCmd) -> Result<(), Status> {
    use pb::operation::Op;
    let c = client(g)?;
    let v = match cmd {
        EdgeCmd::Create {
            tenant,
            from,
            to,
            edge_type,
            props: p,
        } => {
            let op = Op::CreateEdge(pb::CreateEdge {
                source: node_ref(from),
                target: node_ref(to),
                edge_type,
                properties: props(&p)?,
            });
            write(&c, &tenant, op).await?
        }
        EdgeCmd::Get { tenant, id } => edge_json(
            &c.get_edge(pb::GetEdgeRequest {
                tenant,
                id,
                consistency: consistency(g),
            })
            .await?,
        ),
        EdgeCmd::Delete { tenant, id } => {
            write(&c, &tenant, Op::DeleteEdge(pb::DeleteEdge { edge: id })).await?
        }
        EdgeCmd::Neighbors {
            tenant,
            node,
            direction,
            edge_type,
            limit,
        } => {
            let direction = if direction == "in" {
                pb::Direction::In
            } else {
                pb::Direction::Out
            };
            let page = c
                .neighbors(pb::NeighborsRequest {
                    tenant,
                    node,
                    direction: direction as i32,
                    edge_type,
                    after: vec![],
                    limit,
                    consistency: consistency(g),
                })
                .await?;
            Json::Array(
                page.neighbors
                    .iter()
                    .map(|n| json!({"edge": n.edge, "type": n.edge_type, "node": n.node}))
                    .collect(),
            )
        }
    };
    print(g, v);
    Ok(())
}

fn member(s: &str) -> Result<pb::Member, Status> {
    let bad = || Status::invalid_argument(format!("--member {s:?}: expected ID=HOST:PORT"));
    let (id, addr) = s.split_once('=').ok_or_else(bad)?;
    Ok(pb::Member {
        id: id.parse().map_err(|_| bad())?,
        addr: addr.into(),
    })
}

pub async fn cluster(g: &Global, cmd: ClusterCmd) -> Result<(), Status> {
    let c = client(g)?;
    let first = g.endpoints[0].clone();
    let v = match cmd {
        ClusterCmd::Init { members } => {
            let members = members
                .iter()
                .map(|m| member(m))
                .collect::<Result<_, _>>()?;
            let mut cc = crate::proto::v1::cluster_service_client::ClusterServiceClient::connect(
                format!("http://{first}"),
            )
            .await
            .map_err(|e| Status::unavailable(format!("{first}: {e}")))?;
            cc.init(pb::InitRequest { members }).await?;
            json!({"initialized": first})
        }
        ClusterCmd::Status => {
            let mut rows = Vec::new();
            for e in &g.endpoints {
                rows.push(match c.status_of(e).await {
                    Ok(s) => status_json(e, &s),
                    Err(s) => json!({"endpoint": e, "node": Json::Null, "state": format!("unreachable: {}", s.message())}),
                });
            }
            Json::Array(rows)
        }
        ClusterCmd::AddLearner { id, addr, wait } => {
            let req = pb::AddLearnerRequest {
                member: Some(pb::Member { id, addr }),
                wait,
            };
            let r = c
                .cluster(|mut cc| {
                    let req = req.clone();
                    async move { cc.add_learner(req).await }
                })
                .await?;
            membership_json(&r.membership)
        }
        ClusterCmd::Promote { ids } => {
            let r = c
                .cluster(|mut cc| {
                    let ids = ids.clone();
                    async move { cc.promote(pb::PromoteRequest { ids }).await }
                })
                .await?;
            membership_json(&r.membership)
        }
        ClusterCmd::Remove { ids } => {
            let r = c
                .cluster(|mut cc| {
                    let ids = ids.clone();
                    async move { cc.remove(pb::RemoveRequest { ids }).await }
                })
                .await?;
            membership_json(&r.membership)
        }
        ClusterCmd::Transfer { to } => {
            c.cluster(|mut cc| async move {
                cc.transfer_leadership(pb::TransferLeadershipRequest { to })
                    .await
            })
            .await?;
            json!({"transfer_requested_to": to})
        }
        ClusterCmd::Snapshot => {
            let mut cc = crate::proto::v1::cluster_service_client::ClusterServiceClient::connect(
                format!("http://{first}"),
            )
            .await
            .map_err(|e| Status::unavailable(format!("{first}: {e}")))?;
            cc.trigger_snapshot(pb::TriggerSnapshotRequest {}).await?;
            json!({"snapshot_triggered_on": first})
        }
    };
    print(g, v);
    Ok(())
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
