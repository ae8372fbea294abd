//! How the engine's reads of the local database behave while the application keeps writing:
//! the real SQLite, real files, and an application write fired at an exact point of the read
//! (a `DbFiles` wrapper), so each race happens on every run.

mod common;

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::Workspace;
use sluice_core::engine::{DbFiles, Engine, EngineConfig, OsFiles, SystemClock};
use sluice_core::replica::{Layout, Replica};
use sluice_core::scratch::{OsScratch, ScratchFile};
use sluice_core::store::{DirStore, ObjectMeta, ObjectStore, PutOptions, StoreError};

/// The real files, with `hook` run once, on the first read of the database file at `at`.
struct FireOnRead {
    inner: OsFiles,
    at: u64,
    hook: Hook,
}

/// An application action the test fires once, from inside the engine's I/O.
struct Hook(Mutex<Option<Box<dyn FnOnce() + Send>>>);

impl Hook {
    fn new(action: impl FnOnce() + Send + 'static) -> Self {
        Self(Mutex::new(Some(Box::new(action))))
    }

    /// Runs the action, the first time only.
    fn fire(&self) {
        let action = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(action) = action {
            action();
        }
    }
}

impl DbFiles for FireOnRead {
    fn read_db(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset == self.at {
            self.hook.fire();
        }
        self.inner.read_db(offset, buf)
    }
    fn db_len(&self) -> io::Result<u64> {
        self.inner.db_len()
    }
    fn read_wal(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read_wal(offset, buf)
    }
    fn wal_len(&self) -> io::Result<u64> {
        self.inner.wal_len()
    }
    fn db_stamp(&self) -> io::Result<(u64, u64)> {
        self.inner.db_stamp()
    }
    fn db_path(&self) -> &Path {
        self.inner.db_path()
    }
    fn replaced(&self) -> io::Result<bool> {
        self.inner.replaced()
    }
}

/// A WAL database of 400 rows of 1,000 random bytes, automatic checkpoints off.
fn wal_db(db: &Path) -> rusqlite::Connection {
    let app = rusqlite::Connection::open(db).expect("open the database");
    app.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA wal_autocheckpoint = 0;
         CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 400)
         INSERT INTO t SELECT i, randomblob(1000) FROM n;",
    )
    .expect("fill the database");
    app
}

/// The engine on `files` of the database, replicating to `replica`, scratch files in `ws`.
async fn open_engine(
    cfg: EngineConfig,
    files: Arc<dyn DbFiles>,
    replica: Replica,
    ws: &Workspace,
) -> Engine {
    Engine::open(
        cfg,
        files,
        replica,
        Arc::new(SystemClock),
        Arc::new(OsScratch::new(ws.root().join("scratch"))),
    )
    .await
    .expect("open the engine")
}

/// The next sync ships what was committed, read from the WAL (`what` says why it must be).
async fn sync_from_the_wal(engine: &mut Engine, what: &str) {
    let out = engine.sync().await.expect("sync");
    assert!(out.shipped.is_some(), "the commits are shipped");
    assert!(!out.resynced, "{what}");
}

/// The WAL header's salts: they change when the WAL restarts.
fn wal_salts(db: &Path) -> [u8; 8] {
    let wal = std::fs::read(format!("{}-wal", db.display())).expect("read the WAL");
    wal[16..24].try_into().expect("a WAL header")
}

/// A checkpoint that backfills the whole WAL, as the application's automatic PASSIVE one does
/// when no reader holds a snapshot: the next write restarts the WAL.
fn backfill_all(app: &rusqlite::Connection) {
    app.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        let (busy, log, done): (i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
        assert_eq!((busy, log), (0, done), "the WAL is wholly checkpointed");
        Ok(())
    })
    .expect("checkpoint");
}

/// Checkpoints the application's WAL into its file, then restores the replica's newest state:
/// it must be the database's bytes.
fn assert_replica_is_the_database(
    app: &rusqlite::Connection,
    db: &Path,
    replica: &Path,
    out: &Path,
) {
    app.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .expect("checkpoint");
    assert_eq!(
        restore(replica, out),
        std::fs::read(db).expect("read the database"),
        "the replica's newest state is the database's"
    );
}

