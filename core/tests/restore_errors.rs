//! `sluice restore` on bad input, and on replicas sluice's own writer format produces.
//!
//! The replicas here are built without Litestream (see [`build_replica`]), so these tests run
//! everywhere. Every failure case checks three things: the exit code, a stderr message that
//! names the file or flag at fault, and that nothing was left at the output path (no database,
//! no `.tmp`, no scratch directory).
//!
//! Not checked here: damage inside a Litestream-written replica (Litestream files carry no
//! database checksums, so only the file checksum protects them; the LTX codec's own unit tests
//! flip every bit of a file), and S3 replicas.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rusqlite::{Connection, params};
use sluice_core::checksum::{DbChecksum, lock_pgno};
use sluice_core::ltx::{Encoder, ExtChecksums, HEADER_FLAG_NO_CHECKSUM, Header};
use sluice_core::replica::{Layout, SNAPSHOT_LEVEL};

use common::{
    Workspace, assert_integrity_ok, assert_same_file, checkpoint_truncate, dir_entries, file_url,
    litestream_or_skip, run_litestream, run_sluice,
};

/// The creation time of TXID 1's file; each later TXID is one second later.
const EPOCH_MS: i64 = 1_700_000_000_000;
const TXID_SPACING_MS: i64 = 1_000;

/// Whether and where LTX files carry database checksums (before and after applying). Where
/// they are present, each file continues the previous file's checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Checksums {
    /// As sluice writes them: the no-checksum flag, so Litestream restores the files, and the
    /// checksums in the header's reserved bytes (`SLCK pre post`).
    Sluice,
    /// In the standard LTX fields (pre-apply in the header, post-apply in the trailer), as
    /// superfly/ltx writes them with checksums on.
    Standard,
    /// As Litestream writes them: the no-checksum flag and no checksums anywhere.
    Absent,
}

/// A replica built file by file: a snapshot at level 9 for TXID 1, then one L0 file per
/// commit.
#[derive(Debug)]
struct Built {
    /// The replica root (holds `ltx/`).
    dir: PathBuf,
    /// `images[i]` is the source database file right after TXID `i + 1`.
    images: Vec<PathBuf>,
    page_size: u32,
}

impl Built {
    fn last_txid(&self) -> u64 {
        self.images.len() as u64
    }

    fn image(&self, txid: u64) -> &Path {
        &self.images[usize::try_from(txid - 1).expect("small TXID")]
    }

    /// Path of the file holding exactly `txid` at `level`.
    fn file(&self, level: u8, txid: u64) -> PathBuf {
        layout_path(&self.dir, level, txid, txid)
    }

    fn url(&self) -> String {
        file_url(&self.dir)
    }
}

fn layout_path(root: &Path, level: u8, min: u64, max: u64) -> PathBuf {
    Layout::File
        .key(level, min, max)
        .split('/')
        .fold(root.to_path_buf(), |p, part| p.join(part))
}

fn created_ms(txid: u64) -> i64 {
    EPOCH_MS + (txid as i64 - 1) * TXID_SPACING_MS
}

fn write_ltx(path: &Path, bytes: &[u8], created_ms: i64) {
    std::fs::create_dir_all(path.parent().expect("layout paths have a parent"))
        .expect("create a level directory");
    let f = std::fs::File::create(path).expect("create an LTX file");
    std::io::Write::write_all(&mut &f, bytes).expect("write an LTX file");
    // The file replica's creation time is the file's mtime, as with Litestream.
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_millis(created_ms as u64);
    f.set_modified(when).expect("set the LTX file's mtime");
}

/// Pages of a database image, numbered from 1, without the lock page.
fn pages(image: &[u8], page_size: u32) -> impl Iterator<Item = (u32, &[u8])> {
    let lock = lock_pgno(page_size);
    image
        .chunks(page_size as usize)
        .zip(1u32..)
        .map(|(page, pgno)| (pgno, page))
        .filter(move |&(pgno, _)| pgno != lock)
}

fn image_checksum(image: &[u8], page_size: u32) -> DbChecksum {
    DbChecksum::of_pages(pages(image, page_size), page_size)
}

