//! The key-value subcommands: each runs one request and reports it (stdout, stderr and
//! the exit code) as the crate documentation describes.

use std::ffi::OsString;
use std::io::Write;

use bytes::Bytes;
use clap::CommandFactory;
use kvs_client::{CasOutcome, Client, Error, ErrorReply, RetryHandle, WriteOutcome};
use serde_json::{json, Map, Value};

use super::args::Args;
use super::{base64, output};

/// Success.
pub const EXIT_OK: u8 = 0;
/// Key not found, or CAS mismatch.
pub const EXIT_NOT_FOUND: u8 = 1;
/// A membership or auth change refused by the cluster: nothing changed.
pub const EXIT_REFUSED: u8 = 1;
/// Usage error or invalid input.
pub const EXIT_USAGE: u8 = 2;
/// Unavailable, timed out, or connection error: nothing was applied.
pub const EXIT_UNAVAILABLE: u8 = 3;
/// A write may or may not have been applied.
pub const EXIT_OUTCOME_UNKNOWN: u8 = 4;
/// A retried write's session expired: not applied now, never applicable again.
pub const EXIT_SESSION_EXPIRED: u8 = 5;
/// Permission denied: auth is enabled and this client's identity may not do it.
pub const EXIT_PERMISSION_DENIED: u8 = 6;

/// `put KEY VALUE`.
pub async fn put(client: &Client, key: String, value: OsString, json: bool) -> u8 {
    match client
        .put(key, Bytes::from(value.into_encoded_bytes()))
        .await
    {
        Ok(()) => {
            if json {
                print_json(&json!({ "ok": true }));
            }
            EXIT_OK
        }
        Err(e) => fail(&e),
    }
}

/// `get KEY [--stale]`.
pub async fn get(client: &Client, key: String, stale: bool, json: bool) -> u8 {
    let read = if stale {
        client.get_stale(key.clone()).await
    } else {
        client.get(key.clone()).await
    };
    match read {
        Ok(value) => get_result(&key, value.as_deref(), json),
        Err(e) => fail(&e),
    }
}

/// `del KEY`.
pub async fn del(client: &Client, key: String, json: bool) -> u8 {
    match client.delete(key.clone()).await {
        Ok(existed) => del_result(&key, existed, json),
        Err(e) => fail(&e),
    }
}

/// `cas KEY EXPECTED NEW` or `cas KEY --absent NEW`; a wrong number of values is a usage
/// error (exit 2, with clap's message).
pub async fn cas(
    client: &Client,
    key: String,
    values: Vec<OsString>,
    absent: bool,
    json: bool,
) -> u8 {
    let (expected, new) = match cas_values(values, absent) {
        Ok(pair) => pair,
        Err(message) => {
            Args::command()
                .error(clap::error::ErrorKind::WrongNumberOfValues, message)
                .exit();
        }
    };
    match client.compare_and_swap(key.clone(), expected, new).await {
        Ok(outcome) => cas_result(&key, &outcome, json),
        Err(e) => fail(&e),
    }
}

/// Splits the positional values of `cas` into (expected, new).
fn cas_values(values: Vec<OsString>, absent: bool) -> Result<(Option<Bytes>, Bytes), String> {
    let mut values = values
        .into_iter()
        .map(|v| Bytes::from(v.into_encoded_bytes()));
    match (absent, values.next(), values.next()) {
        (true, Some(new), None) => Ok((None, new)),
        (true, _, _) => Err("with --absent, give only KEY and NEW".to_owned()),
        (false, Some(expected), Some(new)) => Ok((Some(expected), new)),
        (false, _, _) => Err("give KEY EXPECTED NEW, or KEY --absent NEW".to_owned()),
    }
}

/// Resends the write of a retry token; reports like the original command.
pub async fn retry(client: &Client, token: &str, json: bool) -> u8 {
    let handle = match base64::decode(token.trim()) {
        Some(bytes) => RetryHandle::from_bytes(&bytes),
        None => Err(Error::InvalidRetry {
            reason: "the token is not base64".to_owned(),
        }),
    };
    let handle = match handle {
        Ok(handle) => handle,
        Err(e) => return fail(&e),
    };
    let key = handle
        .key()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default();
    match client.retry(&handle).await {
        Ok(WriteOutcome::Written) => {
            if json {
                print_json(&json!({ "ok": true }));
            }
            EXIT_OK
        }
        Ok(WriteOutcome::Deleted { existed }) => del_result(&key, existed, json),
        Ok(WriteOutcome::Cas(outcome)) => cas_result(&key, &outcome, json),
        Ok(WriteOutcome::DeletedRange { count }) => {
            if json {
                print_json(&json!({ "deleted": count }));
            } else {
                println!("{count}");
            }
            EXIT_OK
        }
        Ok(WriteOutcome::AuthChanged) => {
            if json {
                print_json(&json!({ "ok": true }));
            }
            EXIT_OK
        }
        Ok(WriteOutcome::Txn { succeeded }) => {
            if json {
                print_json(&json!({ "succeeded": succeeded }));
            } else {
                println!("{}", if succeeded { "SUCCESS" } else { "FAILURE" });
            }
            if succeeded {
                EXIT_OK
            } else {
                EXIT_NOT_FOUND
            }
        }
        Err(e) => fail(&e),
    }
}

