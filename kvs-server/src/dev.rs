//! `kvs-server dev`: a whole cluster on loopback for trying the store out. Each replica is
//! its own child process (this very binary, run again with the replica's flags), so that
//! `kill -9` of one shows failover. The parent checks every port first, starts the
//! replicas, waits until each accepts client connections, prints what runs where (pids
//! included), relays the replicas' logs tagged with their ids, reports a replica that
//! exits, and on Ctrl-C or SIGTERM stops them all gracefully and waits for them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paxos_core::NodeId;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{ConfigError, DevArgs, ReplicaArgs};
use crate::error::ServerError;
use crate::identity::{self, InitialClusterState};

/// How long a replica may take to accept client connections after it was started.
const READY_MAX: Duration = Duration::from_secs(30);

/// How often the parent looks at a starting replica's client port.
const READY_POLL: Duration = Duration::from_millis(50);

/// How long a replica has to stop after SIGTERM (its own graceful stop takes at most 10 s
/// plus 2 s for blocking work) before it is killed.
const STOP_MAX: Duration = Duration::from_secs(15);

/// The longest log line relayed whole; longer lines are cut there.
const LOG_LINE_BYTES_MAX: usize = 64 * 1024;

/// One replica of a dev cluster: where it listens and the flags it is started with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevReplica {
    /// Its id (1 to `--nodes`).
    pub id: NodeId,
    /// Where it serves clients.
    pub client_addr: String,
    /// Where its peers reach it.
    pub peer_addr: String,
    /// Where it serves the admin HTTP listener (metrics, health, the status page).
    pub admin_addr: String,
    /// The `kvs-server` flags that run it.
    pub flags: Vec<String>,
}

/// The replicas of a dev cluster. Each one's settings are resolved like those of
/// `kvs-server` itself (same defaults, same checks), so a bad setting fails here, before
/// any process starts.
pub fn replicas(args: &DevArgs) -> Result<Vec<DevReplica>, ServerError> {
    let max = paxos_core::MEMBERS_MAX as u64;
    if !(1..=max).contains(&args.nodes) {
        return Err(ConfigError::OutOfRange {
            flag: "--nodes",
            min: 1,
            max,
            got: args.nodes,
        }
        .into());
    }
    let addr = |base: u16, i: u64| -> Result<String, ConfigError> {
        u16::try_from(i - 1)
            .ok()
            .and_then(|offset| base.checked_add(offset))
            .map(|port| format!("127.0.0.1:{port}"))
            .ok_or(ConfigError::PortOverflow {
                base,
                offset: i - 1,
            })
    };
    let state = initial_state(&args.data_dir, args.nodes)?;
    let certs = match args.tls {
        true => Some(dev_certs(&args.data_dir, args.nodes)?),
        false => None,
    };
    let (mut peers, mut clients) = (Vec::new(), Vec::new());
    for i in 1..=args.nodes {
        peers.push(format!("{i}={}", addr(args.peer_port, i)?));
        clients.push(format!("{i}={}", addr(args.client_port, i)?));
    }
    let mut replicas = Vec::new();
    for id in 1..=args.nodes {
        let mut replica = ReplicaArgs {
            id: Some(id),
            peers: Some(peers.join(",")),
            client_addr: Some(addr(args.client_port, id)?),
            client_addrs: Some(clients.join(",")),
            admin_addr: Some(addr(args.admin_port, id)?),
            data_dir: Some(args.data_dir.join(format!("node-{id}"))),
            initial_cluster_state: Some(state),
            acceptor_fail_prob: Some(args.acceptor_fail_prob),
            acceptor_fail_mode: Some(args.acceptor_fail_mode),
            acceptor_down_ms: Some(args.acceptor_down_ms.clone()),
            log_level: Some(args.log_level.clone()),
            ..ReplicaArgs::default()
        };
        if let Some(certs) = &certs {
            with_tls(&mut replica, certs, id);
        }
        replica.clone().resolve()?;
        replicas.push(DevReplica {
            id,
            client_addr: addr(args.client_port, id)?,
            peer_addr: addr(args.peer_port, id)?,
            admin_addr: addr(args.admin_port, id)?,
            flags: flags(&replica),
        });
    }
    Ok(replicas)
}

