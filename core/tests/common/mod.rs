//! Helpers shared by the integration tests (and the restore benchmark): a temporary workspace,
//! the real Litestream binary as a peer, waits that poll a replica directory, byte-exact file
//! comparison and a way to run the `sluice` binary.
//!
//! Waits never assert on timing: every timeout is a failure guard, generous enough
//! ([`WAIT_MAX`]) that a slow CI machine does not trip it.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

pub mod azure;
pub mod gcs;
pub mod s3;
pub mod sftp;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The longest any wait in a test may take before it is a failure.
pub const WAIT_MAX: Duration = Duration::from_secs(60);
/// Pause between two looks at a replica directory.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How many consecutive unchanged looks, [`SETTLE_SPACING`] apart, make a replica "settled".
/// With Litestream syncing every 20 ms this is several sync intervals without a new file.
pub const SETTLE_POLLS: u32 = 6;
pub const SETTLE_SPACING: Duration = Duration::from_millis(30);

/// A replica server the tests write to through `sluice` processes: S3 or Azure.
pub trait Remote {
    /// The newest TXID of any LTX file in the replica at `path`, read through a new client.
    fn max_txid(&self, path: &str) -> u64;
    /// The environment a `sluice` process needs to reach the server.
    fn sluice_env(&self) -> Vec<(&'static str, String)>;
}

/// Waits for the first file a replicator uploads to `path` on `server`; `alive` panics if the
/// replicator has exited.
pub fn first_upload(server: &impl Remote, path: &str, mut alive: impl FnMut()) -> u64 {
    let started = Instant::now();
    loop {
        alive();
        let t = server.max_txid(path);
        if t > 0 {
            return t;
        }
        assert!(started.elapsed() < WAIT_MAX, "nothing uploaded to {path}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A replica path no other test uses: `<label>-<pid>-<n>`.
pub fn fresh_path(label: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "{label}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// The workspace root (`core/..`), where CI caches the Litestream install.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A temporary directory removed when dropped (kept if `SLUICE_KEEP_TMP` is set, for
/// post-mortems).
pub struct Workspace {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Workspace {
    pub fn new(label: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("sluice-{label}-"))
            .tempdir()
            .expect("create a temporary workspace");
        let path = dir.path().to_path_buf();
        let keep = std::env::var_os("SLUICE_KEEP_TMP").is_some();
        let dir = if keep {
            eprintln!("keeping workspace {}", path.display());
            let _ = dir.keep();
            None
        } else {
            Some(dir)
        };
        Self { dir, path }
    }

    pub fn root(&self) -> &Path {
        &self.path
    }

    /// A path inside the workspace.
    pub fn path(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// A new, empty directory inside the workspace.
    pub fn dir(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p).expect("create a workspace directory");
        p
    }
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Workspace({}, kept: {})",
            self.path.display(),
            self.dir.is_none()
        )
    }
}

/// Looks for the Litestream binary: `$LITESTREAM_BIN`, then the CI cache under the workspace
/// root, then `litestream` on `PATH`.
pub fn find_litestream() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LITESTREAM_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
        eprintln!(
            "LITESTREAM_BIN={} is not a file; looking elsewhere",
            p.display()
        );
    }
    let cached = workspace_root().join(".ci-cache/venv/bin/litestream");
    if cached.is_file() {
        return Some(cached);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("litestream"))
        .find(|p| p.is_file())
}

/// The Litestream binary, or `None` after printing why the calling test skips. Panics instead
/// when `SLUICE_REQUIRE_PEERS=1` (CI), so a missing peer cannot pass silently there.
pub fn litestream_or_skip() -> Option<PathBuf> {
    if let Some(p) = find_litestream() {
        return Some(p);
    }
    if std::env::var("SLUICE_REQUIRE_PEERS").as_deref() == Ok("1") {
        panic!(
            "litestream binary not found and SLUICE_REQUIRE_PEERS=1: set LITESTREAM_BIN or run ci/test.sh, which installs it"
        );
    }
    println!("skipping: litestream binary not found (set LITESTREAM_BIN)");
    None
}

/// A `Command` for Litestream with the environment it needs here: `AWS_CA_BUNDLE` (set on
/// this machine for other tools) makes Litestream try to load it even for file replicas.
pub fn litestream_command(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env_remove("AWS_CA_BUNDLE")
        .env_remove("LITESTREAM_CONFIG")
        .stdin(Stdio::null());
    cmd
}

/// A running `litestream replicate` process. Dropping it kills the process if it still runs.
pub struct Litestream {
    child: Child,
    log_path: PathBuf,
}

impl Litestream {
    /// Starts replicating `db` to the file replica `replica` with 20 ms monitor and sync
    /// intervals. The config and the process log go in `work_dir`.
    pub fn replicate(bin: &Path, db: &Path, replica: &Path, work_dir: &Path) -> Self {
        let config = work_dir.join("litestream.yml");
        // Double-quoted YAML scalars: our temporary paths hold no quotes or backslashes.
        let text = format!(
            "dbs:\n  - path: \"{}\"\n    monitor-interval: 20ms\n    replica:\n      url: \"file://{}\"\n      sync-interval: 20ms\n",
            db.display(),
            replica.display()
        );
        std::fs::write(&config, text).expect("write the Litestream config");
        let log_path = work_dir.join("litestream.log");
        let log = std::fs::File::create(&log_path).expect("create the Litestream log");
        let log2 = log.try_clone().expect("clone the Litestream log handle");
        let child = litestream_command(bin)
            .arg("replicate")
            .arg("-config")
            .arg(&config)
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Self { child, log_path }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "litestream exited early ({status}); its log:\n{}",
                self.log()
            );
        }
    }

    /// Stops the process with SIGTERM, as an operator would, and waits for it to exit.
    pub fn stop(mut self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
        let started = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if started.elapsed() < WAIT_MAX => std::thread::sleep(POLL_INTERVAL),
                Ok(None) => panic!(
                    "litestream did not exit within {WAIT_MAX:?} of SIGTERM; its log:\n{}",
                    self.log()
                ),
                Err(e) => panic!("waiting for litestream: {e}"),
            }
        }
    }
}

