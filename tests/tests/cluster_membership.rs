//! Online membership changes with real processes.
//!
//! - Grow 3 → 5 and shrink back under a register workload: each new replica starts empty
//!   with `--initial-cluster-state existing`, catches up (by snapshot, then the log) as a
//!   learner and is promoted (an original follower is killed with -9 and restarted
//!   meanwhile); every node is then killed with -9 in turn and restarted, the leader is cut
//!   off from the others until they elect another, and two originals are removed, the
//!   leader first (it hands over and exits with success), the second while a member that
//!   stays is cut off. The history is linearizable, every acknowledged write is read back,
//!   and the three remaining replicas hold the same data.
//! - Replace a replica whose disk was lost: it is removed, a new id is added with an empty
//!   data dir, catches up and is promoted, and is then the vote writes need.
//! - Bad input: promoting a learner that is not running, is paused, or does not exist;
//!   removing an unknown id; adding an id that exists or was used; a change naming an old
//!   configuration; a removal that would lose the quorum: each refused with a clear error
//!   (also through the `kvs-client` tool, with exit code 1), nothing changed.
//! - After a change, every replica restarted with its original flags takes the membership
//!   from its data dir: the cluster works with the new member as a voter, and the removed
//!   replica, started again, stops by itself.
//! - A replica down while two members join and two originals (the leader first) leave
//!   comes back with its original flags, knowing none of the members left but itself: it
//!   admits them (they know a later configuration), links back to them, catches up, and
//!   is then the vote writes need.
//!
//! Each prints a `SUMMARY membership` line; the catch-up and promotion times are measured
//! on a few hundred keys (set `KVS_MEMBERSHIP_KEYS` for more).

#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use kvs_client::{Client, Error, ErrorReply, MemberChange, MemberChangeOutcome, MemberList};
use tests::cluster::{find_server_binary, wait_for, Cluster, ClusterOptions};
use tests::history::{History, OpKind, Ret};
use tests::linearizability::{check_history, CheckConfig};
use tests::nemesis::NemesisShared;
use tests::workload::{self, RegisterConfig, Workload, WorkloadContext, WorkloadStats};

/// How long a new member may take to catch up.
const CATCH_UP_BOUND: Duration = Duration::from_secs(60);
/// A learner is promoted once it lags by at most this many slots (the server allows 128).
const PROMOTE_LAG: u64 = 16;
/// How long a removed replica may take to exit.
const EXIT_BOUND: Duration = Duration::from_secs(20);

fn options() -> ClusterOptions {
    ClusterOptions {
        proxies: false,
        snapshot_every: Some(40),
        ..fast_options(3)
    }
}

