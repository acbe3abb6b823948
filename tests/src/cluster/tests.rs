//! Tests of the cluster harness with a stand-in for the server: a shell script that logs its
//! arguments and then becomes `sleep` (via `exec`, so signals reach the stand-in's own pid).

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::Duration;

use tempfile::TempDir;

use super::*;

const PROMPTLY: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(5);

const SLEEPER: &str = "echo \"stand-in args: $*\"\nexec sleep 30\n";

/// Writes an executable `/bin/sh` script; keep the returned directory alive while it is used.
fn script(body: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stand-in-server");
    fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    (dir, path)
}

fn options(binary: &Path, nodes: usize, proxies: bool) -> ClusterOptions {
    ClusterOptions {
        nodes,
        proxies,
        binary: Some(binary.to_path_buf()),
        ..ClusterOptions::default()
    }
}

/// The scheduler state letter of a process (`T` = stopped), from `/proc/<pid>/stat`.
fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces; the state follows it.
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// Waits until node `id`'s stand-in has run its script up to `exec sleep` (so it has logged its
/// arguments and set its traps); signalling it earlier would race with the script.
fn wait_stand_in_ready(cluster: &Cluster, id: u64) -> u32 {
    let pid = cluster.pid(id).expect("stand-in running");
    wait_until_blocking(
        &format!("node {id}'s stand-in to exec sleep"),
        PROMPTLY,
        POLL,
        || fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "sleep"),
    )
    .unwrap();
    pid
}

fn wait_log_contains(cluster: &Cluster, id: u64, needle: &str) {
    let path = cluster.log_path(id);
    let found = wait_until_blocking(
        &format!("{needle:?} in node {id}'s log"),
        PROMPTLY,
        POLL,
        || fs::read_to_string(&path).is_ok_and(|log| log.contains(needle)),
    );
    if let Err(e) = found {
        panic!(
            "{e}\nlog:\n{}",
            fs::read_to_string(&path).unwrap_or_default()
        );
    }
}

#[test]
fn missing_binary_is_a_helpful_error() {
    let opts = ClusterOptions {
        binary: Some(PathBuf::from("/nonexistent/kvs-server")),
        ..ClusterOptions::default()
    };
    let err = Cluster::start(opts).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/kvs-server"), "{err}");
    assert!(err.contains("cargo build --bins"), "{err}");
    assert!(Cluster::start(ClusterOptions {
        nodes: 0,
        ..ClusterOptions::default()
    })
    .is_err());
}

#[test]
fn nodes_get_their_own_peer_lists_logs_and_data_dirs() {
    let (_bin_dir, bin) = script(SLEEPER);
    let cluster = Cluster::start(options(&bin, 3, true)).unwrap();
    let layout = cluster.layout().clone();

    for id in cluster.ids() {
        // Node i dials P(i→j) for every j ≠ i and lists its own real listen address.
        for to in cluster.ids() {
            let expected = if to == id {
                layout.peer_listen[&to]
            } else {
                let proxy = cluster.peer_proxy(id, to).unwrap();
                assert_eq!(proxy.target(), layout.peer_listen[&to]);
                proxy.addr()
            };
            assert!(layout.peers_arg(id).contains(&format!("{to}={expected}")));
        }
        let args = layout.node_args(id, &cluster.data_dir(id), &options(&bin, 3, true));
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        wait_log_contains(&cluster, id, &format!("stand-in args: {}", args.join(" ")));
        assert!(cluster.data_dir(id).is_dir());
        assert_eq!(
            cluster.log_path(id),
            cluster.root().join(format!("node-{id}.log"))
        );
        assert_eq!(
            cluster.client_proxy(id).unwrap().target(),
            layout.client_listen[&id]
        );
    }
    let endpoints: Vec<String> = cluster
        .ids()
        .iter()
        .map(|&id| cluster.client_proxy(id).unwrap().addr().to_string())
        .collect();
    assert_eq!(cluster.client_endpoints(), endpoints);
    assert_eq!(cluster.client_endpoint(2).unwrap(), endpoints[1]);
    assert!(cluster
        .log_tail(1, 1 << 20)
        .unwrap()
        .contains("start #1 of node 1"));
}

