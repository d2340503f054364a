//! TLS for both listeners, with rustls and its `ring` provider (TLS 1.3 only).
//!
//! **Identity.** Each cluster has its own CA. A member's certificate is signed by it and names
//! the member with the DNS name [`member_name`] (`m<id>.<cluster id>.raftgraph`), besides any
//! host names and addresses clients dial it by. On the peer plane both ends check it:
//! - the listener requires a client certificate from the CA ([`Credentials::peer_server`]); the
//!   member it names ([`ConnInfo::member`]) is what the Raft service authorizes, before it
//!   decodes any payload;
//! - the dialing side verifies that the server's certificate names the member it meant to reach
//!   (the server name it verifies is that member's [`member_name`]).
//!
//! The client plane is server-authenticated by the same CA: clients verify the name they dialled
//! (or the one they were told to expect). Client certificates are accepted there but optional.
//!
//! **Reload.** [`TlsSource`] holds the configs built from the files; [`TlsSource::reload`]
//! re-reads them (the server calls it on SIGHUP). A reload that fails keeps the old configs.
//! Connections accepted or dialled after a reload use the new ones; open connections keep theirs.

mod accept;
mod generate;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};

pub use accept::{
    Conn, ConnInfo, FIRST_BYTE_TIMEOUT, HANDSHAKE_TIMEOUT, HANDSHAKES_MAX,
    HANDSHAKES_PER_ADDRESS_MAX, PLAINTEXT_REFUSAL, accept,
};
pub use generate::{Generated, generate_ca, generate_client, generate_member, write_pem_files};

/// The DNS-name suffix of member names.
const NAME_SUFFIX: &str = ".raftgraph";

/// The name a member's certificate carries and its peers verify: `m<id>.<cluster id>.raftgraph`.
pub fn member_name(cluster_id: &str, id: u64) -> String {
    format!("m{id}.{cluster_id}{NAME_SUFFIX}")
}

/// The cluster id and member id a [`member_name`] names; `None` for any other name.
pub fn parse_member_name(name: &str) -> Option<(&str, u64)> {
    let rest = name.strip_prefix('m')?.strip_suffix(NAME_SUFFIX)?;
    let (id, cluster) = rest.split_once('.')?;
    // Canonical only: the decimal form `member_name` writes (no sign, no leading zero), >= 1.
    let n: u64 = id.parse().ok()?;
    if n == 0 || n.to_string() != id || cluster.is_empty() {
        return None;
    }
    Some((cluster, n))
}

/// Whether `host` could be mistaken for a member name (it ends in `.raftgraph`) or is a
/// wildcard: neither may be put in a certificate as a host name.
pub fn reserved_host(host: &str) -> bool {
    host.contains('*') || host.to_ascii_lowercase().ends_with(NAME_SUFFIX)
}

/// Refuses a cluster id that cannot appear in a certificate's DNS name (e.g. `a..b` or `-a`):
/// every member name of the cluster must be a valid DNS name.
pub fn check_nameable(cluster_id: &str) -> Result<(), String> {
    ServerName::try_from(member_name(cluster_id, 1))
        .map(|_| ())
        .map_err(|_| {
            format!(
                "{cluster_id:?} cannot be named in a certificate: use labels of letters, digits, \
                 '-' and '_', separated by single dots, none starting or ending with '-'"
            )
        })
}

/// Where a server's TLS files are: the cluster's CA certificate, and this member's certificate
/// (chain) and private key, PEM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    /// The files `raftgraph certs member` writes into `dir` for member `id`.
    pub fn in_dir(dir: &Path, id: u64) -> CertFiles {
        CertFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("member-{id}.pem")),
            key: dir.join(format!("member-{id}.key")),
        }
    }
}

/// Why TLS could not be set up. Names the file; never holds key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {what}")]
    Parse { path: PathBuf, what: String },
    #[error("{0}")]
    Config(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.into(),
        source,
    })
}

