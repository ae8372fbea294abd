//! The object-store conformance cases, one function over a [`Backend`] each, shared by
//! `core/tests/store_conformance.rs` (every production backend and wrapper) and the simulator's
//! `sim/tests/faulty_conformance.rs` (its `FaultyStore`, healed). Included by path; the
//! `backend_tests!` macro instantiates every case for a backend constructor of the includer.

use futures::StreamExt;
use sluice_core::store::{DynStore, ObjectStore, PutMode, PutOptions, StoreErrorKind};

/// More than one S3 ListObjectsV2 page (1,000 keys).
const PAGING_KEYS: usize = 1_005;
/// Concurrent puts while filling a store, and concurrent racers for one key.
const PUTS_IN_FLIGHT_MAX: usize = 32;
const RACERS: usize = 8;

pub struct Backend {
    pub store: DynStore,
    /// `PutMode::Create` is atomic against concurrent creates.
    pub atomic_create: bool,
    /// Opens a second, independent client on the same data (no shared caches), if the store
    /// has such a thing.
    pub reopen: Option<Box<dyn Fn() -> DynStore + Send + Sync>>,
    pub _dir: Option<tempfile::TempDir>,
    /// Whatever must live as long as the backend (the simulator's run).
    pub _guard: Option<Box<dyn std::any::Any>>,
}

/// `ms` as the store keeps it (rounded down to its timestamp resolution: seconds on SFTP).
pub fn kept(s: &dyn ObjectStore, ms: i64) -> i64 {
    let r = s.timestamp_resolution_ms().max(1);
    ms.div_euclid(r) * r
}

pub fn at(timestamp_ms: i64) -> PutOptions {
    PutOptions {
        timestamp_ms,
        ..PutOptions::default()
    }
}

pub fn create(timestamp_ms: i64) -> PutOptions {
    PutOptions {
        mode: PutMode::Create,
        timestamp_ms,
    }
}

pub async fn get_all(store: &dyn ObjectStore, key: &str) -> Vec<u8> {
    store
        .get_range(key, 0, u64::MAX / 2)
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e}"))
}

/// A spooled body held in memory, whose reads fail from `fail_at` on (an interrupted
/// upload: the spool's disk failed, or the process is going down).
pub struct Body {
    bytes: Vec<u8>,
    fail_at: Option<u64>,
}

impl sluice_core::scratch::ScratchFile for Body {
    fn name(&self) -> &std::path::Path {
        std::path::Path::new("memory:body")
    }
    fn write_at(&self, _: &[u8], _: u64) -> std::io::Result<()> {
        Err(std::io::Error::other("read-only"))
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        if self
            .fail_at
            .is_some_and(|at| offset + buf.len() as u64 > at)
        {
            return Err(std::io::Error::other("injected read failure"));
        }
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.bytes.len());
        let n = buf.len().min(self.bytes.len() - start);
        buf[..n].copy_from_slice(&self.bytes[start..start + n]);
        Ok(n)
    }
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.bytes.len() as u64)
    }
}

