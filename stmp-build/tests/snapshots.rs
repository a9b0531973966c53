//! Snapshots of the generated code: the quick-start proto and a proto using the stmp options
//! (also with every `bytes` field as `Bytes`). The files under `tests/snapshots/` are reviewed
//! code; `tests/generated.rs` and `tests/bytes_fields.rs` compile and run them. After a deliberate change of the generator, refresh them with
//! `STMP_BUILD_UPDATE_SNAPSHOTS=1 cargo test -p stmp-build --test snapshots` and review the diff.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn check(name: &str, protos: &[&str], includes: &[PathBuf]) {
    check_with(stmp_build::configure(), name, protos, includes);
}

fn check_with(builder: stmp_build::Builder, name: &str, protos: &[&str], includes: &[PathBuf]) {
    let generated = builder
        .emit_rerun_if_changed(false)
        .generate(protos, includes)
        .unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name);
    if std::env::var_os("STMP_BUILD_UPDATE_SNAPSHOTS").is_some() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (file, content) in &generated.files {
            std::fs::write(dir.join(file), content).unwrap();
        }
        return;
    }
    let mut stored = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        stored.insert(
            entry.file_name().into_string().unwrap(),
            std::fs::read_to_string(entry.path()).unwrap(),
        );
    }
    assert_eq!(
        generated.files.keys().collect::<Vec<_>>(),
        stored.keys().collect::<Vec<_>>(),
        "the generated files changed"
    );
    for (file, content) in &generated.files {
        let snapshot = &stored[file];
        if content != snapshot {
            let line = content
                .lines()
                .zip(snapshot.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(content.lines().count().min(snapshot.lines().count()));
            panic!(
                "{name}/{file} differs from its snapshot from line {}:\n  generated: {:?}\n  \
                 snapshot:  {:?}\nrerun with STMP_BUILD_UPDATE_SNAPSHOTS=1 and review the diff",
                line + 1,
                content.lines().nth(line),
                snapshot.lines().nth(line),
            );
        }
    }
}

#[test]
fn quick_start() {
    check(
        "quick_start",
        &["quick_start.proto"],
        &[root().join("examples/quick-start/proto")],
    );
}

#[test]
fn options() {
    check(
        "options",
        &["options.proto"],
        &[Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/protos")],
    );
}

#[test]
fn the_quick_start_snapshot_has_the_reference_actions() {
    let code = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/snapshots/quick_start/stmp.examples.quick_start.rs"),
    )
    .unwrap();
    for (constant, action) in [
        ("JOIN_ROOM", "0x033648F7"),
        ("EXIT_ROOM", "0xA7FFD932"),
        ("USER_JOIN", "0x999B2807"),
        ("USER_EXIT", "0x827247A2"),
    ] {
        let at = code.find(&format!("pub const {constant}")).unwrap();
        let doc = &code[..at];
        let doc = &doc[doc.rfind("pub const").unwrap_or(0)..];
        assert!(doc.contains(action), "{constant} should document {action}");
    }
}

#[test]
fn options_with_bytes_fields() {
    check_with(
        stmp_build::configure().bytes(["."]),
        "options_bytes",
        &["options.proto"],
        &[Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/protos")],
    );
}