#[test]
fn without_proxies_clients_and_peers_use_real_addresses() {
    let (_bin_dir, bin) = script(SLEEPER);
    let cluster = Cluster::start(options(&bin, 2, false)).unwrap();
    let layout = cluster.layout();
    assert_eq!(
        cluster.client_endpoints(),
        vec![
            layout.client_listen[&1].to_string(),
            layout.client_listen[&2].to_string()
        ]
    );
    assert!(cluster.peer_proxy(1, 2).is_none());
    assert!(cluster.cut_link(1, 2).is_err());
    assert!(cluster.isolate(1).is_err());
    assert!(cluster.cut_client(1).is_err());
}

#[test]
fn kill_restart_pause_resume_terminate() {
    let (_bin_dir, bin) = script(SLEEPER);
    let cluster = Cluster::start(options(&bin, 1, false)).unwrap();
    let pid = wait_stand_in_ready(&cluster, 1);
    assert!(cluster.is_running(1) && process_exists(pid));

    cluster.pause(1).unwrap();
    assert!(cluster.is_paused(1));
    wait_until_blocking("stand-in stopped", PROMPTLY, POLL, || {
        process_state(pid) == Some('T')
    })
    .unwrap();
    assert!(cluster.is_running(1), "a paused node is still running");
    cluster.resume(1).unwrap();
    assert!(!cluster.is_paused(1));
    wait_until_blocking("stand-in continued", PROMPTLY, POLL, || {
        process_state(pid).is_some_and(|s| s != 'T')
    })
    .unwrap();

    cluster.kill(1).unwrap();
    assert!(!cluster.is_running(1));
    assert!(!process_exists(pid), "killed process must be reaped");
    assert_eq!(cluster.last_exit(1).unwrap().signal(), Some(libc::SIGKILL));
    assert!(cluster.kill(1).is_err(), "killing a dead node is an error");
    assert!(cluster.pause(1).is_err());

    cluster.restart(1).unwrap();
    let pid2 = wait_stand_in_ready(&cluster, 1);
    assert_ne!(pid, pid2);
    assert!(
        cluster.restart(1).is_err(),
        "restarting a running node is an error"
    );
    wait_log_contains(&cluster, 1, "start #2 of node 1");
    wait_until_blocking("second start logged", PROMPTLY, POLL, || {
        fs::read_to_string(cluster.log_path(1))
            .is_ok_and(|log| log.matches("stand-in args: --id 1").count() == 2)
    })
    .unwrap();

    // SIGTERM reaches even a paused node (the harness continues it).
    cluster.pause(1).unwrap();
    let status = cluster.terminate(1).unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    assert!(!process_exists(pid2));
    assert!(cluster.terminate(1).is_err());
}

#[test]
fn terminate_kills_a_node_that_ignores_sigterm() {
    let (_bin_dir, bin) = script("trap '' TERM\nexec sleep 30\n");
    let cluster = Cluster::start(options(&bin, 1, false)).unwrap();
    let pid = wait_stand_in_ready(&cluster, 1);
    let err = cluster
        .terminate_within(1, Duration::from_millis(100))
        .unwrap_err();
    assert!(err.to_string().contains("did not exit within"), "{err}");
    assert!(!cluster.is_running(1));
    assert!(!process_exists(pid));
}

#[test]
fn a_node_that_exits_by_itself_is_reaped() {
    let (_bin_dir, bin) = script("echo bye >&2\nexit 3\n");
    let cluster = Cluster::start(options(&bin, 1, false)).unwrap();
    wait_until_blocking("stand-in exited", PROMPTLY, POLL, || !cluster.is_running(1)).unwrap();
    assert_eq!(cluster.last_exit(1).unwrap().code(), Some(3));
    assert_eq!(cluster.pid(1), None);
    wait_log_contains(&cluster, 1, "bye");
    cluster.restart(1).unwrap();
    wait_until_blocking("restarted stand-in exited", PROMPTLY, POLL, || {
        !cluster.is_running(1)
    })
    .unwrap();
}

