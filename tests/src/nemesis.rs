//! Fault-injection schedules ("nemesis") over a running [`Cluster`].
//!
//! A [`Nemesis`] runs as one async task beside the workload. Every round it waits a short
//! quiet period, injects one [`Fault`], holds it for a random time, then heals it before the
//! next round (every schedule here heals each fault before injecting the next). Every action
//! is logged with a timestamp on the clock of the scenario's [`History`] into a [`FaultLog`],
//! so faults and operations can be read side by side.
//!
//! Faults that need the leader find it through the status request of every node, sent to
//! the nodes' real client addresses (not through the client proxies, which a fault may cut).
//!
//! **Every fault is checked to have taken effect** ([`FaultChecks`]); a check that fails is a
//! failure of the scenario, with a message saying which fault did not work:
//!
//! - network faults: at heal time, every proxy the fault blocked must have forwarded not one
//!   byte and not one new connection between the cut and the heal (the proxies count under
//!   the same lock that applies the cut, see [`crate::proxy`]), and the fault must have
//!   blocked at least one proxy;
//! - isolating or pausing the leader (and a partition with the leader in the minority): within
//!   [`LEADERSHIP_CHANGE_TIMEOUT`], another node must lead on a higher ballot, a majority of
//!   the members must be on a ballot above the old leader's (so they refuse it), and the old
//!   leader, when it can be asked (isolated, not paused), must no longer claim to lead;
//! - pausing the leader: besides the leadership change, a write sent through the other nodes
//!   only (by a client that does not know the paused node) must be acknowledged within
//!   [`PAUSE_WRITE_TIMEOUT`]: the cluster serves while its old leader is stopped;
//! - `kill -9`: the process must be reaped with SIGKILL, its pid gone and its client port
//!   refusing connections ([`Cluster::kill_verified`]), and it must still be down when the
//!   heal restarts it.
//!
//! Each fault is held from the instant it is injected; its checks run within that time. The
//! [`FaultLog`] also keeps the fault *windows* (injection to heal), so the scenario can count
//! the operations the cluster completed while faults were in force.
//!
//! Two faults also publish a *target* in [`NemesisShared`]: the node that was leader and is
//! now cut off from its peers (but not from clients), or paused. Workloads may direct reads at
//! it, which is how a deposed leader that still answers linearizable reads is caught. The
//! [`Fault::IsolateLeaderFromPeers`] fault additionally probes the deposed leader itself:
//! it writes a fresh value through the other nodes, then reads it back from the old leader
//! directly, recording both in the history.

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use kvs_client::{Client, ClientOptions, NodeRole, NodeStatus};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::history::{format_ns, History, OpKind, ProcessId, Ret};

/// Process ids used by the nemesis' own probe operations (far from the workload's).
pub const PROBE_PROCESS_BASE: ProcessId = 900_000;

/// The key the [`Fault::IsolateLeaderFromPeers`] probe writes and reads back, and the
/// [`Fault::PauseLeader`] probe writes.
pub const PROBE_KEY: &str = "nemesis/probe";

/// Process ids of the [`Fault::PauseLeader`] probe's writes (one per attempt).
const PAUSE_PROCESS_BASE: ProcessId = 950_000;

/// Bound on a write through the other nodes being acknowledged while the leader is paused.
pub const PAUSE_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Rounds of a schedule at most, whatever the duration (bounds the nemesis loop).
const ROUNDS_MAX: usize = 10_000;

/// How long a fault looks for the leader before it picks a node at random.
const LEADER_SEARCH: Duration = Duration::from_secs(3);

/// Bound on the leadership moving away from an isolated or paused leader. The suite's
/// elections take well under a second (150..300 ms timeouts); this leaves room for a loaded
/// machine without letting a fault that did nothing pass.
pub const LEADERSHIP_CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One fault a nemesis can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Cut every peer link and the client link of the leader.
    IsolateLeader,
    /// Cut every peer link of the leader, but let clients reach it; probe it for stale reads.
    IsolateLeaderFromPeers,
    /// Each node reaches only its two neighbours in a random ring (needs ≥ 5 nodes to matter).
    Ring,
    /// Two halves that only a random bridge node connects.
    Bridge,
    /// A random majority and minority, the leader in the minority half of the time.
    MajorityMinority,
    /// SIGSTOP the leader; SIGCONT it at heal time (it wakes believing it still leads).
    PauseLeader,
    /// SIGKILL a random minority of nodes (every node, one time in five); restart at heal.
    KillRandom,
    /// Cut a few random one-way links, or every outgoing or every incoming link of the leader.
    OneWayCuts,
    /// Cut the client link of a random minority of nodes (the leader's half of the time).
    ClientCuts,
}