fn restore(replica: &Path, out: &Path) -> Vec<u8> {
    let _ = std::fs::remove_file(out);
    let (code, _, err) = common::run_sluice(&[&"restore", &"-o", &out, &common::file_url(replica)]);
    assert_eq!(code, 0, "restore failed: {err}");
    std::fs::read(out).expect("read the restored database")
}

/// The first snapshot of a busy database is read once. Its WAL is wholly checkpointed when the
/// read begins (SQLite's read mark 0), and halfway through the read the application commits,
/// which restarts the WAL over the frames the read began with. The database file cannot change
/// under that read, so the snapshot is kept, not thrown away and read again (which on a large
/// database under steady writes never finishes), and the next sync follows the new generation
/// from its start without comparing every page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_snapshot_survives_a_wal_restart_under_its_read() {
    let ws = Workspace::new("engine-reads");
    let db = ws.root().join("app.db");
    let replica_dir = ws.root().join("replica");
    let app = rusqlite::Connection::open(&db).expect("open the database");
    app.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
         INSERT INTO t SELECT i, randomblob(300) FROM n;",
    )
    .expect("fill the database");
    app.pragma_update(None, "journal_mode", "WAL")
        .expect("WAL mode");
    app.pragma_update(None, "wal_autocheckpoint", 0)
        .expect("no automatic checkpoints");
    app.execute("UPDATE t SET v = randomblob(300) WHERE id = 1", [])
        .expect("a first WAL transaction");
    // Backfill every frame and keep the WAL: the next writer restarts it.
    backfill_all(&app);
    let snapshot_state = std::fs::read(&db).expect("read the database");
    let salts_before = wal_salts(&db);
    let page_size: i64 = app
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .expect("page size");
    let page_size = page_size as u64;
    let pages = snapshot_state.len() as u64 / page_size;
    assert!(
        pages > 50,
        "a database of {pages} pages is too small for the test"
    );

    // Halfway through the snapshot's read, another connection commits.
    let writer = Arc::new(Mutex::new(
        rusqlite::Connection::open(&db).expect("open a second connection"),
    ));
    let w = writer.clone();
    let files = FireOnRead {
        inner: OsFiles::open(&db).expect("open the files"),
        at: (pages / 2) * page_size,
        hook: Hook::new(move || {
            w.lock()
                .expect("the writer")
                .execute("UPDATE t SET v = randomblob(300) WHERE id > 1900", [])
                .expect("a commit during the read");
        }),
    };
    let replica = Replica::new(Arc::new(DirStore::new(&replica_dir)), Layout::File);
    let mut engine = open_engine(EngineConfig::new(&db), Arc::new(files), replica, &ws).await;
    assert_ne!(
        wal_salts(&db),
        salts_before,
        "the commit during the read restarted the WAL (the race this test is about)"
    );
    assert_eq!(
        engine.recoveries(),
        1,
        "the snapshot was read once, not thrown away at the restart"
    );
    assert!(engine.opened_with_snapshot());
    assert_eq!(
        restore(&replica_dir, &ws.root().join("first.db")),
        snapshot_state,
        "the snapshot is the state the read began with"
    );

    sync_from_the_wal(
        &mut engine,
        "the new generation is followed from its start, not found by comparing every page",
    )
    .await;
    engine.close().expect("close the engine");
    drop(writer);
    assert_replica_is_the_database(&app, &db, &replica_dir, &ws.root().join("latest.db"));
}

