//! docs/cli.md is generated from `ferrite --help`; this test fails when they drift.
//! Regenerate with `FERRITE_UPDATE_DOCS=1 cargo test -p ferrite --test cli_reference`.

use std::process::Command;

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(args)
        .arg("--help")
        .env_clear()
        .env("COLUMNS", "100")
        .output()
        .expect("run ferrite --help");
    assert!(out.status.success(), "ferrite {args:?} --help failed");
    String::from_utf8(out.stdout).expect("utf-8 help")
}

fn render() -> String {
    let mut doc = String::from(
        "# CLI reference\n\nGenerated from `ferrite --help` by `services/ferrite/tests/cli_reference.rs`; every flag also reads `FERRITE_<FLAG>`.\n",
    );
    for sub in [&[][..], &["serve"], &["frontend"], &["worker"], &["bench"]] {
        let title = if sub.is_empty() {
            "ferrite".to_string()
        } else {
            format!("ferrite {}", sub[0])
        };
        doc.push_str(&format!("\n## `{title}`\n\n```text\n{}```\n", help(sub)));
    }
    doc
}

#[test]
fn cli_reference_matches_committed_docs() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/cli.md");
    let now = render();
    if std::env::var_os("FERRITE_UPDATE_DOCS").is_some() {
        std::fs::write(path, &now).expect("write docs/cli.md");
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == now,
        "docs/cli.md is stale: run FERRITE_UPDATE_DOCS=1 cargo test -p ferrite --test cli_reference"
    );
}

#[test]
fn configuration_errors_exit_with_status_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["serve", "--engine", "cuda", "--port", "0"])
        .output()
        .expect("run ferrite");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--engine cuda"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["serve", "--bogus"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}
