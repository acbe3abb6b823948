//! TLS everywhere against real `kvs-server` processes: client ports with
//! `--client-cert-auth`, peer ports with mutual TLS, certificates made in the test's
//! directory by the server's own certificate library.
//!
//! Each refusal is checked with the library and the `kvs-client` tool: a clear error, at
//! once (well within the connect timeout and the request budget), never a hang. Each test
//! also shows the same request served with the right credentials, so that a refusal for
//! another reason cannot pass for the one checked.

#[macro_use]
mod common;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::OrFail;
use kvs_client::{Client, ClientIdentity, ClientOptions, Error, Pem, TlsOptions};
use kvs_server::certs::{Authority, LeafSpec, Validity};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tests::cluster::{find_server_binary, wait_until, Cluster, ClusterOptions, TlsFiles};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use wire::{Hello, ReplicaIdentity, Uid, WireError};

/// Environment variable naming the `kvs-client` executable (else: next to the server's).
const CLIENT_BIN_ENV: &str = "KVS_CLIENT_BIN";
/// The request budget of the clients whose refusal is checked: a refusal must come long
/// before it.
const REQUEST_BUDGET: Duration = Duration::from_secs(10);
/// Connect timeout of those clients.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A refusal comes at once: before the connect timeout, let alone the request budget.
const PROMPT: Duration = Duration::from_secs(3);
/// How long one run of the tool may take before the test gives up on it.
const RUN_BOUND: Duration = Duration::from_secs(20);
/// Bound on a new cluster serving its first write.
const READY_BOUND: Duration = Duration::from_secs(30);

fn tls_cluster(nodes: usize, proxies: bool) -> Cluster {
    common::start(ClusterOptions {
        tls: true,
        proxies,
        ..common::fast_options(nodes)
    })
}

fn options(tls: Option<TlsOptions>) -> ClientOptions {
    ClientOptions {
        request_timeout: REQUEST_BUDGET,
        connect_timeout: CONNECT_TIMEOUT,
        tls,
        ..ClientOptions::default()
    }
}

/// Waits until the cluster serves a write with its own credentials.
async fn wait_writable(cluster: &Cluster) {
    let client = common::client(cluster, Duration::from_secs(3));
    wait_until(
        "the cluster to serve a write",
        READY_BOUND,
        common::POLL,
        || {
            let client = client.clone();
            async move { client.put("ready", "yes").await.is_ok() }
        },
    )
    .await
    .or_fail(cluster, "the first write");
}

/// One put through `client` at node 1 only: its error, and how long it took.
async fn refused_put(cluster: &Cluster, tls: Option<TlsOptions>) -> (Error, Duration) {
    let endpoint = cluster.client_endpoint(1).or_fail(cluster, "endpoint");
    let client = Client::connect([endpoint], options(tls)).or_fail(cluster, "client");
    let started = Instant::now();
    let outcome = tokio::time::timeout(REQUEST_BUDGET * 2, client.put("k", "v"))
        .await
        .or_fail(cluster, "the put hung past twice its budget");
    match outcome {
        Ok(()) => common::fail(cluster, "the put was served, not refused"),
        Err(e) => (e, started.elapsed()),
    }
}

/// `kvs-client`: `$KVS_CLIENT_BIN`, else next to the server executable.
fn client_binary() -> PathBuf {
    if let Some(path) = std::env::var_os(CLIENT_BIN_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let server = find_server_binary(None).unwrap_or_else(|e| panic!("{e:#}"));
    let path = server.with_file_name("kvs-client");
    assert!(
        path.is_file(),
        "{} not found; run `cargo build --bins` first, or set {CLIENT_BIN_ENV}",
        path.display()
    );
    path
}

/// What one run of the tool did.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs `kvs-client --endpoints ENDPOINT --timeout-ms 10000 ARGS`, without any `KVS_*`
/// variable from the environment, bounded by [`RUN_BOUND`].
async fn cli(endpoint: &str, args: &[OsString]) -> Run {
    let started = Instant::now();
    let child = tokio::process::Command::new(client_binary())
        .arg("--endpoints")
        .arg(endpoint)
        .args(["--timeout-ms", &REQUEST_BUDGET.as_millis().to_string()])
        .args(args)
        .env_remove("KVS_ENDPOINTS")
        .env_remove("KVS_CACERT")
        .env_remove("KVS_CERT")
        .env_remove("KVS_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run kvs-client");
    let output = tokio::time::timeout(RUN_BOUND, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("kvs-client {args:?} still ran after {RUN_BOUND:?}"))
        .expect("kvs-client output");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        took: started.elapsed(),
    }
}

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