/// Encodes one LTX file holding `txid`: every page of `image` for a snapshot (TXID 1),
/// otherwise the pages that differ from `prev`. `pre` and `post` are the database checksums
/// it records (where `checksums` says to record them).
fn encode(
    txid: u64,
    (image, post): (&[u8], DbChecksum),
    (prev, pre): (&[u8], DbChecksum),
    page_size: u32,
    checksums: Checksums,
) -> Vec<u8> {
    assert_eq!(image.len() % page_size as usize, 0, "image is whole pages");
    let snapshot = txid == 1;
    let standard = checksums == Checksums::Standard;
    let header = Header {
        flags: if standard { 0 } else { HEADER_FLAG_NO_CHECKSUM },
        page_size,
        commit: u32::try_from(image.len() / page_size as usize).expect("page count fits"),
        min_txid: txid,
        max_txid: txid,
        timestamp_ms: created_ms(txid),
        pre_apply_checksum: if standard && !snapshot { pre.raw() } else { 0 },
        ext: (checksums == Checksums::Sluice).then(|| ExtChecksums {
            pre: if snapshot { 0 } else { pre.raw() },
            post: post.raw(),
        }),
        ..Header::default()
    };
    let mut enc = Encoder::new(Vec::new(), header).expect("a valid header");
    let ps = page_size as usize;
    for (pgno, page) in pages(image, page_size) {
        let at = (pgno as usize - 1) * ps;
        if snapshot || prev.get(at..at + ps) != Some(page) {
            enc.encode_page(pgno, page).expect("encode a page");
        }
    }
    enc.finish(standard.then_some(post))
        .expect("finish the LTX file")
        .0
}

fn random_text(rng: &mut ChaCha8Rng, len_min: usize, len_max: usize) -> String {
    let len = rng.random_range(len_min..=len_max);
    (0..len)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect()
}

/// Writes `txids` transactions to a new database (TXID 1 creates the schema and first rows) and
/// a replica of it, one LTX file per transaction. A mass DELETE + VACUUM at TXID `txids / 2 + 1`
/// shrinks the database, and every third transaction stores a blob larger than a page.
fn build_replica(
    ws: &Workspace,
    name: &str,
    page_size: u32,
    txids: u64,
    seed: u64,
    checksums: Checksums,
) -> Built {
    let dir = ws.dir(&format!("{name}-replica"));
    let image_dir = ws.dir(&format!("{name}-images"));
    let src = ws.path(&format!("{name}-src.db"));
    let conn = Connection::open(&src).expect("open the source");
    conn.execute_batch(&format!(
        "PRAGMA page_size = {page_size};
         PRAGMA journal_mode = WAL;
         PRAGMA wal_autocheckpoint = 0;
         CREATE TABLE rows (id INTEGER PRIMARY KEY, k TEXT NOT NULL, v TEXT, b BLOB);
         CREATE INDEX rows_k ON rows (k);"
    ))
    .expect("create the schema");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut next_id = 1i64;
    let mut prev = Vec::new();
    let mut sum = DbChecksum::EMPTY;
    let mut images = Vec::new();
    for txid in 1..=txids {
        conn.execute_batch("BEGIN").expect("BEGIN");
        for _ in 0..40 {
            let k = format!("key-{next_id:06}-{}", random_text(&mut rng, 2, 8));
            let v = random_text(&mut rng, 10, 120);
            conn.execute(
                "INSERT INTO rows (id, k, v) VALUES (?1, ?2, ?3)",
                params![next_id, k, v],
            )
            .expect("insert");
            next_id += 1;
        }
        let id = rng.random_range(1..next_id);
        conn.execute(
            "UPDATE rows SET v = ?1 WHERE id = ?2",
            params![random_text(&mut rng, 5, 200), id],
        )
        .expect("update");
        if txid % 3 == 0 {
            let blob: Vec<u8> = (0..page_size * 3 / 2).map(|_| rng.random()).collect();
            conn.execute("UPDATE rows SET b = ?1 WHERE id = ?2", params![blob, id])
                .expect("blob");
        }
        let vacuum = txid == txids / 2 + 1;
        if vacuum {
            conn.execute("DELETE FROM rows WHERE id % 3 != 0", [])
                .expect("mass delete");
        }
        conn.execute_batch("COMMIT").expect("COMMIT");
        if vacuum {
            // VACUUM runs in its own transaction; both belong to this TXID.
            conn.execute_batch("VACUUM").expect("VACUUM");
        }
        checkpoint_truncate(&conn);
        let image = std::fs::read(&src).expect("read the source image");
        let post = image_checksum(&image, page_size);
        let bytes = encode(txid, (&image, post), (&prev, sum), page_size, checksums);
        let level = if txid == 1 { SNAPSHOT_LEVEL } else { 0 };
        write_ltx(
            &layout_path(&dir, level, txid, txid),
            &bytes,
            created_ms(txid),
        );
        let saved = image_dir.join(format!("{txid:016x}.db"));
        std::fs::write(&saved, &image).expect("save the source image");
        images.push(saved);
        sum = post;
        prev = image;
    }
    Built {
        dir,
        images,
        page_size,
    }
}

