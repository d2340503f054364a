//! Certificates for in-process servers: a CA per test directory, member certificates that name
//! their member and 127.0.0.1 / localhost, client certificates, and TLS dialers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use raftgraph::tls::{self, CertFiles};
use raftgraph::transport::Dialer;

fn now() -> SystemTime {
    #[allow(clippy::disallowed_methods)] // certificate validity, not simulated time
    SystemTime::now()
}

/// A cluster's CA, its files in `dir`.
pub struct TestCa {
    pub dir: PathBuf,
    pub cluster: String,
    cert_pem: String,
    key_pem: String,
}

impl TestCa {
    pub fn new(dir: &Path, cluster: &str) -> TestCa {
        let g = tls::generate_ca(cluster, now(), 30).unwrap();
        tls::write_pem_files(dir, "ca", &g, true).unwrap();
        TestCa {
            dir: dir.into(),
            cluster: cluster.into(),
            cert_pem: g.cert_pem,
            key_pem: g.key_pem,
        }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Member `id`'s files (written on each call).
    pub fn member(&self, id: u64) -> CertFiles {
        self.member_of(&self.cluster, id)
    }

    /// A certificate of this CA naming member `id` of `cluster` (maybe another cluster).
    pub fn member_of(&self, cluster: &str, id: u64) -> CertFiles {
        let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
        let g = tls::generate_member(
            &self.cert_pem,
            &self.key_pem,
            cluster,
            id,
            &hosts,
            now(),
            30,
        )
        .unwrap();
        let stem = format!("member-{id}-{cluster}");
        let (cert, key) = tls::write_pem_files(&self.dir, &stem, &g, true).unwrap();
        CertFiles {
            ca: self.ca_path(),
            cert,
            key,
        }
    }

    /// A client certificate of this CA (it names no member).
    pub fn client(&self, name: &str) -> (PathBuf, PathBuf) {
        let g = tls::generate_client(&self.cert_pem, &self.key_pem, name, now(), 30).unwrap();
        tls::write_pem_files(&self.dir, &format!("client-{name}"), &g, true).unwrap()
    }

    /// A dialer that trusts this CA and presents no certificate.
    pub fn dialer(&self) -> Dialer {
        let c = tls::client_config_from_files(&self.ca_path(), None).unwrap();
        Dialer::default().with_tls(Arc::new(move || c.clone()))
    }

    /// A dialer that trusts this CA and presents `files`' certificate.
    pub fn dialer_as(&self, files: &CertFiles) -> Dialer {
        let c = tls::client_config_from_files(&self.ca_path(), Some((&files.cert, &files.key)))
            .unwrap();
        Dialer::default().with_tls(Arc::new(move || c.clone()))
    }
}
