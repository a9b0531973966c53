//! Generates the tonic echo service without protoc: protox parses the proto into a
//! FileDescriptorSet and tonic-prost-build turns it into Rust.

fn main() {
    println!("cargo:rerun-if-changed=proto/echo.proto");
    let fds = protox::compile(["echo.proto"], ["proto"]).expect("proto/echo.proto compiles");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)
        .expect("tonic code generation");
}
