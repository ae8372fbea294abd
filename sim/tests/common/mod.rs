//! Proptest strategies for fault plans (shared by `plans.rs` and the planted-bug
//! shrinking test). A plan is a list of [`Step`]s, so proptest shrinks a failure by dropping
//! steps and simplifying each one, down to a minimal plan.

use proptest::prelude::*;

use sluice_sim::plan::{CheckpointMode, Step};

pub fn checkpoint_mode() -> impl Strategy<Value = CheckpointMode> {
    prop::sample::select(CheckpointMode::ALL.to_vec())
}

/// One step, weighted towards the application's work, with every fault the simulator has.
pub fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (1u8..8, prop::bool::weighted(0.2), prop::bool::weighted(0.1)).prop_map(
            |(ops, sync_midway, rollback)| Step::Txn { ops, sync_midway, rollback }
        ),
        4 => (1i64..400).prop_map(Step::Wait),
        2 => (1u8..8, 1u32..40).prop_map(|(ops, at_read)| Step::TxnDuringSync { ops, at_read }),
        1 => (1u8..8, 1u32..40).prop_map(|(ops, at_read)| Step::TxnDuringStart { ops, at_read }),
        2 => checkpoint_mode().prop_map(Step::Checkpoint),
        1 => Just(Step::Reconnect),
        1 => Just(Step::Sync),
        1 => Just(Step::Compact),
        1 => Just(Step::Snapshot),
        1 => Just(Step::GracefulStop),
        1 => Just(Step::Vacuum),
        1 => Just(Step::EngineCrash),
        1 => Just(Step::PowerLoss),
        1 => Just(Step::ReplaceHost),
        // Past a lease's time too: a zombie that stalls longer than its lease lands after the takeover.
        1 => (0i64..6_000).prop_map(Step::ZombieReplaceHost),
        1 => (100i64..3_000).prop_map(Step::Partition),
        1 => (1u32..4, any::<bool>())
            .prop_map(|(requests, ambiguous)| Step::FailNext { requests, ambiguous }),
    ]
}

/// A plan of `len` steps.
pub fn plan(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step(), len)
}