/// The certificates in a PEM file, at least one.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Parse {
            path: path.into(),
            what: format!("not PEM certificates: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Parse {
            path: path.into(),
            what: "no certificate in the file (expected -----BEGIN CERTIFICATE-----)".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    // The parser's error never quotes the file's bytes; ours names only the file.
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::Parse {
        path: path.into(),
        what: "no PEM private key in the file (expected -----BEGIN PRIVATE KEY-----)".into(),
    })
}

/// The provider every config here uses: rustls's `ring` provider. It builds with a C compiler
/// alone (aws-lc-rs needs cmake); rustls marks it deprecated because `ring` has no
/// post-quantum key exchange (docs/security.md lists that among what is not protected yet).
fn provider() -> Arc<CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

/// The member a certificate names ([`member_name`]): `(cluster id, member id)`. `None` when it
/// names none, or more than one (a certificate must not stand for two members), or has a
/// wildcard name under `.raftgraph`.
pub fn named_member(cert: &CertificateDer<'_>) -> Option<(String, u64)> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let mut found = None;
    for n in &san.value.general_names {
        let GeneralName::DNSName(d) = n else { continue };
        if !reserved_host(d) {
            continue;
        }
        match (parse_member_name(d), &found) {
            (Some((c, id)), None) => found = Some((c.to_string(), id)),
            // A second member name, or a wildcard or malformed one under `.raftgraph`.
            _ => return None,
        }
    }
    found
}

/// A CA, a certificate chain and its key, loaded and checked.
pub struct Credentials {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// The CA certificates of `path` as a root store.
pub fn read_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in read_certs(path)? {
        roots.add(c).map_err(|e| TlsError::Parse {
            path: path.into(),
            what: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(Arc::new(roots))
}

impl Credentials {
    /// Reads the files.
    pub fn load(files: &CertFiles) -> Result<Credentials, TlsError> {
        Ok(Credentials {
            roots: read_roots(&files.ca)?,
            chain: read_certs(&files.cert)?,
            key: read_key(&files.key)?,
        })
    }

    /// The member the leaf certificate names, if any.
    pub fn member(&self) -> Option<(String, u64)> {
        named_member(&self.chain[0])
    }

    /// The peer listener's config: a client certificate from the CA is required.
    pub fn peer_server(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(config_err)?;
        self.server(verifier)
    }

    /// The client listener's config: server-authenticated; a client certificate from the CA
    /// is verified when one is presented, and is optional.
    pub fn api_server(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .allow_unauthenticated()
            .build()
            .map_err(config_err)?;
        self.server(verifier)
    }

    fn server(
        &self,
        verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let mut c = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(config_err)?;
        c.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(c))
    }

    /// The dialing side with this certificate as the client identity (member to member).
    pub fn client(&self) -> Result<Arc<ClientConfig>, TlsError> {
        client_config(
            self.roots.clone(),
            Some((self.chain.clone(), self.key.clone_key())),
        )
    }
}

/// A client's config: trusts `roots`; presents `identity` (chain and key) when given.
pub fn client_config(
    roots: Arc<RootCertStore>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_err)?
        .with_root_certificates(roots);
    let mut c = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(config_err)?,
        None => builder.with_no_client_auth(),
    };
    c.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(c))
}

/// A client's config from files: the CA to trust, and optionally a client certificate and key.
pub fn client_config_from_files(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let identity = match identity {
        Some((cert, key)) => Some((read_certs(cert)?, read_key(key)?)),
        None => None,
    };
    client_config(read_roots(ca)?, identity)
}

/// The configs a server uses, built from one reading of its files.
#[derive(Clone, Debug)]
pub struct Configs {
    pub peer_server: Arc<ServerConfig>,
    pub api_server: Arc<ServerConfig>,
    pub peer_client: Arc<ClientConfig>,
}

/// A server's TLS: its files and the configs last built from them. Shared by the listeners
/// (every accept takes the current config) and the dialer (every new connection does).
#[derive(Debug)]
pub struct TlsSource {
    files: CertFiles,
    expect: (String, u64),
    current: RwLock<Configs>,
}

