//! Protos that misuse the stmp options fail with a message naming the file and the method(s).

use std::path::{Path, PathBuf};

fn protos() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/protos")
}

fn error(file: &str) -> String {
    stmp_build::configure()
        .generate(&[file], &[protos()])
        .expect_err("the proto must be refused")
        .to_string()
}

#[test]
fn a_method_id_needs_a_service_id() {
    let error = error("bad_no_service.proto");
    assert!(error.contains("bad_no_service.proto"), "{error}");
    assert!(error.contains("RoomService.Join"), "{error}");
    assert!(error.contains("(stmp.method)"), "{error}");
    assert!(error.contains("no (stmp.service)"), "{error}");
}

#[test]
fn two_methods_with_one_action_are_both_named() {
    let error = error("bad_duplicate.proto");
    assert!(error.contains("bad_duplicate.proto"), "{error}");
    assert!(error.contains("bad.RoomService.Join"), "{error}");
    assert!(error.contains("bad.RoomService.Leave"), "{error}");
    assert!(error.contains("0x2001"), "{error}");
    eprintln!("{error}");
}

#[test]
fn a_method_id_is_one_byte() {
    let error = error("bad_method_id.proto");
    assert!(error.contains("bad_method_id.proto"), "{error}");
    assert!(error.contains("RoomService.Join"), "{error}");
    assert!(error.contains("256"), "{error}");
}

#[test]
fn parse_errors_point_at_the_place() {
    let dir = std::env::temp_dir().join(format!("stmp-build-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("broken.proto"),
        "syntax = \"proto3\";\nmessage {}\n",
    )
    .unwrap();
    let error = stmp_build::configure()
        .generate(&["broken.proto"], &[&dir])
        .unwrap_err()
        .to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(error.contains("broken.proto:2"), "{error}");
}

#[test]
fn compile_writes_the_files_include_proto_includes() {
    let dir = std::env::temp_dir().join(format!("stmp-build-out-{}", std::process::id()));
    stmp_build::configure()
        .out_dir(&dir)
        .emit_rerun_if_changed(false)
        .compile(&["options.proto"], &[protos()])
        .unwrap();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        files,
        [
            "google.protobuf.include.rs",
            "google.protobuf.rs",
            "options.include.rs",
            "options.rs"
        ]
    );
}

#[test]
fn a_service_id_fits_seven_bytes() {
    let dir = std::env::temp_dir().join(format!("stmp-build-big-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("big.proto"),
        "syntax = \"proto3\";\npackage big;\nimport \"stmp/options.proto\";\nmessage M {}\n\
         service BigService {\n  option (stmp.service) = 0x100000000000000;\n  \
         rpc Go(M) returns (M) { option (stmp.method) = 1; }\n}\n",
    )
    .unwrap();
    let error = stmp_build::configure()
        .generate(&["big.proto"], &[&dir])
        .unwrap_err()
        .to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(error.contains("big.proto"), "{error}");
    assert!(error.contains("BigService"), "{error}");
    assert!(error.contains("7 bytes"), "{error}");
    assert!(!error.contains("no (stmp.service)"), "{error}");
    eprintln!("{error}");
}
