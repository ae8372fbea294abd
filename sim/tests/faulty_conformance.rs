//! The object-store conformance suite (the cases of `core/tests/conformance/cases.rs`) against
//! the simulator's `FaultyStore` with every fault off: the wrapper the simulator puts between
//! production's code and its in-memory store must keep the contract of what it wraps, every
//! trait method forwarded (a lint enforces that each is implemented; this proves each behaves).

#[macro_use]
#[path = "../../core/tests/conformance/cases.rs"]
mod cases;

use std::sync::Arc;

use cases::Backend;
use sluice_core::store::{DynStore, MemStore};
use sluice_sim::faulty::{FaultyStore, StoreFaults};
use sluice_sim::vfs;

/// A simulated run held for the backend's life: the store reads the simulated clock.
struct Run(#[expect(dead_code, reason = "held for its drop")] std::sync::MutexGuard<'static, ()>);

impl Drop for Run {
    fn drop(&mut self) {
        vfs::end_run();
    }
}

fn faulty() -> Option<Backend> {
    let guard = vfs::RUN_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    vfs::begin_run(1, 1_700_000_000_000);
    let inner = MemStore::new();
    let wrap = |inner: MemStore| -> DynStore {
        Arc::new(FaultyStore::new(
            inner,
            1,
            StoreFaults::default(),
            Vec::new(),
        ))
    };
    let again = inner.clone();
    Some(Backend {
        store: wrap(inner),
        atomic_create: true,
        reopen: Some(Box::new(move || wrap(again.clone()))),
        _dir: None,
        _guard: Some(Box::new(Run(guard))),
    })
}

backend_tests!(faulty);

/// A wrapper that dropped the capability would pass the conditional cases by skipping them.
#[test]
fn the_wrapper_keeps_conditional_writes() {
    let b = faulty().expect("backend");
    assert!(b.store.supports_conditional_writes());
}
