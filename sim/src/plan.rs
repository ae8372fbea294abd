//! Explicit fault plans and scenario files.
//!
//! A seed alone drives a run by drawing its events as it goes. A **plan** lists the events
//! instead, one [`Step`] at a time, with every random fault site off unless the scenario turns
//! it back on: the property suite generates plans (so a failure shrinks to the fewest steps) and
//! scenario files can pin one. The seed still draws what a plan leaves open (row contents, the
//! engine's restart delay, how a power loss tears each write), so a run stays a pure function of
//! (seed, scenario, code).
//!
//! A scenario file (YAML) may set `description`, `transactions` (the fault phase's length for a
//! seeded run), `knobs` (any subset of [`crate::run::Knobs`]' fields, overriding what the seed
//! drew; nested `store` fields merge) and `steps` (a plan). Unknown keys are errors.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::knobs::Knobs;

/// SQLite's checkpoint modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CheckpointMode {
    Passive,
    Full,
    Restart,
    Truncate,
}

impl CheckpointMode {
    pub const ALL: [CheckpointMode; 4] = [
        CheckpointMode::Passive,
        CheckpointMode::Full,
        CheckpointMode::Restart,
        CheckpointMode::Truncate,
    ];

    pub fn sql(self) -> &'static str {
        match self {
            CheckpointMode::Passive => "PASSIVE",
            CheckpointMode::Full => "FULL",
            CheckpointMode::Restart => "RESTART",
            CheckpointMode::Truncate => "TRUNCATE",
        }
    }
}

/// One event of a plan. After each step the simulated driver runs: it restarts the engine when
/// its restart time has come, syncs when the sync interval has passed, compacts and snapshots
/// on schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Step {
    /// Simulated time passes (ms).
    Wait(i64),
    /// An application transaction of `ops` row operations. With `sync_midway` the engine syncs
    /// in its middle (uncommitted frames may sit in the WAL); with `rollback` it rolls back.
    Txn {
        ops: u8,
        #[serde(default, skip_serializing_if = "is_false")]
        sync_midway: bool,
        #[serde(default, skip_serializing_if = "is_false")]
        rollback: bool,
    },
    /// The engine syncs, and just before its `at_read`th read of the database or WAL the
    /// application commits a transaction of `ops` operations (if the sync reads less, the
    /// transaction runs after it).
    TxnDuringSync { ops: u8, at_read: u32 },
    /// The engine starts now (if it is down), and just before its `at_read`th read while it
    /// recovers its position the application commits a transaction of `ops` operations.
    TxnDuringStart { ops: u8, at_read: u32 },
    /// The engine starts now (if it is down), and as the upload its start prepared begins (a
    /// first snapshot, a heal), a busy application commits `ops` operations, asks for a
    /// TRUNCATE checkpoint and commits `ops` more.
    StormDuringStartUpload { ops: u8 },
    /// `DELETE` a third of the rows, then `VACUUM`.
    Vacuum,
    /// The application runs `PRAGMA wal_checkpoint(MODE)`.
    Checkpoint(CheckpointMode),
    /// The application closes its connection and opens a new one.
    Reconnect,
    /// The engine syncs now.
    Sync,
    /// A level-1 compaction now, outside the schedule (its outcome reaches the scheduler).
    Compact,
    /// A level-9 snapshot now, outside the schedule.
    Snapshot,
    /// The replicator is stopped cleanly (SIGTERM: a final sync, the lease released) and
    /// starts again later; with the store reachable the replica then holds every commit.
    GracefulStop,
    /// The engine process dies (SIGKILL); the checker restores.
    EngineCrash,
    /// Power loss: every process dies, unsynced writes persist, vanish or tear; the checker
    /// restores.
    PowerLoss,
    /// The host is replaced by an empty one that restores and carries on.
    ReplaceHost,
    /// As `replace-host`, but the old host's engine stalled in the middle of an upload and
    /// wakes this many ms later: a zombie whose stale upload still reaches the store.
    ZombieReplaceHost(i64),
    /// Nothing reaches the store for this many ms from now.
    Partition(i64),
    /// The store's next `requests` requests fail; `ambiguous`: a mutating one is applied first.
    FailNext {
        requests: u32,
        #[serde(default, skip_serializing_if = "is_false")]
        ambiguous: bool,
    },
    /// `steps` run `times` times over (a steady workload written once: `repeat: {times: 200,
    /// steps: [{txn: {ops: 2}}, {wait: 20}]}`).
    Repeat { times: u32, steps: Vec<Step> },
}

/// Repeats past this many steps in all are refused: a typo must not run for an hour.
pub const REPEATED_STEPS_MAX: u64 = 100_000;

impl Step {
    /// How many steps this one runs, repeats expanded.
    pub fn expanded_len(&self) -> u64 {
        match self {
            Step::Repeat { times, steps } => steps
                .iter()
                .map(Step::expanded_len)
                .sum::<u64>()
                .saturating_mul(u64::from(*times)),
            _ => 1,
        }
    }
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if signature"
)]
fn is_false(b: &bool) -> bool {
    !*b
}

/// A scenario file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub description: String,
    /// Seeds the test suite (`sim/tests/scenarios.rs`) runs this scenario with.
    #[serde(default)]
    pub seeds: Vec<u64>,
    pub transactions: Option<u32>,
    pub knobs: Option<serde_norway::Value>,
    /// Steps read as one-key maps (`- txn: {ops: 3}`, `- wait: 100`) or bare names
    /// (`- power-loss`).
    #[serde(default, with = "serde_norway::with::singleton_map_recursive")]
    pub steps: Option<Vec<Step>>,
    /// Costs the run must stay within, beside the correctness checks every run makes.
    #[serde(default)]
    pub expect: Expect,
}

