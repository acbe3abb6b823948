//! Development certificates: a CA, a certificate per replica and per client, generated
//! with rcgen (`kvs-server certs`, [`generate`]).
//!
//! A replica's certificate carries its member id as a URI SAN
//! `urn:kvs:member:<id>` ([`MEMBER_URI_PREFIX`]), plus DNS `localhost`, IP `127.0.0.1`
//! and `::1` and every `--host`; its extended key usage is both serverAuth and clientAuth,
//! so one certificate serves the client port and both directions of the peer links. A
//! client's certificate has its name as the subject Common Name (the identity the replica
//! sees) and clientAuth only.
//!
//! Tests make the certificates they need with [`Authority`] and [`LeafSpec`]: another CA,
//! an expired certificate ([`Validity::expired`]), a certificate naming a chosen member id
//! (or two, or none).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// The prefix of the URI SAN that names a replica's member id: `urn:kvs:member:<id>`,
/// the id in decimal.
pub const MEMBER_URI_PREFIX: &str = "urn:kvs:member:";

/// The default of `--nodes`.
pub const NODES_DEFAULT: u64 = 3;
/// The most replicas `kvs-server certs` makes certificates for.
pub const NODES_MAX: u64 = 1000;
/// The default of `--days`.
pub const DAYS_DEFAULT: u32 = 365;
/// The longest validity `--days` may ask for (100 years).
pub const DAYS_MAX: u32 = 36_500;
/// The client certificate made when no `--client` is given.
pub const CLIENT_DEFAULT: &str = "root";
/// Longest client name, in bytes.
pub const CLIENT_NAME_BYTES_MAX: usize = 64;

/// How far back a new certificate's validity starts, so that a clock a little behind
/// still accepts it.
const BACKDATE: Duration = Duration::hours(1);

/// What `kvs-server certs` writes.
#[derive(Clone, Debug)]
pub struct CertsSpec {
    /// The directory the files go to (created if absent).
    pub out: PathBuf,
    /// Node certificates for member ids `1..=nodes`.
    pub nodes: u64,
    /// Client certificates, one per name (the subject Common Name).
    pub clients: Vec<String>,
    /// More names for the node certificates: an IP address or a DNS name each.
    pub hosts: Vec<String>,
    /// How many days every certificate is valid from now.
    pub days: u32,
    /// Replace existing files instead of refusing.
    pub force: bool,
}

impl CertsSpec {
    /// The defaults of `kvs-server certs --out DIR`: 3 nodes, one client `root`, 365 days.
    pub fn new(out: impl Into<PathBuf>) -> CertsSpec {
        CertsSpec {
            out: out.into(),
            nodes: NODES_DEFAULT,
            clients: vec![CLIENT_DEFAULT.to_owned()],
            hosts: Vec::new(),
            days: DAYS_DEFAULT,
            force: false,
        }
    }
}

/// A certificate file and its key file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertPaths {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8), mode 0600.
    pub key: PathBuf,
}

/// The files [`generate`] wrote.
#[derive(Clone, Debug)]
pub struct GeneratedCerts {
    /// `ca.pem` and `ca-key.pem`.
    pub ca: CertPaths,
    /// `node-<id>.pem` and `node-<id>-key.pem`, by member id, ascending.
    pub nodes: Vec<(u64, CertPaths)>,
    /// `client-<name>.pem` and `client-<name>-key.pem`, in the order asked.
    pub clients: Vec<(String, CertPaths)>,
}

impl GeneratedCerts {
    /// Every file written, certificates and keys.
    pub fn files(&self) -> Vec<PathBuf> {
        let pairs = std::iter::once(&self.ca)
            .chain(self.nodes.iter().map(|(_, p)| p))
            .chain(self.clients.iter().map(|(_, p)| p));
        pairs
            .flat_map(|p| [p.cert.clone(), p.key.clone()])
            .collect()
    }
}

/// Why certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// Files that would be overwritten exist, and `--force` was not given.
    #[error(
        "refusing to overwrite {}: pass --force to replace them",
        .paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    Exists {
        /// The existing files.
        paths: Vec<PathBuf>,
    },
    /// A setting is out of range or malformed.
    #[error("{flag}: {reason}")]
    BadSpec {
        /// The flag at fault.
        flag: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// rcgen could not make a key or a certificate.
    #[error("cannot generate {what}: {source}")]
    Generate {
        /// What was being made.
        what: String,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// A file or directory could not be written.
    #[error("cannot write {}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// When a certificate is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// Not valid before this.
    pub not_before: OffsetDateTime,
    /// Not valid after this.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago to `days` days from now.
    pub fn days_from_now(days: u32) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - BACKDATE,
            not_after: now + Duration::days(i64::from(days)),
        }
    }

    /// Valid for a month that ended a day ago: an expired certificate.
    pub fn expired() -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::days(31),
            not_after: now - Duration::days(1),
        }
    }
}