/// The command line of one replica: the flags `kvs-server` reads into `replica`.
fn flags(replica: &ReplicaArgs) -> Vec<String> {
    let mut flags = Vec::new();
    let mut flag = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            flags.push(format!("--{name}={value}"));
        }
    };
    let state = replica
        .initial_cluster_state
        .and_then(|s| clap::ValueEnum::to_possible_value(&s))
        .map(|v| v.get_name().to_owned());
    flag("id", replica.id.map(|id| id.to_string()));
    flag("peers", replica.peers.clone());
    flag("client-addr", replica.client_addr.clone());
    flag("client-addrs", replica.client_addrs.clone());
    flag("admin-addr", replica.admin_addr.clone());
    flag(
        "data-dir",
        replica
            .data_dir
            .as_ref()
            .map(|d| d.to_string_lossy().into_owned()),
    );
    flag("initial-cluster-state", state);
    flag(
        "acceptor-fail-prob",
        replica.acceptor_fail_prob.map(|p| p.to_string()),
    );
    flag(
        "acceptor-fail-mode",
        replica.acceptor_fail_mode.map(|m| m.to_string()),
    );
    flag("acceptor-down-ms", replica.acceptor_down_ms.clone());
    flag("log-level", replica.log_level.clone());
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.to_string_lossy().into_owned());
    flag("cert-file", path(&replica.cert_file));
    flag("key-file", path(&replica.key_file));
    flag("trusted-ca-file", path(&replica.trusted_ca_file));
    flag(
        "client-cert-auth",
        replica.client_cert_auth.map(|b| b.to_string()),
    );
    flag("peer-cert-file", path(&replica.peer_cert_file));
    flag("peer-key-file", path(&replica.peer_key_file));
    flag("peer-trusted-ca-file", path(&replica.peer_trusted_ca_file));
    flags
}

/// Where `kvs-server dev --tls` keeps its certificates.
pub fn certs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("certs")
}

/// The development certificates of `nodes` replicas in `DATA_DIR/certs`: the ones there,
/// or new ones (a new CA) if any is missing.
fn dev_certs(data_dir: &Path, nodes: u64) -> Result<crate::certs::GeneratedCerts, ServerError> {
    let mut spec = crate::certs::CertsSpec::new(certs_dir(data_dir));
    spec.nodes = nodes;
    match crate::certs::generate(&spec) {
        Ok(made) => Ok(made),
        Err(crate::certs::CertsError::Exists { paths }) if paths.len() == spec_files(&spec) => {
            // All there from an earlier start: kept.
            Ok(crate::certs::planned(&spec))
        }
        Err(crate::certs::CertsError::Exists { .. }) => {
            // Some are missing (more nodes than before): a new set, CA included.
            spec.force = true;
            Ok(crate::certs::generate(&spec)?)
        }
        Err(e) => Err(e.into()),
    }
}

fn spec_files(spec: &crate::certs::CertsSpec) -> usize {
    crate::certs::planned(spec).files().len()
}

/// Turns TLS on for replica `id`: its node certificate on both ports, the CA for clients
/// (required) and peers.
fn with_tls(replica: &mut ReplicaArgs, certs: &crate::certs::GeneratedCerts, id: NodeId) {
    let Some((_, node)) = certs.nodes.iter().find(|(n, _)| *n == id) else {
        return;
    };
    replica.cert_file = Some(node.cert.clone());
    replica.key_file = Some(node.key.clone());
    replica.trusted_ca_file = Some(certs.ca.cert.clone());
    replica.client_cert_auth = Some(true);
    replica.peer_cert_file = Some(node.cert.clone());
    replica.peer_key_file = Some(node.key.clone());
    replica.peer_trusted_ca_file = Some(certs.ca.cert.clone());
}

/// `new` only if no replica's data dir holds anything yet: the dev command sees every
/// member's directory, so it can tell a first start from a restart. A replica whose
/// directory alone was wiped then refuses to start (and says why) instead of voting.
fn initial_state(data_dir: &Path, nodes: u64) -> Result<InitialClusterState, ServerError> {
    for i in 1..=nodes {
        let dir = data_dir.join(format!("node-{i}"));
        let used = dir.join(identity::FILE_NAME).exists() || identity::has_data(&dir)?;
        if used {
            return Ok(InitialClusterState::Existing);
        }
    }
    Ok(InitialClusterState::New)
}

