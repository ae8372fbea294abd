//! Progress with a healthy store (check 13): the replicator's actions do not keep failing
//! while the store injects no fault.
//!
//! Does not check: how soon an action succeeds once faults stop (the retry bound, check 6,
//! and the RPO, check 4), nor failures the replicator reports as permanent (it stops; the
//! orchestrator restarts it).

use super::*;

/// Consecutive transient failures, none with a fault injected during it, that fail the run.
/// A failure after an injected one may follow from it (a reply lost, then "TXID already
/// exists" and a re-read of the replica): one or two such, never twenty.
pub(super) const FRUITLESS_MAX: u32 = 20;

/// The current run of failures with a healthy store.
#[derive(Debug, Default)]
pub(super) struct Streak {
    failures: u32,
    since_ms: i64,
}

impl World {
    /// Counts an action's outcome: `failed` (transient) and whether the store injected a
    /// fault while it ran.
    /// A renewal that succeeds is no progress: the lease held while nothing else got done.
    pub(super) fn judge_progress(
        &mut self,
        action: Action,
        failed: bool,
        faulted: bool,
        error: &str,
    ) {
        if !failed && action == Action::RenewLease {
            return;
        }
        if !failed || faulted {
            self.streak = Streak::default();
            return;
        }
        if self.streak.failures == 0 {
            self.streak.since_ms = self.now();
        }
        self.streak.failures += 1;
        if self.streak.failures == FRUITLESS_MAX {
            let since = self.streak.since_ms;
            self.fail(format!(
                "no progress with a healthy store: {FRUITLESS_MAX} actions in a row failed since {since} with no fault injected, the last {action}: {error}"
            ));
        }
    }
}