impl Fault {
    /// Every fault that makes sense for a cluster of `nodes` nodes, for mixed schedules.
    pub fn all_for(nodes: usize) -> Vec<Fault> {
        let mut faults = vec![
            Fault::IsolateLeader,
            Fault::IsolateLeaderFromPeers,
            Fault::Bridge,
            Fault::MajorityMinority,
            Fault::PauseLeader,
            Fault::KillRandom,
            Fault::OneWayCuts,
            Fault::ClientCuts,
        ];
        if nodes >= 5 {
            faults.push(Fault::Ring);
        }
        faults
    }
}

/// Which faults a nemesis injects, and when.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// No faults from the nemesis (the servers may inject their own, e.g. acceptor failures).
    None,
    /// The same fault every round.
    Repeat(Fault),
    /// A fault chosen at random from the list every round.
    Mixed(Vec<Fault>),
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::None => write!(f, "no nemesis faults"),
            Schedule::Repeat(fault) => write!(f, "repeat {fault:?}"),
            Schedule::Mixed(faults) => write!(f, "mixed {faults:?}"),
        }
    }
}

/// Timing of a nemesis.
#[derive(Clone, Debug, PartialEq)]
pub struct NemesisConfig {
    /// Which faults.
    pub schedule: Schedule,
    /// How long each fault is held, min..max (uniform).
    pub hold: (Duration, Duration),
    /// Fault-free time before each fault, min..max (uniform).
    pub quiet: (Duration, Duration),
    /// Seed of the nemesis' random choices.
    pub seed: u64,
    /// Client options of the probe's clients.
    pub client_options: ClientOptions,
}

/// One timestamped line of the fault log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultEvent {
    /// Nanoseconds on the history's clock.
    pub at_ns: u64,
    /// Whether this line injected a fault (as opposed to healing or a remark).
    pub injected: bool,
    /// What happened.
    pub text: String,
}

impl fmt::Display for FaultEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = if self.injected { "FAULT" } else { "     " };
        write!(f, "[{:>14}] {tag} {}", format_ns(self.at_ns), self.text)
    }
}

/// A time during which faults were in force: from the first injection to the heal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultWindow {
    /// Nanoseconds on the history's clock when the fault was injected.
    pub start_ns: u64,
    /// Nanoseconds on the history's clock when it was healed (or now, if it is not yet).
    pub end_ns: u64,
}

impl FaultWindow {
    /// Whether `[invoke_ns, complete_ns]` lies entirely inside the window.
    pub fn contains(&self, invoke_ns: u64, complete_ns: u64) -> bool {
        self.start_ns <= invoke_ns && complete_ns <= self.end_ns
    }
}

/// A fault window as logged: `end_ns` is `None` while it is open.
#[derive(Clone, Copy, Debug)]
struct LoggedWindow {
    start_ns: u64,
    end_ns: Option<u64>,
}

/// The timestamped list of everything a nemesis did. Cheap to clone (clones share the list).
#[derive(Clone, Debug)]
pub struct FaultLog {
    history: History,
    events: Arc<Mutex<Vec<FaultEvent>>>,
    /// Every fault window; the last one's `end_ns` is `None` while it is open.
    windows: Arc<Mutex<Vec<LoggedWindow>>>,
}

impl FaultLog {
    /// A log whose timestamps use `history`'s clock.
    pub fn new(history: &History) -> FaultLog {
        FaultLog {
            history: history.clone(),
            events: Arc::default(),
            windows: Arc::default(),
        }
    }

    fn push(&self, injected: bool, text: String) -> u64 {
        let at_ns = self.history.elapsed_ns();
        let event = FaultEvent {
            at_ns,
            injected,
            text,
        };
        eprintln!("nemesis {event}");
        lock(&self.events).push(event);
        at_ns
    }

    /// Logs an injected fault, opening a fault window unless one is open.
    pub fn fault(&self, text: impl Into<String>) {
        let at_ns = self.push(true, text.into());
        let mut windows = lock(&self.windows);
        if windows.last().is_none_or(|w| w.end_ns.is_some()) {
            windows.push(LoggedWindow {
                start_ns: at_ns,
                end_ns: None,
            });
        }
    }

    /// Logs a heal, closing the open fault window if there is one.
    pub fn heal(&self, text: impl Into<String>) {
        let at_ns = self.push(false, text.into());
        if let Some(window) = lock(&self.windows).last_mut() {
            window.end_ns.get_or_insert(at_ns);
        }
    }

    /// Logs a remark.
    pub fn note(&self, text: impl Into<String>) {
        self.push(false, text.into());
    }

    /// Every fault window so far, in order; one still open ends now.
    pub fn windows(&self) -> Vec<FaultWindow> {
        let now = self.history.elapsed_ns();
        lock(&self.windows)
            .iter()
            .map(|w| FaultWindow {
                start_ns: w.start_ns,
                end_ns: w.end_ns.unwrap_or(now),
            })
            .collect()
    }

