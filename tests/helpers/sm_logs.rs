//! A seeded generator of request logs: tenants created and deleted (including prefix-colliding
//! ids), graph writes with references, preconditions and quota pressure, retries (repeated
//! sequences) and stale sequences, blank and membership entries.

use std::collections::BTreeMap;

use openraft::entry::RaftEntry;
use openraft::{EntryPayload, Membership};
use raftgraph::command::{
    ClusterLimits, Command, NodeRef, Op, Precondition, Request, Value, WriteRequest,
};
use raftgraph::raft::Entry;
use raftgraph::tenant::{Quotas, TenantConfig};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::sm_harness::log_id;

pub const TENANTS: [&str; 3] = ["t", "t1", "t1a"];

/// `n` entries starting at index 1.
pub fn random_log(seed: u64, n: u64) -> Vec<Entry> {
    let mut g = Gen {
        rng: SmallRng::seed_from_u64(seed),
        seqs: BTreeMap::new(),
        last: BTreeMap::new(),
        creates: Vec::new(),
    };
    (1..=n).map(|index| g.entry(index)).collect()
}

struct Gen {
    rng: SmallRng,
    seqs: BTreeMap<u64, u64>,
    last: BTreeMap<u64, Request>,
    /// Positions of node creates in the write being generated.
    creates: Vec<u32>,
}

impl Gen {
    fn entry(&mut self, index: u64) -> Entry {
        let id = log_id(1 + index / 100, index);
        match self.rng.random_range(0..100) {
            0 => Entry::new_blank(id),
            1 => {
                let m = Membership::new_with_defaults(vec![[1, 2, 3].into()], []);
                Entry {
                    log_id: id,
                    payload: EntryPayload::Membership(m),
                }
            }
            2..=6 => {
                // A retry of some client's last request (same sequence).
                let client = self.rng.random_range(0..6);
                let req = self
                    .last
                    .get(&client)
                    .cloned()
                    .unwrap_or_else(|| self.fresh(client));
                Entry::new_normal(id, req.into())
            }
            7..=8 => {
                // A stale sequence.
                let client = self.rng.random_range(0..6);
                let mut req = self.fresh(client);
                req.sequence = req.sequence.saturating_sub(2).max(1);
                Entry::new_normal(id, req.into())
            }
            _ => {
                let client = self.rng.random_range(0..6);
                let req = self.fresh(client);
                Entry::new_normal(id, req.into())
            }
        }
    }

    fn fresh(&mut self, slot: u64) -> Request {
        // Like a real client after an error, a slot moves on to a new client id now and then
        // (starting again at sequence 1). Often enough that the slot whose last write went to
        // a missing tenant (which records no session) is not mostly refused as expired.
        let client = self.client_of(slot);
        let seq = self.seqs.entry(client).or_insert(0);
        *seq += 1;
        let req = Request::new(
            client,
            *seq,
            1_700_000_000_000_000 + i64::from(self.rng.random_range(0..1000u32)),
            self.command(),
        )
        .unwrap();
        self.last.insert(slot, req.clone());
        if self.rng.random_bool(0.25) {
            *self.seqs.entry(1000 + slot).or_insert(0) += 1;
        }
        req
    }

    fn client_of(&mut self, slot: u64) -> u64 {
        let epoch = self.seqs.get(&(1000 + slot)).copied().unwrap_or(0);
        slot + 10_000 * epoch
    }

    fn tenant(&mut self) -> String {
        TENANTS[self.rng.random_range(0..TENANTS.len())].to_string()
    }