fn with(mut first: Vec<OsString>, rest: &[&str]) -> Vec<OsString> {
    first.extend(args(rest));
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_tls_at_a_tls_port_and_with_tls_at_a_plain_port_are_told_at_once() {
    let cluster = tls_cluster(3, true);
    wait_writable(&cluster).await;
    let endpoint = cluster.client_endpoint(1).or_fail(&cluster, "endpoint");

    // Served with the cluster's credentials, by the library and by the tool.
    let served = cli(
        &endpoint,
        &with(cluster.client_tls_args(), &["put", "k", "v"]),
    )
    .await;
    assert_eq!(served.code, Some(0), "{}", served.stderr);
    let read = cli(&endpoint, &with(cluster.client_tls_args(), &["get", "k"])).await;
    assert_eq!(
        (read.code, read.stdout.trim()),
        (Some(0), "v"),
        "{}",
        read.stderr
    );

    // A plain client: the node answers its hello with the refusal TlsRequired.
    let (error, took) = refused_put(&cluster, None).await;
    eprintln!("plain client at a TLS port: {error} ({took:?})");
    assert!(
        matches!(
            &error,
            Error::Handshake {
                source: WireError::PeerRefused(_),
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("TLS"), "{error}");
    check!(&cluster, took < PROMPT, "took {took:?}: {error}");
    let run = cli(&endpoint, &args(&["get", "k"])).await;
    eprintln!(
        "kvs-client without --cacert: exit {:?}: {}",
        run.code,
        run.stderr.trim()
    );
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    assert!(run.stderr.contains("TLS"), "{}", run.stderr);
    assert!(
        run.took < PROMPT + Duration::from_secs(1),
        "took {:?}",
        run.took
    );

    // A TLS client at a plain node's port.
    let plain = common::start(ClusterOptions {
        proxies: false,
        ..common::fast_options(1)
    });
    plain
        .wait_listening(1, READY_BOUND)
        .or_fail(&plain, "listening");
    let plain_endpoint = plain.client_endpoint(1).or_fail(&plain, "endpoint");
    let (error, took) = refused_put(&plain, cluster.client_options().tls).await;
    eprintln!("TLS client at a plain port: {error} ({took:?})");
    let wanted = format!("{plain_endpoint} is not a TLS port: connect without --cacert");
    assert!(error.to_string().contains(&wanted), "{error}");
    assert!(took < PROMPT, "took {took:?}");
    let run = cli(
        &plain_endpoint,
        &with(cluster.client_tls_args(), &["get", "k"]),
    )
    .await;
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("is not a TLS port: connect without --cacert"),
        "{}",
        run.stderr
    );
}

/// TLS options trusting `ca` and presenting `identity` (certificate and key PEM).
fn presenting(ca: &TlsFiles, identity: Option<(String, String)>) -> TlsOptions {
    TlsOptions {
        ca: Pem::File(ca.ca()),
        identity: identity.map(|(cert, key)| ClientIdentity {
            cert: Pem::Inline(cert.into_bytes()),
            key: Pem::Inline(key.into_bytes()),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_of_another_ca_expired_or_absent_are_refused() {
    let cluster = tls_cluster(3, true);
    wait_writable(&cluster).await;
    let files = cluster.tls().expect("TLS files").clone();
    let pki = cluster.tls_pki().expect("the cluster's CA");
    let fresh = Validity::days_from_now(30);

    // The control: a new certificate of the cluster's CA is served.
    let good = pki
        .authority()
        .issue(&LeafSpec::client("alice", fresh))
        .expect("issue");
    let endpoint = cluster.client_endpoint(1).or_fail(&cluster, "endpoint");
    let client = Client::connect(
        [endpoint.clone()],
        options(Some(presenting(
            &files,
            Some((good.cert_pem, good.key_pem)),
        ))),
    )
    .or_fail(&cluster, "client");
    client
        .put("k", "alice")
        .await
        .or_fail(&cluster, "alice's put");

    let stranger_ca = Authority::new("another CA", fresh).expect("CA");
    let stranger = stranger_ca
        .issue(&LeafSpec::client("alice", fresh))
        .expect("issue");
    let expired = pki
        .authority()
        .issue(&LeafSpec::client("alice", Validity::expired()))
        .expect("issue");
    let cases = [
        (
            "another CA",
            Some((stranger.cert_pem.clone(), stranger.key_pem.clone())),
            "CA",
        ),
        (
            "expired",
            Some((expired.cert_pem, expired.key_pem)),
            "expired",
        ),
        ("absent", None, "--cert"),
    ];
    for (what, identity, says) in cases {
        let (error, took) = refused_put(&cluster, Some(presenting(&files, identity))).await;
        eprintln!("client certificate {what}: {error} ({took:?})");
        assert!(
            matches!(&error, Error::ClientCertificateRefused { .. }),
            "{what}: {error:?}"
        );
        let text = error.to_string();
        assert!(
            text.contains("the server refused the client certificate") && text.contains(says),
            "{what}: {text}"
        );
        check!(&cluster, took < PROMPT, "{what}: took {took:?}");
    }

    // The tool, with the stranger's certificate in files.
    let dir = cluster.root().join("stranger");
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert, key) = (dir.join("alice.pem"), dir.join("alice-key.pem"));
    std::fs::write(&cert, &stranger.cert_pem).expect("write");
    std::fs::write(&key, &stranger.key_pem).expect("write");
    let flags = vec![
        "--cacert".into(),
        files.ca().into_os_string(),
        "--cert".into(),
        cert.into_os_string(),
        "--key".into(),
        key.into_os_string(),
    ];
    let run = cli(&endpoint, &with(flags, &["get", "k"])).await;
    eprintln!(
        "kvs-client with another CA's certificate: exit {:?}: {}",
        run.code,
        run.stderr.trim()
    );
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("the server refused the client certificate"),
        "{}",
        run.stderr
    );
    assert!(
        run.took < PROMPT + Duration::from_secs(1),
        "took {:?}",
        run.took
    );
}

/// What node `id`'s data directory says of itself: cluster identity, instance, members.
fn identity_of(cluster: &Cluster, id: u64) -> (Uid, Uid, Vec<u64>) {
    let path = cluster.data_dir(id).join("IDENTITY");
    let text = std::fs::read_to_string(&path).or_fail(cluster, "read IDENTITY");
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in {}", path.display()))
            .to_owned()
    };
    let members = field("members")
        .split(',')
        .map(|id| id.parse().expect("member id"))
        .collect();
    let uid = |name: &str| field(name).parse::<Uid>().expect("uid");
    (uid("cluster_uid"), uid("instance"), members)
}

/// Dials node `to`'s peer port over TLS with `cert`/`key` and sends the hello of member
/// `claimed` (with that member's real identity): the handshake's outcome.
async fn dial_peer_as(
    cluster: &Cluster,
    to: u64,
    claimed: u64,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<wire::Accepted, String> {
    let files = cluster.tls().expect("TLS");
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(files.ca()).expect("CA") {
        roots.add(ca.expect("CA")).expect("CA");
    }
    let chain = CertificateDer::pem_file_iter(cert)
        .expect("cert")
        .collect::<Result<Vec<_>, _>>()
        .expect("cert");
    let key = PrivateKeyDer::from_pem_file(key).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client auth");
    let addr = cluster.layout().peer_listen[&to];
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from(addr.ip().to_string()).expect("IP");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tls = tokio::time::timeout(PROMPT, connector.connect(name, tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_owned())?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let (cluster_uid, instance, members) = identity_of(cluster, claimed);
    let identity = ReplicaIdentity {
        cluster_uid,
        instance,
        members,
        sessions_max: 10_000,
        joining: false,
        configuration: 0,
        peer_addr: cluster.layout().peer_listen[&claimed].to_string(),
    };
    let hello = Hello::replica("kvs", claimed, identity);
    let mut framed = Framed::new(tls, wire::frame_codec());
    wire::client_handshake(&mut framed, &hello, PROMPT)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_member_2s_certificate_cannot_claim_to_be_member_1() {
    let cluster = tls_cluster(3, false);
    wait_writable(&cluster).await;
    let files = cluster.tls().expect("TLS").clone();

    // The control: member 1's own certificate with member 1's hello is accepted by node 3.
    let accepted = dial_peer_as(&cluster, 3, 1, &files.node_cert(1), &files.node_key(1)).await;
    match accepted {
        Ok(accepted) => assert_eq!(accepted.node_id, 3),
        Err(e) => common::fail(&cluster, format!("member 1's own hello was refused: {e}")),
    }

    // Member 2's valid certificate, claiming to be member 1.
    let refused = dial_peer_as(&cluster, 3, 1, &files.node_cert(2), &files.node_key(2)).await;
    eprintln!("member 2's certificate claiming id 1: {refused:?}");
    match refused {
        Ok(_) => common::fail(
            &cluster,
            "node 3 accepted member 2's certificate as member 1",
        ),
        Err(e) => assert!(
            e.contains("certificate") && e.contains('2'),
            "the refusal does not say why: {e}"
        ),
    }
    let logged = "presented the certificate of member 2";
    wait_until(
        "node 3 to log the refusal",
        Duration::from_secs(10),
        common::POLL,
        || async { common::log_contains(&cluster, 3, logged) },
    )
    .await
    .or_fail(&cluster, "the refusal in node 3's log");
    let log = cluster.log_tail(3, 200_000).or_fail(&cluster, "log");
    let line = log.lines().find(|l| l.contains(logged)).unwrap_or_default();
    eprintln!("node 3 logged: {line}");
    assert!(line.contains("replica 1"), "{line}");

    // The cluster still serves.
    let client = common::client(&cluster, Duration::from_secs(10));
    client
        .put("after", "yes")
        .await
        .or_fail(&cluster, "a put after the refusal");
}