    /// Every event so far, in order.
    pub fn events(&self) -> Vec<FaultEvent> {
        lock(&self.events).clone()
    }

    /// Number of faults injected so far.
    pub fn faults_injected(&self) -> usize {
        lock(&self.events).iter().filter(|e| e.injected).count()
    }

    /// The log as text, one event per line.
    pub fn text(&self) -> String {
        self.events()
            .iter()
            .map(|e| format!("{e}\n"))
            .collect::<String>()
    }
}

/// State the nemesis shares with the workload.
#[derive(Debug, Default)]
pub struct NemesisShared {
    target: Mutex<Option<u64>>,
    killed: Mutex<BTreeSet<u64>>,
    probes: Mutex<ProbeStats>,
    checks: Mutex<FaultChecks>,
}

/// What the nemesis verified about the effect of its faults (see the [module docs](self)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultChecks {
    /// Network faults healed after every proxy they blocked was shown to carry nothing.
    pub cuts_verified: u64,
    /// Proxies (peer links and client links) shown to carry nothing while blocked.
    pub proxies_verified: u64,
    /// Leader faults after which the leadership was shown to have moved.
    pub leadership_changes_verified: u64,
    /// Leader faults whose victim was not known to lead (no leader found in time), so there
    /// was no leadership change to verify.
    pub leader_unknown: u64,
    /// Leader pauses during which a write through the other nodes was acknowledged.
    pub pause_writes_verified: u64,
    /// Kills shown to have ended the process (reaped by SIGKILL, pid gone, port refusing).
    pub kills_verified: u64,
    /// Faults that did not take effect, one message each. Any entry fails the scenario.
    pub failures: Vec<String>,
}

impl fmt::Display for FaultChecks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} cuts ({} proxies) carried nothing while cut, {} leadership changes, {} writes \
             during leader pauses, {} kills verified; {} leader faults without a known leader; \
             {} FAILED",
            self.cuts_verified,
            self.proxies_verified,
            self.leadership_changes_verified,
            self.pause_writes_verified,
            self.kills_verified,
            self.leader_unknown,
            self.failures.len()
        )
    }
}

/// What the old-leader probes of [`Fault::IsolateLeaderFromPeers`] saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeStats {
    /// Probes that wrote a new value through the majority and then read the old leader.
    pub rounds: u64,
    /// The old leader answered with the new value (e.g. after redirecting the client).
    pub fresh: u64,
    /// The old leader answered a linearizable read with an older value: a violation.
    pub stale: u64,
    /// The old leader's read failed (timed out, unavailable): allowed.
    pub failed: u64,
    /// Probes skipped because no new leader emerged or the probe write did not succeed.
    pub skipped: u64,
}

impl NemesisShared {
    /// The deposed (isolated or paused) leader that reads may be directed at, if any.
    pub fn target(&self) -> Option<u64> {
        *lock(&self.target)
    }

    fn set_target(&self, target: Option<u64>) {
        *lock(&self.target) = target;
    }

    /// Nodes the nemesis killed at some point (a node down for another reason crashed).
    pub fn killed(&self) -> BTreeSet<u64> {
        lock(&self.killed).clone()
    }

    /// What the old-leader probes saw.
    pub fn probes(&self) -> ProbeStats {
        lock(&self.probes).clone()
    }

    /// What the nemesis verified about its faults so far.
    pub fn checks(&self) -> FaultChecks {
        lock(&self.checks).clone()
    }
}

/// How a fault is undone.
#[derive(Debug)]
enum Heal {
    /// Clear every network fault.
    Network,
    /// SIGCONT this node.
    Resume(u64),
    /// Start these nodes again.
    Restart(Vec<u64>),
}

/// A fault injector over a shared cluster. See the [module docs](self).
pub struct Nemesis {
    cluster: Arc<Cluster>,
    config: NemesisConfig,
    log: FaultLog,
    history: History,
    shared: Arc<NemesisShared>,
    rng: StdRng,
    status_client: Client,
    probe_round: u64,
    pause_writes: u64,
}

