//! Lease terms: no two hosts acknowledge writes in overlapping lease terms.

use sluice_core::lease::LeaseState;

use super::*;

/// One host's lease term: from when it took the lease until the lease ran out or the host
/// died, whichever came first.
pub(super) struct Term {
    generation: u64,
    start_ms: i64,
    /// The host's own view of its lease (shared with its renewals and its fenced store).
    state: Arc<std::sync::Mutex<LeaseState>>,
    ended_ms: Option<i64>,
}

impl Term {
    fn valid_until_ms(&self) -> i64 {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .valid_until_ms
    }

    fn end_ms(&self) -> i64 {
        self.ended_ms.unwrap_or(i64::MAX).min(self.valid_until_ms())
    }
}

impl World {
    /// Host `generation` took the lease now.
    pub(super) fn begin_term(&mut self, generation: u64, state: Arc<std::sync::Mutex<LeaseState>>) {
        let start_ms = self.now();
        self.terms.push(Term {
            generation,
            start_ms,
            state,
            ended_ms: None,
        });
    }

    /// Host `generation` can acknowledge nothing from now on (it died, or a zombie's one
    /// stalled write got its answer).
    pub(super) fn end_term(&mut self, generation: u64) {
        let now = self.now();
        for t in &mut self.terms {
            if t.generation == generation && t.ended_ms.is_none() {
                t.ended_ms = Some(now);
            }
        }
    }

    /// Host `generation` acknowledged a write now (its engine moved its position): it must
    /// hold its lease, and no other host's term may cover this moment.
    ///
    /// Does not check: writes whose bytes landed without being acknowledged (a zombie's late
    /// answer, refused by the fenced store: the history and restore checks judge those bytes).
    pub(super) fn check_ack_in_term(&mut self, generation: u64, who: &str) {
        if self.knobs.lease_ttl_ms == 0 {
            return;
        }
        let now = self.now();
        let mut failure = None;
        for t in &self.terms {
            if t.generation == generation {
                let until = t.valid_until_ms();
                if now >= until {
                    failure = Some(format!(
                        "{who} (host {generation}) acknowledged a write at {now}, after its lease ran out at {until}"
                    ));
                }
            } else if t.start_ms <= now && now < t.end_ms() {
                failure = Some(format!(
                    "{who} (host {generation}) acknowledged a write at {now} inside host {}'s lease term ({}..{})",
                    t.generation,
                    t.start_ms,
                    t.end_ms()
                ));
            }
        }
        if let Some(f) = failure {
            self.fail(f);
        }
    }
}