impl Drop for Litestream {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Output of a finished process: exit code (-1 if killed by a signal), stdout, stderr.
pub type Output = (i32, String, String);

fn output_of(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `litestream <args>` to completion.
pub fn run_litestream(bin: &Path, args: &[&dyn AsRef<OsStr>]) -> Output {
    output_of(litestream_command(bin).args(args), "litestream")
}

/// The `sluice` binary Cargo built for this test or bench target.
pub fn sluice_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sluice"))
}

/// Runs `sluice <args>` to completion, isolated from any config in the environment.
pub fn run_sluice(args: &[&dyn AsRef<OsStr>]) -> Output {
    let mut cmd = Command::new(sluice_bin());
    cmd.args(args)
        .env_remove("SLUICE_CONFIG")
        .env_remove("LITESTREAM_CONFIG")
        .env_remove("AWS_CA_BUNDLE")
        .stdin(Stdio::null());
    output_of(&mut cmd, "sluice")
}

/// `file://` URL of a local directory.
pub fn file_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// The highest TXID of any LTX file in a file replica, at any level; 0 if there is none.
/// Names that are not exactly `<16 hex>-<16 hex>.ltx` (temporaries) are ignored.
pub fn replica_max_txid(replica: &Path) -> u64 {
    let mut max = 0u64;
    for level in 0..=sluice_core::replica::LEVEL_MAX {
        let dir = replica.join("ltx").join(level.to_string());
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("cannot list {}: {e}", dir.display()),
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if let Some((_, hi)) = name
                .to_str()
                .and_then(sluice_core::replica::parse_file_name)
            {
                max = max.max(hi);
            }
        }
    }
    max
}

/// Polls `probe` every [`POLL_INTERVAL`] until it yields a value; panics naming `what` after
/// [`WAIT_MAX`].
pub fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            started.elapsed() < WAIT_MAX,
            "gave up after {WAIT_MAX:?} waiting for {what}"
        );
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Waits until the replica's highest TXID is above `above` and then stays unchanged for
/// [`SETTLE_POLLS`] looks; returns it.
pub fn wait_txid_settled(replica: &Path, above: u64) -> u64 {
    let started = Instant::now();
    let mut last = replica_max_txid(replica);
    let mut unchanged = 0u32;
    loop {
        std::thread::sleep(SETTLE_SPACING);
        let now = replica_max_txid(replica);
        if now == last && now > above {
            unchanged += 1;
            if unchanged >= SETTLE_POLLS {
                return now;
            }
        } else {
            unchanged = 0;
            last = now;
        }
        assert!(
            started.elapsed() < WAIT_MAX,
            "replica {} did not settle above TXID {above:016x} within {WAIT_MAX:?} (now {now:016x})",
            replica.display()
        );
    }
}

/// Index of the first byte at which `a` and `b` differ (the shorter length if one is a prefix
/// of the other), or `None` if they are equal.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then_some(a.len().min(b.len())))
}

