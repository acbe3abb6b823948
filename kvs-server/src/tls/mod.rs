//! TLS on the client port and the peer links (rustls, ring provider).
//!
//! - [`identity`]: what a certificate says (member id, client name, expiry).

pub mod identity;
