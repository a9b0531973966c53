//! The plugin against stmp-build, without protoc: the request is built in-process with protox
//! and fed to the binary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use prost::Message;
use prost_types::compiler::CodeGeneratorResponse;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A `CodeGeneratorRequest` as protoc sends it: every file, imports first, with options and
/// comments; `file_to_generate` names the given files.
fn request(files: &[&str], includes: &[PathBuf], parameter: &str) -> Vec<u8> {
    let mut resolver = protox::file::ChainFileResolver::new();
    for include in includes {
        resolver.add(protox::file::IncludeFileResolver::new(include.clone()));
    }
    resolver.add(protox::file::GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(files).unwrap();
    // The encoded set keeps extension options; its files (field 1) become proto_file (15).
    let set = compiler.encode_file_descriptor_set();
    let mut out = Vec::new();
    for file in files {
        prost::encoding::string::encode(1, &file.to_string(), &mut out);
    }
    prost::encoding::string::encode(2, &parameter.to_owned(), &mut out);
    let mut rest = &set[..];
    while !rest.is_empty() {
        let key = prost::encoding::decode_varint(&mut rest).unwrap();
        assert_eq!(key, (1 << 3) | 2, "a FileDescriptorSet holds files only");
        let len = prost::encoding::decode_varint(&mut rest).unwrap() as usize;
        prost::encoding::bytes::encode(15, &rest[..len].to_vec(), &mut out);
        rest = &rest[len..];
    }
    out
}

fn run_plugin(request: &[u8]) -> CodeGeneratorResponse {
    let mut child = Command::new(env!("CARGO_BIN_EXE_protoc-gen-stmp"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(request).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    CodeGeneratorResponse::decode(&output.stdout[..]).unwrap()
}

fn files(response: CodeGeneratorResponse) -> Vec<(String, String)> {
    assert_eq!(response.error, None);
    let mut files: Vec<(String, String)> = response
        .file
        .into_iter()
        .map(|f| (f.name.unwrap(), f.content.unwrap()))
        .collect();
    files.sort();
    files
}

#[test]
fn the_plugin_writes_what_stmp_build_writes() {
    let include = root().join("examples/quick-start/proto");
    let response = run_plugin(&request(
        &["quick_start.proto"],
        std::slice::from_ref(&include),
        "",
    ));
    let plugin = files(response);
    let built = stmp_build::configure()
        .generate(&["quick_start.proto"], &[include])
        .unwrap();
    let built: Vec<(String, String)> = built.files.into_iter().collect();
    assert_eq!(
        plugin
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>(),
        [
            "google.protobuf.include.rs",
            "google.protobuf.rs",
            "stmp.examples.quick_start.include.rs",
            "stmp.examples.quick_start.rs",
        ]
    );
    assert_eq!(plugin, built);
    let code = &plugin[3].1;
    assert!(code.contains("pub trait RoomService"));
    assert!(code.contains("pub fn user_join<'a>("));
}

#[test]
fn options_and_parameters_reach_the_generator() {
    let include = root().join("stmp-build/tests/protos");
    let parameter = "no_client,no_events,type_attribute=.options.Ping=#[derive(Eq)],\
                     bytes=.options.Ping.data,bytes=.options.Ping.blob";
    // protoc users pass the directory of stmp/options.proto with -I.
    let includes = [include.clone(), root().join("stmp-build/proto")];
    let plugin = files(run_plugin(&request(
        &["options.proto"],
        &includes,
        parameter,
    )));
    let built = stmp_build::configure()
        .build_client(false)
        .build_events(false)
        .type_attribute(".options.Ping", "#[derive(Eq)]")
        .bytes([".options.Ping.data", ".options.Ping.blob"])
        .generate(&["options.proto"], &[include])
        .unwrap();
    let built: Vec<(String, String)> = built.files.into_iter().collect();
    assert_eq!(plugin, built);
    let code = &plugin
        .iter()
        .find(|(name, _)| name == "options.rs")
        .unwrap()
        .1;
    // (stmp.service) = 0x12 and (stmp.method) = 3, read from the options in the request.
    assert!(code.contains("::stmp::Method::with_ids("), "{code}");
    assert!(code.contains("0x12"));
    assert!(!code.contains("Client<C>"));
    assert!(!code.contains("::stmp::Audience"));
    assert!(code.contains("#[derive(Eq)]"));
    assert!(code.contains("pub data: ::prost::bytes::Bytes,"), "{code}");
    assert!(code.contains("pub blob: ::core::option::Option<::prost::bytes::Bytes>,"));
    assert!(code.contains("pub chunks: ::prost::alloc::vec::Vec<::prost::alloc::vec::Vec<u8>>,"));
}

#[test]
fn errors_come_back_in_the_response() {
    let include = root().join("stmp-build/tests/protos");
    let includes = [include, root().join("stmp-build/proto")];
    let response = run_plugin(&request(&["bad_duplicate.proto"], &includes, ""));
    let error = response.error.expect("an error");
    assert!(error.contains("bad_duplicate.proto"), "{error}");
    assert!(error.contains("Join") && error.contains("Leave"), "{error}");
    let response = run_plugin(&request(&[], &[], "no_such_option"));
    assert!(response.error.unwrap().contains("no_such_option"));
}