/// Asserts two files are byte-identical; on failure names the first differing offset and the
/// page it falls in.
pub fn assert_same_file(expected: &Path, actual: &Path, page_size: u32, what: &str) {
    let a = std::fs::read(expected)
        .unwrap_or_else(|e| panic!("{what}: cannot read {}: {e}", expected.display()));
    let b = std::fs::read(actual)
        .unwrap_or_else(|e| panic!("{what}: cannot read {}: {e}", actual.display()));
    if let Some(at) = first_difference(&a, &b) {
        panic!(
            "{what}: {} ({} bytes) and {} ({} bytes) first differ at byte {at} (page {} of {page_size} bytes)",
            expected.display(),
            a.len(),
            actual.display(),
            b.len(),
            at as u64 / u64::from(page_size) + 1
        );
    }
}

/// Rows of `PRAGMA integrity_check` on a database opened read-only; `["ok"]` when healthy.
pub fn integrity_check(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|e| panic!("cannot open {}: {e}", db.display()));
    let mut stmt = conn
        .prepare("PRAGMA integrity_check")
        .expect("prepare integrity_check");
    stmt.query_map([], |r| r.get::<_, String>(0))
        .expect("run integrity_check")
        .collect::<rusqlite::Result<Vec<_>>>()
        .expect("read integrity_check rows")
}

pub fn assert_integrity_ok(db: &Path) {
    let rows = integrity_check(db);
    assert_eq!(rows, ["ok"], "integrity_check of {} failed", db.display());
}

/// Copies every WAL frame into the database file and truncates the WAL to zero bytes.
pub fn checkpoint_truncate(conn: &rusqlite::Connection) {
    let (busy, log, done): (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .expect("PRAGMA wal_checkpoint(TRUNCATE)");
    assert_eq!(
        (busy, log, done),
        (0, 0, 0),
        "TRUNCATE checkpoint was blocked (busy, log frames, checkpointed frames)"
    );
}

/// Lists what is in a directory (names only, sorted), for assertions that nothing was left.
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| {
            e.expect("read a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// One case of bad input: the command fails with one line naming the problem, and `secret`
/// appears nowhere in it.
pub fn assert_refused(what: &str, (code, stdout, stderr): &Output, says: &[&str], secret: &str) {
    assert_ne!(*code, 0, "{what}: exit 0\n{stdout}{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: expected one line, got:\n{stderr}");
    for s in says {
        assert!(stderr.contains(s), "{what}: {s:?} not in {stderr:?}");
    }
    assert!(
        !stderr.contains(secret) && !stdout.contains(secret),
        "{what}: the secret leaked: {stderr}"
    );
}

/// The LTX header time of every file of `replica` equals the timestamp its listing gives
/// (from the object's metadata, through a new client).
pub fn assert_timestamps_match_headers(replica: &sluice_core::replica::Replica) {
    let rt = s3::runtime();
    let files = rt.block_on(replica.list_all()).expect("list");
    assert!(
        !files.is_empty(),
        "replica {} is empty",
        replica.store.describe()
    );
    for f in files {
        let head = rt
            .block_on(replica.store.get_range(&replica.key(&f), 0, 100))
            .expect("read an LTX header");
        let head: [u8; 100] = head.try_into().expect("a 100-byte header");
        let h = sluice_core::ltx::Header::decode(&head).expect("decode the header");
        assert_eq!(
            f.created_ms, h.timestamp_ms,
            "{f}: listed timestamp differs from the LTX header's"
        );
    }
}

/// `cmd` (a `litestream` command) run as `restore -config cfg -o out db`: it must succeed, and
/// `out` must be `db` byte for byte and pass `integrity_check`.
pub fn assert_litestream_restores(
    mut cmd: Command,
    cfg: &Path,
    db: &Path,
    out: &Path,
    page_size: u32,
    what: &str,
) {
    let restored = cmd
        .args(["restore", "-config"])
        .arg(cfg)
        .arg("-o")
        .arg(out)
        .arg(db)
        .output()
        .expect("run litestream restore");
    assert!(
        restored.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert_same_file(db, out, page_size, what);
    assert_integrity_ok(out);
}

/// With `proc` replicating the database of `conn` to `path` on `server`: waits for its first
/// upload, makes 40 more commits (`salt` varies their bytes), waits for the replica to settle,
/// stops the process and checkpoints the database (TRUNCATE). Returns its page size.
pub fn replicate_through(
    server: &impl Remote,
    path: &str,
    conn: rusqlite::Connection,
    salt: u32,
    mut proc: s3::Running,
) -> u32 {
    let first = first_upload(server, path, || proc.assert_running());
    s3::write(&conn, 40, salt);
    s3::wait_settled(server, path, first);
    proc.stop();
    checkpoint_truncate(&conn);
    s3::page_size(&conn)
}
