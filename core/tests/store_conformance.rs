//! One conformance suite for the object-store seam (`store::ObjectStore`), run against every
//! implementation: the in-memory store, the directory store (the file replica), the S3 store
//! against two real S3-compatible servers, s3s-fs and moto, the Azure store against Azurite, the SFTP store against OpenSSH, and
//! the wrappers production puts in front of a store (`CountingStore`, `FencedStore` with its
//! lease held), which must keep the contract of what they wrap. The simulator runs the same cases (`conformance/cases.rs`) against
//! its `FaultyStore`, healed (`sim/tests/faulty_conformance.rs`).
//!
//! Each case is one function over a [`Backend`]; the `backend_tests!` macro instantiates every
//! case for every backend, so a failure names both (`s3s::list_pages_past_1000_keys`).
//!
//! The race cases (many concurrent `PutMode::Create` puts of one key: exactly one wins) run only
//! where conditional writes are atomic: the in-memory store (a mutex), the directory store (a
//! rename that refuses an existing target), moto, Azurite and OpenSSH (whose SFTP rename never
//! replaces a file). s3s-fs checks, then writes, so two racing creates can both succeed there;
//! it still runs the sequential `Create` case. The same split holds for `put_if_version` (If-Match
//! on S3): the directory store swaps under flock(2), atomic among its clients.
//!
//! Not checked here: durability across a crash (the simulator's job), behaviour under faults
//! (the fault tests), and timestamps of objects written by other tools (the Litestream
//! cross-restore tests in `s3_e2e.rs`).

mod common;
#[macro_use]
#[path = "conformance/cases.rs"]
mod cases;

use std::sync::Arc;

use cases::Backend;
use sluice_core::store::{DirStore, DynStore, MemStore};

fn mem() -> Option<Backend> {
    let store = MemStore::new();
    let again = store.clone();
    Some(Backend {
        store: Arc::new(store),
        atomic_create: true,
        reopen: Some(Box::new(move || Arc::new(again.clone()))),
        _dir: None,
        _guard: None,
    })
}

/// A wrapper production puts in front of a store, over the in-memory store: every client
/// (`reopen`) wraps the same data.
fn wrapped_mem(wrap: fn(MemStore) -> DynStore) -> Option<Backend> {
    let inner = MemStore::new();
    let again = inner.clone();
    Some(Backend {
        store: wrap(inner),
        atomic_create: true,
        reopen: Some(Box::new(move || wrap(again.clone()))),
        _dir: None,
        _guard: None,
    })
}

/// `CountingStore`: counting must change nothing.
fn counting() -> Option<Backend> {
    wrapped_mem(|inner| {
        Arc::new(sluice_core::counting::CountingStore::new(
            Arc::new(inner),
            Arc::new(sluice_core::counting::RequestCounts::default()),
        ))
    })
}

/// `FencedStore` with its lease held: fencing must change nothing while the lease holds.
fn fenced() -> Option<Backend> {
    wrapped_mem(|inner| {
        let held = sluice_core::lease::LeaseState {
            valid_until_ms: i64::MAX,
            lost_to: None,
        };
        Arc::new(sluice_core::lease::FencedStore::new(
            Arc::new(inner),
            Arc::new(std::sync::Mutex::new(held)),
            Arc::new(sluice_core::engine::SystemClock),
        ))
    })
}

fn dir() -> Option<Backend> {
    let d = tempfile::tempdir().expect("create a temporary directory");
    let root = d.path().join("replica");
    let again = root.clone();
    Some(Backend {
        store: Arc::new(DirStore::new(root)),
        atomic_create: true,
        reopen: Some(Box::new(move || Arc::new(DirStore::new(again.clone())))),
        _dir: Some(d),
        _guard: None,
    })
}

fn s3_backend(server: &'static common::s3::S3Server, atomic_create: bool) -> Backend {
    let path = server.fresh_path("conformance");
    let store = server.small_part_store(&path);
    Backend {
        store,
        atomic_create,
        reopen: Some(Box::new(move || server.store(&path).store)),
        _dir: None,
        _guard: None,
    }
}

fn s3s() -> Option<Backend> {
    Some(s3_backend(common::s3::s3s_or_skip()?, false))
}

fn moto() -> Option<Backend> {
    Some(s3_backend(common::s3::moto_or_skip()?, true))
}

/// Azurite, Azure Blob Storage's emulator: conditional puts are atomic there.
fn azurite() -> Option<Backend> {
    let server = common::azure::azurite_or_skip()?;
    let path = server.fresh_path("conformance");
    let store = server.small_part_store(&path);
    Some(Backend {
        store,
        atomic_create: true,
        reopen: Some(Box::new(move || server.replica(&path).store)),
        _dir: None,
        _guard: None,
    })
}

/// OpenSSH's SFTP server: a rename never replaces a file there, so `Create` is atomic.
fn sftp() -> Option<Backend> {
    let server = common::sftp::sshd_or_skip()?;
    let path = server.fresh_path("conformance");
    Some(Backend {
        store: server.replica(&path).store,
        atomic_create: true,
        reopen: Some(Box::new(move || server.replica(&path).store)),
        _dir: None,
        _guard: None,
    })
}

/// The GCS store against `gcp-storage-emulator`.
fn gcs() -> Option<Backend> {
    let server = common::gcs::gcs_or_skip()?;
    let path = server.fresh_path("conformance");
    Some(Backend {
        store: server.replica(&path).store,
        atomic_create: false,
        reopen: Some(Box::new(move || server.replica(&path).store)),
        _dir: None,
        _guard: None,
    })
}

/// MinIO in Docker (feature `minio`); conditional writes are atomic there.
#[cfg(feature = "minio")]
fn minio() -> Option<Backend> {
    Some(s3_backend(common::s3::minio_or_skip()?, true))
}

/// A wrapper that dropped the capability would pass the conditional cases by skipping them.
#[test]
fn wrappers_keep_conditional_writes() {
    for (name, b) in [("counting", counting()), ("fenced", fenced())] {
        let b = b.expect("backend");
        assert!(b.store.supports_conditional_writes(), "{name}");
    }
}

backend_tests!(mem);
backend_tests!(counting);
backend_tests!(fenced);
backend_tests!(dir);
backend_tests!(s3s);
backend_tests!(moto);
backend_tests!(azurite);
backend_tests!(sftp);
backend_tests!(gcs);
#[cfg(feature = "minio")]
backend_tests!(minio);