/// Runs `sluice restore <args> -o <out>/out.db` expecting failure: exit code 1, an `Error:`
/// line on stderr mentioning every string in `mentions`, and `out` left as it was. Returns
/// stderr.
fn restore_fails(args: &[&dyn AsRef<OsStr>], out: &Path, mentions: &[&str]) -> String {
    let before = dir_entries(out);
    let out_db = out.join("out.db");
    let mut all: Vec<&dyn AsRef<OsStr>> = vec![&"restore", &"-o", &out_db];
    all.extend_from_slice(args);
    let (code, stdout, stderr) = run_sluice(&all);
    // Shown with --nocapture, to review the wording.
    eprint!("sluice said: {stderr}");
    assert_eq!(
        code, 1,
        "expected failure, got exit {code}\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stderr.starts_with("Error: "),
        "stderr should start with 'Error: ': {stderr}"
    );
    for m in mentions {
        assert!(stderr.contains(m), "stderr should mention {m:?}: {stderr}");
    }
    assert_eq!(
        dir_entries(out),
        before,
        "a failed restore changed the output directory"
    );
    stderr
}

/// Restores `built` (with extra `args`) into `out/<name>` and returns the path.
fn restore_ok(built: &Built, out: &Path, name: &str, args: &[&dyn AsRef<OsStr>]) -> PathBuf {
    let out_db = out.join(name);
    let url = built.url();
    let mut all: Vec<&dyn AsRef<OsStr>> = vec![&"restore", &"-o", &out_db];
    all.extend_from_slice(args);
    all.push(&url);
    let (code, stdout, stderr) = run_sluice(&all);
    assert_eq!(
        code, 0,
        "restore failed\nstdout: {stdout}\nstderr: {stderr}"
    );
    out_db
}

fn flip_bit(path: &Path, offset: usize, bit: u8) {
    let mut bytes = std::fs::read(path).expect("read the file to damage");
    bytes[offset] ^= 1 << bit;
    std::fs::write(path, bytes).expect("write the damaged file");
}

/// Restores the latest state, every TXID and one timestamp of a built replica, and checks
/// each against the source image recorded at that TXID.
fn check_every_restore_point(checksums: Checksums) {
    let ws = Workspace::new("built-replica");
    for (page_size, seed) in [(4096, 11), (512, 12)] {
        let built = build_replica(&ws, &format!("p{page_size}"), page_size, 8, seed, checksums);
        let out = ws.dir(&format!("out-{page_size}"));

        let latest = restore_ok(&built, &out, "latest.db", &[&"-integrity-check", &"full"]);
        assert_same_file(
            built.image(built.last_txid()),
            &latest,
            page_size,
            "latest restore",
        );
        assert_integrity_ok(&latest);

        for txid in 1..=built.last_txid() {
            let hex = format!("{txid:016x}");
            let at = restore_ok(&built, &out, &format!("{hex}.db"), &[&"-txid", &hex]);
            assert_same_file(
                built.image(txid),
                &at,
                page_size,
                &format!("restore -txid {hex}"),
            );
        }

        // A timestamp just after TXID 5's file was created selects exactly TXIDs 1..=5.
        let ts = chrono::DateTime::from_timestamp_millis(created_ms(5) + 500)
            .expect("a valid time")
            .to_rfc3339();
        let at = restore_ok(&built, &out, "by-time.db", &[&"-timestamp", &ts]);
        assert_same_file(built.image(5), &at, page_size, "restore -timestamp");

        // With database checksums the result is verified end to end; the JSON report says so.
        let json_out = out.join("json.db");
        let (code, stdout, stderr) =
            run_sluice(&[&"restore", &"-json", &"-o", &json_out, &built.url()]);
        assert_eq!(code, 0, "{stderr}");
        let report: serde_json::Value =
            serde_json::from_str(stdout.trim()).expect("restore -json prints one JSON object");
        assert_eq!(
            report["checksum_verified"],
            checksums != Checksums::Absent,
            "{report}"
        );
        assert_eq!(report["files"], built.last_txid(), "{report}");
    }
}