/// How many keys to write before members are added.
fn keys_before() -> usize {
    std::env::var("KVS_MEMBERSHIP_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// The client addresses of every node added so far, and of `extra` reserved ones.
fn admin(cluster: &Cluster) -> Client {
    client(cluster, CHECK_TIMEOUT)
}

fn add(cluster: &Cluster, id: u64) -> MemberChange {
    MemberChange::Add {
        id,
        peer_addr: cluster.layout().peer_listen[&id].to_string(),
        client_addr: cluster.layout().client_listen[&id].to_string(),
    }
}

async fn list(cluster: &Cluster, client: &Client) -> MemberList {
    client.member_list().await.or_fail(cluster, "member list")
}

/// The member list as a replica that knows a leader gives it: right after a partition
/// heals, the member that was cut off may start an election, and for that long no
/// replica knows a leader.
async fn led_list(cluster: &Cluster, client: &Client) -> MemberList {
    wait_for(
        "a member list naming a leader",
        CONVERGE_BOUND,
        POLL,
        || async move {
            client
                .member_list()
                .await
                .ok()
                .filter(|l| l.leader.is_some())
        },
    )
    .await
    .or_fail(cluster, "member list")
}

fn voters(list: &MemberList) -> BTreeSet<u64> {
    list.members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.id)
        .collect()
}

fn learners(list: &MemberList) -> BTreeSet<u64> {
    list.members
        .iter()
        .filter(|m| !m.voter)
        .map(|m| m.id)
        .collect()
}

/// Makes a membership change, which must be applied by this call.
async fn change(cluster: &Cluster, client: &Client, change: MemberChange) -> u64 {
    let what = format!("{change:?}");
    match client.member_change(change, false).await {
        Ok(MemberChangeOutcome::Changed(c)) => c.config_id,
        Ok(other) => fail(cluster, format!("{what}: {other:?}, not made by this call")),
        Err(e) => fail(cluster, format!("{what}: {e}")),
    }
}

/// Adds `id` (reserving its addresses), starts it empty, waits until the leader reports it
/// at most [`PROMOTE_LAG`] slots behind, and promotes it. Returns (catch-up, promotion)
/// times.
async fn grow(
    cluster: &mut Cluster,
    client: &Client,
    id: u64,
    opts: &ClusterOptions,
) -> (Duration, Duration) {
    cluster.reserve_node(id).or_fail(cluster, "reserve");
    change(cluster, client, add(cluster, id)).await;
    let started = Instant::now();
    cluster.add_node(id, opts).or_fail(cluster, "add node");
    wait_caught_up(cluster, client, id).await;
    let caught_up = started.elapsed();
    let started = Instant::now();
    change(cluster, client, MemberChange::Promote { id }).await;
    let promoted = started.elapsed();
    check!(
        cluster,
        voters(&list(cluster, client).await).contains(&id),
        "node {id} is not a voter after its promotion"
    );
    eprintln!("  node {id}: caught up in {caught_up:?}, promoted in {promoted:?}");
    (caught_up, promoted)
}

/// Waits until the leader reports `id` at most [`PROMOTE_LAG`] slots behind.
async fn wait_caught_up(cluster: &Cluster, client: &Client, id: u64) {
    let lag = wait_for(
        &format!("node {id} to catch up"),
        CATCH_UP_BOUND,
        POLL,
        || async move {
            let list = client.member_list().await.ok()?;
            let member = list.members.iter().find(|m| m.id == id)?;
            member.lag.filter(|&lag| lag <= PROMOTE_LAG)
        },
    )
    .await
    .or_fail(cluster, "catch-up");
    eprintln!("  node {id} caught up (lag {lag})");
}

/// Waits until node `id`'s process has exited, and returns whether it exited with success.
async fn wait_exited(cluster: &Cluster, id: u64) -> bool {
    let exited = wait_for(
        &format!("node {id} to exit"),
        EXIT_BOUND,
        POLL,
        || async move { cluster.last_exit(id).filter(|_| !cluster.is_running(id)) },
    )
    .await
    .or_fail(cluster, "removed node exit");
    exited.success()
}

/// A register workload on `cluster`'s first nodes, recorded into a history.
struct Load {
    history: History,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<workload::TaskResult>>,
    register: RegisterConfig,
}

impl Load {
    fn start(cluster: &Cluster) -> Load {
        let history = History::new();
        let register = RegisterConfig::default();
        let stop = Arc::new(AtomicBool::new(false));
        let endpoints: BTreeMap<u64, String> = cluster
            .ids()
            .into_iter()
            .map(|id| (id, cluster.client_endpoint(id).expect("known id")))
            .collect();
        let ctx = WorkloadContext {
            history: history.clone(),
            endpoints,
            client_options: client_options(Duration::from_secs(5)),
            shared: Arc::new(NemesisShared::default()),
            stop: Arc::clone(&stop),
            stats: Arc::new(WorkloadStats::default()),
            seed: 14,
        };
        let tasks = workload::spawn(&Workload::Register(register.clone()), &ctx)
            .or_fail(cluster, "start the workload");
        Load {
            history,
            stop,
            tasks,
            register,
        }
    }

    /// Stops the workload, reads every key (recorded) and checks the history. Returns how
    /// many operations it holds.
    async fn check(self, cluster: &Cluster, client: &Client) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        workload::join(self.tasks, Duration::from_secs(30)).await;
        let keys: Vec<String> = (0..self.register.keys)
            .map(workload::register_key)
            .collect();
        for key in keys {
            let op = self.history.invoke(1_000_000, key.as_str(), OpKind::Read);
            match client.get(key.clone()).await {
                Ok(v) => op.ok(Ret::Value(v.map(|b| b.to_vec()))),
                Err(e) => fail(cluster, format!("final read of {key}: {e}")),
            }
        }
        let report = check_history(
            &self.history,
            &CheckConfig {
                budget_time_max: Some(Duration::from_secs(120)),
                ..CheckConfig::default()
            },
        );
        if !report.is_ok() {
            let root = cluster.keep_data();
            let _ = self.history.dump_to_file(root.join("history.txt"));
            let _ = report.write_to_file(root.join("linearizability.txt"));
            fail(
                cluster,
                "the history across the membership changes is not linearizable",
            );
        }
        self.history.len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_to_five_then_remove_two_originals_the_leader_first() {
    let opts = ClusterOptions {
        proxies: true,
        ..options()
    };
    let mut cluster = start(opts.clone());
    wait_leader(&cluster, &[1, 2, 3]).await;
    let client = admin(&cluster);
    let writes = Writers::spawn(&client, "before", 4, keys_before() / 4)
        .finish()
        .await;
    check!(
        &cluster,
        writes.unknown.is_empty(),
        "writes of unknown outcome: {:?}",
        writes.unknown
    );
    let load = Load::start(&cluster);
    let during = Writers::spawn(&client, "during", 2, 100_000);

    let (catch_up_4, promote_4) = grow(&mut cluster, &client, 4, &opts).await;
    // kill -9 an original follower between two changes, and restart it from its data dir.
    let leader = led_list(&cluster, &client)
        .await
        .leader
        .or_fail_none(&cluster, "a leader");
    let victim = [1, 2, 3]
        .into_iter()
        .find(|&id| id != leader)
        .or_fail_none(&cluster, "a follower");
    cluster.kill(victim).or_fail(&cluster, "kill -9 a follower");
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.restart(victim).or_fail(&cluster, "restart it");
    // Node 5 is added while it is still catching up: it admits node 5 when node 5 dials
    // it, since node 5 knows a later configuration.
    let (catch_up_5, promote_5) = grow(&mut cluster, &client, 5, &opts).await;
    wait_caught_up(&cluster, &client, victim).await;
    // kill -9 every node in turn, the members that joined included, and restart it from its
    // data dir with a command line naming every member through its proxies: from then on
    // every link can be cut.
    for id in 1..=5 {
        cluster.relink(id, &opts).or_fail(&cluster, "relink");
        cluster.kill(id).or_fail(&cluster, "kill -9");
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.restart(id).or_fail(&cluster, "restart");
        wait_caught_up(&cluster, &client, id).await;
    }
    // Cut the leader off from every other member: the others elect a leader of their own.
    // Again until an original leads (each time, three of the four others are originals),
    // so that the first removal below removes the leader.
    for attempt in 1..=10 {
        let cut_off = led_list(&cluster, &client)
            .await
            .leader
            .or_fail_none(&cluster, "a leader");
        if attempt > 1 && cut_off <= 3 {
            break;
        }
        cluster
            .isolate(cut_off)
            .or_fail(&cluster, "isolate the leader");
        let others: Vec<u64> = (1..=5).filter(|&id| id != cut_off).collect();
        let new_leader = wait_leader(&cluster, &others).await;
        during.wait_acked_more(&cluster, 10, CONVERGE_BOUND).await;
        cluster.heal_all();
        eprintln!("  leader {cut_off} cut off: node {new_leader} took over; healed");
    }
    let members = led_list(&cluster, &client).await;
    check!(
        &cluster,
        voters(&members) == BTreeSet::from([1, 2, 3, 4, 5]) && learners(&members).is_empty(),
        "after growing: {members:?}"
    );

    // Remove the leader first: it hands over, and exits with success.
    let leader = members.leader.or_fail_none(&cluster, "a leader");
    check!(
        &cluster,
        leader <= 3,
        "no original led after ten leaders were cut off"
    );
    let originals: Vec<u64> = [leader]
        .into_iter()
        .chain([1, 2, 3].into_iter().filter(|&id| id != leader).take(1))
        .collect();
    for (i, &id) in originals.iter().enumerate() {
        // The second removal is made while a member that stays is cut off from the others.
        let bystander = if i == 1 {
            let leader_now = led_list(&cluster, &client).await.leader;
            let bystander = [4, 5]
                .into_iter()
                .find(|&b| Some(b) != leader_now)
                .or_fail_none(&cluster, "a member that is not the leader");
            cluster
                .isolate(bystander)
                .or_fail(&cluster, "isolate a member");
            Some(bystander)
        } else {
            None
        };
        change(&cluster, &client, MemberChange::Remove { id }).await;
        check!(
            &cluster,
            wait_exited(&cluster, id).await,
            "removed node {id} did not exit with success: {:?}",
            cluster.last_exit(id)
        );
        check!(
            &cluster,
            log_contains(&cluster, id, "this replica was removed from the cluster"),
            "node {id} did not log its removal"
        );
        if let Some(bystander) = bystander {
            during.wait_acked_more(&cluster, 10, CONVERGE_BOUND).await;
            cluster.heal_all();
            eprintln!("  node {id} removed while node {bystander} was cut off; healed");
        }
    }
    during.wait_acked_more(&cluster, 20, CONVERGE_BOUND).await;
    let remaining: Vec<u64> = (1..=5).filter(|id| !originals.contains(id)).collect();
    let members = led_list(&cluster, &client).await;
    check!(
        &cluster,
        voters(&members) == remaining.iter().copied().collect::<BTreeSet<u64>>(),
        "after removing {originals:?}: {members:?}"
    );
    let new_leader = members.leader.or_fail_none(&cluster, "a leader");
    check!(
        &cluster,
        new_leader != leader,
        "the removed leader {leader} still leads"
    );

    let during = during.stop().await;
    let ops = load.check(&cluster, &client).await;
    let mut all = writes;
    all.acked.extend(during.acked);
    all.unknown.extend(during.unknown);
    all.failed.extend(during.failed);
    verify_linearizable(&cluster, &client, &all).await;
    wait_converged(&cluster, &remaining, CONVERGE_BOUND).await;
    let keys: Vec<String> = all.all_keys().into_iter().map(|(k, _)| k).collect();
    verify_replicas_agree(&cluster, &client, &remaining, &keys).await;
    eprintln!(
        "SUMMARY membership grow-shrink: {} keys before, 3 -> 5 -> 3 (removed {originals:?}, \
         leader first; kill -9 of node {victim}, then of every node in turn; the leader cut off, and a member cut off during the second removal); node 4 caught up in {catch_up_4:?}, promoted in {promote_4:?}; node 5 \
         caught up in {catch_up_5:?}, promoted in {promote_5:?}; {} acknowledged writes read \
         back; {ops} register operations linearizable",
        keys_before(),
        all.acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_disk_was_lost_is_replaced_by_a_new_id() {
    let opts = options();
    let mut cluster = start(opts.clone());
    wait_leader(&cluster, &[1, 2, 3]).await;
    let client = admin(&cluster);
    let before = Writers::spawn(&client, "k", 4, 50).finish().await;

    // Node 3's disk is lost: stopped for good, its data dir gone.
    cluster.kill(3).or_fail(&cluster, "kill 3");
    std::fs::remove_dir_all(cluster.data_dir(3)).or_fail(&cluster, "wipe 3");
    change(&cluster, &client, MemberChange::Remove { id: 3 }).await;
    grow(&mut cluster, &client, 4, &opts).await;
    let members = list(&cluster, &client).await;
    check!(
        &cluster,
        voters(&members) == BTreeSet::from([1, 2, 4]),
        "after the replacement: {members:?}"
    );
    // Node 4 is a voter that counts: with node 1 gone, writes need it.
    cluster.kill(1).or_fail(&cluster, "kill 1");
    let after = Writers::spawn(&client, "after", 2, 20).finish().await;
    check!(
        &cluster,
        after.acked.len() == 40,
        "writes with nodes 2 and 4: {after:?}"
    );
    verify_linearizable(&cluster, &client, &before).await;
    wait_converged(&cluster, &[2, 4], CONVERGE_BOUND).await;
    let keys: Vec<String> = before
        .all_keys()
        .into_iter()
        .chain(after.all_keys())
        .map(|(k, _)| k)
        .collect();
    verify_replicas_agree(&cluster, &client, &[2, 4], &keys).await;
    eprintln!(
        "SUMMARY membership replace: node 3 wiped and removed, node 4 added, caught up and \
         promoted; {} writes read back from nodes 2 and 4",
        keys.len()
    );
}

/// The kvs-client executable, next to the server's.
fn client_binary() -> std::path::PathBuf {
    let server = find_server_binary(None).unwrap_or_else(|e| panic!("{e:#}"));
    server.with_file_name("kvs-client")
}

/// Runs `kvs-client` against `cluster`; returns (exit code, stdout, stderr).
fn cli(cluster: &Cluster, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(client_binary())
        .arg("--endpoints")
        .arg(cluster.client_endpoints().join(","))
        .args(args)
        .output()
        .or_fail(cluster, "run kvs-client");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `kvs-client` and requires exit code 1 and `needle` in its error.
fn cli_refused(cluster: &Cluster, args: &[&str], needle: &str) {
    let (code, _, stderr) = cli(cluster, args);
    check!(
        cluster,
        code == Some(1) && stderr.contains(needle),
        "kvs-client {args:?}: exit {code:?}, stderr {stderr:?} (wanted exit 1 and {needle:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_changes_are_refused_with_a_clear_error_and_change_nothing() {
    let opts = options();
    let mut cluster = start(opts.clone());
    wait_leader(&cluster, &[1, 2, 3]).await;
    let client = admin(&cluster);
    let first = list(&cluster, &client).await.config_id;
    let refused = |e: Result<MemberChangeOutcome, Error>| match e {
        Err(Error::Rejected(reply)) => reply,
        other => panic!("expected a refusal, got {other:?}"),
    };

    // Unknown ids, an existing id.
    let e = refused(
        client
            .member_change(MemberChange::Promote { id: 9 }, false)
            .await,
    );
    check!(&cluster, e == ErrorReply::UnknownMember { id: 9 }, "{e:?}");
    let e = refused(
        client
            .member_change(MemberChange::Remove { id: 9 }, false)
            .await,
    );
    check!(&cluster, e == ErrorReply::UnknownMember { id: 9 }, "{e:?}");
    cluster.reserve_node(4).or_fail(&cluster, "reserve 4");
    let mut taken = add(&cluster, 4);
    if let MemberChange::Add { id, .. } = &mut taken {
        *id = 2;
    }
    let e = refused(client.member_change(taken, false).await);
    check!(&cluster, e == ErrorReply::MemberExists { id: 2 }, "{e:?}");
    check!(
        &cluster,
        list(&cluster, &client).await.config_id == first,
        "a refused change changed the configuration"
    );
    // The same through the tool: exit 1, the reason on stderr.
    cli_refused(
        &cluster,
        &["member", "promote", "9"],
        "node 9 is not a member",
    );
    cli_refused(
        &cluster,
        &["member", "remove", "9"],
        "node 9 is not a member",
    );
    cli_refused(
        &cluster,
        &[
            "member",
            "add",
            "2",
            "--peer-addr",
            "h:1",
            "--client-addr",
            "h:2",
        ],
        "node 2 is already a member",
    );
    let (code, _, stderr) = cli(
        &cluster,
        &[
            "member",
            "add",
            "5",
            "--peer-addr",
            "nohost",
            "--client-addr",
            "h:2",
        ],
    );
    check!(
        &cluster,
        code == Some(2) && stderr.contains("peer address: \"nohost\" is not HOST:PORT"),
        "a bad address: exit {code:?}, {stderr:?}"
    );

    // A learner that is not running, then one that is paused, cannot be promoted.
    let second = change(&cluster, &client, add(&cluster, 4)).await;
    let e = refused(
        client
            .member_change(MemberChange::Promote { id: 4 }, false)
            .await,
    );
    check!(
        &cluster,
        matches!(e, ErrorReply::LearnerNotReady { id: 4, .. }),
        "{e:?}"
    );
    cli_refused(
        &cluster,
        &["member", "promote", "4"],
        "learner 4 is not ready",
    );
    cluster.add_node(4, &opts).or_fail(&cluster, "add node 4");
    wait_caught_up(&cluster, &client, 4).await;
    cluster.pause(4).or_fail(&cluster, "pause 4");
    // Once the leader has not heard from it for an election timeout (300 ms here).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let paused = refused(
        client
            .member_change(MemberChange::Promote { id: 4 }, false)
            .await,
    );
    check!(
        &cluster,
        paused.to_string() == "learner 4 is not ready: it has not answered the leader lately (is it running and reachable?)",
        "{paused:?}"
    );
    check!(
        &cluster,
        learners(&list(&cluster, &client).await) == BTreeSet::from([4]),
        "node 4 changed while refused"
    );
    cluster.resume(4).or_fail(&cluster, "resume 4");

    // A change naming an old configuration is refused as stale.
    let stale = client
        .change_membership(first, MemberChange::Remove { id: 4 }, false)
        .await;
    check!(
        &cluster,
        matches!(
            stale,
            Err(Error::Rejected(ErrorReply::StaleConfig { expected, current }))
                if expected == first && current == second
        ),
        "{stale:?}"
    );
    // An id used before is never given to another data dir.
    change(&cluster, &client, MemberChange::Remove { id: 4 }).await;
    let mut again = add(&cluster, 4);
    if let MemberChange::Add { peer_addr, .. } = &mut again {
        *peer_addr = "127.0.0.1:1".into();
    }
    match client.member_change(again, false).await {
        Err(Error::Rejected(ErrorReply::Invalid { reason })) if reason.contains("never reused") => {
        }
        other => fail(&cluster, format!("re-adding id 4: {other:?}")),
    }
    // Removing a voter while another is down would lose the quorum: refused unless forced.
    let third = list(&cluster, &client).await.config_id;
    let leader = wait_leader(&cluster, &[1, 2, 3]).await;
    let down = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap_or(1);
    let victim = [1, 2, 3]
        .into_iter()
        .find(|&id| id != leader && id != down)
        .unwrap_or(2);
    cluster.kill(down).or_fail(&cluster, "kill a follower");
    // Once the leader has not heard from it for an election timeout (300 ms here).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let lost = refused(
        client
            .member_change(MemberChange::Remove { id: victim }, false)
            .await,
    );
    check!(
        &cluster,
        lost == ErrorReply::WouldLoseQuorum { live: 1, needed: 2 },
        "{lost:?}"
    );
    cli_refused(
        &cluster,
        &["member", "remove", &victim.to_string()],
        "only 1 live voters would remain where 2 are needed for a majority (use --force",
    );
    check!(
        &cluster,
        list(&cluster, &client).await.config_id == third,
        "a refused removal changed the configuration"
    );
    cluster.restart(down).or_fail(&cluster, "restart");
    eprintln!(
        "SUMMARY membership refusals: unknown id, existing id, bad address, learner not \
         running, learner paused, stale configuration, reused id, lost quorum: each refused, \
         nothing changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_replicas_take_the_membership_from_their_data_dirs() {
    let opts = options();
    let mut cluster = start(opts.clone());
    wait_leader(&cluster, &[1, 2, 3]).await;
    let client = admin(&cluster);
    let before = Writers::spawn(&client, "k", 2, 30).finish().await;
    grow(&mut cluster, &client, 4, &opts).await;
    let config = change(&cluster, &client, MemberChange::Remove { id: 3 }).await;
    check!(
        &cluster,
        wait_exited(&cluster, 3).await,
        "node 3 did not exit with success"
    );

    // Every replica stops, and starts again with the flags it was first given: nodes 1 and
    // 2 list members 1, 2 and 3 in --peers.
    cluster.kill_all();
    for id in [1, 2, 4] {
        cluster.restart(id).or_fail(&cluster, "restart");
    }
    let leader = wait_leader(&cluster, &[1, 2, 4]).await;
    for id in [1, 2] {
        check!(
            &cluster,
            log_contains(&cluster, id, &format!("configuration={config}")),
            "node {id} did not recover configuration {config}"
        );
        check!(
            &cluster,
            log_contains(
                &cluster,
                id,
                "--peers lists other members than this data dir's membership"
            ),
            "node {id} did not say its flags differ from its data dir"
        );
    }
    let members = list(&cluster, &client).await;
    check!(
        &cluster,
        members.config_id == config && voters(&members) == BTreeSet::from([1, 2, 4]),
        "after the restart: {members:?}"
    );
    // Node 4 is the vote writes need once another voter is gone.
    let gone = if leader == 1 { 2 } else { 1 };
    cluster.kill(gone).or_fail(&cluster, "kill one");
    let after = Writers::spawn(&client, "after", 2, 10).finish().await;
    check!(
        &cluster,
        after.acked.len() == 20,
        "writes without node {gone}: {after:?}"
    );
    verify_linearizable(&cluster, &client, &before).await;
    // The removed node 3, started again, finds itself removed in its data dir and stops.
    cluster
        .restart(3)
        .or_fail(&cluster, "restart the removed node 3");
    check!(
        &cluster,
        wait_exited(&cluster, 3).await,
        "the removed node 3, restarted, did not stop with success"
    );
    eprintln!(
        "SUMMARY membership restart: configuration {config} (voters 1, 2, 4) recovered by every \
         replica restarted with its first flags; writes served without node {gone}"
    );
}

/// `Option` → the value, or the test fails naming what was missing.
trait OrFailNone<T> {
    fn or_fail_none(self, cluster: &Cluster, what: &str) -> T;
}

impl<T> OrFailNone<T> for Option<T> {
    fn or_fail_none(self, cluster: &Cluster, what: &str) -> T {
        match self {
            Some(v) => v,
            None => fail(cluster, format!("no {what}")),
        }
    }
}

/// A replica down while two members join and two originals leave (the leader first) is
/// restarted with its original flags. The members it knows are gone; the members left
/// (4 and 5) are ones it never knew, and it refused them before protocol version 4. It
/// admits them now, since they know a later configuration than it does, links back to
/// them at the address they state, catches up, and is then the vote writes need: with node
/// 4 killed, writes are acknowledged only if it votes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_away_while_the_members_changed_catches_up_from_members_it_never_knew() {
    let opts = options();
    let mut cluster = start(opts.clone());
    let leader = wait_leader(&cluster, &[1, 2, 3]).await;
    let client = admin(&cluster);
    let before = Writers::spawn(&client, "before", 2, 40).finish().await;
    let away = [3, 2, 1]
        .into_iter()
        .find(|&id| id != leader)
        .or_fail_none(&cluster, "a follower");
    cluster.kill(away).or_fail(&cluster, "kill -9 a follower");
    grow(&mut cluster, &client, 4, &opts).await;
    grow(&mut cluster, &client, 5, &opts).await;
    let client = admin(&cluster);
    let originals: Vec<u64> = [leader]
        .into_iter()
        .chain(
            [1, 2, 3]
                .into_iter()
                .filter(|&id| id != leader && id != away),
        )
        .collect();
    for &id in &originals {
        change(&cluster, &client, MemberChange::Remove { id }).await;
        check!(
            &cluster,
            wait_exited(&cluster, id).await,
            "removed node {id} did not exit with success: {:?}",
            cluster.last_exit(id)
        );
    }
    let meanwhile = Writers::spawn(&client, "meanwhile", 2, 40).finish().await;
    let members = led_list(&cluster, &client).await;
    check!(
        &cluster,
        voters(&members) == BTreeSet::from([away, 4, 5]),
        "after the changes: {members:?}"
    );

    let started = Instant::now();
    cluster
        .restart(away)
        .or_fail(&cluster, "restart the replica that was away");
    wait_caught_up(&cluster, &client, away).await;
    let caught_up = started.elapsed();
    check!(
        &cluster,
        log_contains(&cluster, away, "it knows a later configuration"),
        "node {away} did not log that it linked to a member it did not know"
    );
    cluster.kill(4).or_fail(&cluster, "kill -9 node 4");
    let after = Writers::spawn(&client, "after", 2, 20).finish().await;
    check!(
        &cluster,
        after.acked.len() == 40 && after.unknown.is_empty(),
        "writes with node 4 down (node {away} must vote): {}",
        after.figures()
    );
    let mut all = before;
    all.acked.extend(meanwhile.acked);
    all.acked.extend(after.acked.iter().cloned());
    all.unknown.extend(meanwhile.unknown);
    all.failed.extend(meanwhile.failed);
    verify_linearizable(&cluster, &client, &all).await;
    let keys: Vec<String> = all.all_keys().into_iter().map(|(k, _)| k).collect();
    verify_replicas_agree(&cluster, &client, &[away, 5], &keys).await;
    eprintln!(
        "SUMMARY membership away-during-changes: node {away} was down while 4 and 5 joined \
         and {originals:?} left; restarted with its original flags, it caught up from members \
         it never knew in {caught_up:?} and then voted for {} writes with node 4 down",
        after.acked.len()
    );
}
