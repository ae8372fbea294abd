//! Each planted bug, in the engine or in the driver (scheduler, lease, final sync), is caught by
//! the simulator within a stated number of seeds or by its pinned scenario, and a sweep over a
//! planted bug fails (the canary: a sweep that cannot fail proves nothing).
//! Runs only with `--features planted-bugs` (ci/test.sh does).
#![cfg(feature = "planted-bugs")]

use sluice_core::planted::{Bug, plant};
use sluice_sim::run::run;

/// Planting is process-global: the tests that plant take turns.
static PLANTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn planting() -> std::sync::MutexGuard<'static, ()> {
    PLANTING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Planted bugs the seeded sweep catches within `SEEDS_MAX` seeds: all but
/// `unconditional-uploads`, which needs a zombie writer landing an upload after a takeover (rare
/// in random seeds); the property suite's plans find it (`found_by_plans`).
fn seeded() -> impl Iterator<Item = Bug> {
    Bug::ALL
        .into_iter()
        .filter(|b| *b != Bug::UnconditionalUploads && regression(*b).is_none())
}

/// Bugs of races so narrow, or faults so long, that random seeds do not hit them within a
/// test's budget: each is caught by a scenario file and seed (the regression that found its
/// real counterpart, or a scenario written for it). `unbounded-backoff` needs a partition long
/// enough for the backoff to outgrow the sync interval, inside a short run (4 of 200 random
/// seeds of 1,000 transactions catch it).
fn regression(bug: Bug) -> Option<(&'static str, u64)> {
    match bug {
        Bug::UnboundedBackoff => Some(("long-partition.yaml", 1)),
        // Needs a power loss between the rename and the fsync of a restore (1 seed in 100 of
        // 300 transactions reaches one).
        Bug::RenameBeforeFsync => Some(("restore-power-loss.yaml", 1)),
        // Seed 2 lands the commit while the start checks whether the WAL is wholly checkpointed
        // (seed 1 lands it under the read of the database file alone, which holds).
        Bug::SkipRecoveryRecheck => Some(("commit-during-start.yaml", 2)),
        Bug::SkipTailRemeasure => Some(("", 1442)),
        Bug::SaltsOnlyGeneration => Some(("same-salts-header.yaml", 7)),
        // A zombie whose stalled upload lands after the new host took the lease over, on a
        // TXID the new host had not written yet (about 1 seed in 100 of 1,000 transactions).
        Bug::FenceCheckedBeforeOnly => Some(("", 1048)),
        // A cost bug, not a correctness one: every restore still checks out, but the steady
        // workload's expectation of no full compare of the database trips.
        Bug::PassiveByFileLength => Some(("steady-writes.yaml", 0)),
        // A cost bug too: the application's TRUNCATE checkpoint during the first snapshot's
        // upload goes through, and the next sync compares the whole database.
        Bug::SnapshotReadReleased => Some(("first-snapshot-under-load.yaml", 1)),
        // A store slow enough that opens and merges outlast the lease: they never succeed,
        // and the progress check trips.
        Bug::LeaseNotKeptDuringActions => Some(("slow-store-short-lease.yaml", 1)),
        // Heavy writes whose generations outrun the sync interval: a restart waited for the
        // interval compares the whole database (6 times a seed, against 2 expected at most).
        Bug::RestartNoticedLate => Some(("wal-restarts-under-heavy-writes.yaml", 1)),
        // Steady commits and 100 ms uploads: spaced from the upload's end, a commit waits
        // 1.1 s for its upload, against one interval expected.
        Bug::SyncSpacedFromUploadEnd => Some(("rpo-steady-upload-latency.yaml", 1)),
        _ => None,
    }
}

/// Seeds tried per bug before the test gives up: the stated bound.
const SEEDS_MAX: u64 = 40;
const TRANSACTIONS: u32 = 300;

