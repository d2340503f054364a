//! Tenant lifecycle under the faults: a client creates a scratch tenant, writes a node into it
//! and deletes it, over and over (a column family created, written and dropped each time,
//! across crashes, power loss and snapshots). `check` then holds the final tenant list to what
//! the calls were answered.

use std::cell::RefCell;
use std::rc::Rc;

use raftgraph::proto::v1 as pb;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tonic::Code;

use super::workload::{all_endpoints, client, create_one, pause, wait_setup};
use super::world::{Shared, now_ms};

/// Scratch tenants are named `scratch<n>`, never reused.
pub const PREFIX: &str = "scratch";

/// One lifecycle call and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TenantOp {
    /// `Some(true)`: created; `None`: unknown (no other answer is expected).
    Create(String, Option<bool>),
    /// `Some(true)`: deleted; `Some(false)`: answered not found (it is gone); `None`: unknown.
    Delete(String, Option<bool>),
}

pub async fn cycle(shared: Rc<RefCell<Shared>>, seed: u64, work_end_ms: u64) -> turmoil::Result {
    wait_setup(&shared).await;
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x7e4a);
    let mut process = u64::MAX / 2;
    let mut c = client(all_endpoints(), process, seed ^ process);
    let mut n = 0;
    // The scratch tenant that exists, as far as this task knows.
    let mut live: Option<String> = None;
    while now_ms() < work_end_ms {
        pause(1_000..4_000, &mut rng).await;
        let (record, unknown) = match live.take() {
            None => {
                n += 1;
                let name = format!("{PREFIX}{n}");
                let r = c
                    .create_tenant(pb::CreateTenantRequest {
                        id: name.clone(),
                        ..Default::default()
                    })
                    .await;
                let got = match &r {
                    Ok(_) => Some(true),
                    Err(_) => None,
                };
                if got == Some(true) {
                    live = Some(name.clone());
                }
                (TenantOp::Create(name, got), got.is_none())
            }
            Some(name) => {
                // A node in it first: its column family holds data when it is dropped.
                let _ = c.write(create_one(&name, "x")).await;
                let r = c
                    .delete_tenant(pb::DeleteTenantRequest {
                        id: name.clone(),
                        ..Default::default()
                    })
                    .await;
                let got = match &r {
                    Ok(_) => Some(true),
                    Err(s) if s.code() == Code::NotFound => Some(false),
                    Err(_) => None,
                };
                if got.is_none() {
                    // Try the delete again next time.
                    live = Some(name.clone());
                }
                (TenantOp::Delete(name, got), got.is_none())
            }
        };
        let mut s = shared.borrow_mut();
        s.trace(format!("tenants: {record:?}"));
        s.tenant_ops.push(record);
        drop(s);
        if unknown {
            process += 1;
            c = client(all_endpoints(), process, seed ^ process);
        }
    }
    shared.borrow_mut().workers_running -= 1;
    Ok(())
}

/// Property: the scratch tenants at the end are what the lifecycle calls were answered. One
/// whose delete was answered (deleted, or not found) is absent; one whose create was answered
/// and that no delete was sent for is present; every one present was created (answered or in
/// doubt). Returns how many were created and answered.
pub fn check(ops: &[TenantOp], end: &[String]) -> Result<usize, String> {
    let mut created = 0;
    for o in ops {
        match o {
            TenantOp::Create(name, Some(true)) => {
                created += 1;
                let deleted = ops
                    .iter()
                    .any(|d| matches!(d, TenantOp::Delete(n, _) if n == name));
                if !deleted && !end.contains(name) {
                    return Err(format!(
                        "tenants: {name} was created and never deleted, and is gone"
                    ));
                }
            }
            TenantOp::Delete(name, Some(_)) if end.contains(name) => {
                return Err(format!(
                    "tenants: {name} is listed at the end after its delete was answered: {o:?}"
                ));
            }
            _ => {}
        }
    }
    for t in end.iter().filter(|t| t.starts_with(PREFIX)) {
        if !ops
            .iter()
            .any(|o| matches!(o, TenantOp::Create(n, _) if n == t))
        {
            return Err(format!("tenants: {t} exists but was never created"));
        }
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_list_must_follow_the_answers() {
        let c = |n: &str, r| TenantOp::Create(n.into(), r);
        let d = |n: &str, r| TenantOp::Delete(n.into(), r);
        let end = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ops = [c("scratch1", Some(true)), d("scratch1", Some(true))];
        assert_eq!(check(&ops, &end(&[])), Ok(1));
        assert!(
            check(&ops, &end(&["scratch1"])).is_err(),
            "deleted yet listed"
        );
        let kept = [c("scratch2", Some(true))];
        assert!(check(&kept, &end(&[])).is_err(), "created and lost");
        assert!(check(&[c("scratch3", None)], &end(&[])).is_ok());
        assert!(check(&[c("scratch3", None)], &end(&["scratch3"])).is_ok());
        assert!(check(&[], &end(&["scratch4"])).is_err(), "invented");
        let unsure = [c("scratch5", Some(true)), d("scratch5", None)];
        assert!(check(&unsure, &end(&["scratch5"])).is_ok());
        assert!(check(&unsure, &end(&[])).is_ok());
    }
}
