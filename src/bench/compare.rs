//! `raftgraph bench-compare`: the medians of `raftgraph bench --output json` runs of both
//! stores, their ratios and issue 6's bar, as one Markdown table.

/// One figure of a group of runs: the median over rounds.
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The runs of one store under one load.
#[derive(Default)]
struct Runs {
    ops: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    p999: Vec<f64>,
    fsyncs: Vec<f64>,
    errors: u64,
}

/// The acceptance bar of issue 6 for a load, if it has one: (throughput ratio at least,
/// p99 ratio at most, p50 ratio at most).
fn bar(workload: &str, clients: u64) -> Option<(Option<f64>, Option<f64>, Option<f64>)> {
    match (workload, clients) {
        ("create-node" | "update-node", 64 | 256) => Some((Some(3.0), Some(0.5), None)),
        ("create-node" | "update-node", 1) => Some((None, None, Some(1.0))),
        ("read-linearizable", 1) => Some((None, None, Some(1.0))),
        ("read-linearizable" | "read-serializable", 64) => Some((Some(3.0), None, None)),
        _ => None,
    }
}

/// `raftgraph bench-compare`: reads `--output json` lines of both stores (any number of
/// rounds) and prints, per workload and client count, the median of each figure for etcd and
/// raftgraph, the raftgraph/etcd ratio, and whether the issue's bar is met.
pub fn compare(jsonl: &str) -> Result<String, String> {
    use std::collections::BTreeMap;
    // (workload, clients) -> (etcd, raftgraph)
    // (workload, clients, connections, value bytes) -> (etcd, raftgraph)
    let mut groups: BTreeMap<(String, u64, u64, u64), (Runs, Runs)> = BTreeMap::new();
    for (n, line) in jsonl
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        let field = |k: &str| {
            v.get(k)
                .ok_or_else(|| format!("line {}: no field {k:?}", n + 1))
                .cloned()
        };
        let num = |k: &str| {
            field(k)?
                .as_f64()
                .ok_or_else(|| format!("line {}: field {k:?} is not a number", n + 1))
        };
        let target = field("target")?;
        let workload = field("workload")?
            .as_str()
            .ok_or_else(|| format!("line {}: workload is not a string", n + 1))?
            .to_string();
        let clients = num("clients")? as u64;
        let connections = num("connections")? as u64;
        let value_bytes = num("value_bytes")? as u64;
        let g = groups
            .entry((workload, clients, connections, value_bytes))
            .or_default();
        let runs = match target.as_str() {
            Some("etcd") => &mut g.0,
            Some("raftgraph") => &mut g.1,
            _ => {
                return Err(format!(
                    "line {}: target {target} is not etcd or raftgraph",
                    n + 1
                ));
            }
        };
        runs.ops.push(num("ops_per_sec")?);
        runs.p50.push(num("p50_ms")?);
        runs.p99.push(num("p99_ms")?);
        runs.p999.push(num("p999_ms")?);
        runs.errors += num("errors")? as u64;
        if let Some(f) = v.get("leader_fsyncs_per_write").and_then(|f| f.as_f64()) {
            runs.fsyncs.push(f);
        }
    }
    if groups.is_empty() {
        return Err("no runs in the input".into());
    }
    let mut out = String::from(
        "| load | clients | conns | value B | runs (etcd/raftgraph) | etcd ops/s | raftgraph ops/s | ratio | etcd p50 ms | raftgraph p50 ms | ratio | etcd p99 ms | raftgraph p99 ms | ratio | etcd p99.9 ms | raftgraph p99.9 ms | fsyncs/write, busiest member (etcd/raftgraph) | errors (etcd/raftgraph) | bar |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for ((workload, clients, connections, value_bytes), (e, r)) in &groups {
        let (eo, ro) = (median(e.ops.clone()), median(r.ops.clone()));
        let (e50, r50) = (median(e.p50.clone()), median(r.p50.clone()));
        let (e99, r99) = (median(e.p99.clone()), median(r.p99.clone()));
        let (e999, r999) = (median(e.p999.clone()), median(r.p999.clone()));
        let fs = |v: &Vec<f64>| {
            if v.is_empty() {
                "-".to_string()
            } else {
                format!("{:.3}", median(v.clone()))
            }
        };
        let verdict = match bar(workload, *clients) {
            None => "-".to_string(),
            Some((thr, p99, p50)) => {
                let mut parts = Vec::new();
                // Both stores ran, error-free, as often; a ratio that is not a finite number
                // (a figure of 0) meets nothing.
                let mut met = r.errors == 0
                    && e.errors == 0
                    && e.ops.len() == r.ops.len()
                    && !r.ops.is_empty();
                let finite = |x: f64| x.is_finite() && x > 0.0;
                if let Some(x) = thr {
                    met &= finite(ro / eo) && ro / eo >= x;
                    parts.push(format!("ops ≥{x}×"));
                }
                if let Some(x) = p99 {
                    met &= finite(r99 / e99) && r99 / e99 <= x;
                    parts.push(format!("p99 ≤{x}×"));
                }
                if let Some(x) = p50 {
                    met &= finite(r50 / e50) && r50 / e50 <= x;
                    parts.push(format!("p50 ≤{x}×"));
                }
                format!(
                    "{} {}",
                    if met { "met" } else { "MISSED" },
                    parts.join(", ")
                )
            }
        };
        out.push_str(&format!(
            "| {workload} | {clients} | {connections} | {value_bytes} | {}/{} | {eo:.0} | {ro:.0} | {:.2} | {e50:.2} | {r50:.2} | {:.2} | {e99:.2} | {r99:.2} | {:.2} | {e999:.2} | {r999:.2} | {}/{} | {}/{} | {verdict} |\n",
            e.ops.len(),
            r.ops.len(),
            ro / eo,
            r50 / e50,
            r99 / e99,
            fs(&e.fsyncs),
            fs(&r.fsyncs),
            e.errors,
            r.errors,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod compare_tests {
    use serde_json::json;

    use super::*;

    fn line(target: &str, workload: &str, clients: u64, ops: f64, p50: f64, p99: f64) -> String {
        json!({
            "target": target, "workload": workload, "clients": clients, "connections": 8,
            "value_bytes": 256, "ops_per_sec": ops,
            "p50_ms": p50, "p99_ms": p99, "p999_ms": p99 * 2.0, "errors": 0,
            "leader_fsyncs_per_write": 0.5,
        })
        .to_string()
    }

    #[test]
    fn medians_ratios_and_the_bar() {
        let mut lines = Vec::new();
        for (e, r) in [(4_000.0, 15_000.0), (5_000.0, 16_000.0), (6_000.0, 1_000.0)] {
            lines.push(line("etcd", "create-node", 64, e, 10.0, 40.0));
            lines.push(line("raftgraph", "create-node", 64, r, 2.0, 10.0));
        }
        lines.push(line("etcd", "read-serializable", 256, 9_000.0, 1.0, 2.0));
        lines.push(line(
            "raftgraph",
            "read-serializable",
            256,
            18_000.0,
            1.0,
            2.0,
        ));
        let t = compare(&lines.join("\n")).unwrap();
        // Medians: etcd 5,000, raftgraph 15,000: 3.00×; p99 10/40.
        assert!(
            t.contains("| create-node | 64 | 8 | 256 | 3/3 | 5000 | 15000 | 3.00 |"),
            "{t}"
        );
        assert!(t.contains("| 0.25 |"), "{t}");
        assert!(t.contains("met ops ≥3×, p99 ≤0.5×"), "{t}");
        assert!(t.contains("| read-serializable | 256 |"), "{t}");
    }

    #[test]
    fn a_missed_bar_and_bad_input_are_reported() {
        let lines = [
            line("etcd", "create-node", 64, 5_000.0, 10.0, 40.0),
            line("raftgraph", "create-node", 64, 10_000.0, 2.0, 10.0),
        ];
        let t = compare(&lines.join("\n")).unwrap();
        assert!(t.contains("MISSED ops ≥3×"), "{t}");
        // An etcd figure of 0 meets nothing.
        let lines = [
            line("etcd", "create-node", 64, 0.0, 10.0, 40.0),
            line("raftgraph", "create-node", 64, 10_000.0, 2.0, 10.0),
        ];
        let t = compare(&lines.join("\n")).unwrap();
        assert!(t.contains("MISSED ops ≥3×"), "{t}");
        assert!(compare("").unwrap_err().contains("no runs"));
        assert!(compare("{").unwrap_err().contains("line 1"));
        let e = compare(
            r#"{"target":"x","workload":"mix","clients":1,"connections":1,"value_bytes":1}"#,
        )
        .unwrap_err();
        assert!(e.contains("target"), "{e}");
    }

    #[test]
    fn the_median_of_an_even_count_is_the_middle_mean() {
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![5.0]), 5.0);
        assert!(median(vec![]).is_nan());
    }
}
