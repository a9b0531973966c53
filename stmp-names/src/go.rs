//! The names Go gives proto fields, which stmp-go's msgpack codec writes as map keys.
//!
//! stmp-go encodes msgpack with a reflection-based encoder that keys each struct field by its Go
//! name, and Go's protobuf generators name fields by upper-casing each word of the proto name.
//! A Rust peer must use the same keys to be understood.

use alloc::string::String;
use alloc::vec::Vec;

/// Methods the Go protobuf generators put on every message: a field whose Go name would
/// collide with one gets an underscore appended.
const GO_MESSAGE_METHODS: [&str; 8] = [
    "Reset",
    "String",
    "ProtoMessage",
    "Marshal",
    "Unmarshal",
    "ExtensionRangeArray",
    "ExtensionMap",
    "Descriptor",
];

/// The Go name of a proto field, as protoc-gen-go and protoc-gen-gogo spell it: each word
/// starts upper case, where words are separated by `_` before a lower-case letter, by
/// upper-case letters and by digits; a leading `_` becomes `X`; a name that collides with a
/// generated method (`Reset`, `String`, `Descriptor`…) gets a trailing `_`.
///
/// ```
/// use stmp_names::go_field_name;
///
/// assert_eq!(go_field_name("name"), "Name");
/// assert_eq!(go_field_name("room_id"), "RoomId");
/// assert_eq!(go_field_name("_my_field_name_2"), "XMyFieldName_2");
/// assert_eq!(go_field_name("string"), "String_");
/// ```
pub fn go_field_name(proto_name: &str) -> String {
    let chars: Vec<char> = proto_name.chars().collect();
    let mut out = String::with_capacity(proto_name.len() + 1);
    let mut i = 0;
    if chars.first() == Some(&'_') {
        out.push('X');
        i = 1;
    }
    while i < chars.len() {
        let c = chars[i];
        let next_is_lower = chars.get(i + 1).is_some_and(char::is_ascii_lowercase);
        i += 1;
        if c == '_' && next_is_lower {
            continue;
        }
        if c.is_ascii_digit() {
            out.push(c);
            continue;
        }
        // A word: its first letter upper-cased, the lower-case letters after it kept.
        out.push(c.to_ascii_uppercase());
        while let Some(&lower) = chars.get(i).filter(|c| c.is_ascii_lowercase()) {
            out.push(lower);
            i += 1;
        }
    }
    if GO_MESSAGE_METHODS.contains(&out.as_str()) {
        out.push('_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::go_field_name;

    #[test]
    fn names_as_go_generators_write_them() {
        for (proto, go) in [
            ("name", "Name"),
            ("users", "Users"),
            ("room_id", "RoomId"),
            ("roomId", "RoomId"),
            ("user_id_2", "UserId_2"),
            ("field2name", "Field2Name"),
            ("_private", "XPrivate"),
            ("_my_field_name_2", "XMyFieldName_2"),
            ("URL", "URL"),
            ("http_URL", "Http_URL"),
            ("a__b", "A_B"),
            ("trailing_", "Trailing_"),
            ("reset", "Reset_"),
            ("descriptor", "Descriptor_"),
            ("size", "Size"),
            ("", ""),
        ] {
            assert_eq!(go_field_name(proto), go, "{proto}");
        }
    }

    #[test]
    fn non_ascii_names_do_not_panic() {
        // Proto identifiers are ASCII; anything else passes through whole.
        assert_eq!(go_field_name("é_a"), "éA");
    }
}
