//! Each planted engine bug is caught by the simulator within a stated number of seeds, and a
//! sweep over a planted bug fails (the canary: a sweep that cannot fail proves nothing).
//! Runs only with `--features planted-bugs` (ci/test.sh does).
#![cfg(feature = "planted-bugs")]

use sluice_core::planted::{Bug, plant};
use sluice_sim::run::run;

/// Seeds tried per bug before the test gives up: the stated bound.
const SEEDS_MAX: u64 = 40;
const TRANSACTIONS: u32 = 300;

#[test]
fn every_planted_bug_is_caught_within_the_bound() {
    let mut missed = Vec::new();
    for bug in Bug::ALL {
        plant(Some(bug));
        let caught = (0..SEEDS_MAX).find(|&seed| !run(seed, TRANSACTIONS).passed());
        plant(None);
        match caught {
            Some(seed) => println!("{:<26} caught by seed {seed}", bug.name()),
            None => missed.push(bug.name()),
        }
    }
    assert!(
        missed.is_empty(),
        "not caught within {SEEDS_MAX} seeds: {missed:?}"
    );
}

#[test]
fn a_sweep_over_a_planted_bug_fails_and_prints_the_replay_line() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-sim"))
        .args([
            "sweep",
            "--seeds",
            "0..10",
            "--transactions",
            "300",
            "--plant",
            "ack-before-upload",
        ])
        .output()
        .expect("run sluice-sim");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "the canary sweep passed:\n{text}");
    assert!(
        text.contains("replay: cargo run --release -p sluice-sim -- run --seed"),
        "{text}"
    );
}
