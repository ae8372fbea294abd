//! Property suite: explicit fault plans (lists of steps) against the real engine. Every plan
//! must pass every check; a failing plan shrinks to the fewest, simplest steps and is printed
//! as a scenario file to replay with `sluice-sim run --seed N --scenario FILE`.
//!
//! `PROPTEST_CASES` sets how many plans run (default 256 here; the nightly run raises it).

mod common;

use proptest::prelude::*;
use sluice_sim::plan::Scenario;
use sluice_sim::run::run_scenario;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 2_000,
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
            "{}\nreplay: save the steps below as plan.yaml, then cargo run --release -p sluice-sim -- run --seed {seed} --scenario plan.yaml\n{}",
            r.failures.join("; "),
            Scenario::steps_yaml(&steps)
        );
    }
}
