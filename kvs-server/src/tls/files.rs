//! Reading certificates, keys and CAs from PEM files, each error naming the flag and the
//! file at fault.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("{flag} {}: cannot read it: {source}", .path.display())]
    Read {
        /// The setting that names the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A certificate file holds no PEM certificate.
    #[error(
        "{flag} {}: no certificate in it (expected PEM \"-----BEGIN CERTIFICATE-----\")",
        .path.display()
    )]
    NoCertificate {
        /// The setting that names the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A key file holds no PEM private key.
    #[error(
        "{flag} {}: no private key in it (expected PEM \"-----BEGIN PRIVATE KEY-----\", or an \
         RSA or EC private key)",
        .path.display()
    )]
    NoKey {
        /// The setting that names the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A file is not valid PEM, or holds something unusable.
    #[error("{flag} {}: {reason}", .path.display())]
    Unusable {
        /// The setting that names the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The private key is not the key of the certificate.
    #[error(
        "{key_flag} {} is not the private key of the certificate in {cert_flag} {}",
        .key.display(),
        .cert.display()
    )]
    KeyMismatch {
        /// The certificate's setting.
        cert_flag: &'static str,
        /// The certificate file.
        cert: PathBuf,
        /// The key's setting.
        key_flag: &'static str,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the configuration built from readable material.
    #[error("cannot set up TLS: {0}")]
    Build(String),
}

/// Reads `path`, named by `flag`.
pub(crate) fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_owned(),
        source,
    })
}

fn unusable(flag: &'static str, path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::Unusable {
        flag,
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// The certificates in `pem` (from `path`, named by `flag`), at least one.
pub(crate) fn certificates(
    flag: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, pem::Error>>()
        .map_err(|e| unusable(flag, path, format!("unreadable PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            flag,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The private key in `pem` (from `path`, named by `flag`).
pub(crate) fn private_key(
    flag: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey {
            flag,
            path: path.to_owned(),
        },
        e => unusable(flag, path, format!("unreadable PEM: {e}")),
    })
}

/// The trust anchors in `pem` (from `path`, named by `flag`): every certificate in it.
pub(crate) fn roots(
    flag: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certificates(flag, path, pem)? {
        store
            .add(cert)
            .map_err(|e| unusable(flag, path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(store))
}

/// A certificate chain with its private key, checked to belong together.
#[derive(Debug)]
pub(crate) struct Identity {
    /// The chain, the end-entity certificate first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
    /// When the end-entity certificate expires, in seconds since the Unix epoch.
    pub not_after_unix: i64,
}

/// Where a certificate and its key are, and the settings that name them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PairFiles<'a> {
    pub cert_flag: &'static str,
    pub cert: &'a Path,
    pub key_flag: &'static str,
    pub key: &'a Path,
}

/// Reads a certificate chain and its key, and checks that the key is the certificate's.
pub(crate) fn identity(
    files: PairFiles<'_>,
    provider: &CryptoProvider,
) -> Result<Identity, TlsError> {
    let chain = certificates(
        files.cert_flag,
        files.cert,
        &read(files.cert_flag, files.cert)?,
    )?;
    let key = private_key(files.key_flag, files.key, &read(files.key_flag, files.key)?)?;
    let not_after_unix = super::identity::not_after_unix(&chain[0]).ok_or_else(|| {
        unusable(
            files.cert_flag,
            files.cert,
            "the first certificate is not a readable X.509 certificate",
        )
    })?;
    match CertifiedKey::from_der(chain.clone(), key.clone_key(), provider) {
        Ok(_) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(TlsError::KeyMismatch {
                cert_flag: files.cert_flag,
                cert: files.cert.to_owned(),
                key_flag: files.key_flag,
                key: files.key.to_owned(),
            })
        }
        Err(e) => return Err(unusable(files.key_flag, files.key, e.to_string())),
    }
    Ok(Identity {
        chain,
        key,
        not_after_unix,
    })
}
