//! `wire.json`: the STMP 1.0 byte vectors as data, shared with the TypeScript client's tests.

use std::sync::OnceLock;

use bytes::Bytes;
use serde_json::Value;
use stmp::Code;
use stmp::wire::{Action, Close, Header, Notify, Packet, Request, Response};

fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        serde_json::from_str(include_str!("wire.json")).expect("tests/vectors/wire.json is JSON")
    })
}

/// The entries of one section of the document.
pub fn section(name: &str) -> &'static [Value] {
    document()[name]
        .as_array()
        .unwrap_or_else(|| panic!("no section {name:?} in wire.json"))
}

/// Every named entry, whatever its section.
fn entries() -> impl Iterator<Item = &'static Value> {
    document()
        .as_object()
        .expect("wire.json is an object")
        .values()
        .filter_map(Value::as_array)
        .flatten()
}

fn named(name: &str) -> &'static Value {
    let mut found = entries().filter(|entry| entry["name"] == name);
    let entry = found
        .next()
        .unwrap_or_else(|| panic!("no vector {name:?} in wire.json"));
    assert!(found.next().is_none(), "two vectors named {name:?}");
    entry
}

fn text<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value}"))
}

/// The hex of the vector `name`.
pub fn v(name: &str) -> &'static str {
    text(&named(name)["hex"], name)
}

/// Chunk `index` (hex) of the split vector `name`.
pub fn chunk(name: &str, index: usize) -> &'static str {
    text(&named(name)["chunks"][index], name)
}

/// The uvarint (hex) of a method's action id.
pub fn uvarint_of(method: &str) -> &'static str {
    let entry = section("action_ids")
        .iter()
        .find(|entry| entry["method"] == method)
        .unwrap_or_else(|| panic!("no action id for {method}"));
    text(&entry["uvarint"], method)
}

/// A hex field of the large-request vector.
pub fn large_request(field: &str) -> &'static str {
    text(&document()["large_request"][field], field)
}

fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16).expect("hex byte"))
        .collect()
}

fn code(value: &Value) -> Code {
    let name = value.as_str().expect("a status name");
    (0..=u8::MAX)
        .filter_map(Code::from_u8)
        .find(|code| format!("{code:?}") == name)
        .unwrap_or_else(|| panic!("unknown status {name}"))
}

/// A header from `[[key, value], …]`.
pub fn header(value: &Value) -> Header {
    value
        .as_array()
        .map(|pairs| {
            pairs
                .iter()
                .map(|pair| (text(&pair[0], "key"), text(&pair[1], "value")))
                .collect()
        })
        .unwrap_or_default()
}

fn payload(packet: &Value) -> Bytes {
    match (packet.get("payload"), packet.get("payload_hex")) {
        (Some(text), None) => Bytes::from(text.as_str().expect("payload text").to_owned()),
        (None, Some(bytes)) => Bytes::from(hex(bytes.as_str().expect("payload hex"))),
        (None, None) => Bytes::new(),
        (Some(_), Some(_)) => panic!("both payload and payload_hex: {packet}"),
    }
}

fn action(value: &Value) -> Action {
    match value {
        Value::Number(id) => Action::Id(id.as_u64().expect("an unsigned action id")),
        Value::String(name) => Action::Method(name.clone()),
        other => panic!("bad action {other}"),
    }
}

fn mid(packet: &Value) -> u16 {
    u16::try_from(packet["mid"].as_u64().expect("a mid")).expect("a 16-bit mid")
}

/// The packet a JSON description stands for.
pub fn packet(value: &Value) -> Packet {
    match text(&value["kind"], "kind") {
        "ping" => Packet::Ping,
        "pong" => Packet::Pong,
        "request" => Packet::Request(Request {
            mid: mid(value),
            action: action(&value["action"]),
            header: header(&value["header"]),
            payload: payload(value),
        }),
        "notify" => Packet::Notify(Notify {
            action: action(&value["action"]),
            header: header(&value["header"]),
            payload: payload(value),
        }),
        "response" => Packet::Response(Response {
            mid: mid(value),
            status: code(&value["status"]),
            header: header(&value["header"]),
            payload: payload(value),
        }),
        "close" => Packet::Close(Close {
            status: code(&value["status"]),
            reason: text(&value["reason"], "reason").to_owned(),
        }),
        other => panic!("unknown kind {other}"),
    }
}

/// A vector of a section, with what it describes.
pub struct Described {
    pub name: &'static str,
    pub wire: Vec<u8>,
    pub entry: &'static Value,
}

/// The vectors of a section whose entries have `hex`.
pub fn described(section_name: &str) -> Vec<Described> {
    section(section_name)
        .iter()
        .map(|entry| Described {
            name: text(&entry["name"], "name"),
            wire: hex(text(&entry["hex"], "hex")),
            entry,
        })
        .collect()
}

/// The status named in an entry's field.
pub fn status(entry: &Value, field: &str) -> Code {
    code(&entry[field])
}

/// A section that is one object rather than a list.
pub fn section_value(name: &str) -> &'static Value {
    &document()[name]
}