/// What a certificate issued by an [`Authority`] says.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    /// The subject Common Name.
    pub common_name: String,
    /// A URI SAN `urn:kvs:member:<id>` for each.
    pub member_ids: Vec<u64>,
    /// DNS or IP SANs (an entry that parses as an IP address is one).
    pub hosts: Vec<String>,
    /// Extended key usage serverAuth.
    pub server_auth: bool,
    /// Extended key usage clientAuth.
    pub client_auth: bool,
    /// When it is valid.
    pub validity: Validity,
}

impl LeafSpec {
    /// A replica's certificate: member `id`, DNS `localhost`, IP `127.0.0.1` and `::1`
    /// then `hosts`, serverAuth and clientAuth.
    pub fn node(id: u64, hosts: &[String], validity: Validity) -> LeafSpec {
        let mut all: Vec<String> = ["localhost", "127.0.0.1", "::1"]
            .iter()
            .map(|h| (*h).to_owned())
            .collect();
        for h in hosts {
            if !all.contains(h) {
                all.push(h.clone());
            }
        }
        LeafSpec {
            common_name: format!("kvs member {id}"),
            member_ids: vec![id],
            hosts: all,
            server_auth: true,
            client_auth: true,
            validity,
        }
    }

    /// A client's certificate: Common Name `name`, clientAuth only.
    pub fn client(name: &str, validity: Validity) -> LeafSpec {
        LeafSpec {
            common_name: name.to_owned(),
            member_ids: Vec::new(),
            hosts: Vec::new(),
            server_auth: false,
            client_auth: true,
            validity,
        }
    }
}

/// A certificate and its private key, in PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl Issued {
    /// Writes the certificate to `paths.cert` and the key to `paths.key` (mode 0600),
    /// replacing what is there.
    pub fn write(&self, paths: &CertPaths) -> Result<(), CertsError> {
        write_file(&paths.cert, self.cert_pem.as_bytes(), 0o644)?;
        write_file(&paths.key, self.key_pem.as_bytes(), 0o600)
    }
}