/// Fails at once if a port a replica needs is taken, naming it: clearer than a replica
/// that dies on it, and a port taken by another server would look like a ready replica.
fn check_ports(replicas: &[DevReplica]) -> Result<(), ServerError> {
    for replica in replicas {
        for (what, addr) in [
            ("client", &replica.client_addr),
            ("peer", &replica.peer_addr),
            ("admin", &replica.admin_addr),
        ] {
            // Bound and closed at once: only whether it can be bound matters.
            if let Err(source) = std::net::TcpListener::bind(addr.as_str()) {
                return Err(ServerError::DevPortTaken {
                    id: replica.id,
                    what,
                    addr: addr.clone(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Set in the environment of the replicas `dev` starts: such a replica stops (gracefully)
/// when its standard input, a pipe from `dev`, reaches its end, that is when `dev` is gone,
/// even killed with -9. A replica started by hand is not tied to anything.
pub const PARENT_PIPE_ENV: &str = "KVS_DEV_PARENT_PIPE";

/// A running replica process, as the parent sees it.
struct Child {
    id: NodeId,
    pid: u32,
    /// The write end of its standard input, never written: the replica stops when it
    /// closes, with this process ([`PARENT_PIPE_ENV`]).
    _parent_pipe: Option<tokio::process::ChildStdin>,
    /// The last line it logged, for the error if it fails to start.
    last_line: Arc<Mutex<String>>,
    /// Relays its stderr; ends when the process closes it.
    relay: JoinHandle<()>,
    /// Whether it has exited (reported on the exit channel).
    exited: bool,
}

/// Starts one replica: this binary with `replica.flags`, in a process group of its own
/// (Ctrl-C in a terminal reaches the parent only, which stops the replicas in order), its
/// stderr relayed line by line, tagged `[replica N]`. Its exit is sent on `exits`.
fn spawn(
    exe: &Path,
    replica: &DevReplica,
    exits: &mpsc::UnboundedSender<(NodeId, std::io::Result<ExitStatus>)>,
) -> Result<Child, ServerError> {
    let mut child = tokio::process::Command::new(exe)
        .args(&replica.flags)
        .env(PARENT_PIPE_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ServerError::Io {
            op: "start a replica with",
            path: exe.to_path_buf(),
            source,
        })?;
    let id = replica.id;
    let pid = child.id().unwrap_or_default();
    let parent_pipe = child.stdin.take();
    let last_line = Arc::new(Mutex::new(String::new()));
    let relay = match child.stderr.take() {
        Some(stderr) => tokio::spawn(relay_lines(stderr, id, Arc::clone(&last_line))),
        None => tokio::spawn(async {}),
    };
    let exits = exits.clone();
    tokio::spawn(async move {
        let status = child.wait().await;
        let _ = exits.send((id, status));
    });
    Ok(Child {
        id,
        pid,
        _parent_pipe: parent_pipe,
        last_line,
        relay,
        exited: false,
    })
}

/// Copies `input` to this process's stderr line by line, each tagged `[replica ID]`,
/// ignoring a closed stderr (the replica must not stop because nobody reads its logs).
async fn relay_lines(input: impl AsyncRead + Unpin, id: NodeId, last: Arc<Mutex<String>>) {
    let mut input = BufReader::new(input);
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut bounded = (&mut input).take(LOG_LINE_BYTES_MAX as u64);
        match bounded.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        complain(&format!("[replica {id}] {text}\n"));
        *lock(&last) = text.to_owned();
    }
}

/// Waits until every replica accepts client connections, or fails with the first that
/// exits first or is not ready within [`READY_MAX`].
async fn wait_ready(
    children: &mut [Child],
    replicas: &[DevReplica],
    exits: &mut mpsc::UnboundedReceiver<(NodeId, std::io::Result<ExitStatus>)>,
) -> Result<(), ServerError> {
    let deadline = Instant::now() + READY_MAX;
    for replica in replicas {
        loop {
            if let Ok((id, status)) = exits.try_recv() {
                return Err(exited_early(children, id, status).await);
            }
            let probe = tokio::net::TcpStream::connect(replica.client_addr.as_str());
            if let Ok(Ok(_)) = tokio::time::timeout(READY_POLL, probe).await {
                break;
            }
            if Instant::now() >= deadline {
                return Err(ServerError::DevReplica {
                    id: replica.id,
                    reason: format!(
                        "did not accept client connections at {} within {} s",
                        replica.client_addr,
                        READY_MAX.as_secs()
                    ),
                });
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }
    Ok(())
}

/// The error for replica `id`, which exited while the cluster started, with its last
/// log line (the reason, usually).
async fn exited_early(
    children: &mut [Child],
    id: NodeId,
    status: std::io::Result<ExitStatus>,
) -> ServerError {
    let mut last = String::new();
    if let Some(child) = children.iter_mut().find(|c| c.id == id) {
        child.exited = true;
        // Its last lines may still be on their way through the pipe.
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut child.relay).await;
        last = lock(&child.last_line).clone();
    }
    let status = describe_exit(status);
    let reason = if last.is_empty() {
        format!("exited ({status}) before it accepted client connections")
    } else {
        format!("exited ({status}) before it accepted client connections: {last}")
    };
    ServerError::DevReplica { id, reason }
}

fn describe_exit(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(e) => format!("its exit status is unknown: {e}"),
    }
}

/// Sends SIGTERM to every replica still running and waits for each to exit, killing one
/// that takes longer than [`STOP_MAX`]. Returns the replicas that did not stop cleanly.
async fn stop_all(
    children: &mut [Child],
    exits: &mut mpsc::UnboundedReceiver<(NodeId, std::io::Result<ExitStatus>)>,
) -> Vec<(NodeId, ServerError)> {
    for child in children.iter().filter(|c| !c.exited) {
        signal(child.pid, rustix::process::Signal::TERM);
    }
    let mut failed = Vec::new();
    let deadline = Instant::now() + STOP_MAX;
    while children.iter().any(|c| !c.exited) {
        let (id, status) = match tokio::time::timeout_at(deadline, exits.recv()).await {
            Ok(Some(exit)) => exit,
            Ok(None) => break,
            Err(_elapsed) => {
                for child in children.iter().filter(|c| !c.exited) {
                    signal(child.pid, rustix::process::Signal::KILL);
                    failed.push((
                        child.id,
                        ServerError::DevReplica {
                            id: child.id,
                            reason: format!(
                                "did not stop within {} s and was killed",
                                STOP_MAX.as_secs()
                            ),
                        },
                    ));
                }
                break;
            }
        };
        if let Some(child) = children.iter_mut().find(|c| c.id == id) {
            child.exited = true;
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut child.relay).await;
        }
        if !matches!(&status, Ok(s) if s.success()) {
            let reason = format!("stopped with {}", describe_exit(status));
            failed.push((id, ServerError::DevReplica { id, reason }));
        }
    }
    failed
}

/// Sends `signal` to process `pid`; one that is gone already needs nothing.
fn signal(pid: u32, signal: rustix::process::Signal) {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Tells the user what runs where and how to try it.
fn banner(args: &DevArgs, replicas: &[DevReplica], children: &[Child]) -> String {
    let data = args.data_dir.display();
    let mut text = format!(
        "kvs dev cluster: {} replicas, each its own process, data in {data}\n",
        args.nodes
    );
    for (replica, child) in replicas.iter().zip(children) {
        text.push_str(&format!(
            "  replica {} (pid {}): clients at {}, status page http://{}/\n",
            replica.id, child.pid, replica.client_addr, replica.admin_addr
        ));
    }
    if args.acceptor_fail_prob > 0.0 {
        text.push_str(&format!(
            "  random acceptor failures: each replica fails with probability {} per second \
             ({} mode), down for {} ms\n",
            args.acceptor_fail_prob, args.acceptor_fail_mode, args.acceptor_down_ms
        ));
    }
    if args.tls {
        // Absolute, so that the lines work from any directory.
        let certs = certs_dir(&args.data_dir);
        let certs = std::path::absolute(&certs).unwrap_or(certs);
        let certs = certs.display();
        let (ca, cert, key) = (
            format!("{certs}/ca.pem"),
            format!("{certs}/client-root.pem"),
            format!("{certs}/client-root-key.pem"),
        );
        text.push_str(&format!(
            "  TLS everywhere (certificates in {certs}): clients need them:\n  \
             kvs-client --cacert {ca} --cert {cert} --key {key} put greeting hello\n  \
             or for the whole shell:\n  \
             export KVS_CACERT={ca} KVS_CERT={cert} KVS_KEY={key}\n"
        ));
    }
    let endpoints: Vec<&str> = replicas.iter().map(|r| r.client_addr.as_str()).collect();
    let exported = if args.tls {
        ", with the export above"
    } else {
        ""
    };
    text.push_str(&format!(
        "\nTry it (kvs-client uses these endpoints by default{exported}):\n  \
         kvs-client put greeting hello\n  kvs-client get greeting\n  kvs-client status\n  \
         KVS_ENDPOINTS={} kvs-client get greeting --stale\n",
        endpoints.join(",")
    ));
    if let Some(child) = children.first() {
        text.push_str(&format!(
            "Failover: kill -9 a replica's pid (the leader's: `kvs-client status` names it), \
             e.g. kill -9 {}; the others go on serving.\n",
            child.pid
        ));
    }
    text.push_str(&format!(
        "\nCtrl-C stops the cluster; its data stays in {data} for the next start.\n"
    ));
    text
}

/// Runs the dev cluster until Ctrl-C or SIGTERM, then stops every replica gracefully.
/// Fails at once, stopping the replicas already started, if a port is taken or a replica
/// exits (or does not accept clients within [`READY_MAX`]) before the cluster is up.
pub async fn run(args: DevArgs) -> Result<(), ServerError> {
    let replicas = replicas(&args)?;
    check_ports(&replicas)?;
    let exe = std::env::current_exe().map_err(|source| ServerError::Io {
        op: "find the kvs-server executable",
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    // Listening for Ctrl-C and SIGTERM from here on: one during the start stops the
    // replicas started so far (they are in process groups of their own and would not hear
    // a Ctrl-C).
    let signal = crate::wait_for_signal();
    tokio::pin!(signal);
    let (exits_tx, mut exits) = mpsc::unbounded_channel();
    let mut children = Vec::new();
    for replica in &replicas {
        match spawn(&exe, replica, &exits_tx) {
            Ok(child) => children.push(child),
            Err(e) => {
                stop_all(&mut children, &mut exits).await;
                return Err(e);
            }
        }
    }
    let ready = tokio::select! {
        ready = wait_ready(&mut children, &replicas, &mut exits) => Some(ready),
        () = &mut signal => None,
    };
    match ready {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            stop_all(&mut children, &mut exits).await;
            return Err(e);
        }
        None => {
            say("stopping...\n");
            stop_all(&mut children, &mut exits).await;
            return Ok(());
        }
    }
    say(&banner(&args, &replicas, &children));
    loop {
        tokio::select! {
            () = &mut signal => break,
            Some((id, status)) = exits.recv() => {
                if let Some(child) = children.iter_mut().find(|c| c.id == id) {
                    child.exited = true;
                }
                // Said at once: the others keep running without it.
                complain(&format!(
                    "replica {id} exited ({}); the others go on; restart the dev cluster \
                     to bring it back\n",
                    describe_exit(status)
                ));
            }
        }
    }
    say("stopping...\n");
    let failed = stop_all(&mut children, &mut exits).await;
    if failed.is_empty() {
        Ok(())
    } else {
        Err(ServerError::Replicas(failed))
    }
}

/// Writes `text` to stdout, ignoring a closed or failing stdout.
fn say(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// Writes `text` to stderr, ignoring a closed or failing stderr.
fn complain(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each critical section is one assignment or clone: consistent after a panic.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The dev settings of `extra`, over an empty data dir (kept while the guard lives).
    fn dev(extra: &[&str]) -> (tempfile::TempDir, DevArgs) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut argv = vec!["kvs-server", "dev", "--data-dir"];
        let path = dir.path().to_string_lossy().into_owned();
        argv.push(&path);
        argv.extend_from_slice(extra);
        let cli = crate::config::Cli::parse_from(argv);
        match cli.command {
            Some(crate::config::Command::Dev(args)) => (dir, args),
            other => panic!("not dev: {other:?}"),
        }
    }

    #[test]
    fn each_replica_gets_its_ports_and_a_command_line_kvs_server_reads() {
        let (_dir, args) = dev(&[
            "--nodes",
            "2",
            "--client-port",
            "16001",
            "--admin-port",
            "18001",
        ]);
        let replicas = replicas(&args).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(replicas.len(), 2);
        let second = &replicas[1];
        assert_eq!(
            (
                second.id,
                second.client_addr.as_str(),
                second.peer_addr.as_str(),
                second.admin_addr.as_str()
            ),
            (2, "127.0.0.1:16002", "127.0.0.1:7002", "127.0.0.1:18002")
        );
        let argv = std::iter::once("kvs-server".to_owned()).chain(second.flags.clone());
        let cli = crate::config::Cli::parse_from(argv);
        assert!(cli.command.is_none(), "a replica's flags, not a subcommand");
        let replica = cli.replica;
        assert_eq!(replica.id, Some(2));
        assert_eq!(replica.client_addr.as_deref(), Some("127.0.0.1:16002"));
        assert_eq!(replica.admin_addr.as_deref(), Some("127.0.0.1:18002"));
        assert_eq!(
            replica.peers.as_deref(),
            Some("1=127.0.0.1:7001,2=127.0.0.1:7002")
        );
        assert_eq!(
            replica.initial_cluster_state,
            Some(InitialClusterState::New)
        );
        assert!(replica.resolve().is_ok());
    }

    #[test]
    fn with_tls_each_replica_gets_its_certificates_kept_across_starts() {
        let (dir, args) = dev(&["--nodes", "2", "--tls"]);
        let made = replicas(&args).unwrap_or_else(|e| panic!("{e}"));
        let certs = certs_dir(dir.path());
        let ca = std::fs::read(certs.join("ca.pem")).unwrap_or_else(|e| panic!("{e}"));
        let argv = std::iter::once("kvs-server".to_owned()).chain(made[1].flags.clone());
        let replica = crate::config::Cli::parse_from(argv).replica;
        let cfg = replica.resolve().unwrap_or_else(|e| panic!("{e}"));
        let client = cfg.client_tls.unwrap_or_else(|| panic!("no client TLS"));
        assert_eq!(client.cert_file, certs.join("node-2.pem"));
        assert!(client.client_cert_auth);
        assert_eq!(client.trusted_ca_file, Some(certs.join("ca.pem")));
        let peer = cfg.peer_tls.unwrap_or_else(|| panic!("no peer TLS"));
        assert_eq!(peer.key_file, certs.join("node-2-key.pem"));
        assert!(certs.join("client-root.pem").is_file());
        // A second start keeps them.
        replicas(&args).unwrap_or_else(|e| panic!("{e}"));
        let again = std::fs::read(certs.join("ca.pem")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again, ca);
        // More nodes than there are certificates for: a new set.
        let (_, mut more) = dev(&["--nodes", "3", "--tls"]);
        more.data_dir = dir.path().to_owned();
        replicas(&more).unwrap_or_else(|e| panic!("{e}"));
        assert!(certs.join("node-3.pem").is_file());
    }

    #[test]
    fn a_bad_setting_fails_before_any_process_starts() {
        for bad in [
            &["--nodes", "0"][..],
            &["--acceptor-down-ms", "9..1"],
            &["--client-port", "65535"],
        ] {
            let (_dir, args) = dev(bad);
            assert!(replicas(&args).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_taken_port_is_named() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let port = taken
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .port()
            .to_string();
        let (_dir, args) = dev(&["--nodes", "1", "--client-port", &port]);
        let replicas = replicas(&args).unwrap_or_else(|e| panic!("{e}"));
        let error = check_ports(&replicas).expect_err("the port is taken");
        let message = error.to_string();
        assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
        assert!(message.contains("client port"), "{message}");
    }
}
