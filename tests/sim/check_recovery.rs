//! Property: once faults stop, the cluster serves writes again within a bounded (simulated)
//! time, and no node failed or stopped on its own.

use super::world::Shared;

pub fn check(shared: &Shared, sim_error: Option<&str>) -> Result<u64, String> {
    if let Some(e) = shared.node_errors.first() {
        return Err(format!("recovery: {e}"));
    }
    if let Some(e) = sim_error {
        return Err(format!("recovery: the simulation stopped: {e}"));
    }
    match &shared.liveness {
        Some(Ok(ms)) => Ok(*ms),
        Some(Err(e)) => Err(format!("recovery: {e}")),
        None => Err("recovery: the final client never ran".into()),
    }
}
