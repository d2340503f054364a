//! What one `raftgraph bench` run measured, as JSON for scripts or a table for people.

use clap::ValueEnum;
use hdrhistogram::Histogram;
use serde_json::json;
use tonic::Code;

use super::{Target, Workload};

/// What one run measured.
#[derive(Clone, Debug)]
pub struct Report {
    pub target: Target,
    pub workload: Workload,
    pub clients: usize,
    pub connections: usize,
    pub value_bytes: usize,
    /// raftgraph: the label of created nodes, if any.
    pub label: Option<String>,
    /// Operations answered without error.
    pub ok: u64,
    /// Failed operations by code, and the first message of each code.
    pub errors: Vec<(Code, u64, String)>,
    pub seconds: f64,
    /// Latency of answered operations, microseconds.
    pub latency: Histogram<u64>,
    /// Write runs: WAL fsyncs during the run per answered write, on the member that did the
    /// most (the leader) and summed over the sampled members; `None` for reads or when the
    /// counters could not be read.
    pub fsyncs_per_write: Option<(f64, f64)>,
}

impl Report {
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.seconds.max(f64::EPSILON)
    }

    pub fn error_count(&self) -> u64 {
        self.errors.iter().map(|e| e.1).sum()
    }

    fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1_000.0
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "target": format!("{:?}", self.target).to_lowercase(),
            "workload": self.workload.to_possible_value().map(|v| v.get_name().to_string()),
            "clients": self.clients,
            "connections": self.connections,
            "value_bytes": self.value_bytes,
            "label": self.label,
            "ok": self.ok,
            "errors": self.error_count(),
            "errors_by_code": self.errors.iter().map(|(c, n, m)| json!({
                "code": format!("{c:?}"), "count": n, "first": m
            })).collect::<Vec<_>>(),
            "seconds": self.seconds,
            "ops_per_sec": self.throughput(),
            "p50_ms": self.ms(0.50),
            "p99_ms": self.ms(0.99),
            "p999_ms": self.ms(0.999),
            "max_ms": self.latency.max() as f64 / 1_000.0,
            "leader_fsyncs_per_write": self.fsyncs_per_write.map(|f| f.0),
            "cluster_fsyncs_per_write": self.fsyncs_per_write.map(|f| f.1),
        })
    }

    pub fn table(&self) -> String {
        let mut s = format!(
            "target     workload           clients conns        ok  errors   secs      ops/s   p50 ms   p99 ms p99.9 ms\n\
             {:<10} {:<18} {:>7} {:>5} {:>9} {:>7} {:>6.1} {:>10.0} {:>8.2} {:>8.2} {:>8.2}\n",
            format!("{:?}", self.target).to_lowercase(),
            self.workload
                .to_possible_value()
                .map(|v| v.get_name().to_string())
                .unwrap_or_default(),
            self.clients,
            self.connections,
            self.ok,
            self.error_count(),
            self.seconds,
            self.throughput(),
            self.ms(0.50),
            self.ms(0.99),
            self.ms(0.999),
        );
        if let Some((leader, all)) = self.fsyncs_per_write {
            s.push_str(&format!(
                "fsyncs per write: {leader:.3} on the leader, {all:.3} over the sampled members\n"
            ));
        }
        for (code, n, first) in &self.errors {
            s.push_str(&format!("error {code:?} x{n}: {first}\n"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_prints_throughput_and_quantiles() {
        let mut latency = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for us in 1..=1_000u64 {
            latency.record(us * 10).unwrap();
        }
        let r = Report {
            target: Target::Raftgraph,
            workload: Workload::CreateNode,
            clients: 4,
            connections: 1,
            value_bytes: 256,
            label: Some("bench".into()),
            ok: 1_000,
            errors: vec![(Code::Unavailable, 2, "down".into())],
            seconds: 2.0,
            latency,
            fsyncs_per_write: Some((0.25, 0.75)),
        };
        let j = r.json();
        assert_eq!(j["ops_per_sec"], 500.0);
        assert_eq!(j["errors"], 2);
        assert_eq!(j["workload"], "create-node");
        assert_eq!(j["label"], "bench");
        let p50 = j["p50_ms"].as_f64().unwrap();
        assert!((4.9..=5.1).contains(&p50), "{p50}");
        let t = r.table();
        assert!(
            t.contains("create-node") && t.contains("Unavailable x2: down"),
            "{t}"
        );
        assert!(t.contains("fsyncs per write: 0.250 on the leader"), "{t}");
        assert_eq!(j["cluster_fsyncs_per_write"], 0.75);
    }
}
