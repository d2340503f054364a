//! Property: a tenant's token gives nothing of another tenant or the cluster. Mallory
//! (`attacker.rs`), holding a valid token of its own tenant, never had a call on the others
//! answered with data or any code but a refusal (or a transport error under faults); none of
//! its writes reached another tenant's data on any replica; the other tenants' settings are
//! those setup gave them; no token it tried to make exists; and the final round, faults over,
//! saw every kind of call denied and its own tenant writable (so the refusals were
//! authorization, not a token the cluster never knew).

use super::attacker::{KINDS, MALLORY, MARK, MARK_VALUE};
use super::workload::{QUOTA, REGISTERS, Replica, setup_quotas};
use super::world::Shared;
use std::collections::BTreeMap;

/// `tokens`: every token at the end, as `<role> <tenant or id>`; the shared state gives the id
/// of the one cluster-admin token (made by init), the limits after setup and at the end, and
/// the tenants at the end.
pub fn check(
    s: &Shared,
    replicas: &BTreeMap<String, Replica>,
    tokens: &[String],
) -> Result<(), String> {
    let a = &s.attempts;
    let admin = &s.admin_token_id;
    if let Some(first) = a.leaks.first() {
        return Err(format!(
            "isolation: {} of Mallory's calls on other tenants or the cluster were not refused; \
             the first: {first}",
            a.leaks.len()
        ));
    }
    if let Some(why) = &a.unfinished {
        return Err(format!("isolation: the final round did not finish: {why}"));
    }
    let missing: Vec<&str> = KINDS
        .iter()
        .filter(|k| !a.denied.contains(*k))
        .copied()
        .collect();
    if !missing.is_empty() {
        return Err(format!("isolation: never denied (coverage): {missing:?}"));
    }
    if a.own_ok == 0 {
        return Err("isolation: Mallory never wrote its own tenant (coverage)".into());
    }
    let mark = format!("{MARK:?}");
    let value = format!("IntValue({MARK_VALUE})");
    for (node, r) in replicas {
        for (tenant, rows) in &r.data {
            if let Some(row) = rows
                .iter()
                .find(|row| row.contains(&mark) || row.contains(&value))
            {
                return Err(format!(
                    "isolation: {node} holds Mallory's write in tenant {tenant}: {row}"
                ));
            }
        }
        for (tenant, settings) in &r.tenants {
            let quotas = settings.quotas.unwrap_or_default();
            let rates = settings.rate_limits.unwrap_or_default();
            if !settings.enabled
                || quotas != setup_quotas(tenant)
                || rates != Default::default()
                || settings.config.contains(MARK)
            {
                return Err(format!(
                    "isolation: {node}: tenant {tenant}'s settings changed: enabled {}, {quotas:?}, \
                     {rates:?}, {}",
                    settings.enabled, settings.config
                ));
            }
        }
        if r.membership != (vec![1, 2, 3], vec![]) {
            return Err(format!(
                "isolation: {node}: the membership changed: voters and learners {:?}",
                r.membership
            ));
        }
    }
    let (tenants, limits) = s
        .cluster_end
        .as_ref()
        .ok_or("isolation: no final tenant list")?;
    // Scratch tenants come and go (`tenants.rs` checks them).
    let tenants: Vec<&String> = tenants
        .iter()
        .filter(|t| !t.starts_with(super::tenants::PREFIX))
        .collect();
    if tenants != [MALLORY, QUOTA, REGISTERS] {
        return Err(format!("isolation: the tenants changed: {tenants:?}"));
    }
    if limits != &s.limits_at_setup {
        return Err(format!(
            "isolation: the cluster limits changed: {} at setup, {limits} at the end",
            s.limits_at_setup
        ));
    }
    let allowed = [format!("cluster-admin {admin}"), format!("write {MALLORY}")];
    if let Some(t) = tokens.iter().find(|t| !allowed.contains(t)) {
        return Err(format!(
            "isolation: a token setup never made exists: {t} (all: {tokens:?})"
        ));
    }
    Ok(())
}