    fn command(&mut self) -> Command {
        let tenant = self.tenant();
        match self.rng.random_range(0..100) {
            0..=7 => Command::CreateTenant {
                tenant,
                quotas: self.quotas(),
                config: TenantConfig::default(),
            },
            8 => Command::DeleteTenant { tenant },
            9..=10 => Command::UpdateQuotas {
                tenant,
                quotas: self.quotas(),
            },
            11 => Command::SetTenantEnabled {
                tenant,
                enabled: self.rng.random_bool(0.85),
            },
            12 => Command::SetLimits(ClusterLimits {
                tenants_max: self.rng.random_range(1..4),
                sessions_per_principal_max: self.rng.random_range(5..12),
                session_bytes_per_principal_max: 64 << 10,
                cascade_edges_max: self.rng.random_range(1..20),
                entry_write_bytes_max: self.rng.random_range(1 << 20..2 << 20),
            }),
            13 => Command::SetRateLimits {
                tenant,
                // Sometimes out of range (0 requests/s): refused alike on every replica.
                limits: raftgraph::tenant::RateLimits {
                    requests_per_sec: self
                        .rng
                        .random_bool(0.5)
                        .then(|| self.rng.random_range(0..1000)),
                    bytes_per_sec: self
                        .rng
                        .random_bool(0.5)
                        .then(|| self.rng.random_range(1024..1 << 20)),
                },
            },
            _ => Command::Write(self.write(tenant)),
        }
    }

    fn quotas(&mut self) -> Quotas {
        if self.rng.random_bool(0.3) {
            return Quotas::unlimited();
        }
        Quotas {
            max_nodes: Some(self.rng.random_range(0..15)),
            max_edges: Some(self.rng.random_range(0..40)),
            max_storage_bytes: Some(self.rng.random_range(0..6_000)),
        }
    }

    fn node_ref(&mut self) -> NodeRef {
        if !self.creates.is_empty() && self.rng.random_bool(0.4) {
            NodeRef::Created(self.creates[self.rng.random_range(0..self.creates.len())])
        } else if self.rng.random_bool(0.02) {
            NodeRef::Created(7) // usually invalid: refused by validation
        } else {
            NodeRef::Id(self.rng.random_range(1..12))
        }
    }

    fn value(&mut self) -> Value {
        match self.rng.random_range(0..5) {
            0 => Value::Int(self.rng.random_range(-5..5)),
            1 => Value::String("v".repeat(self.rng.random_range(0..300))),
            2 => Value::Float(f64::from(self.rng.random_range(0..4u32)) / 2.0),
            3 => Value::List(vec![Value::Bool(true), Value::Null]),
            _ => Value::Vector(vec![0.5; self.rng.random_range(0..16)]),
        }
    }

    fn props(&mut self) -> raftgraph::command::Properties {
        let n = self.rng.random_range(0..3);
        (0..n)
            .map(|_| (format!("p{}", self.rng.random_range(0..4)), self.value()))
            .collect()
    }

    fn labels(&mut self) -> std::collections::BTreeSet<String> {
        ["A", "B", "C"]
            .iter()
            .filter(|_| self.rng.random_bool(0.4))
            .map(|s| s.to_string())
            .collect()
    }

    fn write(&mut self, tenant: String) -> WriteRequest {
        let n = self.rng.random_range(1..6);
        let mut operations = Vec::new();
        self.creates.clear();
        for i in 0..n {
            let op = match self.rng.random_range(0..10) {
                0..=3 => Op::CreateNode {
                    labels: self.labels(),
                    properties: self.props(),
                },
                4..=5 => Op::CreateEdge {
                    source: self.node_ref(),
                    target: self.node_ref(),
                    edge_type: ["x", "y"][self.rng.random_range(0..2)].into(),
                    properties: self.props(),
                },
                6 => Op::DeleteNode {
                    node: self.node_ref(),
                },
                7 => Op::DeleteEdge {
                    edge: self.rng.random_range(1..30),
                },
                8 => Op::UpdateNode {
                    node: self.node_ref(),
                    set: self.props(),
                    remove: ["p0".to_string()].into(),
                },
                _ => Op::AddLabels {
                    node: self.node_ref(),
                    labels: self.labels(),
                },
            };
            if matches!(op, Op::CreateNode { .. }) {
                self.creates.push(i as u32);
            }
            operations.push(op);
        }
        let preconditions = if self.rng.random_bool(0.15) {
            vec![Precondition::NodeExists {
                node: self.rng.random_range(1..10),
                exists: self.rng.random_bool(0.5),
            }]
        } else {
            vec![]
        };
        WriteRequest {
            tenant,
            preconditions,
            operations,
        }
    }
}
