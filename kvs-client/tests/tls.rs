//! The library's TLS against in-process nodes: a node with TLS (certificates made here
//! with rcgen), and a plain one. Every refusal must come as its own clear error, at once
//! (well within the connect timeout), never as a hang or a retry loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use kvs_client::{Client, ClientIdentity, ClientOptions, Error, Pem, TlsOptions};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use wire::{ClientRequest, ClientResponse, HandshakeExpectation, Reply};

/// A certificate and its key, in PEM.
#[derive(Clone)]
struct Issued {
    cert: String,
    key: String,
}

/// A test CA.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA"),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn issue(&self, sans: &[&str], cn: &str, expired: bool) -> Issued {
        let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(sans).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        if expired {
            params.not_before = rcgen::date_time_ymd(2001, 1, 1);
            params.not_after = rcgen::date_time_ymd(2002, 1, 1);
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

fn roots(ca: &Ca) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.pem().as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA");
    }
    Arc::new(roots)
}

/// A node's TLS configuration: TLS 1.3, its certificate, and client certificates of
/// `client_ca` required when given.
fn server_config(node: &Issued, client_ca: Option<&Ca>) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3");
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots(ca), provider)
                .build()
                .expect("verifier"),
        ),
        None => builder.with_no_client_auth(),
    };
    let chain = CertificateDer::pem_slice_iter(node.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("node cert");
    let key = PrivateKeyDer::from_pem_slice(node.key.as_bytes()).expect("node key");
    Arc::new(builder.with_single_cert(chain, key).expect("node config"))
}

/// A node that serves clients over TLS with `config`: every request is answered with the
/// subject of the client's certificate as the value (`none` without one).
async fn tls_node(config: Arc<ServerConfig>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return; // rustls sent its alert
                };
                let subject = match stream.get_ref().1.peer_certificates() {
                    Some(certs) if !certs.is_empty() => "a certificate".to_owned(),
                    _ => "none".to_owned(),
                };
                serve(Framed::new(stream, wire::frame_codec()), subject).await;
            });
        }
    });
    addr
}

/// A node without TLS.
async fn plain_node() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(serve(
                Framed::new(stream, wire::frame_codec()),
                "plain".into(),
            ));
        }
    });
    addr
}

async fn serve<T>(mut framed: Framed<T, tokio_util::codec::LengthDelimitedCodec>, value: String)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let expect = HandshakeExpectation::clients("kvs");
    if wire::server_handshake(&mut framed, &expect, 1, Duration::from_secs(5))
        .await
        .is_err()
    {
        return;
    }
    while let Some(Ok(frame)) = framed.next().await {
        let Ok(request) = wire::decode::<ClientRequest>(&frame) else {
            return;
        };
        let response = ClientResponse {
            id: request.id,
            result: Ok(Reply::Value {
                value: Some(Bytes::from(value.clone())),
                stale: true,
            }),
        };
        let Ok(bytes) = wire::encode(&response) else {
            return;
        };
        if framed.send(bytes).await.is_err() {
            return;
        }
    }
}

fn tls_options(ca: &Ca, identity: Option<&Issued>) -> TlsOptions {
    TlsOptions {
        ca: Pem::Inline(ca.pem().into_bytes()),
        identity: identity.map(|issued| ClientIdentity {
            cert: Pem::Inline(issued.cert.clone().into_bytes()),
            key: Pem::Inline(issued.key.clone().into_bytes()),
        }),
    }
}

fn client(addr: &str, tls: Option<TlsOptions>) -> Client {
    let options = ClientOptions {
        request_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(3),
        tls,
        ..ClientOptions::default()
    };
    Client::connect([addr], options).expect("valid options")
}

/// Runs one stale read and returns its outcome and how long it took.
async fn read(client: &Client) -> (Result<Option<Bytes>, Error>, Duration) {
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(20), client.get_stale("k"))
        .await
        .expect("the read hung");
    (outcome, started.elapsed())
}

/// Quicker than the connect timeout (3 s): refused at once, not retried until the deadline.
const PROMPT: Duration = Duration::from_secs(2);

struct Pki {
    ca: Ca,
    node: Issued,
    client: Issued,
}

fn pki() -> Pki {
    let ca = Ca::new("kvs test CA");
    let node = ca.issue(&["localhost", "127.0.0.1"], "node-1", false);
    let client = ca.issue(&[], "alice", false);
    Pki { ca, node, client }
}

