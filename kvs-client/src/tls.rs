//! TLS settings of a [`Client`](crate::Client), and the rustls configuration built from
//! them.
//!
//! The nodes' certificates are verified the standard (webpki) way: signed by one of the
//! trusted CA certificates, valid now, and naming the endpoint's host (an IP address or a
//! DNS name) among their subject alternative names. TLS 1.3 only, with the `ring` provider.
//! A client certificate, when given, is presented to nodes that ask for one (a node run
//! with `--client-cert-auth` refuses clients without one); its subject Common Name is the
//! client's identity.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use crate::Error;

/// PEM text, from a file or from memory.
#[derive(Clone, PartialEq, Eq)]
pub enum Pem {
    /// A file, read when the client is created ([`Client::connect`](crate::Client::connect)).
    File(PathBuf),
    /// PEM text held in memory.
    Inline(Vec<u8>),
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pem::File(path) => f.debug_tuple("File").field(path).finish(),
            // May hold a private key: never printed.
            Pem::Inline(bytes) => write!(f, "Inline(<{} bytes>)", bytes.len()),
        }
    }
}

impl Pem {
    /// Reads the text: the file's bytes, or the inline text.
    fn read(&self, what: &str) -> Result<Vec<u8>, Error> {
        match self {
            Pem::File(path) => std::fs::read(path).map_err(|e| self.invalid(what, e.to_string())),
            Pem::Inline(bytes) => Ok(bytes.clone()),
        }
    }

    /// The error for this PEM source, named after its file when it has one.
    fn invalid(&self, what: &str, reason: String) -> Error {
        let source = match self {
            Pem::File(path) => path.display().to_string(),
            Pem::Inline(_) => "(given in memory)".to_owned(),
        };
        Error::TlsConfig {
            what: what.to_owned(),
            source_name: source,
            reason,
        }
    }
}

/// A client certificate (with its chain) and its private key, presented to nodes that ask
/// for one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The client's certificate, then any intermediate CA certificates, in PEM.
    pub cert: Pem,
    /// The certificate's private key in PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: Pem,
}

/// TLS settings of a client (`--cacert`, `--cert`, `--key` of the command-line tool).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsOptions {
    /// The CA certificates trusted to sign the nodes' certificates, in PEM (one or more).
    pub ca: Pem,
    /// The client certificate and key to present; `None` presents none, which nodes run
    /// with `--client-cert-auth` refuse.
    pub identity: Option<ClientIdentity>,
}

impl TlsOptions {
    /// Trusts the CA certificates in the PEM file `ca_file`, without a client certificate.
    pub fn with_ca_file(ca_file: impl Into<PathBuf>) -> TlsOptions {
        TlsOptions {
            ca: Pem::File(ca_file.into()),
            identity: None,
        }
    }

    /// Presents the client certificate in the PEM file `cert_file` with the private key
    /// in `key_file`.
    pub fn identity_files(
        mut self,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> TlsOptions {
        self.identity = Some(ClientIdentity {
            cert: Pem::File(cert_file.into()),
            key: Pem::File(key_file.into()),
        });
        self
    }

    /// Reads the files and builds the rustls configuration; [`Error::TlsConfig`] names
    /// the file that cannot be read or holds no usable certificate or key.
    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>, Error> {
        const CA: &str = "CA certificate file";
        let mut roots = RootCertStore::empty();
        for cert in certificates(&self.ca, CA)? {
            roots.add(cert).map_err(|e| {
                self.ca
                    .invalid(CA, format!("not a usable CA certificate: {e}"))
            })?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| Error::InvalidOptions {
                reason: format!("TLS: {e}"),
            })?
            .with_root_certificates(roots);
        let config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some(identity) => {
                const CERT: &str = "client certificate file";
                const KEY: &str = "client key file";
                let chain = certificates(&identity.cert, CERT)?;
                let key = private_key(&identity.key, KEY)?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    identity
                        .key
                        .invalid(KEY, format!("does not fit the client certificate: {e}"))
                })?
            }
        };
        Ok(Arc::new(config))
    }
}

/// Every certificate in `pem`; an error if it holds none or one is malformed.
fn certificates(pem: &Pem, what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let text = pem.read(what)?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem.invalid(what, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(pem.invalid(what, "holds no PEM certificate".to_owned()));
    }
    Ok(certs)
}

/// The private key in `pem`; an error if it holds none or it is malformed.
fn private_key(pem: &Pem, what: &str) -> Result<PrivateKeyDer<'static>, Error> {
    let text = pem.read(what)?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            pem.invalid(what, "holds no PEM private key".to_owned())
        }
        e => pem.invalid(what, format!("invalid PEM: {e}")),
    })
}

/// The name a node's certificate must carry for `endpoint` (`host:port`, `[v6]:port`):
/// its host, as an IP address or a DNS name.
pub(crate) fn server_name(endpoint: &str) -> Result<ServerName<'static>, String> {
    let host = endpoint
        .rsplit_once(':')
        .map_or(endpoint, |(host, _port)| host);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host:?} is neither an IP address nor a DNS name: {e}"))
}

/// How a TLS failure reads, from the rustls error inside an I/O error, if there is one.
pub(crate) fn rustls_error(error: &std::io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

/// Whether an alert the node sent says that it refused our certificate (or that we sent
/// none while it requires one).
pub(crate) fn refuses_client_certificate(alert: &rustls::AlertDescription) -> bool {
    use rustls::AlertDescription as A;
    matches!(
        alert,
        A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::CertificateRequired
            | A::AccessDenied
            | A::DecryptError
    )
}

/// What a refusal alert means for the person who runs the client.
pub(crate) fn describe_refusal(alert: &rustls::AlertDescription, presented: bool) -> String {
    use rustls::AlertDescription as A;
    match alert {
        A::CertificateRequired if !presented => {
            "no client certificate was given and the node requires one (give --cert and --key)"
                .to_owned()
        }
        A::CertificateRequired => "the node requires a client certificate".to_owned(),
        A::UnknownCA => "it is not signed by a CA the node trusts (alert UnknownCA)".to_owned(),
        A::CertificateExpired => {
            "it has expired or is not valid yet (alert CertificateExpired)".to_owned()
        }
        A::CertificateRevoked => "it was revoked (alert CertificateRevoked)".to_owned(),
        other => format!("alert {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_host() {
        let name = |e: &str| server_name(e).map(|n| n.to_str().into_owned());
        assert_eq!(name("127.0.0.1:6001").as_deref(), Ok("127.0.0.1"));
        assert_eq!(name("[::1]:6001").as_deref(), Ok("::1"));
        assert_eq!(name("node-1.kvs:6001").as_deref(), Ok("node-1.kvs"));
        assert!(server_name("bad_host!:1").is_err());
    }

    #[test]
    fn a_missing_file_is_named() {
        let options = TlsOptions::with_ca_file("/nonexistent/ca.pem");
        let error = options.client_config().err().map(|e| e.to_string());
        let error = error.unwrap_or_default();
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
        assert!(error.contains("CA certificate file"), "{error}");
    }

    #[test]
    fn pem_without_certificates_or_keys_is_refused() {
        let options = TlsOptions {
            ca: Pem::Inline(b"not pem at all".to_vec()),
            identity: None,
        };
        let error = options.client_config().err().map(|e| e.to_string());
        assert!(
            error
                .as_deref()
                .unwrap_or("")
                .contains("holds no PEM certificate"),
            "{error:?}"
        );
        let debug = format!("{:?}", Pem::Inline(b"-----BEGIN PRIVATE KEY-----".to_vec()));
        assert!(!debug.contains("PRIVATE"), "{debug}");
    }
}