/// 17 MiB: above the size S3 uploads a spooled body with one PUT, so a multipart upload.
fn spooled_bytes(seed: u32) -> Vec<u8> {
    (0..(17u32 << 20))
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

// ---- the cases ----

pub async fn spooled_puts_round_trip_and_create_refuses_an_existing_key(b: &Backend) {
    let s = &*b.store;
    let body = Body {
        bytes: spooled_bytes(1),
        fail_at: None,
    };
    s.put_spooled("spool/a.ltx", &body, at(1_700_000_000_123))
        .await
        .expect("spooled put");
    assert!(
        get_all(s, "spool/a.ltx").await == body.bytes,
        "spooled object differs"
    );
    let listed = s.list("spool/").await.expect("list");
    assert_eq!(
        listed
            .iter()
            .map(|m| (m.key.as_str(), m.size, m.timestamp_ms))
            .collect::<Vec<_>>(),
        [(
            "spool/a.ltx",
            body.bytes.len() as u64,
            kept(s, 1_700_000_000_123)
        )]
    );
    let other = Body {
        bytes: spooled_bytes(2),
        fail_at: None,
    };
    let err = s
        .put_spooled("spool/a.ltx", &other, create(5))
        .await
        .expect_err("a spooled create must refuse an existing key");
    assert_eq!(err.kind, StoreErrorKind::AlreadyExists, "{err}");
    assert!(
        get_all(s, "spool/a.ltx").await == body.bytes,
        "the refused create replaced it"
    );
    s.put_spooled("spool/b.ltx", &other, create(6))
        .await
        .expect("a spooled create of a new key");
    assert!(get_all(s, "spool/b.ltx").await == other.bytes);
}

pub async fn an_interrupted_spooled_put_leaves_nothing(b: &Backend) {
    let s = &*b.store;
    for (key, fail_at) in [("cut/early.ltx", 1u64 << 20), ("cut/late.ltx", 16 << 20)] {
        let body = Body {
            bytes: spooled_bytes(3),
            fail_at: Some(fail_at),
        };
        s.put_spooled(key, &body, at(7))
            .await
            .expect_err("a body that cannot be read must fail the put");
        let err = s.head(key).await.expect_err("nothing may be left");
        assert_eq!(err.kind, StoreErrorKind::NotFound, "{key}: {err}");
    }
    assert_eq!(s.list("cut/").await.expect("list"), Vec::new());
    // Over an existing object: the old one stays whole.
    s.put("cut/kept.ltx", b"old".to_vec(), at(1))
        .await
        .expect("put");
    let body = Body {
        bytes: spooled_bytes(4),
        fail_at: Some(8 << 20),
    };
    s.put_spooled("cut/kept.ltx", &body, at(2))
        .await
        .expect_err("interrupted");
    assert_eq!(get_all(s, "cut/kept.ltx").await, b"old");
}

pub async fn put_then_get_returns_the_bytes(b: &Backend) {
    let s = &*b.store;
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    s.put("0000/a.ltx", body.clone(), at(1_700_000_000_123))
        .await
        .expect("put");
    assert_eq!(get_all(s, "0000/a.ltx").await, body);
    let meta = s.head("0000/a.ltx").await.expect("head");
    assert_eq!(meta.key, "0000/a.ltx");
    assert_eq!(meta.size, body.len() as u64);
    // Overwrite replaces the whole object, timestamp included.
    s.put("0000/a.ltx", b"short".to_vec(), at(1_700_000_000_456))
        .await
        .expect("overwrite");
    assert_eq!(get_all(s, "0000/a.ltx").await, b"short");
    assert_eq!(s.head("0000/a.ltx").await.expect("head").size, 5);
    // An empty object is an object.
    s.put("0000/empty", Vec::new(), at(1))
        .await
        .expect("put empty");
    assert_eq!(get_all(s, "0000/empty").await, b"");
}

pub async fn large_objects_round_trip(b: &Backend) {
    // 12.5 MiB: three parts where uploads split above 6 MiB (the S3 backends here).
    let s = &*b.store;
    let body: Vec<u8> = (0..(25u32 << 19))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    s.put("big/snapshot.ltx", body.clone(), at(1_700_000_000_777))
        .await
        .expect("put a large object");
    assert!(
        get_all(s, "big/snapshot.ltx").await == body,
        "large object differs"
    );
    let tail = s
        .get_range("big/snapshot.ltx", body.len() as u64 - 100, 1_000)
        .await
        .expect("read the tail");
    assert_eq!(tail, body[body.len() - 100..]);
    let listed = s.list("big/").await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].size, listed[0].timestamp_ms),
        (body.len() as u64, kept(s, 1_700_000_000_777))
    );
    if let Some(reopen) = &b.reopen {
        let fresh = reopen();
        assert_eq!(
            fresh
                .head("big/snapshot.ltx")
                .await
                .expect("head")
                .timestamp_ms,
            kept(s, 1_700_000_000_777),
            "the metadata must survive a multipart upload"
        );
    }
}