#[test]
fn every_planted_bug_is_caught_within_the_bound() {
    let _turn = planting();
    let mut missed = Vec::new();
    for bug in seeded() {
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

mod common;

/// Planted bugs the property suite finds within `PLAN_CASES` plans of seed 7, the driver's among
/// them. Not `from-start-always` (a checkpoint and a truncation while the engine is down, in one
/// order), `drop-old-tail` (an old tail read after exactly one restart, with commits on both
/// sides) nor `retention-splits-level1` (a level-1 compaction, then retention between two of its
/// level-0 files' expiries: plans of at most 40 steps rarely last long enough): the plans rarely
/// line those up, and the seeded sweep finds all three at once.
fn found_by_plans() -> impl Iterator<Item = Bug> {
    Bug::ALL.into_iter().filter(|b| {
        !matches!(
            b,
            Bug::FromStartAlways | Bug::DropOldTail | Bug::RetentionSplitsLevel1
        ) && regression(*b).is_none()
    })
}

/// The narrow races' planted bugs fail their regressions (and the regressions pass without
/// them: `determinism.rs`, `scenarios.rs`).
#[test]
fn narrow_race_bugs_fail_their_regressions() {
    use sluice_sim::plan::Scenario;
    use sluice_sim::run::run_scenario;

    let _turn = planting();
    let mut missed = Vec::new();
    for bug in Bug::ALL {
        let Some((file, seed)) = regression(bug) else {
            continue;
        };
        let scenario = if file.is_empty() {
            Scenario::default()
        } else {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../scenarios")
                .join(file);
            Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"))
        };
        let what = if file.is_empty() {
            format!("seed {seed}")
        } else {
            format!("{file} with seed {seed}")
        };
        plant(Some(bug));
        let r = run_scenario(seed, 1000, &scenario, None);
        plant(None);
        if r.passed() {
            missed.push(format!("{} passed {what}", bug.name()));
        } else {
            println!("{:<26} caught by {what}: {}", bug.name(), r.failures[0]);
        }
    }
    assert!(missed.is_empty(), "{missed:#?}");
}
const PLAN_CASES: u32 = 500;
/// The longest minimal plan a shrunk failure may have.
const SHRUNK_STEPS_MAX: usize = 12;

/// A planted bug found by the property suite shrinks to a short plan, printed as a scenario
/// file: the minimal failing plan is the bug report. The runner's randomness is fixed, so the
/// test is deterministic.
#[test]
fn a_failing_plan_shrinks_to_a_few_steps() {
    use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};
    use sluice_sim::plan::Scenario;
    use sluice_sim::run::run_scenario;

    let _turn = planting();
    let mut problems = Vec::new();
    for bug in found_by_plans() {
        plant(Some(bug));
        let mut runner = TestRunner::new_with_rng(
            Config {
                cases: PLAN_CASES,
                max_shrink_iters: 4_000,
                failure_persistence: None,
                ..Config::default()
            },
            TestRng::deterministic_rng(RngAlgorithm::ChaCha),
        );
        let result = runner.run(&common::plan(1..40), |steps| {
            let r = run_scenario(7, 0, &Scenario::plan(steps), None);
            proptest::prop_assert!(r.passed(), "{}", r.failures.join("; "));
            Ok(())
        });
        plant(None);
        match result {
            Err(TestError::Fail(why, steps)) => {
                println!(
                    "{:<26} shrank to {} steps ({why}):\n{}",
                    bug.name(),
                    steps.len(),
                    Scenario::steps_yaml(&steps)
                );
                if steps.len() > SHRUNK_STEPS_MAX {
                    problems.push(format!(
                        "{} shrank only to {} steps",
                        bug.name(),
                        steps.len()
                    ));
                }
            }
            Ok(()) => problems.push(format!("{} not found by {PLAN_CASES} plans", bug.name())),
            Err(e) => problems.push(format!("{}: {e}", bug.name())),
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