#[test]
fn drop_kills_every_node_ends_proxies_and_removes_the_data() {
    let (_bin_dir, bin) = script(SLEEPER);
    let cluster = Cluster::start(options(&bin, 3, true)).unwrap();
    let pids: Vec<u32> = cluster
        .ids()
        .iter()
        .map(|&id| cluster.pid(id).unwrap())
        .collect();
    cluster.pause(2).unwrap(); // A stopped process must be killed too.
    let tasks = [
        cluster.peer_proxy(1, 2).unwrap().tasks(),
        cluster.client_proxy(3).unwrap().tasks(),
    ];
    let root = cluster.root().to_path_buf();
    assert!(root.is_dir());

    drop(cluster);
    for pid in pids {
        assert!(!process_exists(pid), "pid {pid} survived the cluster");
    }
    assert!(!root.exists(), "data directory not removed");
    wait_until_blocking("proxy tasks ended", PROMPTLY, POLL, || {
        tasks.iter().all(|t| t.live() == 0)
    })
    .unwrap();
}

#[test]
fn a_panicking_test_leaves_no_process_and_keeps_the_logs() {
    let (_bin_dir, bin) = script(SLEEPER);
    let mut seen = None;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let cluster = Cluster::start(options(&bin, 2, false)).unwrap();
        seen = Some((
            cluster.root().to_path_buf(),
            vec![cluster.pid(1).unwrap(), cluster.pid(2).unwrap()],
        ));
        panic!("deliberate test failure");
    }));
    assert!(outcome.is_err());
    let (root, pids) = seen.unwrap();
    for pid in pids {
        assert!(!process_exists(pid), "pid {pid} survived the panic");
    }
    assert!(root.join("node-1.log").is_file(), "logs must be kept");
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn keep_data_persists_the_directory() {
    let (_bin_dir, bin) = script(SLEEPER);
    let cluster = Cluster::start(options(&bin, 1, false)).unwrap();
    let kept = cluster.keep_data();
    assert_eq!(kept, cluster.root());
    drop(cluster);
    assert!(kept.join("node-1.log").is_file());
    fs::remove_dir_all(kept).unwrap();
}

/// Asserts that exactly the proxies of `expected` are cut, and that the bookkeeping agrees.
fn assert_cut(cluster: &Cluster, expected: &BTreeSet<Link>) {
    assert_eq!(&cluster.cut_link_set(), expected);
    for link in shapes::all_links(&cluster.ids()) {
        let proxy = cluster.peer_proxy(link.0, link.1).unwrap();
        assert_eq!(proxy.is_cut(), expected.contains(&link), "link {link:?}");
    }
}

#[test]
fn network_faults_cut_exactly_the_right_proxies() {
    let (_bin_dir, bin) = script(SLEEPER);
    let cluster = Cluster::start(options(&bin, 5, true)).unwrap();
    let ids = cluster.ids();

    cluster.cut_link(1, 2).unwrap();
    assert_cut(&cluster, &BTreeSet::from([(1, 2)]));
    cluster.isolate(5).unwrap();
    let mut expected = shapes::isolate(&ids, 5).unwrap();
    expected.insert((1, 2));
    assert_cut(&cluster, &expected);
    cluster.heal_link(1, 2).unwrap();
    expected.remove(&(1, 2));
    assert_cut(&cluster, &expected);

    cluster.heal_all();
    assert_cut(&cluster, &BTreeSet::new());
    cluster.partition(&[&[1, 2], &[3, 4, 5]]).unwrap();
    assert_cut(
        &cluster,
        &shapes::partition(&ids, &[&[1, 2], &[3, 4, 5]]).unwrap(),
    );

    cluster.heal_all();
    cluster.ring(&[1, 2, 3, 4, 5]).unwrap();
    assert_cut(&cluster, &shapes::ring(&ids, &[1, 2, 3, 4, 5]).unwrap());

    cluster.heal_all();
    cluster.bridge(&[1, 2], 3, &[4, 5]).unwrap();
    assert_cut(
        &cluster,
        &shapes::bridge(&ids, &[1, 2], 3, &[4, 5]).unwrap(),
    );

    cluster.cut_client(4).unwrap();
    assert!(cluster.client_proxy(4).unwrap().is_cut());
    assert!(!cluster.client_proxy(3).unwrap().is_cut());
    cluster.heal_client(4).unwrap();
    assert!(!cluster.client_proxy(4).unwrap().is_cut());

    cluster.cut_client(1).unwrap();
    cluster
        .peer_proxy(2, 3)
        .unwrap()
        .set_delay(Duration::from_millis(50));
    cluster.heal_all();
    assert_cut(&cluster, &BTreeSet::new());
    assert!(!cluster.client_proxy(1).unwrap().is_faulty());
    assert!(!cluster.peer_proxy(2, 3).unwrap().is_faulty());

    // Bad shapes change nothing.
    assert!(cluster.partition(&[&[1, 2], &[3]]).is_err());
    assert!(cluster.cut_link(1, 1).is_err());
    assert!(cluster.cut_link(1, 9).is_err());
    assert_cut(&cluster, &BTreeSet::new());
}

