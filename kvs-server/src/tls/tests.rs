//! TLS on a real client listener and peer dial, over loopback, with certificates made
//! here: who is served, who is refused and what they see, rotation, and the settings'
//! checks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::SinkExt;
use rustls::SupportedProtocolVersion;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;
use crate::certs::{Authority, CertPaths, Issued, LeafSpec, Validity};
use crate::event::{ClientIdentity, Event};
use crate::net::clients::{listen, ClientLimits, ClientService, Outbox, ValueBytesSeen};

const BOUND: Duration = Duration::from_secs(5);

/// A CA and a folder to write certificates to.
struct Pki {
    dir: tempfile::TempDir,
    ca: Authority,
}

impl Pki {
    fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca: Authority::new("test CA", Validity::days_from_now(30)).unwrap(),
        };
        std::fs::write(pki.ca_file(), pki.ca.cert_pem()).unwrap();
        pki
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn write(&self, stem: &str, issued: &Issued) -> CertPaths {
        let paths = CertPaths {
            cert: self.dir.path().join(format!("{stem}.pem")),
            key: self.dir.path().join(format!("{stem}-key.pem")),
        };
        issued.write(&paths).unwrap();
        paths
    }

    fn node(&self, id: u64) -> Issued {
        self.ca
            .issue(&LeafSpec::node(id, &[], Validity::days_from_now(30)))
            .unwrap()
    }

    fn client(&self, name: &str) -> Issued {
        self.ca
            .issue(&LeafSpec::client(name, Validity::days_from_now(30)))
            .unwrap()
    }

    /// Client-port settings with node 1's certificate.
    fn client_port(&self, ca: bool, client_cert_auth: bool) -> ClientTlsSettings {
        let node = self.write("node-1", &self.node(1));
        ClientTlsSettings {
            cert_file: node.cert,
            key_file: node.key,
            trusted_ca_file: ca.then(|| self.ca_file()),
            client_cert_auth,
            min_version: TlsVersion::V1_3,
        }
    }

    fn peer(&self, id: u64) -> PeerTlsSettings {
        let node = self.write(&format!("node-{id}"), &self.node(id));
        PeerTlsSettings {
            cert_file: node.cert,
            key_file: node.key,
            trusted_ca_file: self.ca_file(),
            member_id: id,
        }
    }
}

/// A client listener on loopback, its event-loop inbox, and what ends it.
struct Port {
    addr: SocketAddr,
    inbox: mpsc::Receiver<Event>,
    shutdown: CancellationToken,
}