pub async fn ranges_return_exactly_the_bytes_asked_or_fewer_at_the_end(b: &Backend) {
    let s = &*b.store;
    let body: Vec<u8> = (0..1000u32).map(|i| (i % 256) as u8).collect();
    s.put("r/obj", body.clone(), at(5)).await.expect("put");
    let cases: [(u64, u64, std::ops::Range<usize>); 6] = [
        (0, 100, 0..100),
        (100, 1, 100..101),
        (900, 100, 900..1000),
        // Past the end: fewer bytes, only at the end.
        (950, 100, 950..1000),
        (1000, 10, 1000..1000),
        (5000, 10, 1000..1000),
    ];
    for (offset, len, want) in cases {
        let got = s
            .get_range("r/obj", offset, len)
            .await
            .unwrap_or_else(|e| panic!("get_range({offset}, {len}): {e}"));
        assert_eq!(got, body[want.clone()], "get_range({offset}, {len})");
    }
    assert_eq!(s.get_range("r/obj", 10, 0).await.expect("empty range"), b"");
}

pub async fn missing_objects_are_not_found(b: &Backend) {
    let s = &*b.store;
    let err = s.get_range("nope/x", 0, 10).await.expect_err("get missing");
    assert_eq!(err.kind, StoreErrorKind::NotFound, "{err}");
    let err = s.head("nope/x").await.expect_err("head missing");
    assert_eq!(err.kind, StoreErrorKind::NotFound, "{err}");
    assert!(s.list("nope/").await.expect("list missing").is_empty());
}

pub async fn list_filters_by_prefix_in_key_order_with_timestamps(b: &Backend) {
    let s = &*b.store;
    let keys = [
        ("0001/b.ltx", 3),
        ("0000/b.ltx", 2),
        ("0000/a.ltx", 1),
        ("00000/c.ltx", 4),
        ("ltx/0/d.ltx", 5),
    ];
    for (k, ts) in keys {
        // Seconds apart, so that every store keeps them apart.
        s.put(k, k.as_bytes().to_vec(), at(1_700_000_000_000 + ts * 1000))
            .await
            .expect("put");
    }
    let names = |v: Vec<sluice_core::store::ObjectMeta>| {
        v.into_iter()
            .map(|m| (m.key, m.size, (m.timestamp_ms - 1_700_000_000_000) / 1000))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(s.list("0000/").await.expect("list")),
        vec![("0000/a.ltx".into(), 10, 1), ("0000/b.ltx".into(), 10, 2)]
    );
    // A prefix that ends inside a path segment.
    assert_eq!(
        names(s.list("0000").await.expect("list"))
            .into_iter()
            .map(|(k, ..)| k)
            .collect::<Vec<String>>(),
        ["0000/a.ltx", "0000/b.ltx", "00000/c.ltx"]
    );
    let all: Vec<String> = s
        .list("")
        .await
        .expect("list all")
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(
        all,
        [
            "0000/a.ltx",
            "0000/b.ltx",
            "00000/c.ltx",
            "0001/b.ltx",
            "ltx/0/d.ltx"
        ]
    );
}

/// `list_untimed` is `list` without the promise about timestamps: the same keys in the same
/// order with the same sizes, also from a new client (which has cached no timestamps).
pub async fn list_untimed_lists_what_list_does(b: &Backend) {
    let s = &*b.store;
    for (i, k) in ["u/0000/a.ltx", "u/0000/b.ltx", "u/0001/c.ltx", "u/x"]
        .iter()
        .enumerate()
    {
        s.put(k, vec![7; i + 1], at(1_650_000_000_000))
            .await
            .expect("put");
    }
    let shape = |v: Vec<sluice_core::store::ObjectMeta>| {
        v.into_iter().map(|m| (m.key, m.size)).collect::<Vec<_>>()
    };
    for prefix in ["u/", "u/0000/", "u/0000", "nope/"] {
        assert_eq!(
            shape(s.list_untimed(prefix).await.expect("list_untimed")),
            shape(s.list(prefix).await.expect("list")),
            "prefix {prefix:?}"
        );
    }
    if let Some(reopen) = &b.reopen {
        let fresh = reopen();
        assert_eq!(
            shape(fresh.list_untimed("u/").await.expect("list_untimed")),
            shape(s.list("u/").await.expect("list")),
        );
    }
    assert_eq!(s.list_untimed("u/").await.expect("list_untimed").len(), 4);
}