impl fmt::Debug for Nemesis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nemesis")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Nemesis {
    /// A nemesis over `cluster`, logging into `log` and recording its probes into `history`.
    pub fn new(
        cluster: Arc<Cluster>,
        config: NemesisConfig,
        history: &History,
        log: FaultLog,
        shared: Arc<NemesisShared>,
    ) -> anyhow::Result<Nemesis> {
        let status_client = status_client(&cluster)?;
        Ok(Nemesis {
            rng: StdRng::seed_from_u64(config.seed),
            cluster,
            config,
            log,
            history: history.clone(),
            shared,
            status_client,
            probe_round: 0,
            pause_writes: 0,
        })
    }

    /// Injects faults until `deadline`, healing each before the next and the last before
    /// returning. Each fault is held from the instant it is injected, its checks included.
    /// An error means the harness could not inject or heal a fault; a fault that did not take
    /// effect is recorded in [`NemesisShared::checks`] instead, and the schedule goes on.
    pub async fn run(mut self, deadline: Instant) -> anyhow::Result<()> {
        let faults: Vec<Fault> = match &self.config.schedule {
            Schedule::None => {
                self.log.note("no nemesis faults scheduled");
                return Ok(());
            }
            Schedule::Repeat(fault) => vec![*fault],
            Schedule::Mixed(faults) => faults.clone(),
        };
        anyhow::ensure!(!faults.is_empty(), "a mixed schedule needs faults");
        for _round in 0..ROUNDS_MAX {
            let quiet = self.pick(self.config.quiet);
            // Not worth starting a fault that could not be held for its minimum time.
            if Instant::now() + quiet + self.config.hold.0 >= deadline {
                break;
            }
            tokio::time::sleep(quiet).await;
            let fault = *faults.choose(&mut self.rng).expect("not empty");
            self.shared.set_target(None);
            let hold = self.pick(self.config.hold);
            let (heal, injected_at) = self.inject(fault, deadline).await?;
            tokio::time::sleep_until((injected_at + hold).min(deadline)).await;
            self.heal(heal)?;
        }
        self.shared.set_target(None);
        Ok(())
    }

    fn pick(&mut self, (min, max): (Duration, Duration)) -> Duration {
        if max <= min {
            return min;
        }
        self.rng.random_range(min..=max)
    }

    fn ids(&self) -> Vec<u64> {
        self.cluster.ids()
    }

    fn minority_size(&self) -> usize {
        (self.ids().len() - 1) / 2
    }

    /// Logs a fault that did not take effect (it fails the scenario).
    fn check_failed(&self, text: String) {
        self.log.note(format!("CHECK FAILED: {text}"));
        lock(&self.shared.checks).failures.push(text);
    }

    /// The leader, found through status requests (bounded), with its status; a random node
    /// and `None` if none is found.
    async fn leader_or_random(&mut self) -> (u64, Option<NodeStatus>) {
        match find_leader_status(&self.cluster, &self.status_client, LEADER_SEARCH).await {
            Some(status) => (status.id, Some(status)),
            None => {
                let id = *self.ids().choose(&mut self.rng).expect("nodes");
                self.log.note(format!(
                    "no leader found within {LEADER_SEARCH:?}; using node {id}"
                ));
                (id, None)
            }
        }
    }

    /// Logs the injected fault and returns the instant its hold starts.
    fn injected(&self, text: String) -> Instant {
        self.log.fault(text);
        Instant::now()
    }

    /// Checks that the leadership moved away from `old` (see [`verify_leadership_moved`]),
    /// recording the outcome. `old` is `None` when the victim was not known to lead.
    async fn check_leadership_moved(&self, old: Option<&NodeStatus>, old_answers: bool) {
        let Some(old) = old else {
            lock(&self.shared.checks).leader_unknown += 1;
            self.log
                .note("the victim was not known to lead: no leadership change to verify");
            return;
        };
        let verdict = verify_leadership_moved(
            &self.cluster,
            &self.status_client,
            old,
            old_answers,
            LEADERSHIP_CHANGE_TIMEOUT,
        )
        .await;
        match verdict {
            Ok(text) => {
                lock(&self.shared.checks).leadership_changes_verified += 1;
                self.log.note(format!("verified: {text}"));
            }
            Err(text) => self.check_failed(text),
        }
    }

    async fn inject(&mut self, fault: Fault, deadline: Instant) -> anyhow::Result<(Heal, Instant)> {
        let ids = self.ids();
        match fault {
            Fault::IsolateLeader => {
                let (leader, status) = self.leader_or_random().await;
                self.cluster.isolate(leader)?;
                self.cluster.cut_client(leader)?;
                self.shared.set_target(Some(leader));
                let at = self.injected(format!("isolate leader n{leader} (peers and clients cut)"));
                self.check_leadership_moved(status.as_ref(), true).await;
                Ok((Heal::Network, at))
            }
            Fault::IsolateLeaderFromPeers => {
                let (leader, status) = self.leader_or_random().await;
                self.cluster.isolate(leader)?;
                self.shared.set_target(Some(leader));
                let at = self.injected(format!(
                    "isolate leader n{leader} from its peers (clients still reach it)"
                ));
                self.check_leadership_moved(status.as_ref(), true).await;
                self.probe_old_leader(leader, deadline).await;
                Ok((Heal::Network, at))
            }
            Fault::Ring => {
                let mut order = ids.clone();
                order.shuffle(&mut self.rng);
                self.cluster.ring(&order)?;
                let at = self.injected(format!("ring {order:?} (neighbours only)"));
                Ok((Heal::Network, at))
            }
            Fault::Bridge => {
                let mut order = ids.clone();
                order.shuffle(&mut self.rng);
                let bridge = order.remove(0);
                let half = order.len() / 2;
                let (left, right) = order.split_at(half);
                self.cluster.bridge(left, bridge, right)?;
                let at = self.injected(format!("bridge {left:?} <-> n{bridge} <-> {right:?}"));
                Ok((Heal::Network, at))
            }
            Fault::MajorityMinority => self.inject_partition().await,
            Fault::PauseLeader => {
                let (leader, status) = self.leader_or_random().await;
                self.cluster.pause(leader)?;
                self.shared.set_target(Some(leader));
                let at = self.injected(format!("SIGSTOP leader n{leader}"));
                // A stopped process cannot answer: the others must have moved on.
                self.check_leadership_moved(status.as_ref(), false).await;
                self.check_write_during_pause(leader).await;
                Ok((Heal::Resume(leader), at))
            }
            Fault::KillRandom => Ok(self.inject_kills()),
            Fault::OneWayCuts => self.inject_one_way_cuts().await,
            Fault::ClientCuts => {
                let count = self.rng.random_range(1..=self.minority_size().max(1));
                let mut victims: Vec<u64> = if self.rng.random_bool(0.5) {
                    vec![self.leader_or_random().await.0]
                } else {
                    Vec::new()
                };
                let mut order = ids.clone();
                order.shuffle(&mut self.rng);
                for id in order {
                    if victims.len() >= count {
                        break;
                    }
                    if !victims.contains(&id) {
                        victims.push(id);
                    }
                }
                victims.sort_unstable();
                for &id in &victims {
                    self.cluster.cut_client(id)?;
                }
                let at = self.injected(format!("cut client links of {victims:?}"));
                Ok((Heal::Network, at))
            }
        }
    }

    /// A random majority and minority, the leader in the minority half of the time (then the
    /// leadership must move to the majority).
    async fn inject_partition(&mut self) -> anyhow::Result<(Heal, Instant)> {
        let leader_in_minority = self.rng.random_bool(0.5);
        let leader = if leader_in_minority {
            Some(self.leader_or_random().await)
        } else {
            None
        };
        let mut order = self.ids();
        order.shuffle(&mut self.rng);
        if let Some((leader, _)) = &leader {
            order.retain(|id| id != leader);
            order.insert(0, *leader);
        }
        let (minority, majority) = order.split_at(self.minority_size());
        self.cluster.partition(&[minority, majority])?;
        let who = match &leader {
            Some((l, _)) => format!(" (leader n{l} in the minority)"),
            None => String::new(),
        };
        let at = self.injected(format!(
            "partition minority {minority:?} | majority {majority:?}{who}"
        ));
        if let Some((_, status)) = &leader {
            self.check_leadership_moved(status.as_ref(), true).await;
        }
        Ok((Heal::Network, at))
    }

    /// SIGKILL a random minority of nodes (every node, one time in five), each verified gone.
    fn inject_kills(&mut self) -> (Heal, Instant) {
        let ids = self.ids();
        let mut order = ids.clone();
        order.shuffle(&mut self.rng);
        let count = if self.rng.random_bool(0.2) {
            ids.len()
        } else {
            self.rng.random_range(1..=self.minority_size().max(1))
        };
        let mut victims: Vec<u64> = order[..count].to_vec();
        victims.sort_unstable();
        let mut evidence = Vec::new();
        let mut killed = Vec::new();
        for &id in &victims {
            match self.cluster.kill_verified(id) {
                Ok(proof) => {
                    lock(&self.shared.killed).insert(id);
                    lock(&self.shared.checks).kills_verified += 1;
                    evidence.push(proof.to_string());
                    killed.push(id);
                }
                Err(e) => {
                    // A node that was not running at all was not killed by us: restart it
                    // at heal time anyway, and let the check say why.
                    self.check_failed(format!("SIGKILL of n{id}: {e:#}"));
                    if !self.cluster.is_running(id) {
                        killed.push(id);
                    }
                }
            }
        }
        let at = self.injected(format!("SIGKILL {victims:?}"));
        if !evidence.is_empty() {
            self.log.note(format!("verified: {}", evidence.join("; ")));
        }
        (Heal::Restart(killed), at)
    }

    /// A few random one-way links, or every link out of or into the leader.
    async fn inject_one_way_cuts(&mut self) -> anyhow::Result<(Heal, Instant)> {
        let ids = self.ids();
        let links = match self.rng.random_range(0..3) {
            0 => {
                let (leader, _) = self.leader_or_random().await;
                self.log
                    .note(format!("cutting every link out of leader n{leader}"));
                crate::cluster::shapes::links_where(&ids, |from, _| from == leader)
            }
            1 => {
                let (leader, _) = self.leader_or_random().await;
                self.log
                    .note(format!("cutting every link into leader n{leader}"));
                crate::cluster::shapes::links_where(&ids, |_, to| to == leader)
            }
            _ => {
                let all: Vec<_> = crate::cluster::shapes::all_links(&ids)
                    .into_iter()
                    .collect();
                let count = self.rng.random_range(1..=3.min(all.len()));
                all.choose_multiple(&mut self.rng, count).copied().collect()
            }
        };
        self.cluster.cut_links(&links)?;
        let at = self.injected(format!("one-way cuts {links:?}"));
        Ok((Heal::Network, at))
    }

    fn heal(&mut self, heal: Heal) -> anyhow::Result<()> {
        match heal {
            Heal::Network => {
                let report = self.cluster.heal_all();
                let leaks = report.leaks();
                if report.blocked() == 0 {
                    self.check_failed("a network fault blocked no proxy at all".into());
                } else if leaks.is_empty() {
                    let mut checks = lock(&self.shared.checks);
                    checks.cuts_verified += 1;
                    checks.proxies_verified += report.blocked() as u64;
                } else {
                    self.check_failed(format!("a cut did not take effect: {}", leaks.join("; ")));
                }
                self.log.heal(format!(
                    "heal: every link restored; {} cut proxies carried {}",
                    report.blocked(),
                    if leaks.is_empty() {
                        "0 bytes and 0 connections while cut (verified)"
                    } else {
                        "TRAFFIC while cut"
                    }
                ));
            }
            Heal::Resume(id) => {
                self.cluster.resume(id)?;
                self.log.heal(format!("heal: SIGCONT n{id}"));
            }
            Heal::Restart(ids) => {
                for &id in &ids {
                    if let Some(pid) = self.cluster.pid(id) {
                        self.check_failed(format!(
                            "n{id} was running again (pid {pid}) before its restart"
                        ));
                        continue;
                    }
                    self.cluster
                        .restart(id)
                        .with_context(|| format!("restarting node {id}"))?;
                }
                self.log.heal(format!("heal: restarted {ids:?}"));
            }
        }
        Ok(())
    }

    /// With `paused` stopped: writes fresh values of [`PROBE_KEY`] through the other nodes only
    /// (a client that does not know `paused`) until one is acknowledged, bounded by
    /// [`PAUSE_WRITE_TIMEOUT`]; every attempt is recorded in the history. This shows the
    /// cluster serving while its old leader is stopped, whatever the workload's clients do.
    async fn check_write_during_pause(&mut self, paused: u64) {
        let others: Vec<u64> = self.ids().into_iter().filter(|&id| id != paused).collect();
        let endpoints: Vec<String> = others
            .iter()
            .filter_map(|&id| self.cluster.client_endpoint(id).ok())
            .collect();
        let client = match Client::connect(endpoints, self.config.client_options.clone()) {
            Ok(client) => client,
            Err(e) => return self.check_failed(format!("no client for nodes {others:?}: {e}")),
        };
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < PAUSE_WRITE_TIMEOUT {
            self.pause_writes += 1;
            // A fresh process per attempt: an unknown outcome ends a process in the history.
            let process = PAUSE_PROCESS_BASE + self.pause_writes;
            let value = format!("pause-{}", self.pause_writes);
            let kind = OpKind::Write(value.clone().into_bytes());
            let op = self.history.invoke(process, PROBE_KEY, kind);
            match bounded(client.put(PROBE_KEY, value)).await {
                Ok(()) => {
                    op.ok(Ret::Done);
                    lock(&self.shared.checks).pause_writes_verified += 1;
                    self.log.note(format!(
                        "verified: a write through nodes {others:?} was acknowledged {:.2}s into \
                         the pause of n{paused}",
                        started.elapsed().as_secs_f64()
                    ));
                    return;
                }
                Err(e) => {
                    op.unknown(); // Never wrong for a write: it may or may not have happened.
                    last = e;
                }
            }
        }
        self.check_failed(format!(
            "no write through nodes {others:?} was acknowledged within \
             {PAUSE_WRITE_TIMEOUT:?} of pausing leader n{paused} (last error: {last})"
        ));
    }

    /// With `old` cut off from its peers: waits for another leader, writes a fresh value
    /// through the other nodes, then reads it from `old` directly. Both are recorded in the
    /// history; a read of an older value is counted as stale (the checker flags it too).
    async fn probe_old_leader(&mut self, old: u64, deadline: Instant) {
        self.probe_round += 1;
        let round = self.probe_round;
        let process = PROBE_PROCESS_BASE + 2 * round;
        let others: Vec<u64> = self.ids().into_iter().filter(|&id| id != old).collect();
        let skip = |this: &Nemesis, why: String| {
            lock(&this.shared.probes).skipped += 1;
            this.log.note(format!("probe {round}: skipped, {why}"));
        };
        let budget = deadline.saturating_duration_since(Instant::now());
        let new_leader = wait_leader_among(
            &self.cluster,
            &self.status_client,
            &others,
            budget.min(Duration::from_secs(5)),
        )
        .await;
        let Some(new_leader) = new_leader else {
            skip(self, "no new leader among the other nodes".into());
            return;
        };
        let endpoints = |ids: &[u64]| -> Vec<String> {
            ids.iter()
                .filter_map(|&id| self.cluster.client_endpoint(id).ok())
                .collect()
        };
        let (Ok(majority), Ok(direct)) = (
            Client::connect(endpoints(&others), self.config.client_options.clone()),
            Client::connect(endpoints(&[old]), self.config.client_options.clone()),
        ) else {
            skip(self, "cannot create clients".into());
            return;
        };
        let value = format!("probe-{round}");
        let op = self.history.invoke(
            process,
            PROBE_KEY,
            OpKind::Write(value.clone().into_bytes()),
        );
        match majority.put(PROBE_KEY, value.clone()).await {
            Ok(()) => op.ok(Ret::Done),
            Err(e) => {
                if e.outcome_unknown() {
                    op.unknown();
                } else {
                    op.fail();
                }
                skip(self, format!("probe write through {others:?} failed: {e}"));
                return;
            }
        }
        let op = self.history.invoke(process + 1, PROBE_KEY, OpKind::Read);
        let read = bounded(direct.get(PROBE_KEY)).await;
        let mut stats = lock(&self.shared.probes);
        stats.rounds += 1;
        let text = match read {
            Ok(got) => {
                let fresh = got.as_deref() == Some(value.as_bytes());
                op.ok(Ret::Value(got.as_ref().map(|b| b.to_vec())));
                if fresh {
                    stats.fresh += 1;
                    format!("old leader n{old} returned the fresh value {value:?}")
                } else {
                    stats.stale += 1;
                    format!(
                        "STALE: old leader n{old} returned {got:?} as linearizable after \
                         {value:?} was acknowledged by new leader n{new_leader}"
                    )
                }
            }
            Err(e) => {
                op.fail();
                stats.failed += 1;
                format!("old leader n{old} refused the read: {e}")
            }
        };
        drop(stats);
        self.log.note(format!("probe {round}: {text}"));
    }
}