impl Drop for Port {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn client_port(tls: Option<Arc<ClientTls>>) -> Port {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (events, inbox) = mpsc::channel(16);
    let service = ClientService {
        my_id: 1,
        events,
        outbox: Outbox::default(),
        limits: ClientLimits::default(),
        values: ValueBytesSeen::default(),
        connections: Default::default(),
        tls,
    };
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    tokio::spawn(listen(
        listener,
        "kvs".into(),
        service,
        shutdown.clone(),
        tasks,
    ));
    Port {
        addr,
        inbox,
        shutdown,
    }
}

fn client_config(
    ca_pem: &str,
    cert: Option<&Issued>,
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let config = match cert {
        Some(issued) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap()],
                rustls_pki_types::PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// What a TLS client got: the identity its request reached the event loop with, and the
/// certificate the server presented.
type Served = (Option<ClientIdentity>, Vec<u8>);

/// Connects over TLS, runs the handshake and sends a request; what the client saw when
/// anything failed.
async fn request_over_tls(
    port: &mut Port,
    config: Arc<rustls::ClientConfig>,
) -> Result<Served, String> {
    let tcp = TcpStream::connect(port.addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let connect = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
    let tls = tokio::time::timeout(BOUND, connect)
        .await
        .map_err(|_| "TLS connect timed out".to_string())?
        .map_err(|e| format!("TLS connect: {e}"))?;
    let served = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let mut framed = Framed::new(tls, wire::frame_codec());
    let hello = wire::Hello::new("kvs", wire::PeerRole::Client);
    wire::client_handshake(&mut framed, &hello, BOUND)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let request = wire::ClientRequest {
        id: 1,
        session: None,
        op: wire::Op::Status,
    };
    framed
        .send(wire::encode(&request).unwrap())
        .await
        .map_err(|e| format!("send: {e}"))?;
    match tokio::time::timeout(BOUND, port.inbox.recv()).await {
        Ok(Some(Event::Client { identity, .. })) => Ok((identity, served)),
        other => Err(format!("no request reached the event loop: {other:?}")),
    }
}

fn tls13() -> Vec<&'static SupportedProtocolVersion> {
    vec![&rustls::version::TLS13]
}

async fn tls_port(settings: ClientTlsSettings) -> Port {
    client_port(Some(Arc::new(Tls::new(settings).unwrap()))).await
}

#[tokio::test]
async fn a_verified_client_is_served_with_its_common_name_as_identity() {
    let pki = Pki::new();
    let mut port = tls_port(pki.client_port(true, true)).await;
    let alice = pki.client("alice");
    let config = client_config(pki.ca.cert_pem(), Some(&alice), &tls13());
    let (identity, _) = request_over_tls(&mut port, config).await.unwrap();
    assert_eq!(identity.as_deref(), Some("alice"));
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    let other = Authority::new("test CA", Validity::days_from_now(30)).unwrap();
    let mallory = other
        .issue(&LeafSpec::client("root", Validity::days_from_now(30)))
        .unwrap();
    for client_cert_auth in [true, false] {
        // Presented, a certificate is verified even where none is required.
        let mut port = tls_port(pki.client_port(true, client_cert_auth)).await;
        let config = client_config(pki.ca.cert_pem(), Some(&mallory), &tls13());
        let seen = request_over_tls(&mut port, config).await.unwrap_err();
        assert!(seen.contains("alert"), "{seen}");
    }
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused() {
    let pki = Pki::new();
    let mut port = tls_port(pki.client_port(true, true)).await;
    let old = pki
        .ca
        .issue(&LeafSpec::client("old", Validity::expired()))
        .unwrap();
    let config = client_config(pki.ca.cert_pem(), Some(&old), &tls13());
    let seen = request_over_tls(&mut port, config).await.unwrap_err();
    assert!(seen.contains("CertificateExpired"), "{seen}");
}

#[tokio::test]
async fn client_cert_auth_refuses_a_client_without_a_certificate_and_without_it_one_is_served() {
    let pki = Pki::new();
    let mut port = tls_port(pki.client_port(true, true)).await;
    let config = client_config(pki.ca.cert_pem(), None, &tls13());
    let seen = request_over_tls(&mut port, config).await.unwrap_err();
    assert!(seen.contains("CertificateRequired"), "{seen}");

    let mut port = tls_port(pki.client_port(true, false)).await;
    let config = client_config(pki.ca.cert_pem(), None, &tls13());
    let (identity, _) = request_over_tls(&mut port, config).await.unwrap();
    assert_eq!(identity, None, "no certificate, no identity");
}

#[tokio::test]
async fn a_plain_client_on_a_tls_port_is_told_tls_is_required_at_once() {
    let pki = Pki::new();
    let port = tls_port(pki.client_port(true, true)).await;
    let started = Instant::now();
    let tcp = TcpStream::connect(port.addr).await.unwrap();
    let mut framed = Framed::new(tcp, wire::frame_codec());
    let hello = wire::Hello::new("kvs", wire::PeerRole::Client);
    let got = wire::client_handshake(&mut framed, &hello, BOUND).await;
    let took = started.elapsed();
    let Err(wire::WireError::PeerRefused(refusal)) = got else {
        panic!("{got:?}");
    };
    assert_eq!(refusal, wire::HandshakeRefusal::TlsRequired);
    assert!(refusal.to_string().contains("--cacert"), "{refusal}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[tokio::test]
async fn a_tls_client_on_a_plain_port_is_closed_at_once() {
    let pki = Pki::new();
    let mut port = client_port(None).await;
    let started = Instant::now();
    let config = client_config(pki.ca.cert_pem(), None, &tls13());
    let seen = request_over_tls(&mut port, config).await.unwrap_err();
    let took = started.elapsed();
    // What a TLS client sees on a plain port: the plain refusal, which is no TLS record.
    assert_eq!(
        seen,
        "TLS connect: received corrupt message of type InvalidContentType"
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[tokio::test]
async fn tls_1_2_is_served_only_when_asked_for() {
    let pki = Pki::new();
    let alice = pki.client("alice");
    let only_12 = vec![&rustls::version::TLS12];
    let mut port = tls_port(pki.client_port(true, true)).await;
    let config = client_config(pki.ca.cert_pem(), Some(&alice), &only_12);
    let seen = request_over_tls(&mut port, config).await.unwrap_err();
    assert!(seen.contains("ProtocolVersion"), "{seen}");

    let mut settings = pki.client_port(true, true);
    settings.min_version = TlsVersion::V1_2;
    let mut port = tls_port(settings).await;
    let config = client_config(pki.ca.cert_pem(), Some(&alice), &only_12);
    let (identity, _) = request_over_tls(&mut port, config).await.unwrap();
    assert_eq!(identity.as_deref(), Some("alice"));
}

fn der(issued: &Issued) -> Vec<u8> {
    CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn after_rotation_new_connections_get_the_new_certificate_and_broken_files_are_ignored() {
    let pki = Pki::new();
    let settings = pki.client_port(true, true);
    let tls = Arc::new(Tls::new(settings.clone()).unwrap());
    let mut port = client_port(Some(Arc::clone(&tls))).await;
    let alice = pki.client("alice");
    let config = client_config(pki.ca.cert_pem(), Some(&alice), &tls13());
    let first = request_over_tls(&mut port, config.clone()).await.unwrap().1;
    assert!(matches!(tls.reload_if_changed(), Reload::Unchanged));

    // New material, valid for 3 days instead of 30: the expiry changes too.
    let before = tls.not_after_unix();
    let new = pki
        .ca
        .issue(&LeafSpec::node(1, &[], Validity::days_from_now(3)))
        .unwrap();
    pki.write("node-1", &new);
    assert!(matches!(tls.reload_if_changed(), Reload::Reloaded));
    let second = request_over_tls(&mut port, config.clone()).await.unwrap().1;
    assert_ne!(second, first);
    assert_eq!(second, der(&new));
    assert!(tls.not_after_unix() < before - 20 * 86_400);

    // A key that does not load: logged, and the material in use stays.
    std::fs::write(&settings.key_file, "not a key").unwrap();
    let Reload::Failed(e) = tls.reload_if_changed() else {
        panic!("a broken key was taken");
    };
    assert!(
        e.to_string()
            .contains(&*settings.key_file.to_string_lossy()),
        "{e}"
    );
    assert!(matches!(tls.reload_if_changed(), Reload::Unchanged));
    let third = request_over_tls(&mut port, config).await.unwrap().1;
    assert_eq!(third, der(&new));
}

#[tokio::test]
async fn the_watch_reloads_changed_files_by_itself() {
    let pki = Pki::new();
    let settings = pki.client_port(true, false);
    let tls = Arc::new(Tls::new(settings).unwrap());
    let stop = CancellationToken::new();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    tokio::spawn(watch(
        Arc::clone(&tls),
        Duration::from_millis(20),
        stop.clone(),
        move |t| {
            let _ = seen_tx.send(t);
        },
    ));
    let before = tls.not_after_unix();
    assert_eq!(seen.recv().await, Some(before));
    let new = pki
        .ca
        .issue(&LeafSpec::node(1, &[], Validity::days_from_now(2)))
        .unwrap();
    pki.write("node-1", &new);
    let deadline = Instant::now() + BOUND;
    loop {
        let t = tokio::time::timeout_at(deadline.into(), seen.recv())
            .await
            .unwrap_or_else(|_| panic!("the new certificate was not picked up"));
        if t != Some(before) {
            assert!(t < Some(before - 20 * 86_400), "{t:?}");
            break;
        }
    }
    stop.cancel();
}

/// A peer listener presenting member `id`'s certificate that answers every hello with an
/// unknown-node refusal (after TLS succeeded).
async fn peer_server(pki: &Pki, id: u64) -> SocketAddr {
    let tls = Tls::new(pki.peer(id)).unwrap();
    let server = Arc::clone(&tls.current().server);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(Ok(mut stream)) = tokio::time::timeout(
                BOUND,
                tokio_rustls::TlsAcceptor::from(Arc::clone(&server)).accept(tcp),
            )
            .await
            else {
                continue;
            };
            let refusal = wire::HandshakeRefusal::UnknownNode { node_id: 1 };
            let _ = wire::refuse_handshake(&mut stream, refusal, BOUND).await;
        }
    });
    addr
}

fn joining_hello() -> wire::Hello {
    let identity = wire::ReplicaIdentity::joining(wire::Uid([1; 16]), 10);
    wire::Hello::replica("kvs", 1, identity)
}

#[tokio::test]
async fn a_dialler_refuses_a_replica_whose_certificate_names_another_member() {
    let pki = Pki::new();
    let me = Tls::new(pki.peer(1)).unwrap();
    let addr = peer_server(&pki, 3).await.to_string();
    let hello = joining_hello();
    let got = crate::net::peers::ask_to_join(&addr, &hello, Some(&me), 2).await;
    let Err(e) = got else {
        panic!("accepted the certificate of member 3 as member 2");
    };
    let text = e.to_string();
    assert!(
        text.contains("names member 3, not member 2 that was dialled"),
        "{text}"
    );
    // The same replica dialled as member 3: TLS passes, its refusal is heard.
    let got = crate::net::peers::ask_to_join(&addr, &hello, Some(&me), 3).await;
    assert!(
        matches!(
            got,
            Err(wire::WireError::PeerRefused(
                wire::HandshakeRefusal::UnknownNode { node_id: 1 }
            ))
        ),
        "{got:?}"
    );
}

#[tokio::test]
async fn a_dialler_refuses_a_replica_certified_by_another_ca() {
    let pki = Pki::new();
    let other = Pki::new();
    let me = Tls::new(pki.peer(1)).unwrap();
    let addr = peer_server(&other, 2).await.to_string();
    let got = crate::net::peers::ask_to_join(&addr, &joining_hello(), Some(&me), 2).await;
    let text = format!("{got:?}");
    // The other CA has the same name: its signature is what fails.
    assert!(
        text.contains("invalid peer certificate: BadSignature"),
        "{text}"
    );
}

/// Replica settings of member 1 of three, in `dir`, with more flags from `more`.
fn args(dir: &std::path::Path, more: &[&str]) -> Result<crate::config::NodeConfig, String> {
    use clap::Parser;
    let data = dir.join("data");
    let mut argv = vec![
        "kvs-server",
        "--id",
        "1",
        "--peers",
        "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3",
        "--client-addr",
        "127.0.0.1:4",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    argv.extend_from_slice(more);
    let cli = crate::config::Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
    cli.replica.resolve().map_err(|e| e.to_string())
}

#[test]
fn tls_settings_are_checked_at_start_naming_the_flag_and_file() {
    let pki = Pki::new();
    let d = pki.dir.path();
    let node1 = pki.write("node-1", &pki.node(1));
    let node2 = pki.write("node-2", &pki.node(2));
    let (c1, k1, k2) = (
        node1.cert.to_str().unwrap(),
        node1.key.to_str().unwrap(),
        node2.key.to_str().unwrap(),
    );
    let ca = pki.ca_file();
    let ca = ca.to_str().unwrap();
    let empty = d.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let empty = empty.to_str().unwrap();
    let missing = d.join("missing.pem");
    let missing = missing.to_str().unwrap();

    let ok = args(d, &["--cert-file", c1, "--key-file", k1]).unwrap();
    assert_eq!(ok.client_tls.map(|t| t.min_version), Some(TlsVersion::V1_3));
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["--cert-file", missing, "--key-file", k1],
            format!("--cert-file {missing}: cannot read it"),
        ),
        (
            vec!["--cert-file", empty, "--key-file", k1],
            format!("--cert-file {empty}: no certificate in it"),
        ),
        (
            vec!["--cert-file", c1, "--key-file", c1],
            format!("--key-file {c1}: no private key in it"),
        ),
        (
            vec!["--cert-file", c1, "--key-file", k2],
            format!(
                "--key-file {k2} is not the private key of the certificate in --cert-file {c1}"
            ),
        ),
        (
            vec!["--cert-file", c1],
            "--cert-file is given without --key-file".into(),
        ),
        (
            vec!["--key-file", k1],
            "--key-file is given without --cert-file".into(),
        ),
        (
            vec!["--cert-file", c1, "--key-file", k1, "--client-cert-auth"],
            "--client-cert-auth needs --trusted-ca-file".into(),
        ),
        (
            vec!["--trusted-ca-file", ca],
            "--trusted-ca-file needs TLS on the client port".into(),
        ),
        (
            vec![
                "--cert-file",
                c1,
                "--key-file",
                k1,
                "--trusted-ca-file",
                empty,
            ],
            format!("--trusted-ca-file {empty}: no certificate in it"),
        ),
        (
            vec!["--peer-cert-file", c1, "--peer-key-file", k1],
            "missing --peer-trusted-ca-file".into(),
        ),
        (
            vec![
                "--peer-cert-file",
                node2.cert.to_str().unwrap(),
                "--peer-key-file",
                k2,
                "--peer-trusted-ca-file",
                ca,
            ],
            "names member 2, but this replica is --id 1".into(),
        ),
        (
            vec![
                "--peer-cert-file",
                c1,
                "--peer-key-file",
                k1,
                "--peer-trusted-ca-file",
                k1,
            ],
            format!("--peer-trusted-ca-file {k1}: no certificate in it"),
        ),
    ];
    for (flags, want) in cases {
        let err = args(d, &flags).unwrap_err();
        assert!(err.contains(&want), "{flags:?}: {err}\nwanted: {want}");
    }
    let ok = args(
        d,
        &[
            "--cert-file",
            c1,
            "--key-file",
            k1,
            "--trusted-ca-file",
            ca,
            "--client-cert-auth",
            "--tls-min-version",
            "1.2",
            "--peer-cert-file",
            c1,
            "--peer-key-file",
            k1,
            "--peer-trusted-ca-file",
            ca,
        ],
    )
    .unwrap();
    let client = ok.client_tls.unwrap();
    assert!(client.client_cert_auth);
    assert_eq!(client.min_version, TlsVersion::V1_2);
    assert_eq!(ok.peer_tls.unwrap().member_id, 1);
}

#[test]
fn tls_settings_come_from_the_config_file_too() {
    let pki = Pki::new();
    let node1 = pki.write("node-1", &pki.node(1));
    let data = pki.dir.path().join("data");
    let toml = format!(
        "id = 1\npeers = \"1=127.0.0.1:1\"\nclient_addr = \"127.0.0.1:2\"\ndata_dir = {:?}\n\
         cert_file = {:?}\nkey_file = {:?}\ntrusted_ca_file = {:?}\nclient_cert_auth = true\n\
         tls_min_version = \"1.2\"\npeer_cert_file = {:?}\npeer_key_file = {:?}\n\
         peer_trusted_ca_file = {:?}\n",
        data,
        node1.cert,
        node1.key,
        pki.ca_file(),
        node1.cert,
        node1.key,
        pki.ca_file()
    );
    let file = pki.dir.path().join("kvs.toml");
    std::fs::write(&file, toml).unwrap();
    use clap::{CommandFactory, FromArgMatches};
    let argv = ["kvs-server", "--config", file.to_str().unwrap()];
    let matches = crate::config::Cli::command().get_matches_from(argv);
    let cli = crate::config::Cli::from_arg_matches(&matches).unwrap();
    let cfg = cli.replica.merged(&matches).unwrap().resolve().unwrap();
    let client = cfg.client_tls.unwrap();
    assert!(client.client_cert_auth, "not overridden by the absent flag");
    assert_eq!(client.min_version, TlsVersion::V1_2);
    assert_eq!(client.trusted_ca_file, Some(pki.ca_file()));
    assert_eq!(cfg.peer_tls.unwrap().cert_file, node1.cert);
}
