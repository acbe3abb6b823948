//! What a certificate says about who holds it: a replica's member id (a URI SAN
//! `urn:kvs:member:<id>`, [`crate::certs::MEMBER_URI_PREFIX`]), a client's name (the
//! subject Common Name), and when it expires.

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::certs::MEMBER_URI_PREFIX;

/// Why a certificate names no single member.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemberIdError {
    /// The bytes are not an X.509 certificate.
    #[error("not a readable X.509 certificate: {0}")]
    Unreadable(String),
    /// No URI SAN `urn:kvs:member:<id>`.
    #[error("the certificate names no member (no URI SAN {MEMBER_URI_PREFIX}<id>)")]
    None,
    /// A `urn:kvs:member:` URI whose id is not a decimal u64.
    #[error("the certificate's URI SAN {uri:?} does not end in a decimal member id")]
    BadId {
        /// The URI.
        uri: String,
    },
    /// URIs naming two different members.
    #[error("the certificate names two members, {first} and {second}")]
    Several {
        /// One id.
        first: u64,
        /// Another.
        second: u64,
    },
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match X509Certificate::from_der(der) {
        Ok((_, cert)) => Ok(cert),
        Err(e) => Err(e.to_string()),
    }
}

/// The one member id `der` (a certificate) names. The same id named twice is one id; two
/// different ids, none, or a malformed one are errors: such a certificate cannot be a
/// replica's.
pub fn member_id(der: &[u8]) -> Result<u64, MemberIdError> {
    let cert = parse(der).map_err(MemberIdError::Unreadable)?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| MemberIdError::Unreadable(e.to_string()))?;
    let mut found: Option<u64> = None;
    let names = sans.iter().flat_map(|ext| ext.value.general_names.iter());
    for name in names {
        let GeneralName::URI(uri) = name else {
            continue;
        };
        let Some(digits) = uri.strip_prefix(MEMBER_URI_PREFIX) else {
            continue;
        };
        let bad = || MemberIdError::BadId {
            uri: (*uri).to_owned(),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let id: u64 = digits.parse().map_err(|_| bad())?;
        match found {
            Some(first) if first != id => return Err(MemberIdError::Several { first, second: id }),
            _ => found = Some(id),
        }
    }
    found.ok_or(MemberIdError::None)
}

/// The subject Common Name of `der` (a certificate), if it has one in UTF-8 (or a string
/// type that converts to it).
pub fn common_name(der: &[u8]) -> Option<String> {
    let cert = parse(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// When `der` (a certificate) expires, in seconds since the Unix epoch.
pub fn not_after_unix(der: &[u8]) -> Option<i64> {
    let cert = parse(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}