// Regression, for both checksum forms: `restore::restore_to` used to create `<out>.tmp` with
// `File::create`, which opens it write-only. When the last file carried a post-apply checksum,
// `apply_plan` read the output back through `checksum_file` to verify it and got EBADF, so
// every restore of a checksummed replica failed with "<out>.tmp: Bad file descriptor (os
// error 9)". Restores of Litestream replicas passed because nothing read the output back.
#[test]
fn replica_with_sluice_checksums_restores_byte_identical_at_every_txid() {
    check_every_restore_point(Checksums::Sluice);
}

#[test]
fn replica_with_standard_checksums_restores_byte_identical_at_every_txid() {
    check_every_restore_point(Checksums::Standard);
}

#[test]
fn replica_without_database_checksums_restores_byte_identical_at_every_txid() {
    check_every_restore_point(Checksums::Absent);
}

/// sluice writes its checksums where Litestream does not look, so Litestream can restore a
/// sluice replica, latest and at a TXID, to the same bytes.
#[test]
fn litestream_restores_a_sluice_written_replica() {
    let Some(litestream) = litestream_or_skip() else {
        return;
    };
    let ws = Workspace::new("ls-reads-sluice");
    let built = build_replica(&ws, "a", 4096, 8, 13, Checksums::Sluice);
    let out = ws.dir("out");
    for (txid, name) in [(None, "latest.db"), (Some(3u64), "txid.db")] {
        let path = out.join(name);
        let hex = txid.map(|t| format!("{t:016x}"));
        let mut args: Vec<&dyn AsRef<OsStr>> = vec![&"restore", &"-o", &path];
        if let Some(hex) = &hex {
            args.extend([&"-txid" as &dyn AsRef<OsStr>, hex]);
        }
        let url = built.url();
        args.push(&url);
        let (code, _, stderr) = run_litestream(&litestream, &args);
        assert_eq!(code, 0, "litestream restore {name}: {stderr}");
        let expected = built.image(txid.unwrap_or(built.last_txid()));
        assert_same_file(expected, &path, built.page_size, name);
    }
}

#[test]
fn flipped_bit_in_snapshot_is_refused() {
    let ws = Workspace::new("flip-snapshot");
    let built = build_replica(&ws, "a", 4096, 4, 21, Checksums::Sluice);
    let snapshot = built.file(SNAPSHOT_LEVEL, 1);
    let len = std::fs::metadata(&snapshot).expect("stat").len() as usize;
    flip_bit(&snapshot, len / 2, 3);
    let out = ws.dir("out");
    restore_fails(
        &[&built.url()],
        &out,
        &["0000000000000001-0000000000000001.ltx"],
    );
}

#[test]
fn flipped_bit_in_l0_file_is_refused() {
    let ws = Workspace::new("flip-l0");
    let built = build_replica(&ws, "a", 4096, 6, 22, Checksums::Sluice);
    let l0 = built.file(0, 3);
    let len = std::fs::metadata(&l0).expect("stat").len() as usize;
    flip_bit(&l0, len / 2, 6);
    let out = ws.dir("out");
    restore_fails(
        &[&built.url()],
        &out,
        &["0000000000000003-0000000000000003.ltx"],
    );
    // A restore that stops before the damaged file still works.
    let fine = restore_ok(&built, &out, "fine.db", &[&"-txid", &"2"]);
    assert_same_file(
        built.image(2),
        &fine,
        built.page_size,
        "restore below the damage",
    );
}

#[test]
fn truncated_ltx_file_is_refused() {
    let ws = Workspace::new("truncated");
    let built = build_replica(&ws, "a", 4096, 6, 23, Checksums::Sluice);
    let l0 = built.file(0, 4);
    let bytes = std::fs::read(&l0).expect("read");
    std::fs::write(&l0, &bytes[..bytes.len() * 2 / 3]).expect("truncate");
    let out = ws.dir("out");
    restore_fails(
        &[&built.url()],
        &out,
        &["0000000000000004-0000000000000004.ltx"],
    );
    // A torn trailer alone (the last 5 bytes) is caught too.
    std::fs::write(&l0, &bytes[..bytes.len() - 5]).expect("truncate");
    restore_fails(
        &[&built.url()],
        &out,
        &["0000000000000004-0000000000000004.ltx"],
    );
}