/// The engine's own PASSIVE checkpoint backfills nothing it has not shipped. The application
/// commits while an upload is in flight; the checkpoint due after the acknowledgement must not
/// backfill that commit, or the application's next transaction restarts the WAL and overwrites
/// it (a transaction larger than the old generation overwrites all of it), and the next sync can
/// only compare every page of the database. Run after the upload with no read held, as it once
/// was, it did exactly that at every checkpoint under steady writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_checkpoint_never_backfills_a_commit_it_has_not_shipped() {
    use sluice_core::engine::{CheckpointPolicy, Ready};

    let ws = Workspace::new("engine-checkpoint");
    let db = ws.root().join("app.db");
    let replica_dir = ws.root().join("replica");
    let app = wal_db(&db);
    let replica = Replica::new(Arc::new(DirStore::new(&replica_dir)), Layout::File);
    let mut cfg = EngineConfig::new(&db);
    // A checkpoint after every sync that ships.
    cfg.checkpoint = CheckpointPolicy {
        min_pages: 1,
        truncate_pages: 0,
        interval_ms: i64::MAX / 4,
    };
    let mut engine = open_engine(
        cfg,
        Arc::new(OsFiles::open(&db).expect("open the files")),
        replica,
        &ws,
    )
    .await;

    for round in 0..3 {
        app.execute(
            "UPDATE t SET v = randomblob(1000) WHERE id = ?1",
            [round + 1],
        )
        .expect("a small commit");
        let Ready::Upload(upload) = engine.prepare().await.expect("prepare") else {
            panic!("round {round}: the commit is shipped");
        };
        // Committed while the upload is in flight: not in the file being shipped.
        app.execute("UPDATE t SET v = randomblob(1000) WHERE id = 399", [])
            .expect("a commit during the upload");
        let upload = *upload;
        let store = engine.replica().store.clone();
        let answer =
            sluice_core::store::put_body(store.as_ref(), &upload.key, upload.body, upload.opts)
                .await;
        engine.acknowledge(upload.ack, answer).expect("acknowledge");
        // A transaction larger than the WAL so far: were the WAL wholly backfilled, it would
        // restart the WAL and overwrite every old frame, the unshipped commit's among them.
        app.execute("UPDATE t SET v = randomblob(1000)", [])
            .expect("a large commit");
        let out = engine.sync().await.expect("sync");
        assert!(
            out.shipped.is_some(),
            "round {round}: both commits are shipped"
        );
        assert!(
            !out.resynced,
            "round {round}: the commits were read from the WAL, not found by comparing every page"
        );
    }
    engine.close().expect("close the engine");
    assert_replica_is_the_database(&app, &db, &replica_dir, &ws.root().join("latest.db"));
}

/// A directory store that runs `hook` once, when the first put begins: the application acts
/// while the engine's first snapshot is being uploaded.
struct FireOnPut {
    inner: DirStore,
    hook: Hook,
}

impl std::fmt::Debug for FireOnPut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FireOnPut")
            .field("inner", &self.inner)
            .finish()
    }
}

#[async_trait::async_trait]
impl ObjectStore for FireOnPut {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn put(&self, key: &str, data: Vec<u8>, opts: PutOptions) -> Result<(), StoreError> {
        self.hook.fire();
        self.inner.put(key, data, opts).await
    }
    async fn put_spooled(
        &self,
        key: &str,
        body: &dyn ScratchFile,
        opts: PutOptions,
    ) -> Result<(), StoreError> {
        self.hook.fire();
        self.inner.put_spooled(key, body, opts).await
    }
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        self.inner.get_range(key, offset, len).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
    fn supports_conditional_writes(&self) -> bool {
        self.inner.supports_conditional_writes()
    }
}

