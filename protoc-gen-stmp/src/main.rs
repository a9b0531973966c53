//! `protoc-gen-stmp`: the protoc plugin of stmp. It reads a `CodeGeneratorRequest` on stdin and
//! writes a `CodeGeneratorResponse` with the same files `stmp-build` writes in `build.rs`: the
//! prost messages (with serde) and the stmp code of each package (`a.b.rs`), and the file
//! `stmp::include_proto!` includes (`a.b.include.rs`).
//!
//! ```sh
//! protoc --plugin=protoc-gen-stmp --stmp_out=src/gen --stmp_opt=no_events room.proto
//! ```
//!
//! Protos that `import "stmp/options.proto"` need its directory on protoc's path:
//! `-I path/to/stmp-build/proto` (the file ships in the `stmp-build` crate).
//!
//! Options (`--stmp_opt`, comma separated): `no_server`, `no_client`, `no_events`,
//! `extern_path=PROTO=RUST`, `type_attribute=PATH=ATTR`, `message_attribute=PATH=ATTR`,
//! `enum_attribute=PATH=ATTR`, `field_attribute=PATH=ATTR`, `bytes=PATH` (repeatable: those
//! `bytes` fields become `bytes::Bytes`).

use std::io::{Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut request = Vec::new();
    if let Err(error) = std::io::stdin().read_to_end(&mut request) {
        eprintln!("protoc-gen-stmp: cannot read the request: {error}");
        return ExitCode::FAILURE;
    }
    let response = stmp_build::plugin::run(&request);
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_all(&response).and_then(|()| stdout.flush()) {
        eprintln!("protoc-gen-stmp: cannot write the response: {error}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