#[test]
fn unknown_ids_are_errors() {
    let (_bin_dir, bin) = script(SLEEPER);
    let cluster = Cluster::start(options(&bin, 1, true)).unwrap();
    assert!(cluster.kill(7).is_err());
    assert!(cluster.restart(7).is_err());
    assert!(cluster.pause(7).is_err());
    assert!(cluster.terminate(7).is_err());
    assert!(cluster.client_endpoint(7).is_err());
    assert!(cluster.cut_client(7).is_err());
    assert!(cluster.isolate(7).is_err());
    let err = cluster.log_tail(7, 10).unwrap_err().to_string();
    assert!(err.contains("no node 7"), "{err}");
}

#[test]
fn wait_listening_names_the_node_when_nothing_listens() {
    let (_bin_dir, bin) = script(SLEEPER);
    let cluster = Cluster::start(options(&bin, 1, false)).unwrap();
    let err = cluster
        .wait_listening(1, Duration::from_millis(100))
        .unwrap_err()
        .to_string();
    assert!(err.contains("node 1 to listen for clients"), "{err}");
}

#[test]
fn cluster_and_proxy_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Cluster>();
    assert_send_sync::<crate::proxy::Proxy>();
}

/// End-to-end check of the harness against the real server. Needs the kvs-server binary,
/// which `scripts/test.sh` builds before the tests.
#[test]
fn real_servers_talk_through_their_proxies() {
    let cluster = Cluster::start(ClusterOptions::default()).unwrap();
    let bound = Duration::from_secs(20);
    for id in cluster.ids() {
        if let Err(e) = cluster.wait_listening(id, bound) {
            panic!("{e}\n{}", cluster.log_tail(id, 4096).unwrap_or_default());
        }
    }
    // Every node dials every peer through its own proxy.
    let links = shapes::all_links(&cluster.ids());
    wait_until_blocking("traffic on every peer proxy", bound, POLL, || {
        links.iter().all(|&(from, to)| {
            let stats = cluster.peer_proxy(from, to).unwrap().stats();
            stats.accepted > 0 && stats.forward_bytes > 0
        })
    })
    .unwrap();

    // Isolated, node 1's outgoing connections are reset and re-dialled in vain.
    let before = cluster.peer_proxy(1, 2).unwrap().stats().refused;
    cluster.isolate(1).unwrap();
    wait_until_blocking("node 1 to redial into the cut", bound, POLL, || {
        cluster.peer_proxy(1, 2).unwrap().stats().refused > before
    })
    .unwrap();
    cluster.heal_all();

    cluster.kill(2).unwrap();
    cluster.restart(2).unwrap();
    cluster.wait_listening(2, bound).unwrap();
    let status = cluster.terminate(3).unwrap();
    assert!(status.success(), "SIGTERM exit: {status:?}");
    for id in cluster.ids() {
        assert!(fs::metadata(cluster.log_path(id)).unwrap().len() > 0);
    }
}

#[test]
fn kill_verified_proves_the_node_is_gone() {
    let (_bin_dir, bin) = script(SLEEPER);
    let cluster = Cluster::start(options(&bin, 1, false)).unwrap();
    let pid = wait_stand_in_ready(&cluster, 1);
    assert!(process_start_ticks(pid).is_some());
    let proof = cluster.kill_verified(1).unwrap();
    assert_eq!((proof.id, proof.pid), (1, pid));
    assert_eq!(proof.status.signal(), Some(libc::SIGKILL));
    assert!(
        proof.to_string().contains("client port refusing"),
        "{proof}"
    );
    assert_eq!(process_start_ticks(pid), None);
    let again = cluster.kill_verified(1).unwrap_err().to_string();
    assert!(again.contains("node 1 is not running"), "{again}");
}

