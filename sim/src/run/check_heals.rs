//! The retry bound (check 6): once a partition ends, commits made before its end are
//! acknowledged within the sync interval plus [`POST_HEAL_SLACK_MS`].
//!
//! Does not check: heals while no replicator ran (the orchestrator starts it, outside the
//! bound), heals followed by another fault before the commits shipped, or the bound for
//! failures other than partitions (transient errors draw their own jittered retries).

use super::*;

impl World {
    /// Partitions that ended by now start being followed by the post-heal check.
    pub(super) fn register_heals(&mut self) {
        let now = self.now();
        let generation = self.host.as_ref().map(|h| h.generation);
        let ended: Vec<i64> = self
            .partitions
            .iter()
            .filter(|&&(_, end)| end <= now)
            .map(|&(_, end)| end)
            .collect();
        self.partitions.retain(|&(_, end)| end > now);
        for at in ended {
            let need = self.commits.iter().filter(|c| c.time_ms < at).count();
            if need > self.acked_effective() {
                self.heals.push(Heal {
                    at,
                    need,
                    injected: self.store.injected(),
                    generation,
                });
            }
        }
    }

    /// The retry bound: once a partition ended, commits made before its end are acknowledged
    /// within the sync interval plus [`POST_HEAL_SLACK_MS`]. A heal is not judged if the
    /// store failed anything since, the host restarted, or another partition began.
    pub(super) fn judge_heals(&mut self) {
        let now = self.now();
        let generation = self.host.as_ref().map(|h| h.generation);
        let bound = self.knobs.sync_interval_ms + POST_HEAL_SLACK_MS;
        let acked = self.acked_effective();
        let injected = self.store.injected();
        let last_injected = self.store.last_injected_ms();
        let partitioned = self.store.partitioned(now);
        let mut verdicts = Vec::new();
        self.heals.retain(|h| {
            // A process that was not running when the partition ended is started by the
            // orchestrator, outside the bound (and it refuses to start while the store is
            // unreachable, as production does).
            // A fault since the partition ended excuses the heal even if it came before the
            // heal was registered (the first step after the end may come later; found by the
            // first nightly's hostile-store sweep).
            if h.injected != injected
                || last_injected >= h.at
                || h.generation.is_none()
                || h.generation != generation
                || partitioned
            {
                return false;
            }
            if acked >= h.need {
                verdicts.push((h.at, now - h.at));
                return false;
            }
            if now - h.at > bound {
                verdicts.push((h.at, now - h.at));
                return false;
            }
            true
        });
        for (at, lag) in verdicts {
            self.report.post_heal_lag_ms_max = self.report.post_heal_lag_ms_max.max(lag);
            if lag > bound {
                self.fail(format!(
                    "after the partition that ended at {at}, commits made before it waited over {lag} ms (bound: sync interval {} + {POST_HEAL_SLACK_MS} ms)",
                    self.knobs.sync_interval_ms
                ));
            } else {
                self.log(format!("check heal at={at} lag={lag}ms"));
            }
        }
    }
}
