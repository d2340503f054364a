//! Certificates for humans (`raftgraph certs`): a CA per cluster, member certificates that
//! name their member, client certificates. ECDSA P-256 keys from `ring`'s generator.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rand::TryRngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};

use super::{TlsError, check_nameable, member_name};

/// A certificate and its private key, PEM. The key is secret: [`write_pem_files`] writes it
/// 0600, and nothing here prints or logs it.
pub struct Generated {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Generated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generated").finish_non_exhaustive()
    }
}

fn gen_err(e: rcgen::Error) -> TlsError {
    TlsError::Config(format!("generating a certificate: {e}"))
}

/// Parameters every certificate here starts from: a random serial, valid from an hour before
/// `now` (clock skew) for `days`.
fn params(
    sans: Vec<SanType>,
    common_name: &str,
    now: SystemTime,
    days: u32,
) -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::default();
    p.subject_alt_names = sans;
    p.distinguished_name.push(DnType::CommonName, common_name);
    let mut serial = [0u8; 16];
    rand::rngs::OsRng
        .try_fill_bytes(&mut serial)
        .map_err(|e| TlsError::Config(format!("the OS random generator: {e}")))?;
    serial[0] &= 0x7f; // positive
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    let t = |s: SystemTime| time::OffsetDateTime::from(s);
    p.not_before = t(now - Duration::from_secs(3600));
    p.not_after = t(now + Duration::from_secs(u64::from(days) * 86_400));
    Ok(p)
}

/// A new CA for cluster `cluster_id`.
pub fn generate_ca(cluster_id: &str, now: SystemTime, days: u32) -> Result<Generated, TlsError> {
    check_nameable(cluster_id).map_err(TlsError::Config)?;
    let key = KeyPair::generate().map_err(gen_err)?;
    let mut p = params(
        Vec::new(),
        &format!("raftgraph CA of cluster {cluster_id}"),
        now,
        days,
    )?;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).map_err(gen_err)?;
    Ok(Generated {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn issuer<'a>(ca_cert_pem: &str, ca_key_pem: &str) -> Result<Issuer<'a, KeyPair>, TlsError> {
    let key = KeyPair::from_pem(ca_key_pem)
        .map_err(|_| TlsError::Config("the CA key is not a PEM private key".into()))?;
    Issuer::from_ca_cert_pem(ca_cert_pem, key)
        .map_err(|e| TlsError::Config(format!("the CA certificate: {e}")))
}

/// Host names and addresses as SANs. A host that could pass for a member name (under
/// `.raftgraph`) or a wildcard is refused: one certificate must name one member.
fn host_sans(hosts: &[String]) -> Result<Vec<SanType>, TlsError> {
    if let Some(h) = hosts.iter().find(|h| super::reserved_host(h)) {
        return Err(TlsError::Config(format!(
            "--host {h:?}: names under .raftgraph and wildcards are reserved for member names"
        )));
    }
    sans_for(hosts)
}

fn sans_for(hosts: &[String]) -> Result<Vec<SanType>, TlsError> {
    hosts
        .iter()
        .map(|h| match h.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => h.clone().try_into().map(SanType::DnsName).map_err(|_| {
                TlsError::Config(format!("{h:?} is neither an IP address nor a DNS name"))
            }),
        })
        .collect()
}

/// A certificate for member `id` of `cluster_id`, signed by the CA: it names the member
/// ([`member_name`]) and `hosts` (the names and addresses clients dial it by), for use as
/// server and as client (members dial each other).
pub fn generate_member(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    cluster_id: &str,
    id: u64,
    hosts: &[String],
    now: SystemTime,
    days: u32,
) -> Result<Generated, TlsError> {
    check_nameable(cluster_id).map_err(TlsError::Config)?;
    if id == 0 {
        return Err(TlsError::Config("member ids start at 1".into()));
    }
    let issuer = issuer(ca_cert_pem, ca_key_pem)?;
    let mut sans = sans_for(&[member_name(cluster_id, id)])?;
    sans.extend(host_sans(hosts)?);
    let mut p = params(
        sans,
        &format!("raftgraph member {id} of cluster {cluster_id}"),
        now,
        days,
    )?;
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    signed(p, &issuer)
}

/// A new key, and a certificate of `p` for it signed by `issuer`, for signatures only.
fn signed(mut p: CertificateParams, issuer: &Issuer<'_, KeyPair>) -> Result<Generated, TlsError> {
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().map_err(gen_err)?;
    let cert = p.signed_by(&key, issuer).map_err(gen_err)?;
    Ok(Generated {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A client certificate signed by the CA, named `name` (common name only: it names no member,
/// so it opens no door on the peer plane).
pub fn generate_client(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    name: &str,
    now: SystemTime,
    days: u32,
) -> Result<Generated, TlsError> {
    let issuer = issuer(ca_cert_pem, ca_key_pem)?;
    let mut p = params(Vec::new(), name, now, days)?;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    signed(p, &issuer)
}

/// Writes `<dir>/<stem>.pem` (0644) and `<dir>/<stem>.key` (0600). Each is written to a new
/// temporary file created with its mode (never readable by others, even for a moment), synced,
/// and renamed into place, then the directory is synced: a crash leaves the old file or the
/// new one, and a replaced key is a new file (a descriptor open on the old one cannot read it).
/// Refuses to overwrite either unless `replace`. Returns the two paths.
pub fn write_pem_files(
    dir: &Path,
    stem: &str,
    g: &Generated,
    replace: bool,
) -> Result<(PathBuf, PathBuf), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Read { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}.key"));
    if !replace && let Some(p) = [&key, &cert].into_iter().find(|p| p.exists()) {
        return Err(TlsError::Config(format!(
            "{} exists; not overwritten (pass --replace to replace it)",
            p.display()
        )));
    }
    for (path, body, mode) in [(&key, &g.key_pem, 0o600), (&cert, &g.cert_pem, 0o644)] {
        let tmp = path.with_extension("new");
        let _ = std::fs::remove_file(&tmp); // left by a crash
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(body.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))?;
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok((cert, key))
}