#[test]
fn missing_file_in_the_chain_names_the_gap() {
    let ws = Workspace::new("gap");
    let built = build_replica(&ws, "a", 4096, 6, 24, Checksums::Sluice);
    std::fs::remove_file(built.file(0, 4)).expect("delete TXID 4");
    let out = ws.dir("out");
    restore_fails(
        &[&built.url()],
        &out,
        &["0000000000000004..=0000000000000004", "missing"],
    );
    restore_fails(
        &[&"-txid", &"6", &built.url()],
        &out,
        &["0000000000000004..=0000000000000004"],
    );
}

#[test]
fn file_from_a_database_of_another_page_size_is_refused() {
    let ws = Workspace::new("page-size");
    let built = build_replica(&ws, "big", 4096, 6, 25, Checksums::Sluice);
    let small = build_replica(&ws, "small", 512, 6, 25, Checksums::Sluice);
    std::fs::copy(small.file(0, 4), built.file(0, 4)).expect("swap in a 512-byte-page file");
    let out = ws.dir("out");
    restore_fails(
        &[&built.url()],
        &out,
        &["0000000000000004-0000000000000004.ltx", "page size 512"],
    );
}

#[test]
fn file_from_another_history_fails_the_pre_apply_checksum() {
    for (checksums, seed) in [(Checksums::Sluice, 26), (Checksums::Standard, 36)] {
        let ws = Workspace::new("history");
        let built = build_replica(&ws, "a", 4096, 6, seed, checksums);
        let other = build_replica(&ws, "b", 4096, 6, seed + 1, checksums);
        std::fs::copy(other.file(0, 5), built.file(0, 5)).expect("swap in a foreign file");
        let out = ws.dir("out");
        restore_fails(
            &[&built.url()],
            &out,
            &["0000000000000005-0000000000000005.ltx", "database checksum"],
        );
        // The history up to the foreign file is intact.
        let fine = restore_ok(&built, &out, "fine.db", &[&"-txid", &"4"]);
        assert_same_file(
            built.image(4),
            &fine,
            built.page_size,
            &format!("{checksums:?}: restore below the foreign file"),
        );
    }
}

/// The last file has no successor to check its post-apply checksum against, so only the
/// checksum recomputed over the restored database can catch a wrong one.
#[test]
fn wrong_post_apply_checksum_on_the_last_file_is_caught() {
    for (checksums, seed) in [(Checksums::Sluice, 40), (Checksums::Standard, 41)] {
        let ws = Workspace::new("post-apply");
        let built = build_replica(&ws, "a", 4096, 5, seed, checksums);
        let read = |txid| std::fs::read(built.image(txid)).expect("read a source image");
        let (prev, last) = (read(4), read(5));
        let pre = image_checksum(&prev, built.page_size);
        // Claim the database is unchanged: internally consistent, file checksum valid.
        let bytes = encode(5, (&last, pre), (&prev, pre), built.page_size, checksums);
        write_ltx(&built.file(0, 5), &bytes, created_ms(5));
        let out = ws.dir("out");
        restore_fails(&[&built.url()], &out, &["restored database", "checksum"]);
        let fine = restore_ok(&built, &out, "fine.db", &[&"-txid", &"4"]);
        assert_same_file(
            built.image(4),
            &fine,
            built.page_size,
            &format!("{checksums:?}: restore below the bad file"),
        );
    }
}

#[test]
fn empty_replica_fails_unless_if_replica_exists() {
    let ws = Workspace::new("empty");
    let replica = ws.dir("replica");
    std::fs::create_dir_all(replica.join("ltx").join("0")).expect("mkdir ltx/0");
    let out = ws.dir("out");
    let url = file_url(&replica);
    restore_fails(&[&url], &out, &[&url, "no backups"]);
    let out_db = out.join("out.db");
    let (code, _, stderr) = run_sluice(&[&"restore", &"-if-replica-exists", &"-o", &out_db, &url]);
    assert_eq!(code, 0, "-if-replica-exists on an empty replica: {stderr}");
    assert!(dir_entries(&out).is_empty(), "nothing is restored");
}

