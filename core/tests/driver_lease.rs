//! The lease is kept while an action runs longer than it: production's driver, a real SQLite
//! database, a directory replica whose uploads take several lease times (a first snapshot of
//! many GiB on a slow link), on tokio's paused clock so the durations are exact.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sluice_core::engine::{Clock, EngineConfig, OsDb};
use sluice_core::lease::{FencedStore, Holder, LEASE_KEY, Lease};
use sluice_core::replica::{Layout, Replica};
use sluice_core::replicate::{Driver, Job, JobStatus, Schedule};
use sluice_core::scheduler::{Action, Next, Outcome};
use sluice_core::scratch::{OsScratch, ScratchFile};
use sluice_core::store::{DirStore, DynStore, ObjectMeta, ObjectStore, PutOptions, StoreError};

const TTL_MS: i64 = 3_000;
/// How long each upload of an LTX file takes: three lease times.
const UPLOAD_MS: u64 = 9_000;

/// Unix ms on tokio's clock, which the test pauses (time moves only when every task waits).
#[derive(Debug)]
struct TokioClock {
    start: tokio::time::Instant,
}

impl Clock for TokioClock {
    fn now_ms(&self) -> i64 {
        1_700_000_000_000 + i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX)
    }
}

/// A directory replica whose LTX uploads take [`UPLOAD_MS`] before they land.
#[derive(Debug)]
struct SlowUploads(DirStore);

impl SlowUploads {
    async fn wait(key: &str) {
        if key.ends_with(".ltx") {
            tokio::time::sleep(Duration::from_millis(UPLOAD_MS)).await;
        }
    }
}

#[async_trait]
impl ObjectStore for SlowUploads {
    fn describe(&self) -> String {
        self.0.describe()
    }
    async fn put(&self, key: &str, data: Vec<u8>, opts: PutOptions) -> Result<(), StoreError> {
        Self::wait(key).await;
        self.0.put(key, data, opts).await
    }
    async fn put_spooled(
        &self,
        key: &str,
        body: &dyn ScratchFile,
        opts: PutOptions,
    ) -> Result<(), StoreError> {
        Self::wait(key).await;
        self.0.put_spooled(key, body, opts).await
    }
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        self.0.get_range(key, offset, len).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.0.head(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.0.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.0.delete(key).await
    }
    fn supports_conditional_writes(&self) -> bool {
        self.0.supports_conditional_writes()
    }
    async fn get_versioned(&self, key: &str) -> Result<(Vec<u8>, String), StoreError> {
        self.0.get_versioned(key).await
    }
    async fn put_if_version(
        &self,
        key: &str,
        data: Vec<u8>,
        timestamp_ms: i64,
        version: &str,
    ) -> Result<String, StoreError> {
        self.0
            .put_if_version(key, data, timestamp_ms, version)
            .await
    }
}

/// A WAL database with a table of 200 rows.
fn database(db: &Path) {
    let app = rusqlite::Connection::open(db).expect("open the database");
    app.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
         INSERT INTO t SELECT i, randomblob(500) FROM n;",
    )
    .expect("fill the database");
}

/// When the lease object says it expires (Unix ms).
fn lease_expires_ms(replica: &Path) -> i64 {
    let body = std::fs::read(replica.join(LEASE_KEY)).expect("read the lease");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("a JSON lease");
    v["expires_ms"].as_i64().expect("expires_ms")
}

#[tokio::test(start_paused = true)]
async fn a_first_snapshot_longer_than_the_lease_keeps_it_and_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("app.db");
    let replica_dir = dir.path().join("replica");
    database(&db);
    let clock = Arc::new(TokioClock {
        start: tokio::time::Instant::now(),
    });
    let raw: DynStore = Arc::new(SlowUploads(DirStore::new(&replica_dir)));
    let lease = Lease::acquire(raw.clone(), Holder::here(&db), clock.now_ms(), TTL_MS)
        .await
        .expect("take the lease");
    let fenced: DynStore = Arc::new(FencedStore::new(raw, lease.state(), clock.clone()));
    let job = Job {
        engine: EngineConfig::new(&db),
        replica: Replica::new(fenced, Layout::File),
        schedule: Schedule::default(),
        scratch: Arc::new(OsScratch::new(dir.path())),
        lease: Some(lease),
    };
    let status = Arc::new(Mutex::new(JobStatus::default()));
    let mut driver = Driver::new(
        job,
        Arc::new(OsDb { path: db.clone() }),
        clock.clone(),
        status,
        7,
    );
    let started = clock.now_ms();
    assert_eq!(driver.poll(), Next::Run(Action::Open));
    let (outcome, error) = driver.run_action(Action::Open).await;
    let took = clock.now_ms() - started;
    assert!(
        matches!(outcome, Outcome::Opened { txid: 1.., .. }),
        "the open's upload, answered after its lease would have run out, counts: {outcome:?} {error:?}"
    );
    assert!(took >= 3 * TTL_MS, "the upload took {took} ms");
    // Renewed every third of the lease while the upload ran (some retried, none lost).
    let renewed = driver.renewed_beside();
    assert!(
        renewed >= 8,
        "renewed {renewed} times beside a {took} ms open"
    );
    assert!(
        lease_expires_ms(&replica_dir) > clock.now_ms(),
        "the lease object still holds after the open"
    );
    let ltx = walk_ltx(&replica_dir);
    assert_eq!(ltx, 1, "the first snapshot is in the replica");
    // The job goes on: the next action is the sync the open leaves due, not a renewal late.
    assert_eq!(driver.poll(), Next::Run(Action::Sync));
}

/// How many LTX files the directory replica holds.
fn walk_ltx(dir: &Path) -> usize {
    let mut n = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read the replica").flatten() {
            let p = entry.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|e| e == "ltx") {
                n += 1;
            }
        }
    }
    n
}