#[test]
fn kill_verified_fails_while_the_nodes_address_still_serves() {
    // As if the node had left a process behind that still serves its clients.
    let (_bin_dir, bin) = script(SLEEPER);
    let cluster = Cluster::start(options(&bin, 1, false)).unwrap();
    wait_stand_in_ready(&cluster, 1);
    let _survivor = std::net::TcpListener::bind(cluster.layout().client_listen[&1]).unwrap();
    let err = cluster.kill_verified(1).unwrap_err().to_string();
    assert!(err.contains("did not refuse a connection"), "{err}");
}

/// Sends bytes from node `from`'s side through the proxy of link `(from, to)` to a listener
/// standing in for node `to`; returns how many bytes arrived there.
fn push_through_link(
    cluster: &Cluster,
    from: u64,
    to: u64,
    listener: &std::net::TcpListener,
) -> usize {
    use std::io::{Read, Write};
    let proxy = cluster.peer_proxy(from, to).unwrap().addr();
    let Ok(mut stream) = std::net::TcpStream::connect(proxy) else {
        return 0;
    };
    if stream.write_all(b"peer message").is_err() {
        return 0;
    }
    let accepted = {
        // The proxy dials the target only if it forwards the connection.
        listener.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_millis(500);
        loop {
            match listener.accept() {
                Ok((conn, _)) => break Some(conn),
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(POLL);
                }
                Err(_) => break None,
            }
        }
    };
    let Some(mut conn) = accepted else {
        return 0;
    };
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(PROMPTLY)).unwrap();
    let mut buf = [0u8; 64];
    conn.read(&mut buf).unwrap_or(0)
}

#[test]
fn heal_reports_that_a_cut_link_carried_nothing() {
    let (_bin_dir, bin) = script(SLEEPER);
    let cluster = Cluster::start(options(&bin, 3, true)).unwrap();
    let node_2 = std::net::TcpListener::bind(cluster.layout().peer_listen[&2]).unwrap();
    assert_eq!(push_through_link(&cluster, 1, 2, &node_2), 12, "link works");
    assert_eq!(
        cluster.heal_all(),
        HealReport::default(),
        "nothing was blocked"
    );

    cluster.cut_link(1, 2).unwrap();
    cluster.cut_client(3).unwrap();
    assert_eq!(
        push_through_link(&cluster, 1, 2, &node_2),
        0,
        "the cut holds"
    );
    let report = cluster.heal_all();
    assert_eq!(report.blocked(), 2);
    assert_eq!(report.links.keys().copied().collect::<Vec<_>>(), [(1, 2)]);
    assert_eq!(report.clients.keys().copied().collect::<Vec<_>>(), [3]);
    assert!(report.leaks().is_empty(), "{:?}", report.leaks());
}

#[test]
fn heal_reports_the_traffic_of_a_fake_cut() {
    let (_bin_dir, bin) = script(SLEEPER);
    let opts = ClusterOptions {
        fake_network_faults: true,
        ..options(&bin, 3, true)
    };
    let cluster = Cluster::start(opts).unwrap();
    let node_2 = std::net::TcpListener::bind(cluster.layout().peer_listen[&2]).unwrap();
    cluster.cut_link(1, 2).unwrap();
    assert!(cluster.peer_proxy(1, 2).unwrap().is_cut(), "says it is cut");
    assert_eq!(
        push_through_link(&cluster, 1, 2, &node_2),
        12,
        "yet it forwards"
    );
    let report = cluster.heal_all();
    let leaks = report.leaks();
    assert_eq!(leaks.len(), 1, "{leaks:?}");
    assert!(
        leaks[0].starts_with(
            "link n1->n2 carried 12 bytes forward, 0 bytes backward, 1 connections dialed"
        ),
        "{leaks:?}"
    );
}
