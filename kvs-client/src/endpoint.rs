//! Endpoint strings: `host:port`, checked without resolving the host.

use crate::Error;

/// Checks that `endpoint` looks like `host:port` (`[v6]:port` for an IPv6 address) with a
/// port from 1 to 65535. The host is not resolved here: that happens at connection time, so
/// a host that is down or not yet resolvable does not fail the client's construction.
pub(crate) fn validate(endpoint: &str) -> Result<(), Error> {
    let invalid = |reason: &str| {
        Err(Error::InvalidEndpoint {
            endpoint: endpoint.to_owned(),
            reason: reason.to_owned(),
        })
    };
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        return invalid("expected host:port");
    };
    if host.is_empty() {
        return invalid("the host is empty");
    }
    if host.contains(char::is_whitespace) || port.contains(char::is_whitespace) {
        return invalid("contains whitespace");
    }
    let bracketed = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
    if host.contains(':') && !bracketed {
        return invalid("an IPv6 address must be written in brackets, as [::1]:6001");
    }
    match port.parse::<u16>() {
        Ok(0) => invalid("the port is 0"),
        Ok(_) => Ok(()),
        Err(_) => invalid("the port is not a number from 1 to 65535"),
    }
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn accepts_host_port_forms() {
        for ok in [
            "127.0.0.1:6001",
            "localhost:1",
            "node-2.kvs:65535",
            "[::1]:6001",
        ] {
            assert!(validate(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_malformed_endpoints() {
        for bad in [
            "",
            "6001",
            ":6001",
            "host:",
            "host:0",
            "host:65536",
            "host:x",
            "::1:6001",
            "a b:1",
        ] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
    }
}
