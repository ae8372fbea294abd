//! Every scenario file in `scenarios/` passes every check with each of its seeds, and each
//! run's outcome (checks, and the figures that are deterministic in the simulator) matches its
//! reviewed snapshot in `sim/tests/snapshots/` (insta: after a change that moves them, review
//! and rewrite with `INSTA_UPDATE=always cargo test -p sluice-sim --test scenarios`).

use std::path::PathBuf;

use sluice_sim::plan::Scenario;
use sluice_sim::run::run_scenario;

/// The fault phase's length for scenarios that do not set one.
const TRANSACTIONS: u32 = 300;

fn scenario_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// What a scenario run is expected to do, for its snapshot: every figure here is a function of
/// the seed and the code.
fn outcome(r: &sluice_sim::run::Report) -> String {
    let verdict = if r.passed() {
        "every check passed".to_string()
    } else {
        format!("failed: {}", r.failures.join("; "))
    };
    format!(
        "{verdict}\ncommits: {}\nrestores checked: {}\nmost commits lost at a crash: {}\nworst lag: {} ms\nworst post-heal lag: {} ms\nworst undisturbed commit-to-upload: {} ms\nfiles shipped after a full compare: {}\n",
        r.commits,
        r.restores,
        r.lost_commits_max,
        r.worst_lag_ms,
        r.post_heal_lag_ms_max,
        r.commit_lag_ms_max,
        r.resyncs
    )
}

#[test]
fn every_scenario_file_passes_with_its_seeds() {
    let files = scenario_files();
    assert!(files.len() >= 5, "scenario files: {files:?}");
    let mut failed = Vec::new();
    for path in files {
        let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !s.description.trim().is_empty(),
            "{}: no description",
            path.display()
        );
        assert!(!s.seeds.is_empty(), "{}: no seeds", path.display());
        let shown = path
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap_or(&path);
        for &seed in &s.seeds {
            let r = run_scenario(seed, TRANSACTIONS, &s, Some(&shown.display().to_string()));
            let stem = path
                .file_stem()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            insta::assert_snapshot!(format!("{stem}-seed-{seed}"), outcome(&r));
            assert!(
                r.restores > 0,
                "{}: seed {seed} checked no restore",
                path.display()
            );
            if !r.passed() {
                failed.push(format!(
                    "{} seed {seed}: {}\n  replay: {}",
                    path.display(),
                    r.failures.join("; "),
                    r.replay_line()
                ));
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn a_bad_scenario_file_is_refused_with_its_name_and_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "knobs:\n  sync_interval: 100\n").expect("write");
    let e = Scenario::load(&path).expect_err("unknown knob");
    assert!(
        e.contains("bad.yaml") && e.contains("knobs.sync_interval"),
        "{e}"
    );
    std::fs::write(&path, "steps:\n  - teleport\n").expect("write");
    let e = Scenario::load(&path).expect_err("unknown step");
    assert!(e.contains("bad.yaml") && e.contains("teleport"), "{e}");
}