/// A certificate authority held in memory: signs replica and client certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    /// A new self-signed CA named `name` (its Common Name), with a new key.
    pub fn new(name: &str, validity: Validity) -> Result<Authority, CertsError> {
        let generate = |source| CertsError::Generate {
            what: format!("the CA {name:?}"),
            source,
        };
        let key = KeyPair::generate().map_err(generate)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.self_signed(&key).map_err(generate)?;
        Ok(Authority {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA's certificate (PEM): what `--trusted-ca-file` names.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's certificate and private key.
    pub fn issued(&self) -> Issued {
        Issued {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.issuer.key().serialize_pem(),
        }
    }

    /// Signs a new certificate, with a new key, as `leaf` says.
    pub fn issue(&self, leaf: &LeafSpec) -> Result<Issued, CertsError> {
        let generate = |source| CertsError::Generate {
            what: format!("a certificate for {:?}", leaf.common_name),
            source,
        };
        let key = KeyPair::generate().map_err(generate)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&leaf.common_name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if leaf.server_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if leaf.client_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.use_authority_key_identifier_extension = true;
        params.not_before = leaf.validity.not_before;
        params.not_after = leaf.validity.not_after;
        for host in &leaf.hosts {
            params.subject_alt_names.push(san_of_host(host)?);
        }
        for id in &leaf.member_ids {
            let uri = format!("{MEMBER_URI_PREFIX}{id}");
            let uri = uri.try_into().map_err(generate)?;
            params.subject_alt_names.push(SanType::URI(uri));
        }
        let cert = params.signed_by(&key, &self.issuer).map_err(generate)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// The SAN of a `--host`: an IP address if it parses as one, else a DNS name.
fn san_of_host(host: &str) -> Result<SanType, CertsError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    check_dns_name(host)?;
    let name = host.try_into().map_err(|source| CertsError::Generate {
        what: format!("the DNS name {host:?}"),
        source,
    })?;
    Ok(SanType::DnsName(name))
}

/// A DNS name: labels of letters, digits and `-` (the first may be `*`), at most 253
/// bytes.
fn check_dns_name(host: &str) -> Result<(), CertsError> {
    let bad = |reason: &str| CertsError::BadSpec {
        flag: "--host",
        reason: format!("{host:?} is neither an IP address nor a DNS name: {reason}"),
    };
    if host.is_empty() || host.len() > 253 {
        return Err(bad("it must be 1 to 253 bytes long"));
    }
    for (i, label) in host.split('.').enumerate() {
        let wildcard = i == 0 && label == "*";
        let chars_ok = label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !wildcard
            && (label.is_empty()
                || label.len() > 63
                || !chars_ok
                || label.starts_with('-')
                || label.ends_with('-'))
        {
            return Err(bad(&format!("bad label {label:?}")));
        }
    }
    Ok(())
}

/// A client name: 1 to [`CLIENT_NAME_BYTES_MAX`] bytes of letters, digits, `.`, `_`, `-`
/// and `@`, not starting with `.` (it names files).
fn check_client_name(name: &str) -> Result<(), CertsError> {
    let ok = !name.is_empty()
        && name.len() <= CLIENT_NAME_BYTES_MAX
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    if ok {
        return Ok(());
    }
    Err(CertsError::BadSpec {
        flag: "--client",
        reason: format!(
            "{name:?} is not a valid client name: 1 to {CLIENT_NAME_BYTES_MAX} letters, \
             digits, '.', '_', '-' or '@', not starting with '.'"
        ),
    })
}

fn check_spec(spec: &CertsSpec) -> Result<(), CertsError> {
    if !(1..=NODES_MAX).contains(&spec.nodes) {
        return Err(CertsError::BadSpec {
            flag: "--nodes",
            reason: format!("must be 1 to {NODES_MAX}, got {}", spec.nodes),
        });
    }
    if !(1..=DAYS_MAX).contains(&spec.days) {
        return Err(CertsError::BadSpec {
            flag: "--days",
            reason: format!("must be 1 to {DAYS_MAX}, got {}", spec.days),
        });
    }
    for (i, name) in spec.clients.iter().enumerate() {
        check_client_name(name)?;
        if spec.clients[..i].contains(name) {
            return Err(CertsError::BadSpec {
                flag: "--client",
                reason: format!("{name:?} is given twice"),
            });
        }
    }
    for host in &spec.hosts {
        san_of_host(host)?;
    }
    Ok(())
}

fn pair(out: &Path, stem: &str) -> CertPaths {
    CertPaths {
        cert: out.join(format!("{stem}.pem")),
        key: out.join(format!("{stem}-key.pem")),
    }
}

/// The files `spec` asks for (whether they exist or not).
pub fn planned(spec: &CertsSpec) -> GeneratedCerts {
    let out = &spec.out;
    GeneratedCerts {
        ca: pair(out, "ca"),
        nodes: (1..=spec.nodes)
            .map(|id| (id, pair(out, &format!("node-{id}"))))
            .collect(),
        clients: spec
            .clients
            .iter()
            .map(|name| (name.clone(), pair(out, &format!("client-{name}"))))
            .collect(),
    }
}

/// Makes a new CA, a certificate for each replica `1..=spec.nodes` and each client, and
/// writes them to `spec.out` (see the module doc). Refuses, writing nothing, if any of the
/// files exists and `spec.force` is not set; the error names them.
pub fn generate(spec: &CertsSpec) -> Result<GeneratedCerts, CertsError> {
    check_spec(spec)?;
    let plan = planned(spec);
    if !spec.force {
        let existing: Vec<PathBuf> = plan
            .files()
            .into_iter()
            .filter(|p| p.symlink_metadata().is_ok())
            .collect();
        if !existing.is_empty() {
            return Err(CertsError::Exists { paths: existing });
        }
    }
    // Everything is made in memory first: a failure writes nothing.
    let validity = Validity::days_from_now(spec.days);
    let ca = Authority::new("kvs development CA", validity)?;
    let mut issued = vec![(plan.ca.clone(), ca.issued())];
    for (id, paths) in &plan.nodes {
        let leaf = LeafSpec::node(*id, &spec.hosts, validity);
        issued.push((paths.clone(), ca.issue(&leaf)?));
    }
    for (name, paths) in &plan.clients {
        issued.push((paths.clone(), ca.issue(&LeafSpec::client(name, validity))?));
    }
    std::fs::create_dir_all(&spec.out).map_err(|source| CertsError::Io {
        path: spec.out.clone(),
        source,
    })?;
    for (paths, material) in &issued {
        material.write(paths)?;
    }
    Ok(plan)
}

/// Writes `bytes` to `path` with permissions `mode`, replacing the file: the old one is
/// removed first, so a key never passes through wider permissions.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CertsError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests;