pub async fn timestamps_survive_a_new_client(b: &Backend) {
    let Some(reopen) = &b.reopen else { return };
    let s = &*b.store;
    for (k, ts) in [("t/a", 1_600_000_000_001i64), ("t/b", 1_600_000_000_999)] {
        s.put(k, vec![1, 2, 3], at(ts)).await.expect("put");
    }
    let fresh = reopen();
    let listed: Vec<(String, i64)> = fresh
        .list("t/")
        .await
        .expect("list")
        .into_iter()
        .map(|m| (m.key, m.timestamp_ms))
        .collect();
    assert_eq!(
        listed,
        [
            ("t/a".to_string(), kept(s, 1_600_000_000_001)),
            ("t/b".to_string(), kept(s, 1_600_000_000_999))
        ]
    );
    assert_eq!(
        fresh.head("t/b").await.expect("head").timestamp_ms,
        kept(s, 1_600_000_000_999)
    );
}

pub async fn list_pages_past_1000_keys(b: &Backend) {
    let s = b.store.clone();
    let keys: Vec<String> = (0..PAGING_KEYS).map(|i| format!("many/{i:05}")).collect();
    futures::stream::iter(keys.clone())
        .map(|k| {
            let s = s.clone();
            async move {
                s.put(&k, k.as_bytes().to_vec(), at(42))
                    .await
                    .unwrap_or_else(|e| panic!("put {k}: {e}"))
            }
        })
        .buffer_unordered(PUTS_IN_FLIGHT_MAX)
        .collect::<Vec<()>>()
        .await;
    let listed = s.list("many/").await.expect("list");
    assert_eq!(listed.len(), PAGING_KEYS);
    assert!(listed.iter().map(|m| &m.key).eq(keys.iter()));
    assert!(
        listed
            .iter()
            .all(|m| m.size == 10 && m.timestamp_ms == kept(&*s, 42))
    );
}

pub async fn delete_is_idempotent(b: &Backend) {
    let s = &*b.store;
    s.put("d/x", vec![7; 10], at(1)).await.expect("put");
    s.delete("d/x").await.expect("delete");
    s.delete("d/x").await.expect("delete again");
    s.delete("d/never")
        .await
        .expect("delete a key that never existed");
    let err = s.get_range("d/x", 0, 10).await.expect_err("deleted");
    assert_eq!(err.kind, StoreErrorKind::NotFound, "{err}");
    assert!(s.list("d/").await.expect("list").is_empty());
}

pub async fn create_refuses_an_existing_key(b: &Backend) {
    let s = &*b.store;
    s.put("c/lease", b"first".to_vec(), create(1))
        .await
        .expect("create a new key");
    let err = s
        .put("c/lease", b"second".to_vec(), create(2))
        .await
        .expect_err("create an existing key");
    assert_eq!(err.kind, StoreErrorKind::AlreadyExists, "{err}");
    assert_eq!(get_all(s, "c/lease").await, b"first");
    // Overwrite still works over it.
    s.put("c/lease", b"third".to_vec(), at(3))
        .await
        .expect("overwrite");
    assert_eq!(get_all(s, "c/lease").await, b"third");
}

