use std::os::unix::fs::PermissionsExt;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;
use crate::tls::identity::{common_name, member_id, not_after_unix, MemberIdError};

fn der(pem: &[u8]) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem).unwrap().to_vec()
}

fn der_of(path: &Path) -> Vec<u8> {
    der(&std::fs::read(path).unwrap())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn generate_writes_a_ca_nodes_and_clients_with_their_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = CertsSpec::new(dir.path().join("certs"));
    spec.clients = vec!["root".into(), "alice".into()];
    spec.hosts = vec!["10.1.2.3".into(), "db.example".into()];
    let done = generate(&spec).unwrap();
    assert_eq!(done.files().len(), 2 * (1 + 3 + 2));
    for f in done.files() {
        assert!(f.is_file(), "{} written", f.display());
    }
    assert_eq!(done.ca.cert, spec.out.join("ca.pem"));
    assert_eq!(done.nodes[2].1.key, spec.out.join("node-3-key.pem"));
    assert_eq!(done.clients[1].1.cert, spec.out.join("client-alice.pem"));
    for (id, paths) in &done.nodes {
        let der = der_of(&paths.cert);
        assert_eq!(member_id(&der), Ok(*id));
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let sans = cert.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = sans
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        let want = [
            "DNSName(localhost)".to_owned(),
            "IPAddress(7f:00:00:01)".to_owned(),
            "IPAddress(00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:01)".to_owned(),
            "IPAddress(0a:01:02:03)".to_owned(),
            "DNSName(db.example)".to_owned(),
            format!("URI(urn:kvs:member:{id})"),
        ];
        assert_eq!(names, want);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert_eq!(mode(&paths.key), 0o600);
    }
    let alice = der_of(&done.clients[1].1.cert);
    assert_eq!(common_name(&alice).as_deref(), Some("alice"));
    assert_eq!(member_id(&alice), Err(MemberIdError::None));
    let (_, cert) = X509Certificate::from_der(&alice).unwrap();
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert_eq!(mode(&done.ca.key), 0o600);
    assert_eq!(mode(&done.clients[0].1.key), 0o600);
    // Valid for about 365 days from now.
    let left = not_after_unix(&alice).unwrap() - OffsetDateTime::now_utc().unix_timestamp();
    assert!((364 * 86_400..=366 * 86_400).contains(&left), "{left}");
}

#[test]
fn generate_refuses_to_overwrite_naming_the_files_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = CertsSpec::new(dir.path());
    spec.nodes = 1;
    std::fs::write(dir.path().join("node-1-key.pem"), "mine").unwrap();
    std::fs::write(dir.path().join("ca.pem"), "mine too").unwrap();
    let err = generate(&spec).unwrap_err();
    let CertsError::Exists { paths } = &err else {
        panic!("{err}");
    };
    assert_eq!(paths.len(), 2);
    let text = err.to_string();
    assert!(text.contains("ca.pem") && text.contains("node-1-key.pem") && text.contains("--force"));
    // Nothing was written.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ca.pem")).unwrap(),
        "mine too"
    );
    assert!(!dir.path().join("node-1.pem").exists());

    // A world-readable file replaced by a key ends up 0600.
    let key = dir.path().join("node-1-key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    spec.force = true;
    let done = generate(&spec).unwrap();
    assert_eq!(member_id(&der_of(&done.nodes[0].1.cert)), Ok(1));
    assert_eq!(mode(&key), 0o600);
    assert!(std::fs::read_to_string(&key)
        .unwrap()
        .contains("PRIVATE KEY"));
}

#[test]
fn bad_settings_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    type Change = fn(&mut CertsSpec);
    let cases: Vec<(Change, &str)> = vec![
        (|s| s.nodes = 0, "--nodes"),
        (|s| s.days = 0, "--days"),
        (|s| s.clients = vec!["../x".into()], "--client"),
        (|s| s.clients = vec!["".into()], "--client"),
        (|s| s.clients = vec!["a".into(), "a".into()], "--client"),
        (|s| s.hosts = vec!["bad host".into()], "--host"),
        (|s| s.hosts = vec!["-x.example".into()], "--host"),
    ];
    for (change, flag) in cases {
        let mut spec = CertsSpec::new(dir.path());
        change(&mut spec);
        let err = generate(&spec).unwrap_err();
        assert!(err.to_string().starts_with(flag), "{flag}: {err}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn an_authority_makes_expired_foreign_and_chosen_member_certificates() {
    let ca = Authority::new("test CA", Validity::days_from_now(1)).unwrap();
    let expired = ca
        .issue(&LeafSpec::client("old", Validity::expired()))
        .unwrap();
    let expired = der(expired.cert_pem.as_bytes());
    assert!(not_after_unix(&expired).unwrap() < OffsetDateTime::now_utc().unix_timestamp());

    let mut two = LeafSpec::node(1, &[], Validity::days_from_now(1));
    two.member_ids = vec![1, 2];
    let two = der(ca.issue(&two).unwrap().cert_pem.as_bytes());
    assert_eq!(
        member_id(&two),
        Err(MemberIdError::Several {
            first: 1,
            second: 2
        })
    );
    let mut same_twice = LeafSpec::node(7, &[], Validity::days_from_now(1));
    same_twice.member_ids = vec![7, 7];
    let same_twice = der(ca.issue(&same_twice).unwrap().cert_pem.as_bytes());
    assert_eq!(member_id(&same_twice), Ok(7));

    // Another CA signs with another key: its certificate is not the first one's.
    let other = Authority::new("test CA", Validity::days_from_now(1)).unwrap();
    assert_ne!(other.cert_pem(), ca.cert_pem());
    let big = der(other
        .issue(&LeafSpec::node(u64::MAX, &[], Validity::days_from_now(1)))
        .unwrap()
        .cert_pem
        .as_bytes());
    assert_eq!(member_id(&big), Ok(u64::MAX));
    assert!(matches!(
        member_id(b"not a certificate"),
        Err(MemberIdError::Unreadable(_))
    ));
}
