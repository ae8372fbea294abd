//! Real-process chaos (`sluice-sim chaos`): the real `sluice` binary and a writer process,
//! SIGKILLed on a seeded schedule, host losses restored by the SUT's own `restore`. A short
//! slice here; the nightly runs the scenario files in `scenarios/chaos/` for longer.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios/chaos")
        .join(name)
}

/// The `sluice` binary of this build (`cargo test --workspace` builds it beside sluice-sim).
fn sluice_bin() -> Option<PathBuf> {
    let bin = Path::new(env!("CARGO_BIN_EXE_sluice-sim")).with_file_name("sluice");
    if bin.exists() {
        return Some(bin);
    }
    assert!(
        std::env::var_os("SLUICE_REQUIRE_PEERS").is_none(),
        "{} is missing: build the workspace (cargo test --workspace builds it)",
        bin.display()
    );
    eprintln!("skipped: {} is not built", bin.display());
    None
}

fn chaos(args: &[&str]) -> (Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-sim"))
        .arg("chaos")
        .args(args)
        .output()
        .expect("run sluice-sim chaos");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

/// A run's per-cycle figure `name`, summed, from its JSON report.
fn total(json: &Path, name: &str) -> u64 {
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(json).expect("read the report")).expect("JSON");
    report["cycles"]
        .as_array()
        .expect("cycles")
        .iter()
        .map(|c| {
            c[name]
                .as_u64()
                .unwrap_or_else(|| panic!("no {name} in {c}"))
        })
        .sum()
}

/// Runs the real sluice on scenario file `name` with `seed`; asserts every claim held and
/// returns the output and the run's JSON report (kept in `dir`).
fn sluice_passes(bin: &Path, name: &str, seed: &str, dir: &Path) -> (String, PathBuf) {
    let json = dir.join("report.json");
    let (out, text) = chaos(&[
        "--sut",
        "sluice",
        "--bin",
        bin.to_str().expect("utf-8 path"),
        "--seed",
        seed,
        "--scenario",
        scenario(name).to_str().expect("utf-8 path"),
        "--json",
        json.to_str().expect("utf-8 path"),
    ]);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("all claims held"), "{text}");
    (text, json)
}

#[test]
fn sluice_keeps_every_claim_through_kills_and_host_losses() {
    let Some(bin) = sluice_bin() else { return };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (text, json) = sluice_passes(&bin, "quick.yaml", "1", dir.path());
    // Two host losses, each restored, kills and refused second replicators: the run did what
    // it says.
    assert_eq!(
        text.matches("host loss restored to commit").count(),
        2,
        "{text}"
    );
    assert!(total(&json, "sut_kills") > 0, "{text}");
    let second = total(&json, "second_replicators");
    assert!(second > 0, "no second replicator was started: {text}");
    assert_eq!(total(&json, "second_replicators_refused"), second, "{text}");
    // The replica's disk filled up, unless this machine refuses the tmpfs (then the run says so).
    assert!(
        total(&json, "disk_fulls") > 0 || text.contains("skipped disk full"),
        "{text}"
    );
}

/// The same over a real S3 server (the one `ci/test.sh` starts) behind the fault proxy:
/// partitions, stalls, 503s and dropped answers besides the kills.
#[test]
fn sluice_keeps_every_claim_over_s3_through_network_faults() {
    let Some(bin) = sluice_bin() else { return };
    if std::env::var_os("SLUICE_S3_ENDPOINT").is_none() {
        assert!(
            std::env::var_os("SLUICE_REQUIRE_PEERS").is_none(),
            "SLUICE_S3_ENDPOINT is not set"
        );
        eprintln!("skipped: SLUICE_S3_ENDPOINT is not set (ci/test.sh starts s3s-fs)");
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (text, json) = sluice_passes(&bin, "quick-s3.yaml", "2", dir.path());
    assert!(
        total(&json, "network_faults") > 0,
        "the run injected no network fault: {text}"
    );
}

/// The harness can fail: a replicator that syncs every 5 s (a config the wrapper passes to the
/// real sluice) loses commits older than the RPO at the host loss, and the run says so, with
/// the line that replays it.
#[test]
fn a_replicator_that_syncs_too_rarely_breaks_the_rpo_and_is_reported() {
    let Some(bin) = sluice_bin() else { return };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let wrapper = dir.path().join("slow-sluice");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ \"$1\" = replicate ]; then\n  cfg=\"$2.yml\"\n  printf 'dbs:\\n  - path: %s\\n    replicas:\\n      - url: %s\\n        sync-interval: 5s\\n' \"$2\" \"$3\" > \"$cfg\"\n  exec {bin} replicate -config \"$cfg\"\nfi\nexec {bin} \"$@\"\n",
            bin = bin.display()
        ),
    )
    .expect("write the wrapper");
    let mut perms = std::fs::metadata(&wrapper).expect("stat").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&wrapper, perms).expect("chmod the wrapper");
    let calm = dir.path().join("calm.yaml");
    std::fs::write(
        &calm,
        "description: no kills, one host loss 2 s in\ncycles: 1\ncycle-ms: 0\nsut-kill-rate: 0\nwriter-kill-rate: 0\ncheckpoint-rate: 0\nsettle-ms: 2000\n",
    )
    .expect("write the scenario");
    let (out, text) = chaos(&[
        "--sut",
        "sluice",
        "--bin",
        wrapper.to_str().expect("utf-8 path"),
        "--scenario",
        calm.to_str().expect("utf-8 path"),
        "--dir",
        dir.path().to_str().expect("utf-8 path"),
    ]);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("VIOLATION cycle 0: RPO: commit"), "{text}");
    assert!(
        text.contains(
            "replay: cargo run --release -p sluice-sim -- chaos --sut sluice --seed 1 --scenario"
        ),
        "{text}"
    );
}

/// Litestream as the system under test: the run completes and reports, whatever it finds.
#[test]
fn litestream_runs_as_the_system_under_test() {
    let Some(bin) = std::env::var_os("LITESTREAM_BIN") else {
        assert!(
            std::env::var_os("SLUICE_REQUIRE_PEERS").is_none(),
            "LITESTREAM_BIN is not set"
        );
        eprintln!("skipped: LITESTREAM_BIN is not set");
        return;
    };
    let quick = scenario("quick.yaml");
    let (_, text) = chaos(&[
        "--sut",
        "litestream",
        "--bin",
        bin.to_str().expect("utf-8 path"),
        "--scenario",
        quick.to_str().expect("utf-8 path"),
    ]);
    // The harness's own errors start a line; Litestream's, quoted inside a violation it is
    // charged with (a restore that exited with "Error: decode database: ..."), do not.
    assert!(!text.lines().any(|l| l.starts_with("Error:")), "{text}");
    assert!(text.contains("chaos litestream seed 1: "), "{text}");
}

#[test]
fn a_bad_scenario_file_is_refused_naming_file_and_field() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (body, field) in [
        ("cycles: 2\nkill-rate: 0.5\n", "kill-rate"),
        ("sut-kill-rate: 1.5\n", "sut-kill-rate"),
        ("cycles: 0\n", "cycles"),
        ("network-fault-rate: 0.1\n", "network-fault-rate"),
        ("store: nfs\n", "store"),
        ("writers: 9\n", "writers"),
    ] {
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, body).expect("write the scenario");
        let (out, text) = chaos(&["--scenario", path.to_str().expect("utf-8 path")]);
        assert!(!out.status.success(), "{body}: {text}");
        assert!(text.contains(&path.display().to_string()), "{body}: {text}");
        assert!(text.contains(field), "{body}: {text}");
    }
}
