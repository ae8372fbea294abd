//! The README's first command, `sluice demo`, does the main job end to end and says so.

mod common;

#[test]
fn demo_replicates_deletes_restores_and_compares() {
    let ws = common::Workspace::new("demo");
    let dir = ws.path("demo");
    let (code, out, err) = common::run_sluice(&[&"demo", &dir, &"-rows", &"2000"]);
    assert_eq!(code, 0, "demo failed:\n{out}\n{err}");
    assert!(
        out.contains("byte-identical to the original; 2000 rows"),
        "{out}"
    );
    assert!(out.contains("database checksum verified"), "{out}");
    assert!(dir.join("restored.db").is_file());
    assert!(
        !dir.join("app.db").exists(),
        "the demo deletes the original before restoring"
    );
}