#[test]
fn missing_replica_fails() {
    let ws = Workspace::new("missing");
    let gone = ws.path("no-such-replica");
    let out = ws.dir("out");
    let url = file_url(&gone);
    restore_fails(&[&url], &out, &[&url]);
    // As a plain path the directory must exist.
    restore_fails(&[&gone], &out, &[&gone.display().to_string()]);
}

#[test]
fn existing_output_needs_force_and_force_replaces_it_and_its_wal() {
    let ws = Workspace::new("force");
    let built = build_replica(&ws, "a", 4096, 4, 28, Checksums::Sluice);
    let out = ws.dir("out");
    let out_db = out.join("out.db");
    std::fs::write(&out_db, b"precious").expect("write an existing output");
    restore_fails(
        &[&built.url()],
        &out,
        &[&out_db.display().to_string(), "-force"],
    );
    assert_eq!(std::fs::read(&out_db).expect("read"), b"precious");

    // A WAL beside the output would be replayed on top of the restored file: without -force
    // that is refused too, even when the database itself is absent.
    std::fs::remove_file(&out_db).expect("remove");
    let wal = out.join("out.db-wal");
    std::fs::write(&wal, b"stale wal").expect("write a stale WAL");
    restore_fails(&[&built.url()], &out, &["out.db-wal", "-force"]);

    std::fs::write(&out_db, b"precious").expect("write an existing output");
    let restored = restore_ok(&built, &out, "out.db", &[&"-force"]);
    assert_same_file(built.image(4), &restored, built.page_size, "restore -force");
    assert_eq!(
        dir_entries(&out),
        ["out.db"],
        "-force removes the stale WAL"
    );
}

#[test]
fn txid_and_timestamp_together_are_refused() {
    let ws = Workspace::new("flags");
    let built = build_replica(&ws, "a", 512, 2, 29, Checksums::Sluice);
    let out = ws.dir("out");
    restore_fails(
        &[
            &"-txid",
            &"1",
            &"-timestamp",
            &"2030-01-01T00:00:00Z",
            &built.url(),
        ],
        &out,
        &["-txid", "-timestamp"],
    );
    restore_fails(&[&"-txid", &"xyz", &built.url()], &out, &["-txid", "xyz"]);
    restore_fails(
        &[&"-timestamp", &"yesterday", &built.url()],
        &out,
        &["-timestamp", "yesterday"],
    );
}

#[test]
fn unwritable_output_directory_is_reported() {
    let ws = Workspace::new("unwritable");
    let built = build_replica(&ws, "a", 512, 2, 30, Checksums::Sluice);
    // We may run as root, so permissions prove nothing: make the parent a regular file.
    let blocker = ws.path("not-a-dir");
    std::fs::write(&blocker, b"file").expect("write the blocker");
    let out_db = blocker.join("out.db");
    let (code, _, stderr) = run_sluice(&[&"restore", &"-o", &out_db, &built.url()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.starts_with("Error: ") && stderr.contains(&blocker.display().to_string()),
        "stderr should name the output directory: {stderr}"
    );
    assert_eq!(std::fs::read(&blocker).expect("read"), b"file");
}

#[test]
fn if_db_not_exists_leaves_an_existing_output_alone() {
    let ws = Workspace::new("if-db-not-exists");
    let built = build_replica(&ws, "a", 512, 2, 31, Checksums::Sluice);
    let out = ws.dir("out");
    let out_db = out.join("out.db");
    std::fs::write(&out_db, b"precious").expect("write an existing output");
    let (code, _, stderr) = run_sluice(&[
        &"restore",
        &"-if-db-not-exists",
        &"-o",
        &out_db,
        &built.url(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(std::fs::read(&out_db).expect("read"), b"precious");
    assert_eq!(dir_entries(&out), ["out.db"]);

    // Without an existing output the same command restores.
    std::fs::remove_file(&out_db).expect("remove");
    let restored = restore_ok(&built, &out, "out.db", &[&"-if-db-not-exists"]);
    assert_same_file(
        built.image(2),
        &restored,
        built.page_size,
        "restore -if-db-not-exists",
    );
}
