//! S3-compatible servers for the tests: `s3s-fs` (checks signatures, keeps data on disk; the
//! default) and moto (no signature checks, memory only, atomic conditional writes: the one that
//! can judge fencing).
//!
//! `ci/test.sh` starts both and exports where they are (`SLUICE_S3_ENDPOINT`,
//! `SLUICE_S3_ACCESS_KEY`, `SLUICE_S3_SECRET_KEY`, `SLUICE_S3_BUCKET`; `SLUICE_MOTO_ENDPOINT`).
//! From a plain `cargo test` a server is started here, once per test binary, on a free port of
//! 127.0.0.1 when its binary is installed (`.ci-cache/s3s/bin/s3s-fs`,
//! `.ci-cache/venv/bin/moto_server`, or on `PATH`). Otherwise the calling test skips with a
//! printed reason, or fails when `SLUICE_REQUIRE_PEERS=1`.
//!
//! Tests share one bucket per server and keep apart by using a fresh replica path each
//! ([`S3Server::fresh_path`]).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use sluice_core::replica::FileInfo;

use super::{Output, Remote, SETTLE_POLLS, SETTLE_SPACING, WAIT_MAX, workspace_root};

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    S3sFs,
    Moto,
    /// MinIO in Docker through testcontainers (feature `minio`).
    #[cfg(feature = "minio")]
    Minio,
}

/// A reachable S3-compatible server and a bucket on it.
#[derive(Debug)]
pub struct S3Server {
    pub kind: Kind,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
    /// The server process when this test binary started it: its stdin is the lifeline (see
    /// [`start_with_lifeline`]).
    _lifeline: Option<(Child, ChildStdin)>,
    _data: Option<tempfile::TempDir>,
    /// A container the server runs in, stopped when dropped.
    _container: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl S3Server {
    /// `host:port` of the endpoint.
    pub fn host_port(&self) -> &str {
        self.endpoint.trim_start_matches("http://")
    }

    /// A replica path no other test uses: `<label>-<pid>-<n>`.
    pub fn fresh_path(&self, label: &str) -> String {
        super::fresh_path(label)
    }

    /// `s3://bucket/path?endpoint=...` for this server.
    pub fn url(&self, path: &str) -> String {
        format!("s3://{}/{path}?endpoint={}", self.bucket, self.endpoint)
    }

    /// The `s3://bucket.localhost:PORT/path` form (endpoint in the host).
    pub fn host_url(&self, path: &str) -> String {
        let port = self.host_port().rsplit_once(':').map_or("", |(_, p)| p);
        format!("s3://{}.localhost:{port}/{path}", self.bucket)
    }

    /// An S3 store on `path` that splits uploads above 6 MiB into 5 MiB parts, so tests
    /// exercise multipart uploads with small objects.
    pub fn small_part_store(&self, path: &str) -> sluice_core::store::DynStore {
        let store = sluice_core::s3::open(sluice_core::s3::S3Config {
            bucket: self.bucket.clone(),
            path: path.to_string(),
            endpoint: Some(self.endpoint.clone()),
            region: None,
            force_path_style: true,
            skip_verify: false,
            credentials: Some(sluice_core::s3::S3Credentials {
                access_key_id: self.access_key.clone(),
                secret_access_key: self.secret_key.clone(),
                source: "test",
            }),
        })
        .unwrap_or_else(|e| panic!("S3 store on {path}: {e}"));
        std::sync::Arc::new(store.with_multipart(6 << 20, 5 << 20))
    }

    /// Opens a store on `path` through sluice's own URL handling and credentials.
    pub fn store(&self, path: &str) -> sluice_core::replica::Replica {
        let target = sluice_core::url::ReplicaTarget::parse(&self.url(path))
            .unwrap_or_else(|e| panic!("parse {}: {e}", self.url(path)));
        let settings = sluice_core::config::ReplicaSettings {
            access_key_id: Some(self.access_key.clone()),
            secret_access_key: Some(sluice_core::config::Secret(self.secret_key.clone())),
            ..Default::default()
        };
        target
            .open(&settings)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.url(path)))
    }
}

impl Remote for S3Server {
    fn max_txid(&self, path: &str) -> u64 {
        s3_files(self, path)
            .iter()
            .map(|f| f.max_txid)
            .max()
            .unwrap_or(0)
    }

    fn sluice_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("LITESTREAM_ACCESS_KEY_ID", self.access_key.clone()),
            ("LITESTREAM_SECRET_ACCESS_KEY", self.secret_key.clone()),
        ]
    }
}

