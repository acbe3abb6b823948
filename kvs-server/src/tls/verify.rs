//! How a dialing replica checks the replica it dialled: the chain against the peer CA,
//! with no host name check (peers are reached at addresses, and a certificate names a
//! member, not a host), then the member id the certificate names.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, Error, OtherError, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::identity::{member_id, MemberIdError};

/// Verifies an accepting replica's certificate: chained to `roots`, and naming member
/// `expect` (or, when `None`, naming one member, whichever).
#[derive(Debug)]
pub(crate) struct MemberVerifier {
    pub roots: Arc<RootCertStore>,
    pub algorithms: WebPkiSupportedAlgorithms,
    pub expect: Option<u64>,
}

/// A certificate that is valid but names the wrong member, or none.
#[derive(Debug, thiserror::Error)]
pub enum WrongMember {
    /// It names another member.
    #[error(
        "the peer's certificate names member {certified}, not member {expected} that was dialled"
    )]
    Other {
        /// The member dialled.
        expected: u64,
        /// The member its certificate names.
        certified: u64,
    },
    /// It names no single member.
    #[error("the peer's certificate cannot be a replica's: {0}")]
    NoMember(MemberIdError),
}

fn refuse(wrong: WrongMember) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(wrong))))
}

impl ServerCertVerifier for MemberVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let certified = member_id(end_entity).map_err(|e| refuse(WrongMember::NoMember(e)))?;
        match self.expect {
            Some(expected) if expected != certified => Err(refuse(WrongMember::Other {
                expected,
                certified,
            })),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