#[tokio::test]
async fn a_client_with_a_certificate_of_the_ca_is_served_over_tls() {
    let pki = pki();
    let addr = tls_node(server_config(&pki.node, Some(&pki.ca))).await;
    let client = client(&addr, Some(tls_options(&pki.ca, Some(&pki.client))));
    let (outcome, _) = read(&client).await;
    assert_eq!(
        outcome.expect("served over TLS"),
        Some(Bytes::from("a certificate"))
    );
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let pki = pki();
    let addr = tls_node(server_config(&pki.node, Some(&pki.ca))).await;
    let stranger = Ca::new("another CA").issue(&[], "mallory", false);
    let client = client(&addr, Some(tls_options(&pki.ca, Some(&stranger))));
    let (outcome, took) = read(&client).await;
    let error = outcome.expect_err("refused");
    assert!(
        matches!(&error, Error::ClientCertificateRefused { .. }),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains("the server refused the client certificate") && text.contains("CA"),
        "{text}"
    );
    assert!(took < PROMPT, "took {took:?}");
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused() {
    let pki = pki();
    let addr = tls_node(server_config(&pki.node, Some(&pki.ca))).await;
    let expired = pki.ca.issue(&[], "alice", true);
    let client = client(&addr, Some(tls_options(&pki.ca, Some(&expired))));
    let (outcome, took) = read(&client).await;
    let text = outcome.expect_err("refused").to_string();
    assert!(
        text.contains("refused the client certificate") && text.contains("expired"),
        "{text}"
    );
    assert!(took < PROMPT, "took {took:?}");
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_where_one_is_required() {
    let pki = pki();
    let addr = tls_node(server_config(&pki.node, Some(&pki.ca))).await;
    let client = client(&addr, Some(tls_options(&pki.ca, None)));
    let (outcome, took) = read(&client).await;
    let text = outcome.expect_err("refused").to_string();
    assert!(
        text.contains("refused the client certificate") && text.contains("--cert"),
        "{text}"
    );
    assert!(took < PROMPT, "took {took:?}");
}

#[tokio::test]
async fn a_node_certificate_from_another_ca_or_for_another_host_is_not_trusted() {
    let pki = pki();
    let elsewhere = pki.ca.issue(&["node-9.example"], "node-9", false);
    let strangers = Ca::new("another CA");
    let foreign = strangers.issue(&["127.0.0.1"], "node-1", false);
    for (node, what) in [
        (&elsewhere, "not valid for name"),
        (&foreign, "not signed by a CA of --cacert"),
    ] {
        let addr = tls_node(server_config(node, None)).await;
        let client = client(&addr, Some(tls_options(&pki.ca, None)));
        let (outcome, took) = read(&client).await;
        let error = outcome.expect_err("not trusted");
        assert!(matches!(&error, Error::Tls { .. }), "{error:?}");
        let text = error.to_string();
        assert!(
            text.contains("certificate is not trusted") && text.contains(what),
            "{text}"
        );
        assert!(took < PROMPT, "took {took:?}");
    }
}

#[tokio::test]
async fn a_tls_client_at_a_plain_port_is_told_to_connect_without_cacert() {
    let pki = pki();
    let addr = plain_node().await;
    let client = client(&addr, Some(tls_options(&pki.ca, None)));
    let (outcome, took) = read(&client).await;
    let error = outcome.expect_err("not TLS");
    assert_eq!(
        error.to_string(),
        format!("{addr} is not a TLS port: connect without --cacert")
    );
    assert!(took < PROMPT, "took {took:?}");
}

#[tokio::test]
async fn a_plain_client_at_a_tls_port_is_told_to_connect_with_cacert() {
    let pki = pki();
    let addr = tls_node(server_config(&pki.node, Some(&pki.ca))).await;
    let client = client(&addr, None);
    let (outcome, took) = read(&client).await;
    let error = outcome.expect_err("TLS only");
    assert!(matches!(&error, Error::TlsRequired { .. }), "{error:?}");
    assert!(
        error.to_string().contains("connect with --cacert"),
        "{error}"
    );
    assert!(took < PROMPT, "took {took:?}");
}

#[tokio::test]
async fn a_silent_tls_port_costs_the_connect_timeout_only() {
    // Accepts TCP and never answers: the TLS handshake must give up at the connect timeout.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let held: Arc<tokio::sync::Mutex<Vec<TcpStream>>> = Arc::default();
    let keep = Arc::clone(&held);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            keep.lock().await.push(stream);
        }
    });
    let pki = pki();
    let options = ClientOptions {
        request_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_millis(500),
        tls: Some(tls_options(&pki.ca, None)),
        ..ClientOptions::default()
    };
    let client = Client::connect([addr.as_str()], options).expect("valid options");
    let (outcome, took) = read(&client).await;
    let text = outcome.expect_err("no answer").to_string();
    assert!(took < Duration::from_secs(4), "took {took:?}: {text}");
}

#[tokio::test]
async fn unusable_tls_files_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki();
    let ca = dir.path().join("ca.pem");
    let cert = dir.path().join("client.pem");
    let key = dir.path().join("client-key.pem");
    std::fs::write(&ca, pki.ca.pem()).expect("write");
    std::fs::write(&cert, &pki.client.cert).expect("write");
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n",
    )
    .expect("write");
    let connect = |tls: TlsOptions| {
        let options = ClientOptions {
            tls: Some(tls),
            ..ClientOptions::default()
        };
        Client::connect(["127.0.0.1:1"], options)
            .err()
            .map(|e| e.to_string())
    };
    let missing = connect(TlsOptions::with_ca_file(dir.path().join("nope.pem")));
    assert!(
        missing
            .as_deref()
            .is_some_and(|e| e.contains("CA certificate file") && e.contains("nope.pem")),
        "{missing:?}"
    );
    let bad_key = connect(TlsOptions::with_ca_file(&ca).identity_files(&cert, &key));
    assert!(
        bad_key
            .as_deref()
            .is_some_and(|e| e.contains("client key file") && e.contains("client-key.pem")),
        "{bad_key:?}"
    );
    let key_as_cert = connect(TlsOptions::with_ca_file(&ca).identity_files(&key, &key));
    assert!(
        key_as_cert
            .as_deref()
            .is_some_and(|e| e.contains("client certificate file")),
        "{key_as_cert:?}"
    );
    let good = connect(TlsOptions::with_ca_file(&ca).identity_files(&cert, dir.path().join("k")));
    assert!(
        good.as_deref()
            .is_some_and(|e| e.contains("client key file")),
        "{good:?}"
    );
    std::fs::write(&key, &pki.client.key).expect("write");
    assert_eq!(
        connect(TlsOptions::with_ca_file(&ca).identity_files(&cert, &key)),
        None
    );
}
