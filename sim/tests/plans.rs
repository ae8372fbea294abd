//! Property suite: explicit fault plans (lists of steps) against the real engine. Every plan
//! must pass every check; a failing plan shrinks to the fewest, simplest steps and is printed
//! as a scenario file to replay with `sluice-sim run --seed N --scenario FILE`.
//!
//! `PROPTEST_CASES` sets how many plans run (default 256 here; the nightly run raises it) and
//! `PROPTEST_RNG_SEED` which plans (default [`RNG_SEED_DEFAULT`]): the suite is deterministic,
//! and a failure prints the seed that replays it.

mod common;

use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use sluice_sim::plan::Scenario;
use sluice_sim::run::run_scenario;

/// The plans CI runs unless `PROPTEST_RNG_SEED` says otherwise.
const RNG_SEED_DEFAULT: u64 = 20_261_201;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

fn cases() -> u32 {
    env_u64("PROPTEST_CASES").map_or(256, |n| u32::try_from(n).unwrap_or(u32::MAX))
}

fn rng_seed() -> u64 {
    env_u64("PROPTEST_RNG_SEED").unwrap_or(RNG_SEED_DEFAULT)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 2_000,
        rng_seed: RngSeed::Fixed(rng_seed()),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_fault_plan_restores_a_committed_state(
        seed in 0u64..1_000,
        steps in common::plan(1..40),
    ) {
        let r = run_scenario(seed, 0, &Scenario::plan(steps.clone()), None);
        prop_assert!(
            r.passed(),
            "{}\nreplay: save the steps below as plan.yaml, then cargo run --release -p sluice-sim -- run --seed {seed} --scenario plan.yaml\n(the suite: PROPTEST_RNG_SEED={} PROPTEST_CASES={} cargo test -p sluice-sim --test plans)\n{}",
            r.failures.join("; "),
            rng_seed(),
            cases(),
            Scenario::steps_yaml(&steps)
        );
    }
}