/// Awaits a client call, bounded (the client bounds itself; this guards against a hang).
async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, kvs_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(Duration::from_secs(10), call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("client call overran 10s".to_string()),
    }
}

/// A client for status requests to the nodes' real client addresses (bypassing the proxies).
pub fn status_client(cluster: &Cluster) -> anyhow::Result<Client> {
    let endpoints: Vec<String> = cluster
        .layout()
        .client_listen
        .values()
        .map(|a| a.to_string())
        .collect();
    let options = ClientOptions {
        request_timeout: Duration::from_millis(700),
        connect_timeout: Duration::from_millis(300),
        ..cluster.client_options()
    };
    Ok(Client::connect(endpoints, options)?)
}

/// The status of every node in `ids` that answers (concurrently, bounded by the client).
pub async fn statuses(cluster: &Cluster, client: &Client, ids: &[u64]) -> Vec<NodeStatus> {
    let asks = ids.iter().filter_map(|id| {
        let addr = cluster.layout().client_listen.get(id)?.to_string();
        Some(async move { client.status_of(&addr).await.ok() })
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The node among `ids` that claims leadership with the highest ballot, if any answers so.
pub async fn leader_among(cluster: &Cluster, client: &Client, ids: &[u64]) -> Option<u64> {
    statuses(cluster, client, ids)
        .await
        .into_iter()
        .filter(|s| s.role == NodeRole::Leader)
        .max_by_key(|s| (s.ballot.round, s.ballot.node))
        .map(|s| s.id)
}

/// Waits (bounded) until some node among `ids` claims leadership; returns it.
pub async fn wait_leader_among(
    cluster: &Cluster,
    client: &Client,
    ids: &[u64],
    timeout: Duration,
) -> Option<u64> {
    crate::cluster::wait_for("a leader", timeout, Duration::from_millis(50), || {
        leader_among(cluster, client, ids)
    })
    .await
    .ok()
}

/// The cluster's leader (bounded wait), if one emerges within `timeout`.
pub async fn find_leader(cluster: &Cluster, client: &Client, timeout: Duration) -> Option<u64> {
    wait_leader_among(cluster, client, &cluster.ids(), timeout).await
}

/// The status of the node that claims leadership with the highest ballot (bounded wait), if
/// one emerges within `timeout`.
pub async fn find_leader_status(
    cluster: &Cluster,
    client: &Client,
    timeout: Duration,
) -> Option<NodeStatus> {
    let ids = cluster.ids();
    crate::cluster::wait_for("a leader", timeout, Duration::from_millis(50), || {
        let ids = &ids;
        async move {
            statuses(cluster, client, ids)
                .await
                .into_iter()
                .filter(|s| s.role == NodeRole::Leader)
                .max_by_key(|s| s.ballot)
        }
    })
    .await
    .ok()
}

/// Whether the statuses show the leadership moved away from a leader that was `old` (its
/// status when the fault began): another node leads on a higher ballot than `old`'s, a
/// majority of `members` nodes are on a ballot above `old`'s (they refuse `old`'s messages),
/// and, if `old_answers`, `old` answered and no longer claims to lead. `Ok` describes the
/// evidence, `Err` what is missing.
pub fn leadership_moved(
    old: &NodeStatus,
    members: usize,
    old_answers: bool,
    now: &[NodeStatus],
) -> Result<String, String> {
    let quorum = members / 2 + 1;
    let above: Vec<u64> = now
        .iter()
        .filter(|s| s.ballot > old.ballot)
        .map(|s| s.id)
        .collect();
    let new_leader = now
        .iter()
        .filter(|s| s.id != old.id && s.role == NodeRole::Leader && s.ballot > old.ballot)
        .max_by_key(|s| s.ballot);
    let old_now = now.iter().find(|s| s.id == old.id);
    let mut missing = Vec::new();
    if new_leader.is_none() {
        missing.push(format!(
            "no other node leads on a ballot above {}",
            old.ballot
        ));
    }
    if above.len() < quorum {
        missing.push(format!(
            "only {above:?} of {members} nodes are on a ballot above {} (a majority is {quorum})",
            old.ballot
        ));
    }
    if old_answers {
        match old_now {
            None => missing.push(format!("old leader n{} did not answer its status", old.id)),
            Some(s) if s.role == NodeRole::Leader => missing.push(format!(
                "old leader n{} still claims to lead (ballot {})",
                old.id, s.ballot
            )),
            Some(_) => {}
        }
    }
    match new_leader {
        Some(new) if missing.is_empty() => Ok(format!(
            "leadership moved from n{} (ballot {}) to n{} (ballot {}); nodes {above:?} are above \
             the old ballot{}",
            old.id,
            old.ballot,
            new.id,
            new.ballot,
            match old_now {
                Some(s) if old_answers => format!("; n{} is now {}", old.id, s.role),
                _ => String::new(),
            }
        )),
        _ => Err(missing.join("; ")),
    }
}

/// Waits (bounded by `timeout`) until [`leadership_moved`] holds; on timeout, says what was
/// still missing and what every node last reported.
pub async fn verify_leadership_moved(
    cluster: &Cluster,
    client: &Client,
    old: &NodeStatus,
    old_answers: bool,
    timeout: Duration,
) -> Result<String, String> {
    let ids: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|&id| old_answers || id != old.id)
        .collect();
    let members = cluster.ids().len();
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        let now = statuses(cluster, client, &ids).await;
        let verdict = leadership_moved(old, members, old_answers, &now);
        match verdict {
            Ok(text) => {
                return Ok(format!(
                    "{text} ({:.2}s after the fault)",
                    started.elapsed().as_secs_f64()
                ))
            }
            Err(missing) if Instant::now() >= deadline => {
                let seen: Vec<String> = now
                    .iter()
                    .map(|s| format!("n{} {} ballot {}", s.id, s.role, s.ballot))
                    .collect();
                return Err(format!(
                    "leader n{} (ballot {}) did not lose the leadership within {timeout:?}: \
                     {missing}; last seen: [{}]",
                    old.id,
                    old.ballot,
                    seen.join(", ")
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Writes a value of `key` through `client` until it succeeds, bounded by `timeout`; used to
/// wait until the cluster serves writes. Not recorded in any history.
pub async fn wait_writable(client: &Client, key: &str, timeout: Duration) -> anyhow::Result<()> {
    let mut n = 0u64;
    crate::cluster::wait_until(
        &format!("a write of {key:?} to succeed"),
        timeout,
        Duration::from_millis(50),
        || {
            n += 1;
            let value = Bytes::from(format!("ready-{n}"));
            async move { client.put(key.to_owned(), value).await.is_ok() }
        },
    )
    .await
}