/// A scenario's cost expectations: each is a failure of the run when exceeded.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// At most this many files shipped after comparing the whole database (WAL continuity not
    /// provable): a workload with no application RESTART or TRUNCATE checkpoint and no crash
    /// should never need one.
    pub resyncs_max: Option<u64>,
    /// At most this long from a commit to its acknowledgement by a sync (the upload that
    /// carries it), for commits made while the store is healthy and the replicator has run
    /// undisturbed for two recovery point objectives: the RPO as a user reads it.
    pub commit_lag_max_ms: Option<i64>,
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read scenario {}: {e}", path.display()))?;
        let s: Scenario = serde_norway::from_str(&text)
            .map_err(|e| format!("scenario {}: {e}", path.display()))?;
        // Catch a bad knob now, not in the middle of a sweep.
        s.knobs_for(&Knobs::default())
            .map_err(|e| format!("scenario {}: {e}", path.display()))?;
        let expanded: u64 = s.steps.iter().flatten().map(Step::expanded_len).sum();
        if expanded > REPEATED_STEPS_MAX {
            return Err(format!(
                "scenario {}: steps: {expanded} steps once repeats are expanded, at most {REPEATED_STEPS_MAX}",
                path.display()
            ));
        }
        Ok(s)
    }

    /// A scenario that runs `steps` and nothing else.
    pub fn plan(steps: Vec<Step>) -> Self {
        Self {
            steps: Some(steps),
            ..Self::default()
        }
    }

    /// The knobs a run uses: those `drawn` from the seed, calm (every random fault site off)
    /// when the scenario is a plan, then the scenario's overrides.
    pub fn knobs_for(&self, drawn: &Knobs) -> Result<Knobs, String> {
        let base = if self.steps.is_some() {
            drawn.calm()
        } else {
            drawn.clone()
        };
        let Some(overrides) = &self.knobs else {
            return Ok(base);
        };
        let mut value = serde_norway::to_value(&base).map_err(|e| e.to_string())?;
        merge(&mut value, overrides, "knobs")?;
        serde_norway::from_value(value).map_err(|e| format!("knobs: {e}"))
    }

    /// The plan as YAML, ready to save as a scenario file and replay.
    pub fn steps_yaml(steps: &[Step]) -> String {
        #[derive(Serialize)]
        struct Out<'a> {
            #[serde(with = "serde_norway::with::singleton_map_recursive")]
            steps: &'a [Step],
        }
        serde_norway::to_string(&Out { steps }).unwrap_or_else(|e| format!("# {e}"))
    }
}

/// Overwrites the fields of `base` named in `over`, recursively; a name `base` lacks is an error.
fn merge(
    base: &mut serde_norway::Value,
    over: &serde_norway::Value,
    path: &str,
) -> Result<(), String> {
    use serde_norway::Value;
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                let name = k.as_str().unwrap_or("?");
                let here = format!("{path}.{name}");
                let Some(slot) = b.get_mut(k) else {
                    let known: Vec<_> = b.keys().filter_map(|k| k.as_str()).collect();
                    return Err(format!("unknown knob {here}; known: {}", known.join(", ")));
                };
                if matches!(slot, Value::Mapping(_)) {
                    merge(slot, v, &here)?;
                } else {
                    *slot = v.clone();
                }
            }
            Ok(())
        }
        (_, _) => Err(format!("{path} must be a mapping of knob names to values")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scenario_overrides_some_knobs_and_names_an_unknown_one() {
        let s: Scenario = serde_norway::from_str(
            "knobs:\n  page_size: 4096\n  store:\n    transient: 0.5\nsteps:\n  - wait: 10\n  - txn: {ops: 3}\n  - checkpoint: TRUNCATE\n  - power-loss\n",
        )
        .expect("parse");
        let drawn = Knobs {
            engine_crash_rate: 0.5,
            ..Knobs::default()
        };
        let k = s.knobs_for(&drawn).expect("knobs");
        assert_eq!(k.page_size, 4096);
        assert_eq!(k.store.transient, 0.5);
        assert_eq!(k.engine_crash_rate, 0.0, "a plan starts calm");
        assert_eq!(
            s.steps.as_deref().map(<[Step]>::len),
            Some(4),
            "{:?}",
            s.steps
        );

        let bad: Scenario = serde_norway::from_str("knobs:\n  page_sise: 1\n").expect("parse");
        let e = bad.knobs_for(&drawn).expect_err("unknown knob");
        assert!(e.contains("knobs.page_sise"), "{e}");
    }

    #[test]
    fn a_plan_round_trips_through_yaml() {
        let steps = vec![
            Step::Txn {
                ops: 2,
                sync_midway: true,
                rollback: false,
            },
            Step::TxnDuringSync { ops: 1, at_read: 3 },
            Step::FailNext {
                requests: 2,
                ambiguous: true,
            },
            Step::Partition(1500),
        ];
        let yaml = Scenario::steps_yaml(&steps);
        let back: Scenario = serde_norway::from_str(&yaml).expect("parse");
        assert_eq!(back.steps, Some(steps), "{yaml}");
    }
}
