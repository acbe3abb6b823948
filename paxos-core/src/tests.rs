//! Simulation runs: many seeds, both cluster sizes, and planted bugs that must be caught.

use crate::replica::PlantedBug;
use crate::sim::{run_many, run_many_with, seeds, Faults};

fn check(nodes: usize, default_seeds: u64) {
    let seeds = seeds(default_seeds);
    let started = std::time::Instant::now();
    // Even seeds run the standard profile, odd seeds a swarm mix of their own.
    let (standard, swarm): (Vec<u64>, Vec<u64>) = seeds.iter().partition(|s| *s % 2 == 0);
    let (mut stats, mut failures) = run_many(nodes, &standard, None);
    for seed in swarm {
        let (s, f) = run_many_with(nodes, &[seed], None, Faults::swarm(seed));
        stats.crashes += s.crashes;
        stats.commands_chosen += s.commands_chosen;
        stats.slots_chosen += s.slots_chosen;
        failures.extend(f);
    }
    eprintln!(
        "simulated {} seeds of {nodes} replicas in {:.1?}: {stats:?}",
        seeds.len(),
        started.elapsed()
    );
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("FAILED: {f}");
        }
        let first = failures[0].split_whitespace().nth(1).unwrap_or("?");
        panic!(
            "{} of {} seeds failed; replay one with SIM_SEED={first} SIM_TRACE=1 cargo test -p paxos-core sim_{nodes}",
            failures.len(),
            seeds.len()
        );
    }
    assert!(stats.commands_chosen > 0, "the simulation chose nothing");
}

#[test]
fn sim_3_replicas() {
    check(3, 1_000);
}

#[test]
fn sim_5_replicas() {
    check(5, 1_000);
}

/// Runs seeds with a planted bug until one fails; returns that failure.
fn first_catch(bug: PlantedBug, nodes: usize, seeds_max: u64, faults: &Faults) -> Option<String> {
    (0..seeds_max).find_map(|seed| {
        let (_, failures) = run_many_with(nodes, &[seed], Some(bug), faults.clone());
        failures.into_iter().next()
    })
}

fn assert_caught(bug: PlantedBug, seeds_max: u64) {
    assert_caught_with(bug, seeds_max, Faults::standard());
}

fn assert_caught_with(bug: PlantedBug, seeds_max: u64, faults: Faults) {
    match first_catch(bug, 3, seeds_max, &faults) {
        Some(f) => eprintln!("planted bug {bug:?} caught: {f}"),
        None => panic!("the simulator missed planted bug {bug:?} in {seeds_max} seeds"),
    }
}

#[test]
fn simulator_catches_an_acceptor_that_ignores_its_promise() {
    assert_caught(PlantedBug::AcceptIgnoresPromise, 400);
}

#[test]
fn simulator_catches_an_accepted_sent_before_it_is_durable() {
    assert_caught(PlantedBug::AcceptedBeforeDurable, 400);
}

#[test]
fn simulator_catches_an_acceptor_that_forgets_its_promise() {
    assert_caught_with(PlantedBug::ForgetPromiseOnRestart, 1000, crash_heavy());
}

/// Crashes and late messages far more often than the standard profile: the forgotten-promise
/// bug shows only when an old leader's message reaches an acceptor after it restarted.
fn crash_heavy() -> Faults {
    Faults {
        crash_chance: 0.4,
        long_delay: 0.15,
        hold: 0.02,
        crash_after_election: 0.5,
        ..Faults::standard()
    }
}

#[test]
fn the_correct_core_passes_the_crash_heavy_profile() {
    let seeds: Vec<u64> = (0..150).collect();
    let (stats, failures) = run_many_with(3, &seeds, None, crash_heavy());
    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        stats.crashes > 150 * 10,
        "the profile should crash often: {stats:?}"
    );
}

#[test]
fn a_seed_replays_exactly() {
    let run = |seed| {
        let (stats, failures) = run_many(3, &[seed], None);
        format!("{stats:?} {failures:?}")
    };
    assert_eq!(run(11), run(11));
    assert_ne!(run(11), run(12));
}

/// Membership changes through the faults: learners added (started empty, to join by
/// snapshot), promoted, removed, voters removed (the leader too), stale and forced
/// changes, on 3- and 5-replica clusters; every agreement invariant holds, judged with
/// the membership that governs each slot, and the members converge after the heal.
#[test]
fn sim_membership_changes() {
    use crate::sim::{run, SimOptions};
    let seeds = seeds(150);
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    let (mut applied, mut refused, mut installed) = (0, 0, 0);
    for nodes in [3, 5] {
        for &seed in &seeds {
            let mut opts = SimOptions::new(nodes, seed);
            opts.spares = 3;
            opts.trace = std::env::var("SIM_TRACE").is_ok();
            if seed % 2 == 1 {
                opts.faults = Faults::swarm(seed);
            }
            match run(opts) {
                Ok(s) => {
                    applied += s.reconfigs_applied;
                    refused += s.reconfigs_refused;
                    installed += s.snapshots_installed;
                }
                Err(e) => failures.push(e),
            }
        }
    }
    eprintln!(
        "membership simulation: {} seeds x 2 sizes in {:.1?}; changes applied (per replica) {applied}, refused {refused}, snapshots installed {installed}",
        seeds.len(),
        started.elapsed()
    );
    for f in &failures {
        eprintln!("FAILED: {f}");
    }
    assert!(failures.is_empty(), "{} runs failed", failures.len());
    assert!(applied > 0, "no membership change was ever applied");
    assert!(installed > 0, "no snapshot was installed");
}