/// Issue 10: the first snapshot of a busy 1 GiB database was followed by a compare of every
/// page: while it uploaded (seconds, for a large file) the application's checkpoints backfilled
/// the WAL and its writes restarted it over the frames the snapshot's position named. The read
/// the snapshot was taken under is now kept until the store answers. Both ways SQLite may have
/// given that read: a WAL with frames not yet checkpointed (a read mark past 0: nothing may
/// restart the WAL while it is held), and a WAL wholly checkpointed (mark 0: one restart may
/// happen, but no checkpoint may write the database file, so the snapshot is where the new
/// generation begins). During the upload the application makes a commit larger than the WAL
/// so far, asks for a TRUNCATE checkpoint (busy while the read is held) and commits again;
/// the next sync reads those commits from the WAL, not by comparing every page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_snapshot_upload_keeps_its_read_so_the_next_sync_continues_from_it() {
    for wholly_checkpointed in [false, true] {
        let ws = Workspace::new("engine-upload-read");
        let db = ws.root().join("app.db");
        let replica_dir = ws.root().join("replica");
        let app = wal_db(&db);
        app.execute("UPDATE t SET v = randomblob(1000) WHERE id = 1", [])
            .expect("a WAL transaction");
        if wholly_checkpointed {
            app.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                .expect("checkpoint");
        }
        let writer = Arc::new(Mutex::new(
            rusqlite::Connection::open(&db).expect("open a second connection"),
        ));
        let w = writer.clone();
        let store = FireOnPut {
            inner: DirStore::new(&replica_dir),
            hook: Hook::new(move || {
                let w = w.lock().expect("the writer");
                w.execute("UPDATE t SET v = randomblob(1000)", [])
                    .expect("a commit larger than the WAL, during the upload");
                w.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                    .expect("a TRUNCATE checkpoint during the upload");
                w.execute("UPDATE t SET v = randomblob(1000)", [])
                    .expect("another commit during the upload");
            }),
        };
        let replica = Replica::new(Arc::new(store), Layout::File);
        let mut engine = open_engine(
            EngineConfig::new(&db),
            Arc::new(OsFiles::open(&db).expect("open the files")),
            replica,
            &ws,
        )
        .await;
        assert!(engine.opened_with_snapshot());
        sync_from_the_wal(
            &mut engine,
            &format!("wholly checkpointed {wholly_checkpointed}: the commits made during the upload were read from the WAL, not found by comparing every page"),
        )
        .await;
        engine.close().expect("close the engine");
        drop(writer);
        assert_replica_is_the_database(&app, &db, &replica_dir, &ws.root().join("latest.db"));
    }
}

/// The sync the scheduler runs when the WAL restarted (`Engine::sync_restart`). While the new
/// generation still ends before the position, it ships the old generation's unread tail and
/// the new frames without comparing the database. Once the new generation has grown past the
/// position, the tail is gone: it ships nothing and leaves the changes pending (a WAL that
/// restarts faster than the engine follows must cost one compare an interval, not one a
/// restart), and the next ordinary sync compares the database and ships what differs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_sync_ships_the_old_tail_or_nothing_once_it_is_overwritten() {
    let ws = Workspace::new("engine-reads");
    let db = ws.root().join("app.db");
    let replica_dir = ws.root().join("replica");
    let app = wal_db(&db);
    let replica = Replica::new(Arc::new(DirStore::new(&replica_dir)), Layout::File);
    let files = Arc::new(OsFiles::open(&db).expect("open the files"));
    let mut engine = open_engine(EngineConfig::new(&db), files, replica, &ws).await;
    let update = |rows: &str| {
        app.execute(
            &format!("UPDATE t SET v = randomblob(1000) WHERE {rows}"),
            [],
        )
        .expect("update");
    };

    // A position far into the generation, then an unread tail after it.
    update("id <= 200");
    sync_from_the_wal(&mut engine, "steady frames").await;
    update("id BETWEEN 201 AND 210");
    let salts = wal_salts(&db);
    backfill_all(&app);
    update("id = 300");
    assert_ne!(wal_salts(&db), salts, "the write restarted the WAL");
    let out = engine.sync_restart().await.expect("restart sync");
    assert!(
        out.shipped.is_some() && !out.resynced,
        "the old tail and the new frames are shipped, proven from the WAL: {out:?}"
    );

    // A position a few frames into a generation; the next generation outgrows it.
    update("id = 1");
    sync_from_the_wal(&mut engine, "the generation the checkpoint began").await;
    update("id BETWEEN 2 AND 5");
    backfill_all(&app);
    update("id > 100");
    let out = engine.sync_restart().await.expect("restart sync");
    assert_eq!(
        (out.shipped.is_some(), out.resynced, out.more),
        (false, false, true),
        "the tail is gone: nothing shipped, nothing compared, still pending"
    );
    let out = engine.sync().await.expect("sync");
    assert!(
        out.shipped.is_some() && out.resynced,
        "the ordinary sync compares the database: {out:?}"
    );
    engine.close().expect("close the engine");
    // Every file's checksums chain, the old tail's included, to the database's bytes.
    assert_replica_is_the_database(&app, &db, &replica_dir, &ws.root().join("latest.db"));
}