impl TlsSource {
    /// Loads `files` and checks that the certificate names member `id` of `cluster_id`.
    pub fn load(files: CertFiles, cluster_id: &str, id: u64) -> Result<Arc<TlsSource>, TlsError> {
        let expect = (cluster_id.to_string(), id);
        let current = RwLock::new(Self::build(&files, &expect)?);
        Ok(Arc::new(TlsSource {
            files,
            expect,
            current,
        }))
    }

    fn build(files: &CertFiles, expect: &(String, u64)) -> Result<Configs, TlsError> {
        let creds = Credentials::load(files)?;
        match creds.member() {
            Some(m) if &m == expect => {}
            found => {
                return Err(TlsError::Parse {
                    path: files.cert.clone(),
                    what: format!(
                        "names {}, but this server is member {} of cluster {:?} (create its \
                         certificate with `raftgraph certs member --id {}`)",
                        found.map_or("no member".to_string(), |(c, id)| format!(
                            "member {id} of cluster {c:?}"
                        )),
                        expect.1,
                        expect.0,
                        expect.1
                    ),
                });
            }
        }
        Ok(Configs {
            peer_server: creds.peer_server()?,
            api_server: creds.api_server()?,
            peer_client: creds.client()?,
        })
    }

    /// The configs in force.
    pub fn configs(&self) -> Configs {
        self.current.read().expect("tls configs").clone()
    }

    /// Re-reads the files. On error the configs in force stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let next = Self::build(&self.files, &self.expect)?;
        *self.current.write().expect("tls configs") = next;
        Ok(())
    }

    pub fn files(&self) -> &CertFiles {
        &self.files
    }
}

#[cfg(test)]
mod tests {
    use super::{
        check_nameable, generate_ca, generate_member, member_name, named_member, parse_member_name,
    };
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    #[test]
    fn a_certificate_stands_for_one_member_and_hosts_cannot_pose_as_members() {
        #[allow(clippy::disallowed_methods)] // certificate validity, not simulated time
        let now = std::time::SystemTime::now();
        let ca = generate_ca("local", now, 1).unwrap();
        let member = |hosts: &[&str]| {
            let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
            generate_member(&ca.cert_pem, &ca.key_pem, "local", 1, &hosts, now, 1)
        };
        let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let one = member(&["127.0.0.1", "node1.example"]).unwrap();
        assert_eq!(named_member(&der(&one.cert_pem)), Some(("local".into(), 1)));
        for bad in [
            "m2.local.raftgraph",
            "*.local.raftgraph",
            "X.RAFTGRAPH",
            "*.example",
        ] {
            let e = member(&[bad]).unwrap_err().to_string();
            assert!(e.contains("reserved"), "{bad}: {e}");
        }
        // Made with rcgen directly (the CLI refuses it): two member names name no member.
        let issuer = rcgen::Issuer::from_ca_cert_pem(
            &ca.cert_pem,
            rcgen::KeyPair::from_pem(&ca.key_pem).unwrap(),
        )
        .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let two =
            rcgen::CertificateParams::new(vec![member_name("local", 1), member_name("local", 2)])
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
        assert_eq!(named_member(two.der()), None);
    }

    #[test]
    fn member_names_round_trip_and_refuse_other_names() {
        assert_eq!(member_name("local", 2), "m2.local.raftgraph");
        assert_eq!(parse_member_name("m2.local.raftgraph"), Some(("local", 2)));
        assert_eq!(
            parse_member_name("m17.eu.prod.raftgraph"),
            Some(("eu.prod", 17))
        );
        for bad in [
            "m.local.raftgraph",
            "mx.local.raftgraph",
            "m2.raftgraph",
            "m2.local.raftgraph.evil",
            "2.local.raftgraph",
            "localhost",
            "m99999999999999999999999.c.raftgraph",
            "m02.local.raftgraph",
            "m0.local.raftgraph",
            "m+2.local.raftgraph",
        ] {
            assert_eq!(parse_member_name(bad), None, "{bad}");
        }
        check_nameable("local").unwrap();
        check_nameable("my_cluster-1.eu").unwrap();
        for bad in ["a..b", "-a", "a.", ".a"] {
            assert!(check_nameable(bad).is_err(), "{bad}");
        }
    }
}