pub async fn racing_creates_have_exactly_one_winner(b: &Backend) {
    if !b.atomic_create {
        println!("skipping: this backend's conditional put is not atomic");
        return;
    }
    for round in 0..5 {
        let key = format!("race/{round}");
        let results = futures::future::join_all((0..RACERS).map(|i| {
            let s = b.store.clone();
            let key = key.clone();
            async move {
                // Each racer on its own task, so they really overlap.
                tokio::spawn(async move {
                    let body = format!("racer {i}").into_bytes();
                    (i, s.put(&key, body, create(i as i64)).await)
                })
                .await
                .expect("racer task")
            }
        }))
        .await;
        let winners: Vec<usize> = results
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        for (i, r) in &results {
            if let Err(e) = r {
                assert_eq!(e.kind, StoreErrorKind::AlreadyExists, "racer {i}: {e}");
            }
        }
        assert_eq!(
            get_all(&*b.store, &key).await,
            format!("racer {}", winners[0]).into_bytes()
        );
    }
}

pub async fn conditional_replace_detects_a_change(b: &Backend) {
    let s = &*b.store;
    if !s.supports_conditional_writes() {
        let err = s.get_versioned("v/x").await.expect_err("unsupported");
        assert_eq!(err.kind, StoreErrorKind::Permanent, "{err}");
        return;
    }
    s.put("v/lease", b"one".to_vec(), create(1))
        .await
        .expect("create");
    let (body, v1) = s.get_versioned("v/lease").await.expect("read");
    assert_eq!(body, b"one");
    let v2 = s
        .put_if_version("v/lease", b"two".to_vec(), 2, &v1)
        .await
        .expect("replace at the version read");
    assert_ne!(v1, v2, "a write must change the version");
    assert_eq!(
        s.get_versioned("v/lease").await.expect("read"),
        (b"two".to_vec(), v2.clone())
    );
    let err = s
        .put_if_version("v/lease", b"three".to_vec(), 3, &v1)
        .await
        .expect_err("a stale version must lose");
    assert_eq!(err.kind, StoreErrorKind::Precondition, "{err}");
    assert_eq!(get_all(s, "v/lease").await, b"two");
    let err = s
        .put_if_version("v/gone", b"x".to_vec(), 4, &v2)
        .await
        .expect_err("a missing object has no version");
    assert_eq!(err.kind, StoreErrorKind::Precondition, "{err}");
    let err = s.get_versioned("v/gone").await.expect_err("missing");
    assert_eq!(err.kind, StoreErrorKind::NotFound, "{err}");
}

pub async fn racing_replaces_have_exactly_one_winner(b: &Backend) {
    if !b.atomic_create || !b.store.supports_conditional_writes() {
        println!("skipping: this backend's conditional put is not atomic");
        return;
    }
    for round in 0..5 {
        let key = format!("swap/{round}");
        b.store
            .put(&key, b"start".to_vec(), create(0))
            .await
            .expect("create");
        let (_, version) = b.store.get_versioned(&key).await.expect("read");
        let results = futures::future::join_all((0..RACERS).map(|i| {
            let (s, key, version) = (b.store.clone(), key.clone(), version.clone());
            async move {
                tokio::spawn(async move {
                    let body = format!("racer {i}").into_bytes();
                    (i, s.put_if_version(&key, body, i as i64, &version).await)
                })
                .await
                .expect("racer task")
            }
        }))
        .await;
        let winners: Vec<usize> = results
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        for (i, r) in &results {
            if let Err(e) = r {
                assert_eq!(e.kind, StoreErrorKind::Precondition, "racer {i}: {e}");
            }
        }
        assert_eq!(
            get_all(&*b.store, &key).await,
            format!("racer {}", winners[0]).into_bytes()
        );
    }
}

