//! Property: after healing, every replica reaches the same applied index and holds the same
//! data in every tenant.

use std::collections::BTreeMap;

use super::workload::Replica;
use super::world::NODES;

pub fn check(replicas: &BTreeMap<String, Replica>) -> Result<(), String> {
    if replicas.len() != NODES.len() {
        let got: Vec<&String> = replicas.keys().collect();
        return Err(format!(
            "replicas: only {got:?} answered after healing (expected all of {NODES:?})"
        ));
    }
    let mut it = replicas.iter();
    let (first_name, first) = it.next().expect("three replicas");
    for (name, r) in it {
        if r.applied != first.applied {
            return Err(format!(
                "replicas: {first_name} applied {} but {name} applied {} after healing",
                first.applied, r.applied
            ));
        }
        for (tenant, rows) in &first.data {
            let other = r.data.get(tenant).cloned().unwrap_or_default();
            if *rows != other {
                let diff: Vec<String> = rows
                    .iter()
                    .filter(|x| !other.contains(x))
                    .map(|x| format!("  only on {first_name}: {x}"))
                    .chain(
                        other
                            .iter()
                            .filter(|x| !rows.contains(x))
                            .map(|x| format!("  only on {name}: {x}")),
                    )
                    .take(20)
                    .collect();
                return Err(format!(
                    "replicas: tenant {tenant} differs between {first_name} and {name} at \
                     applied index {}:\n{}",
                    r.applied,
                    diff.join("\n")
                ));
            }
        }
        if r.usage != first.usage {
            return Err(format!(
                "replicas: quota tenant usage differs: {first_name} {:?}, {name} {:?}",
                first.usage, r.usage
            ));
        }
    }
    Ok(())
}