pub(crate) fn require_peers() -> bool {
    std::env::var("SLUICE_REQUIRE_PEERS").as_deref() == Ok("1")
}

pub(crate) fn skip<T>(reason: &str) -> Option<&'static T> {
    if require_peers() {
        panic!("{reason} and SLUICE_REQUIRE_PEERS=1: run ci/test.sh, which installs and starts it");
    }
    println!("skipping: {reason}");
    None
}

pub(crate) fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn find_bin(env_var: &str, cached: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = env(env_var).map(PathBuf::from).filter(|p| p.is_file()) {
        return Some(p);
    }
    let c = workspace_root().join(cached);
    if c.is_file() {
        return Some(c);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A port on 127.0.0.1 nothing listens on (at the time of asking).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port on 127.0.0.1")
}

fn wait_listening(port: u16, child: &mut Child, what: &str) {
    let started = Instant::now();
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening on port {port}: {status}");
        }
        assert!(
            started.elapsed() < WAIT_MAX,
            "{what} did not listen on port {port} within {WAIT_MAX:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `program args` under `sh`, which kills it once our end of its stdin closes: when this
/// test process exits, however it exits, the server goes with it.
fn start_with_lifeline(program: &Path, args: &[String], log: &Path) -> (Child, ChildStdin) {
    let log_file = std::fs::File::create(log).expect("create a server log");
    let log_err = log_file.try_clone().expect("clone the server log handle");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("\"$0\" \"$@\" </dev/null & pid=$!; read _line; kill $pid; wait $pid")
        .arg(program)
        .args(args)
        .env_remove("AWS_CA_BUNDLE")
        .stdin(Stdio::piped())
        .stdout(log_file)
        .stderr(log_err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    let stdin = child.stdin.take().expect("the server's stdin is piped");
    (child, stdin)
}

/// s3s-fs: from the environment, else started here, else `None` after printing why.
pub fn s3s_or_skip() -> Option<&'static S3Server> {
    static SERVER: OnceLock<Option<S3Server>> = OnceLock::new();
    let server = SERVER.get_or_init(|| {
        if let Some(endpoint) = env("SLUICE_S3_ENDPOINT") {
            return Some(S3Server {
                kind: Kind::S3sFs,
                endpoint,
                access_key: env("SLUICE_S3_ACCESS_KEY").unwrap_or_default(),
                secret_key: env("SLUICE_S3_SECRET_KEY").unwrap_or_default(),
                bucket: env("SLUICE_S3_BUCKET").unwrap_or_else(|| "sluice-test".into()),
                _lifeline: None,
                _data: None,
                _container: None,
            });
        }
        let bin = find_bin("S3S_FS_BIN", ".ci-cache/s3s/bin/s3s-fs", "s3s-fs")?;
        let data = tempfile::Builder::new()
            .prefix("sluice-s3s-")
            .tempdir()
            .expect("create the s3s-fs data directory");
        // A top-level directory of the data root is a bucket; the log sits beside the root.
        let bucket = "sluice-test".to_string();
        let root = data.path().join("root");
        std::fs::create_dir_all(root.join(&bucket)).expect("create the bucket directory");
        let port = free_port();
        let (access_key, secret_key) = (
            "sluice-test-key".to_string(),
            "sluice-test-secret".to_string(),
        );
        let args: Vec<String> = vec![
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "--access-key".into(),
            access_key.clone(),
            "--secret-key".into(),
            secret_key.clone(),
            root.display().to_string(),
        ];
        let (mut child, stdin) = start_with_lifeline(&bin, &args, &data.path().join("s3s.log"));
        wait_listening(port, &mut child, "s3s-fs");
        Some(S3Server {
            kind: Kind::S3sFs,
            endpoint: format!("http://127.0.0.1:{port}"),
            access_key,
            secret_key,
            bucket,
            _lifeline: Some((child, stdin)),
            _data: Some(data),
            _container: None,
        })
    });
    match server {
        Some(s) => Some(s),
        None => skip(
            "s3s-fs not found (set SLUICE_S3_ENDPOINT, or install it: cargo install s3s-fs@0.14.1 --locked --features binary --root .ci-cache/s3s)",
        ),
    }
}

/// moto's server: from the environment, else started here, else `None` after printing why.
pub fn moto_or_skip() -> Option<&'static S3Server> {
    static SERVER: OnceLock<Option<S3Server>> = OnceLock::new();
    let server = SERVER.get_or_init(|| {
        let bucket = env("SLUICE_MOTO_BUCKET").unwrap_or_else(|| "sluice-moto".into());
        let (endpoint, lifeline, data) = match env("SLUICE_MOTO_ENDPOINT") {
            Some(endpoint) => (endpoint, None, None),
            None => {
                let bin = find_bin(
                    "MOTO_SERVER_BIN",
                    ".ci-cache/venv/bin/moto_server",
                    "moto_server",
                )?;
                let data = tempfile::Builder::new()
                    .prefix("sluice-moto-")
                    .tempdir()
                    .expect("create a directory for the moto log");
                let port = free_port();
                let args = vec![
                    "-H".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    port.to_string(),
                ];
                let (mut child, stdin) =
                    start_with_lifeline(&bin, &args, &data.path().join("moto.log"));
                wait_listening(port, &mut child, "moto_server");
                (
                    format!("http://127.0.0.1:{port}"),
                    Some((child, stdin)),
                    Some(data),
                )
            }
        };
        // moto keeps buckets in memory and checks no signature: create ours with a bare PUT.
        create_bucket_unsigned(&endpoint, &bucket);
        Some(S3Server {
            kind: Kind::Moto,
            endpoint,
            access_key: "moto-key".into(),
            secret_key: "moto-secret".into(),
            bucket,
            _lifeline: lifeline,
            _data: data,
            _container: None,
        })
    });
    match server {
        Some(s) => Some(s),
        None => skip(
            "moto_server not found (set SLUICE_MOTO_ENDPOINT, or pip install 'moto[server]' into .ci-cache/venv)",
        ),
    }
}

/// `PUT /bucket` without a signature (moto accepts it; an existing bucket answers 200 or 409).
fn create_bucket_unsigned(endpoint: &str, bucket: &str) {
    let host = endpoint.trim_start_matches("http://");
    let mut stream =
        TcpStream::connect(host).unwrap_or_else(|e| panic!("connect to {endpoint}: {e}"));
    stream
        .set_read_timeout(Some(WAIT_MAX))
        .expect("set a read timeout");
    write!(
        stream,
        "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("send PUT bucket");
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    let status = reply.split_whitespace().nth(1).unwrap_or("");
    assert!(
        status == "200" || status == "409",
        "creating bucket {bucket} on {endpoint} failed: {}",
        reply.lines().next().unwrap_or("")
    );
}

// ---- running sluice against a server ----

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Every LTX file in the replica at `path`, through a new client (so timestamps come from the
/// objects' metadata, not from a cache of our own uploads).
pub fn s3_files(server: &S3Server, path: &str) -> Vec<FileInfo> {
    let replica = server.store(path);
    runtime()
        .block_on(replica.list_all())
        .unwrap_or_else(|e| panic!("list {path}: {e}"))
}

pub fn s3_max_txid(server: &S3Server, path: &str) -> u64 {
    server.max_txid(path)
}

/// Waits until the replica's newest TXID is above `above` and stays put for a while.
pub fn wait_settled(server: &impl Remote, path: &str, above: u64) -> u64 {
    let started = Instant::now();
    let (mut last, mut unchanged) = (server.max_txid(path), 0);
    loop {
        std::thread::sleep(SETTLE_SPACING);
        let now = server.max_txid(path);
        if now == last && now > above {
            unchanged += 1;
            if unchanged >= SETTLE_POLLS {
                return now;
            }
        } else {
            (last, unchanged) = (now, 0);
        }
        assert!(
            started.elapsed() < WAIT_MAX,
            "replica {path} did not settle above TXID {above:016x} (now {now:016x})"
        );
    }
}

/// `sluice` with the server's keys in the environment and nothing else that could steer it.
pub fn sluice(server: &impl Remote, dir: &Path) -> Command {
    let mut cmd = Command::new(super::sluice_bin());
    cmd.current_dir(dir)
        .envs(server.sluice_env())
        .env_remove("SLUICE_CONFIG")
        .env_remove("LITESTREAM_CONFIG")
        .env_remove("LITESTREAM_S3_ENDPOINT")
        .env_remove("AWS_CA_BUNDLE")
        .stdin(Stdio::null());
    cmd
}

pub fn output(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run sluice");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A background process stopped with SIGTERM (final sync) or killed when dropped.
pub struct Running {
    pub child: Child,
    log: std::path::PathBuf,
}

impl Running {
    pub fn start(mut cmd: Command, log: &Path) -> Running {
        let file = std::fs::File::create(log).expect("create a log");
        let child = cmd
            .stdout(file.try_clone().expect("clone log"))
            .stderr(file)
            .spawn()
            .expect("start a process");
        Running {
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("process exited early ({status}); log:\n{}", self.log());
        }
    }

    /// SIGTERM, then waits; returns the log. Panics if it exits non-zero.
    pub fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let started = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            assert!(
                started.elapsed() < WAIT_MAX,
                "no exit after SIGTERM; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let log = self.log();
        assert!(status.success(), "exited with {status}; log:\n{log}");
        log
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn open_wal(db: &Path) -> Connection {
    let c = Connection::open(db).expect("open the database");
    c.pragma_update(None, "journal_mode", "WAL")
        .expect("WAL mode");
    c.execute_batch("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB)")
        .expect("create table");
    c
}

/// `commits` transactions of a few rows of assorted sizes, with some updates and deletes.
pub fn write(c: &Connection, commits: u32, salt: u32) {
    for i in 0..commits {
        let tx = c.unchecked_transaction().expect("begin");
        for j in 0..5u32 {
            let size = [10usize, 300, 3000, 9000][((i + j + salt) % 4) as usize];
            let byte = ((i * 7 + j + salt) % 251) as u8;
            tx.execute("INSERT INTO t (v) VALUES (?1)", [vec![byte; size]])
                .expect("insert");
        }
        if i % 3 == 0 {
            tx.execute("UPDATE t SET v = x'00ff' WHERE id % 7 = ?1", [i % 7])
                .expect("update");
            tx.execute("DELETE FROM t WHERE id % 11 = ?1", [i % 11])
                .expect("delete");
        }
        tx.commit().expect("commit");
    }
}

pub fn page_size(c: &Connection) -> u32 {
    c.query_row("PRAGMA page_size", [], |r| r.get(0))
        .expect("page size")
}

pub fn start_replicate(
    server: &impl Remote,
    dir: &Path,
    db: &Path,
    url: &str,
    log: &Path,
) -> Running {
    let mut cmd = sluice(server, dir);
    cmd.env("SLUICE_LOG", "info")
        .arg("replicate")
        .arg(db)
        .arg(url);
    Running::start(cmd, log)
}

pub fn wait_upload(server: &impl Remote, path: &str, above: u64, proc: &mut Running) {
    let started = Instant::now();
    while server.max_txid(path) <= above {
        proc.assert_running();
        assert!(started.elapsed() < WAIT_MAX, "no upload:\n{}", proc.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// MinIO through testcontainers where Docker answers (feature `minio`), else `None` after
/// printing why. This is the design's reference setup for users with Docker; CI here has no
/// Docker engine and uses s3s-fs and moto instead.
#[cfg(feature = "minio")]
pub fn minio_or_skip() -> Option<&'static S3Server> {
    use testcontainers_modules::minio::MinIO;
    use testcontainers_modules::testcontainers::core::ExecCommand;
    use testcontainers_modules::testcontainers::runners::SyncRunner;
    static SERVER: OnceLock<Option<S3Server>> = OnceLock::new();
    let server = SERVER.get_or_init(|| {
        let docker = std::process::Command::new("docker")
            .arg("info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !docker {
            return None;
        }
        let container = MinIO::default().start().expect("start the MinIO container");
        let port = container.get_host_port_ipv4(9000).expect("MinIO's API port");
        let bucket = "sluice-test".to_string();
        // The server image carries `mc`; a bucket is made through it (no unsigned PUT on MinIO).
        let mb = format!(
            "mc alias set local http://127.0.0.1:9000 minioadmin minioadmin && mc mb --ignore-existing local/{bucket}"
        );
        container
            .exec(ExecCommand::new(["sh", "-c", mb.as_str()]))
            .expect("create the bucket in MinIO");
        Some(S3Server {
            kind: Kind::Minio,
            endpoint: format!("http://127.0.0.1:{port}"),
            access_key: "minioadmin".into(),
            secret_key: "minioadmin".into(),
            bucket,
            _lifeline: None,
            _data: None,
            _container: Some(Box::new(container)),
        })
    });
    match server {
        Some(s) => Some(s),
        // Docker is optional by design: never a failure, even with SLUICE_REQUIRE_PEERS.
        None => {
            println!(
                "skipping: Docker does not answer, so MinIO through testcontainers is skipped"
            );
            None
        }
    }
}