pub async fn copies_keep_the_bytes_and_the_timestamp(b: &Backend) {
    let s = &*b.store;
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    s.put("cp/0000/a.ltx", body.clone(), at(1_700_000_000_321))
        .await
        .expect("put");
    match s
        .copy("cp/0000/a.ltx", "cp/0001/a.ltx", PutMode::Overwrite)
        .await
    {
        Err(e) if e.kind == StoreErrorKind::Unsupported => {
            println!("skipping: this backend has no server-side copy ({e})");
            assert!(s.list("cp/0001/").await.expect("list").is_empty());
            return;
        }
        r => r.expect("copy"),
    }
    assert!(get_all(s, "cp/0001/a.ltx").await == body, "copy differs");
    let listed = s.list("cp/0001/").await.expect("list");
    assert_eq!(
        (listed.len(), listed[0].size, listed[0].timestamp_ms),
        (1, body.len() as u64, kept(s, 1_700_000_000_321)),
        "the copy is listed with the source's size and timestamp"
    );
    if let Some(reopen) = &b.reopen {
        let fresh = reopen();
        let meta = fresh.head("cp/0001/a.ltx").await.expect("head");
        assert_eq!(
            meta.timestamp_ms,
            kept(s, 1_700_000_000_321),
            "the timestamp is the object's, not a client's cache"
        );
    }
    // The copy outlives its source, and an Overwrite copy replaces a target whole.
    s.delete("cp/0000/a.ltx").await.expect("delete the source");
    assert!(get_all(s, "cp/0001/a.ltx").await == body, "copy lost");
    s.put("cp/0001/b.ltx", b"old".to_vec(), at(5))
        .await
        .expect("put");
    s.copy("cp/0001/a.ltx", "cp/0001/b.ltx", PutMode::Overwrite)
        .await
        .expect("copy over an existing key");
    assert!(get_all(s, "cp/0001/b.ltx").await == body, "not replaced");
    // Create refuses an existing key where the store can copy conditionally.
    s.put("cp/0001/c.ltx", b"kept".to_vec(), at(6))
        .await
        .expect("put");
    match s
        .copy("cp/0001/a.ltx", "cp/0001/c.ltx", PutMode::Create)
        .await
    {
        Err(e) if e.kind == StoreErrorKind::AlreadyExists => {}
        Err(e) if e.kind == StoreErrorKind::Unsupported => {
            println!("no conditional copy here ({e})");
        }
        other => panic!("a Create copy over an existing key: {other:?}"),
    }
    assert_eq!(get_all(s, "cp/0001/c.ltx").await, b"kept");
    // A missing source writes nothing.
    let err = s
        .copy("cp/0000/never.ltx", "cp/0001/never.ltx", PutMode::Overwrite)
        .await
        .expect_err("copy of a missing object");
    assert_eq!(err.kind, StoreErrorKind::NotFound, "{err}");
    let keys: Vec<String> = s
        .list("cp/")
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, ["cp/0001/a.ltx", "cp/0001/b.ltx", "cp/0001/c.ltx"]);
}

pub async fn invalid_keys_are_refused(b: &Backend) {
    let s = &*b.store;
    for key in ["", "/abs", "a//b", "../up", "a/./b", "a/.."] {
        let err = s
            .put(key, vec![1], at(1))
            .await
            .expect_err("invalid key accepted");
        assert_eq!(err.kind, StoreErrorKind::Permanent, "{key:?}: {err}");
    }
}

#[macro_export]
macro_rules! backend_tests {
    ($backend:ident) => {
        mod $backend {
            backend_tests!(@cases $backend:
                put_then_get_returns_the_bytes,
                large_objects_round_trip,
                spooled_puts_round_trip_and_create_refuses_an_existing_key,
                an_interrupted_spooled_put_leaves_nothing,
                ranges_return_exactly_the_bytes_asked_or_fewer_at_the_end,
                missing_objects_are_not_found,
                list_filters_by_prefix_in_key_order_with_timestamps,
                list_untimed_lists_what_list_does,
                timestamps_survive_a_new_client,
                list_pages_past_1000_keys,
                delete_is_idempotent,
                create_refuses_an_existing_key,
                racing_creates_have_exactly_one_winner,
                conditional_replace_detects_a_change,
                racing_replaces_have_exactly_one_winner,
                invalid_keys_are_refused,
                copies_keep_the_bytes_and_the_timestamp,
            );
        }
    };
    (@cases $backend:ident: $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let Some(b) = super::$backend() else { return };
                super::cases::$case(&b).await;
            }
        )*
    };
}
