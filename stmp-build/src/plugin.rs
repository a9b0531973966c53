//! The protoc plugin front end: `protoc-gen-stmp` reads a `CodeGeneratorRequest` on stdin and
//! writes a `CodeGeneratorResponse` with the same files [`Builder::compile`](crate::Builder)
//! writes for the same protos.
//!
//! Parameters (`--stmp_opt=…`, comma separated): `no_server`, `no_client`, `no_events`,
//! `extern_path=PROTO_PATH=RUST_PATH`, `type_attribute=PATH=ATTRIBUTE`,
//! `message_attribute=…`, `enum_attribute=…`, `field_attribute=…` (attributes cannot contain
//! commas), `bytes=PATH` (repeatable; see [`Builder::bytes`](crate::Builder::bytes)).

use prost::Message as _;
use prost_types::compiler::code_generator_response::{Feature, File};
use prost_types::compiler::{CodeGeneratorRequest, CodeGeneratorResponse};

use crate::{Builder, Error};

/// Runs the plugin on an encoded request; returns the encoded response (failures are reported
/// in its `error` field, as protoc expects).
pub fn run(request: &[u8]) -> Vec<u8> {
    let response = match generate(request) {
        Ok(files) => CodeGeneratorResponse {
            supported_features: Some(Feature::Proto3Optional as u64),
            file: files,
            ..Default::default()
        },
        Err(error) => CodeGeneratorResponse {
            error: Some(error.to_string()),
            supported_features: Some(Feature::Proto3Optional as u64),
            ..Default::default()
        },
    };
    response.encode_to_vec()
}

fn generate(request: &[u8]) -> Result<Vec<File>, Error> {
    let decoded = CodeGeneratorRequest::decode(request)
        .map_err(|error| Error::new(format!("invalid CodeGeneratorRequest: {error}")))?;
    let builder = parse_parameter(decoded.parameter())?;
    let descriptor_set = descriptor_set(request)?;
    let generated =
        builder.generate_from_descriptor_set(&descriptor_set, &decoded.file_to_generate)?;
    Ok(generated
        .files
        .into_iter()
        .map(|(name, content)| File {
            name: Some(name),
            content: Some(content),
            ..Default::default()
        })
        .collect())
}

/// The configuration a `--stmp_opt` parameter describes.
pub fn parse_parameter(parameter: &str) -> Result<Builder, Error> {
    let mut builder = crate::configure();
    for item in parameter
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let (key, value) = match item.split_once('=') {
            Some((key, value)) => (key.trim(), Some(value.trim())),
            None => (item, None),
        };
        let pair = || {
            value.and_then(|v| v.split_once('=')).ok_or_else(|| {
                Error::new(format!(
                    "protoc-gen-stmp: {key} takes PATH=VALUE, got {item:?}"
                ))
            })
        };
        builder = match (key, value) {
            ("no_server", None) => builder.build_server(false),
            ("no_client", None) => builder.build_client(false),
            ("no_events", None) => builder.build_events(false),
            ("extern_path", _) => {
                let (proto, rust) = pair()?;
                builder.extern_path(proto, rust)
            }
            ("type_attribute", _) => {
                let (path, attribute) = pair()?;
                builder.type_attribute(path, attribute)
            }
            ("message_attribute", _) => {
                let (path, attribute) = pair()?;
                builder.message_attribute(path, attribute)
            }
            ("enum_attribute", _) => {
                let (path, attribute) = pair()?;
                builder.enum_attribute(path, attribute)
            }
            ("field_attribute", _) => {
                let (path, attribute) = pair()?;
                builder.field_attribute(path, attribute)
            }
            ("bytes", Some(path)) if !path.is_empty() => builder.bytes([path]),
            _ => {
                return Err(Error::new(format!(
                    "protoc-gen-stmp: unknown option {item:?}"
                )));
            }
        };
    }
    Ok(builder)
}

/// The request's `proto_file`s (field 15) re-framed as a `FileDescriptorSet` (field 1),
/// byte for byte: decoding them with prost-types would drop the stmp option values.
fn descriptor_set(request: &[u8]) -> Result<Vec<u8>, Error> {
    let invalid = || Error::new("invalid CodeGeneratorRequest: truncated field");
    let mut out = Vec::with_capacity(request.len());
    let mut rest = request;
    while !rest.is_empty() {
        let key = prost::encoding::decode_varint(&mut rest).map_err(|_| invalid())?;
        let (field, wire_type) = (key >> 3, key & 7);
        match wire_type {
            0 => {
                prost::encoding::decode_varint(&mut rest).map_err(|_| invalid())?;
            }
            1 | 5 => {
                let len = if wire_type == 1 { 8 } else { 4 };
                rest = rest.get(len..).ok_or_else(invalid)?;
            }
            2 => {
                let len = prost::encoding::decode_varint(&mut rest).map_err(|_| invalid())?;
                let len = usize::try_from(len).map_err(|_| invalid())?;
                let value = rest.get(..len).ok_or_else(invalid)?;
                if field == 15 {
                    prost::encoding::encode_key(
                        1,
                        prost::encoding::WireType::LengthDelimited,
                        &mut out,
                    );
                    prost::encoding::encode_varint(value.len() as u64, &mut out);
                    out.extend_from_slice(value);
                }
                rest = &rest[len..];
            }
            _ => {
                return Err(Error::new(
                    "invalid CodeGeneratorRequest: unknown wire type",
                ));
            }
        }
    }
    Ok(out)
}
