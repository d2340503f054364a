//! Quotas, usage and the one quota check.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Per-tenant limits; `None` means unlimited. Defaults are the seed's: 1,000,000 nodes,
/// 10,000,000 edges, 10 GiB of logical storage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quotas {
    pub max_nodes: Option<u64>,
    pub max_edges: Option<u64>,
    pub max_storage_bytes: Option<u64>,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            max_nodes: Some(1_000_000),
            max_edges: Some(10_000_000),
            max_storage_bytes: Some(10 << 30),
        }
    }
}

impl Quotas {
    /// No limit on anything.
    pub fn unlimited() -> Self {
        Quotas {
            max_nodes: None,
            max_edges: None,
            max_storage_bytes: None,
        }
    }

    fn limit(&self, r: Resource) -> Option<u64> {
        match r {
            Resource::Nodes => self.max_nodes,
            Resource::Edges => self.max_edges,
            Resource::StorageBytes => self.max_storage_bytes,
        }
    }
}

/// What a tenant holds now. Storage is logical key + value bytes of its column family.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub nodes: u64,
    pub edges: u64,
    pub storage_bytes: u64,
}

impl Usage {
    pub fn get(&self, r: Resource) -> u64 {
        match r {
            Resource::Nodes => self.nodes,
            Resource::Edges => self.edges,
            Resource::StorageBytes => self.storage_bytes,
        }
    }
}

/// A quota-limited resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resource {
    Nodes,
    Edges,
    StorageBytes,
}

impl Resource {
    pub const ALL: [Resource; 3] = [Resource::Nodes, Resource::Edges, Resource::StorageBytes];
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Resource::Nodes => "nodes",
            Resource::Edges => "edges",
            Resource::StorageBytes => "storage_bytes",
        })
    }
}

/// A request would take a tenant past a limit. `used` is before the request, `requested` is
/// what the request adds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error(
    "tenant {tenant}: quota exceeded for {resource}: used {used}, requested {requested}, limit {limit}"
)]
pub struct QuotaExceeded {
    pub tenant: String,
    pub resource: Resource,
    pub used: u64,
    pub requested: u64,
    pub limit: u64,
}

/// Checks the usage a request would leave (`after`) against `quotas`. Only growth is refused:
/// a resource that does not grow passes even above its limit, so a tenant over a lowered quota
/// can still delete. Resources are checked in a fixed order, so the error is deterministic.
pub fn check_quotas(
    tenant: &str,
    quotas: &Quotas,
    before: &Usage,
    after: &Usage,
) -> Result<(), QuotaExceeded> {
    for r in Resource::ALL {
        let (used, now) = (before.get(r), after.get(r));
        let Some(limit) = quotas.limit(r) else {
            continue;
        };
        if now > used && now > limit {
            return Err(QuotaExceeded {
                tenant: tenant.to_string(),
                resource: r,
                used,
                requested: now - used,
                limit,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(nodes: u64, edges: u64, storage_bytes: u64) -> Usage {
        Usage {
            nodes,
            edges,
            storage_bytes,
        }
    }

    #[test]
    fn growth_past_a_limit_is_refused_with_the_figures() {
        let q = Quotas {
            max_nodes: Some(10),
            max_edges: None,
            max_storage_bytes: Some(1000),
        };
        assert!(check_quotas("t", &q, &usage(9, 0, 0), &usage(10, 5, 1000)).is_ok());
        let e = check_quotas("t", &q, &usage(9, 0, 0), &usage(11, 0, 0)).unwrap_err();
        assert_eq!(
            (e.resource, e.used, e.requested, e.limit),
            (Resource::Nodes, 9, 2, 10)
        );
        assert_eq!(
            e.to_string(),
            "tenant t: quota exceeded for nodes: used 9, requested 2, limit 10"
        );
        let e = check_quotas("t", &q, &usage(0, 0, 900), &usage(1, 0, 1001)).unwrap_err();
        assert_eq!(e.resource, Resource::StorageBytes);
        // Unlimited edges.
        assert!(check_quotas("t", &q, &usage(0, 0, 0), &usage(0, u64::MAX, 0)).is_ok());
    }

    #[test]
    fn shrinking_passes_even_over_a_lowered_limit() {
        let q = Quotas {
            max_nodes: Some(1),
            max_edges: Some(1),
            max_storage_bytes: Some(1),
        };
        assert!(check_quotas("t", &q, &usage(5, 5, 500), &usage(4, 5, 400)).is_ok());
        assert!(check_quotas("t", &q, &usage(5, 5, 500), &usage(5, 6, 400)).is_err());
    }
}
