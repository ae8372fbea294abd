//! Litestream 0.5 configurations as its documentation and users write them
//! (`fixtures/litestream-configs/`): each is accepted, with one warning per Litestream setting
//! sluice ignores, or refused in one line that names the key, exactly as its first line says.
//! The same files also pass through `sluice`, so the warnings are seen where a user sees them.

use std::path::{Path, PathBuf};
use std::process::Command;

use sluice_core::config::Config;

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/litestream-configs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read the corpus")
        .map(|e| e.expect("a corpus entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "corpus too small: {files:?}");
    files
}

/// What the file's first line says sluice must do.
enum Expect {
    Ok { warnings: usize },
    Refused(Vec<String>),
}

fn expectation(text: &str, file: &Path) -> Expect {
    let first = text.lines().next().unwrap_or_default();
    let rest = first
        .strip_prefix("# expect: ")
        .unwrap_or_else(|| panic!("{}: no `# expect:` line", file.display()));
    if let Some(words) = rest.strip_prefix("refused: ") {
        return Expect::Refused(words.split(", ").map(str::to_string).collect());
    }
    let n = rest
        .strip_prefix("ok, ")
        .and_then(|r| r.strip_suffix(" warnings"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}: cannot read {rest:?}", file.display()));
    Expect::Ok { warnings: n }
}

#[test]
fn litestream_configurations_are_accepted_with_warnings_or_refused_naming_the_key() {
    for file in corpus() {
        let name = file.display();
        let text = std::fs::read_to_string(&file).expect("read a corpus file");
        let loaded = Config::parse(&file, &text, false).and_then(|c| {
            sluice_core::url::check_targets(&file, &c)?;
            Ok(c)
        });
        match (expectation(&text, &file), loaded) {
            (Expect::Ok { warnings }, Ok(c)) => {
                assert_eq!(c.warnings.len(), warnings, "{name}: {:#?}", c.warnings);
                for w in &c.warnings {
                    assert!(w.contains("sluice ignores: "), "{name}: {w}");
                }
            }
            (Expect::Ok { .. }, Err(e)) => panic!("{name}: refused: {e}"),
            (Expect::Refused(words), Ok(c)) => {
                panic!("{name}: accepted ({:?}), expected {words:?}", c.warnings)
            }
            (Expect::Refused(words), Err(e)) => {
                let msg = e.to_string();
                assert_eq!(msg.lines().count(), 1, "{name}: {msg}");
                for w in &words {
                    assert!(msg.contains(w.as_str()), "{name}: {w:?} not in {msg:?}");
                }
            }
        }
    }
}

/// `sluice` prints each warning once, naming the file and the key, and goes on; a refused
/// configuration fails in one line.
#[test]
fn the_cli_warns_once_per_ignored_key_and_refuses_in_one_line() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/litestream-configs");
    let run = |file: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["restore", "-dry-run", "-config"])
            .arg(dir.join(file))
            .arg("/data/app.db")
            .env_remove("SLUICE_LOG")
            .output()
            .expect("run sluice");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run("global-settings.yml");
    for key in ["socket", "mcp-addr", "heartbeat-url", "logging"] {
        let lines = err
            .lines()
            .filter(|l| l.contains("WARN") && l.contains(&format!("{key}: a Litestream setting")))
            .count();
        assert_eq!(lines, 1, "{key}: {err}");
    }
    assert!(err.contains("global-settings.yml"), "{err}");
    let err = run("sse-kms.yml");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("sse-kms-key-id"), "{err}");
}
