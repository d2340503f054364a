//! The etcd side of `raftgraph bench`: etcd's v3 KV API (a hand-written slice of its proto,
//! `proto/etcd/kv.proto`) driven with the same shape of load, and etcd's WAL fsync counter
//! read from its Prometheus text.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tonic::Status;
use tonic::transport::Channel;

use super::{BenchArgs, Driver, Workload, value};
use crate::proto::etcd;
use crate::proto::etcd::auth_client::AuthClient;
use crate::proto::etcd::kv_client::KvClient;

/// The etcd side: one channel per connection, to the endpoints in turn.
pub(super) struct Etcd {
    channels: Vec<Channel>,
    workload: Workload,
    value_bytes: usize,
    write_percent: u8,
    keys: u64,
    timeout: Duration,
    /// Random per run: creates of two runs never overwrite each other's keys.
    run: u32,
    /// With `--etcd-user`: the token `Authenticate` gave, sent with every call.
    token: Option<tonic::metadata::AsciiMetadataValue>,
}

fn etcd_key(prefix: &str, n: u64) -> Vec<u8> {
    format!("bench/{prefix}/{n:012}").into_bytes()
}

impl Etcd {
    pub(super) async fn connect(a: &BenchArgs) -> Result<Etcd, Status> {
        // The same dialer as for raftgraph: TLS trusting `--ca` when given, else plaintext.
        let dialer = super::dialer(a)?;
        let channels = (0..a.connections)
            .map(|i| {
                let addr = &a.endpoints[i % a.endpoints.len()];
                dialer
                    .dial(addr, Duration::from_secs(5))
                    .map_err(|e| Status::invalid_argument(format!("--endpoints {addr:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let token = match (&a.etcd_user, &a.etcd_password) {
            (Some(name), Some(password)) => {
                let mut req = tonic::Request::new(etcd::AuthenticateRequest {
                    name: name.clone(),
                    password: password.clone(),
                });
                req.set_timeout(Duration::from_secs(a.timeout));
                let t = AuthClient::new(channels[0].clone())
                    .authenticate(req)
                    .await?
                    .into_inner()
                    .token;
                let mut v = tonic::metadata::AsciiMetadataValue::try_from(t).map_err(|_| {
                    Status::internal("etcd answered a token that is not a header value")
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            (None, None) => None,
            _ => {
                return Err(Status::invalid_argument(
                    "--etcd-user and --etcd-password go together",
                ));
            }
        };
        let me = Etcd {
            token,
            channels,
            workload: a.workload,
            value_bytes: a.value_bytes,
            write_percent: a.write_percent,
            keys: a.keys,
            timeout: Duration::from_secs(a.timeout),
            run: SmallRng::from_os_rng().random(),
        };
        if a.workload != Workload::CreateNode {
            let mut rng = SmallRng::seed_from_u64(a.keys);
            for n in 0..a.keys {
                let v = value(a.value_bytes, &mut rng);
                me.put(0, etcd_key("k", n), v.into_bytes()).await?;
            }
        }
        Ok(me)
    }

    /// Adds the user's token, with authentication.
    fn authorize<T>(&self, req: &mut tonic::Request<T>) {
        if let Some(t) = &self.token {
            req.metadata_mut().insert("token", t.clone());
        }
    }

    fn kv(&self, client: usize) -> KvClient<Channel> {
        KvClient::new(self.channels[client % self.channels.len()].clone())
    }

    async fn put(&self, client: usize, key: Vec<u8>, value: Vec<u8>) -> Result<(), Status> {
        let mut req = tonic::Request::new(etcd::PutRequest {
            key,
            value,
            lease: 0,
        });
        req.set_timeout(self.timeout);
        self.authorize(&mut req);
        self.kv(client).put(req).await.map(|_| ())
    }

    async fn range(&self, client: usize, key: Vec<u8>, serializable: bool) -> Result<(), Status> {
        let mut req = tonic::Request::new(etcd::RangeRequest {
            key,
            serializable,
            ..Default::default()
        });
        req.set_timeout(self.timeout);
        self.authorize(&mut req);
        let r = self.kv(client).range(req).await?.into_inner();
        if r.kvs.is_empty() {
            return Err(Status::not_found("etcd: a prepared key is missing"));
        }
        Ok(())
    }

    fn key(&self, rng: &mut SmallRng) -> Vec<u8> {
        etcd_key("k", rng.random_range(0..self.keys))
    }
}

impl Driver for Etcd {
    async fn op(&self, client: usize, seq: u64, rng: &mut SmallRng) -> Result<(), Status> {
        let val = |rng: &mut SmallRng| value(self.value_bytes, rng).into_bytes();
        match self.workload {
            Workload::CreateNode => {
                // A new key, ascending per client (as raftgraph's node ids ascend): the run,
                // the client and the client's sequence.
                let prefix = format!("{:08x}-c{client}", self.run);
                let v = val(rng);
                self.put(client, etcd_key(&prefix, seq), v).await
            }
            Workload::UpdateNode => {
                let k = self.key(rng);
                let v = val(rng);
                self.put(client, k, v).await
            }
            Workload::ReadLinearizable => self.range(client, self.key(rng), false).await,
            Workload::ReadSerializable => self.range(client, self.key(rng), true).await,
            Workload::Mix => {
                let k = self.key(rng);
                if rng.random_range(0..100) < self.write_percent {
                    let v = val(rng);
                    self.put(client, k, v).await
                } else {
                    self.range(client, k, false).await
                }
            }
        }
    }
}

/// The longest `/metrics` answer read from etcd.
const METRICS_BYTES_MAX: u64 = 16 << 20;

/// etcd's WAL fsync count from its Prometheus text on the client port.
pub(super) async fn etcd_wal_fsyncs(endpoint: &str) -> Option<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(endpoint).await.ok()?;
        s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {endpoint}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut body = Vec::new();
        s.take(METRICS_BYTES_MAX)
            .read_to_end(&mut body)
            .await
            .ok()?;
        Some(body)
    };
    let body = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .ok()??;
    prometheus_value(
        &String::from_utf8_lossy(&body),
        "etcd_disk_wal_fsync_duration_seconds_count",
    )
}

/// The value of an unlabelled metric in Prometheus text format.
fn prometheus_value(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse::<f64>().ok())?
        })
        .map(|v| v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_values_are_found_by_exact_name() {
        let text = "# HELP x\n\
                    etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"} 5\n\
                    etcd_disk_wal_fsync_duration_seconds_count 1234\n\
                    etcd_disk_wal_fsync_duration_seconds_sum 0.5\n";
        assert_eq!(
            prometheus_value(text, "etcd_disk_wal_fsync_duration_seconds_count"),
            Some(1234)
        );
        assert_eq!(prometheus_value(text, "missing"), None);
    }
}
