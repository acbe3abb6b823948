//! A replica with mutual TLS on its peer port, as a process: a connection presenting
//! member 2's valid certificate while claiming to be member 1 is refused (the dialler is
//! told why) and logged with both ids and the remote address; member 1's own certificate
//! is accepted; a plain connection is told TLS is required; a client certificate, which
//! names no member, cannot be used on the peer port.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvs_server::certs::{CertPaths, CertsSpec, GeneratedCerts};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use wire::{HandshakeRefusal, Hello, ReplicaIdentity, Uid, WireError};

const BOUND: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    let listener = StdListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("{e}"))
        .port()
}

/// A replica process; killed when dropped.
struct Replica {
    child: Child,
    log: PathBuf,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Member 3 of {1, 2, 3} (the others never start), with peer TLS, on `peer_port`.
fn start_member_3(dir: &Path, certs: &GeneratedCerts, peers: &str) -> Replica {
    let log = dir.join("replica-3.log");
    let out = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{e}"));
    let node = &certs.nodes[2].1;
    let child = Command::new(env!("CARGO_BIN_EXE_kvs-server"))
        .args(["--id", "3", "--peers", peers])
        .args(["--client-addr", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(dir.join("data-3"))
        .arg("--peer-cert-file")
        .arg(&node.cert)
        .arg("--peer-key-file")
        .arg(&node.key)
        .arg("--peer-trusted-ca-file")
        .arg(&certs.ca.cert)
        .stdout(Stdio::null())
        .stderr(Stdio::from(out))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start kvs-server: {e}"));
    Replica { child, log }
}

/// Connects to `addr` over TLS presenting `cert` (verifying the replica against `ca`),
/// and runs the handshake with `hello`.
async fn dial(addr: &str, ca: &Path, cert: &CertPaths, hello: &Hello) -> Result<(), WireError> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(ca).unwrap_or_else(|e| panic!("{e}"));
    roots
        .add(CertificateDer::from_pem_slice(&ca).unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or_else(|e| panic!("{e}"));
    let chain = std::fs::read(&cert.cert).unwrap_or_else(|e| panic!("{e}"));
    let key = std::fs::read(&cert.key).unwrap_or_else(|e| panic!("{e}"));
    let config = rustls::ClientConfig::builder_with_provider(kvs_server::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap_or_else(|e| panic!("{e}"))
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(&chain).unwrap_or_else(|e| panic!("{e}"))],
            PrivateKeyDer::from_pem_slice(&key).unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap_or_else(|e| panic!("{e}"));
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    let mut framed = Framed::new(tls, wire::frame_codec());
    wire::client_handshake(&mut framed, hello, Duration::from_secs(5))
        .await
        .map(|_| ())
}

/// Waits until `addr` accepts TCP connections.
async fn wait_listening(addr: &str, replica: &Replica) {
    let deadline = Instant::now() + BOUND;
    while TcpStream::connect(addr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the replica does not listen on {addr}:\n{}",
            replica.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the replica's log holds a line with every one of `words`; that line.
async fn wait_for_line(replica: &Replica, words: &[&str]) -> String {
    let deadline = Instant::now() + BOUND;
    loop {
        let output = replica.output();
        if let Some(line) = output.lines().find(|l| words.iter().all(|w| l.contains(w))) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {words:?}:\n{output}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_peer_presenting_member_2s_certificate_while_claiming_member_1_is_refused_and_logged() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let certs = kvs_server::certs::generate(&CertsSpec::new(dir.path().join("certs")))
        .unwrap_or_else(|e| panic!("{e}"));
    let ports = [free_port(), free_port(), free_port()];
    let peers = format!(
        "1=127.0.0.1:{},2=127.0.0.1:{},3=127.0.0.1:{}",
        ports[0], ports[1], ports[2]
    );
    let replica = start_member_3(dir.path(), &certs, &peers);
    let addr = format!("127.0.0.1:{}", ports[2]);
    wait_listening(&addr, &replica).await;

    // Member 1's hello, exactly as member 1 would send it.
    let identity = ReplicaIdentity {
        cluster_uid: kvs_server::identity::cluster_uid("kvs", &[1, 2, 3], "kvs"),
        instance: Uid([7; 16]),
        members: vec![1, 2, 3],
        sessions_max: kvs_server::config::defaults::SESSIONS_MAX as u64,
        joining: false,
        configuration: 1,
        peer_addr: format!("127.0.0.1:{}", ports[0]),
    };
    let hello = Hello::replica("kvs", 1, identity);
    let ca = &certs.ca.cert;

    let got = dial(&addr, ca, &certs.nodes[1].1, &hello).await;
    assert!(
        matches!(
            got,
            Err(WireError::PeerRefused(
                HandshakeRefusal::CertificateMismatch {
                    claimed: 1,
                    certified: 2
                }
            ))
        ),
        "{got:?}"
    );
    let line = wait_for_line(&replica, &["refused a peer connection", "claimed=1"]).await;
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("certified=2"), "{line}");
    assert!(line.contains("remote=127.0.0.1:"), "{line}");

    // A client certificate names no member: refused too.
    let got = dial(&addr, ca, &certs.clients[0].1, &hello).await;
    assert!(
        matches!(
            got,
            Err(WireError::PeerRefused(
                HandshakeRefusal::CertificateNamesNoMember { claimed: 1, .. }
            ))
        ),
        "{got:?}"
    );

    // Member 1's own certificate with the same hello is accepted.
    let got = dial(&addr, ca, &certs.nodes[0].1, &hello).await;
    assert!(got.is_ok(), "{got:?}\n{}", replica.output());

    // A plain connection is told that the port requires TLS.
    let tcp = TcpStream::connect(&addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut framed = Framed::new(tcp, wire::frame_codec());
    let got = wire::client_handshake(&mut framed, &hello, Duration::from_secs(5)).await;
    assert!(
        matches!(
            got,
            Err(WireError::PeerRefused(HandshakeRefusal::TlsRequired))
        ),
        "{got:?}"
    );
}