fn del_result(key: &str, existed: bool, json: bool) -> u8 {
    if json {
        print_json(&json!({ "key": key, "existed": existed }));
    } else if !existed {
        eprintln!("key not found: {key:?}");
    }
    if existed {
        EXIT_OK
    } else {
        EXIT_NOT_FOUND
    }
}

fn get_result(key: &str, value: Option<&[u8]>, json: bool) -> u8 {
    if json {
        let mut object = Map::new();
        object.insert("key".to_owned(), json!(key));
        object.insert("found".to_owned(), json!(value.is_some()));
        output::put_bytes(&mut object, "value", value);
        print_json(&Value::Object(object));
    } else if let Some(value) = value {
        let mut stdout = std::io::stdout().lock();
        // A closed pipe (`| head -c1`) is not an error worth reporting.
        let _ = stdout
            .write_all(value)
            .and_then(|()| stdout.write_all(b"\n"));
        let _ = stdout.flush();
    } else {
        eprintln!("key not found: {key:?}");
    }
    if value.is_some() {
        EXIT_OK
    } else {
        EXIT_NOT_FOUND
    }
}

fn cas_result(key: &str, outcome: &CasOutcome, json: bool) -> u8 {
    let current = match outcome {
        CasOutcome::Swapped => None,
        CasOutcome::Mismatch { current } => Some(current.as_deref()),
    };
    if json {
        let mut object = Map::new();
        object.insert("key".to_owned(), json!(key));
        object.insert("swapped".to_owned(), json!(current.is_none()));
        output::put_bytes(&mut object, "current", current.flatten());
        print_json(&Value::Object(object));
    } else {
        match current {
            None => {}
            Some(None) => eprintln!("mismatch: {key:?} is absent"),
            Some(Some(value)) => {
                eprintln!("mismatch: {key:?} is {}", output::quoted(value));
            }
        }
    }
    if current.is_none() {
        EXIT_OK
    } else {
        EXIT_NOT_FOUND
    }
}

/// `status`: every node's status, and the leader; exit 0 only if a leader with a quorum
/// is known and reachable ([`output::verdict`]), else 3 with the reason on stderr.
pub async fn status(client: &Client, json: bool) -> u8 {
    let entries = client.status().await;
    let verdict = output::verdict(&entries);
    if json {
        let mut object = output::status_json(&entries);
        if let Value::Object(fields) = &mut object {
            let error = match &verdict {
                output::Verdict::Leader { .. } => Value::Null,
                output::Verdict::NoLeader(reason) => json!(reason),
            };
            fields.insert("error".to_owned(), error);
        }
        print_json(&object);
    } else {
        print!("{}", output::status_table(&entries));
        for (endpoint, status) in &entries {
            if let Err(e) = status {
                eprintln!(
                    "unreachable: {endpoint}: {}",
                    output::strip_endpoint(endpoint, e)
                );
            }
        }
    }
    match verdict {
        output::Verdict::Leader { .. } => EXIT_OK,
        output::Verdict::NoLeader(reason) => {
            eprintln!("error: {reason}");
            EXIT_UNAVAILABLE
        }
    }
}

/// Prints `value` as one line of JSON on stdout.
pub fn print_json(value: &Value) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{value}");
    let _ = stdout.flush();
}

/// Prints the error as one line on stderr (and the retry token on a second line for an
/// unknown outcome) and returns its exit code.
pub fn fail(error: &Error) -> u8 {
    eprintln!("error: {error}");
    match error {
        Error::PermissionDenied { .. } | Error::Rejected(ErrorReply::PermissionDenied { .. }) => {
            EXIT_PERMISSION_DENIED
        }
        Error::Rejected(e) if e.is_membership_refusal() => EXIT_REFUSED,
        Error::Rejected(ErrorReply::AuthRefused { .. }) => EXIT_REFUSED,
        Error::MembershipUnknown { .. } => EXIT_OUTCOME_UNKNOWN,
        Error::InvalidEndpoint { .. }
        | Error::InvalidOptions { .. }
        | Error::Rejected(_)
        | Error::InvalidRetry { .. }
        | Error::TlsConfig { .. } => EXIT_USAGE,
        Error::OutcomeUnknown { retry, .. } => {
            let token = base64::encode(&retry.to_bytes());
            eprintln!("retry: kvs-client retry {token}");
            EXIT_OUTCOME_UNKNOWN
        }
        Error::SessionExpired { .. } => EXIT_SESSION_EXPIRED,
        Error::Unavailable { .. }
        | Error::Timeout { .. }
        | Error::Handshake { .. }
        | Error::NotTlsPort { .. }
        | Error::TlsRequired { .. }
        | Error::ClientCertificateRefused { .. }
        | Error::Tls { .. }
        | Error::Protocol { .. } => EXIT_UNAVAILABLE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_values_follow_the_two_forms() {
        let v = |s: &[&str]| s.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            cas_values(v(&["a", "b"]), false),
            Ok((Some(Bytes::from("a")), Bytes::from("b")))
        );
        assert_eq!(cas_values(v(&["b"]), true), Ok((None, Bytes::from("b"))));
        assert!(cas_values(v(&["a", "b"]), true).is_err());
        assert!(cas_values(v(&["b"]), false).is_err());
    }
}
