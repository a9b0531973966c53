//! Serde helpers used by the message types `stmp-build` generates, so that the JSON and msgpack
//! codecs read what other STMP peers (stmp-go, JavaScript) write:
//!
//! - 64-bit integers are written as numbers and read from numbers or decimal strings;
//! - enum fields are written as numbers and read from numbers or value names;
//! - `bytes` are base64 strings in human-readable formats (JSON) and binary elsewhere;
//! - repeated fields and maps read `null` / nil as empty (stmp-go's msgpack writes an empty
//!   one as nil).
//!
//! Not a public API: generated code names these paths.
#![allow(missing_docs)]

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeOwned, Deserializer, IntoDeserializer, Visitor};
use serde::ser::Serializer;

pub use serde;
pub use serde::{Deserialize, Serialize};

/// `deserialize_with` for repeated fields and maps: `null` is the empty value.
pub fn null_as_default<'de, T: Deserialize<'de> + Default, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A 64-bit integer type of a proto field.
pub trait Int64: Sized + Copy + std::str::FromStr {
    fn from_i64(value: i64) -> Option<Self>;
    fn from_u64(value: u64) -> Option<Self>;
    fn from_f64(value: f64) -> Option<Self>;
}

impl Int64 for i64 {
    fn from_i64(value: i64) -> Option<Self> {
        Some(value)
    }
    fn from_u64(value: u64) -> Option<Self> {
        i64::try_from(value).ok()
    }
    fn from_f64(value: f64) -> Option<Self> {
        (value.fract() == 0.0 && value >= i64::MIN as f64 && value <= i64::MAX as f64)
            .then_some(value as i64)
    }
}

impl Int64 for u64 {
    fn from_i64(value: i64) -> Option<Self> {
        u64::try_from(value).ok()
    }
    fn from_u64(value: u64) -> Option<Self> {
        Some(value)
    }
    fn from_f64(value: f64) -> Option<Self> {
        (value.fract() == 0.0 && value >= 0.0 && value <= u64::MAX as f64).then_some(value as u64)
    }
}

/// One 64-bit integer read from a number or a string.
struct Int64Value<T>(T);

impl<'de, T: Int64> Deserialize<'de> for Int64Value<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<T: Int64> Visitor<'_> for V<T> {
            type Value = Int64Value<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a 64-bit integer, as a number or a string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                T::from_i64(v)
                    .map(Int64Value)
                    .ok_or_else(|| E::custom(format!("{v} is out of range")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                T::from_u64(v)
                    .map(Int64Value)
                    .ok_or_else(|| E::custom(format!("{v} is out of range")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                T::from_f64(v)
                    .map(Int64Value)
                    .ok_or_else(|| E::custom(format!("{v} is not a 64-bit integer")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.trim()
                    .parse()
                    .map(Int64Value)
                    .map_err(|_| E::custom(format!("{v:?} is not a 64-bit integer")))
            }
        }
        deserializer.deserialize_any(V(PhantomData))
    }
}

/// A field holding 64-bit integers: `i64`, `Option<i64>`, `Vec<i64>` (and `u64`).
pub trait Int64Field: Sized {
    fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error>;
}

impl<T: Int64> Int64Field for T {
    fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Int64Value::<T>::deserialize(deserializer).map(|v| v.0)
    }
}

impl<T: Int64> Int64Field for Option<T> {
    fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Option::<Int64Value<T>>::deserialize(deserializer)?.map(|v| v.0))
    }
}

impl<T: Int64> Int64Field for Vec<T> {
    fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let values = Option::<Vec<Int64Value<T>>>::deserialize(deserializer)?;
        Ok(values
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.0)
            .collect())
    }
}

/// `deserialize_with` for 64-bit integer fields: numbers or strings.
pub fn int64<'de, F: Int64Field, D: Deserializer<'de>>(deserializer: D) -> Result<F, D::Error> {
    F::deserialize(deserializer)
}

/// One enum value read from its number or its name (`E` is the generated enum, whose serde
/// variant names are the proto value names).
struct EnumValue<E>(i32, PhantomData<E>);

impl<'de, E: DeserializeOwned + Into<i32>> Deserialize<'de> for EnumValue<E> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<E>(PhantomData<E>);
        impl<E: DeserializeOwned + Into<i32>> Visitor<'_> for V<E> {
            type Value = EnumValue<E>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an enum value, as a number or a name")
            }
            fn visit_i64<Er: de::Error>(self, v: i64) -> Result<Self::Value, Er> {
                i32::try_from(v)
                    .map(|v| EnumValue(v, PhantomData))
                    .map_err(|_| Er::custom(format!("{v} is out of range")))
            }
            fn visit_u64<Er: de::Error>(self, v: u64) -> Result<Self::Value, Er> {
                i32::try_from(v)
                    .map(|v| EnumValue(v, PhantomData))
                    .map_err(|_| Er::custom(format!("{v} is out of range")))
            }
            fn visit_str<Er: de::Error>(self, v: &str) -> Result<Self::Value, Er> {
                let deserializer: de::value::StrDeserializer<'_, Er> = v.into_deserializer();
                let value = E::deserialize(deserializer)?;
                Ok(EnumValue(value.into(), PhantomData))
            }
        }
        deserializer.deserialize_any(V(PhantomData))
    }
}

/// A field holding enum values: `i32`, `Option<i32>` or `Vec<i32>`.
pub trait EnumField: Sized {
    fn deserialize<'de, E: DeserializeOwned + Into<i32>, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Self, D::Error>;
}

impl EnumField for i32 {
    fn deserialize<'de, E: DeserializeOwned + Into<i32>, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Self, D::Error> {
        EnumValue::<E>::deserialize(deserializer).map(|v| v.0)
    }
}

impl EnumField for Option<i32> {
    fn deserialize<'de, E: DeserializeOwned + Into<i32>, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Self, D::Error> {
        Ok(Option::<EnumValue<E>>::deserialize(deserializer)?.map(|v| v.0))
    }
}

impl EnumField for Vec<i32> {
    fn deserialize<'de, E: DeserializeOwned + Into<i32>, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Self, D::Error> {
        let values = Option::<Vec<EnumValue<E>>>::deserialize(deserializer)?;
        Ok(values
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.0)
            .collect())
    }
}

/// `deserialize_with` for enum fields: `enumeration::<_, Color, _>` reads numbers or names.
pub fn enumeration<'de, F: EnumField, E: DeserializeOwned + Into<i32>, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<F, D::Error> {
    F::deserialize::<E, D>(deserializer)
}

/// `with` for `bytes` fields (`Vec<u8>`, `Bytes`, and `Option`s of them): base64 in JSON, binary
/// in msgpack; reads base64 (standard or URL-safe, padded or not), binary or arrays of numbers.
pub mod bytes {
    use super::*;

    /// A `bytes` field.
    pub trait BytesField: Sized {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error>;
        fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error>;
    }

    struct Raw(Vec<u8>);

    struct RawRef<'a>(&'a [u8]);

    impl serde::Serialize for RawRef<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            if serializer.is_human_readable() {
                serializer.serialize_str(&encode_base64(self.0))
            } else {
                serializer.serialize_bytes(self.0)
            }
        }
    }

    impl<'de> Deserialize<'de> for Raw {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Raw;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("bytes, as base64, binary or an array of numbers")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
                    decode_base64(v)
                        .map(Raw)
                        .ok_or_else(|| E::custom("invalid base64"))
                }
                fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Raw, E> {
                    Ok(Raw(v.to_vec()))
                }
                fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Raw, E> {
                    Ok(Raw(v))
                }
                fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
                    let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                    while let Some(byte) = seq.next_element::<u8>()? {
                        out.push(byte);
                    }
                    Ok(Raw(out))
                }
            }
            deserializer.deserialize_any(V)
        }
    }

    impl BytesField for Vec<u8> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serde::Serialize::serialize(&RawRef(self), serializer)
        }
        fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            Ok(Option::<Raw>::deserialize(deserializer)?
                .map(|raw| raw.0)
                .unwrap_or_default())
        }
    }

    /// A field prost makes [`Bytes`](::bytes::Bytes) (`bytes = "bytes"`), which protobuf
    /// decodes without a copy (see [`Codec::decode_bytes`](crate::codec::Codec::decode_bytes)).
    impl BytesField for ::bytes::Bytes {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serde::Serialize::serialize(&RawRef(self), serializer)
        }
        fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            <Vec<u8> as BytesField>::deserialize(deserializer).map(::bytes::Bytes::from)
        }
    }

    /// An `optional bytes` field, of either type.
    impl<T: AsRef<[u8]> + From<Vec<u8>>> BytesField for Option<T> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            match self {
                Some(bytes) => serializer.serialize_some(&RawRef(bytes.as_ref())),
                None => serializer.serialize_none(),
            }
        }
        fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            Ok(Option::<Raw>::deserialize(deserializer)?.map(|raw| raw.0.into()))
        }
    }

    pub fn serialize<F: BytesField, S: Serializer>(
        value: &F,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        value.serialize(serializer)
    }

    pub fn deserialize<'de, F: BytesField, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<F, D::Error> {
        F::deserialize(deserializer)
    }

    /// One element of a `repeated bytes` field, written as [`serialize`] writes a field.
    pub(super) struct Element<'a, F>(pub(super) &'a F);

    impl<F: BytesField> serde::Serialize for Element<'_, F> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            self.0.serialize(serializer)
        }
    }

    /// One element of a `repeated bytes` field, read as [`deserialize`] reads a field.
    pub(super) struct OwnedElement<F>(pub(super) F);

    impl<'de, F: BytesField> Deserialize<'de> for OwnedElement<F> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            F::deserialize(deserializer).map(OwnedElement)
        }
    }

    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    /// Standard base64 with padding.
    pub fn encode_base64(input: &[u8]) -> String {
        let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
        for chunk in input.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    /// Standard or URL-safe base64, padding optional.
    pub fn decode_base64(input: &str) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(input.len() / 4 * 3);
        let mut acc = 0u32;
        let mut bits = 0;
        for c in input.trim_end_matches('=').bytes() {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' | b'-' => 62,
                b'/' | b'_' => 63,
                _ => return None,
            };
            acc = (acc << 6) | u32::from(v);
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        Some(out)
    }
}

/// `with` for `repeated bytes` fields (`Vec<Vec<u8>>`, `Vec<Bytes>`): each element as [`bytes`]
/// writes a field (base64 in JSON, as Go's `encoding/json` writes a `[][]byte`; binary in
/// msgpack), and `null` / nil reads as empty.
pub mod bytes_list {
    use super::bytes::{BytesField, Element, OwnedElement};
    use super::*;

    pub fn serialize<F: BytesField, S: Serializer>(
        value: &[F],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(value.iter().map(Element))
    }

    pub fn deserialize<'de, F: BytesField, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<F>, D::Error> {
        let elements = Option::<Vec<OwnedElement<F>>>::deserialize(deserializer)?;
        Ok(elements
            .unwrap_or_default()
            .into_iter()
            .map(|element| element.0)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::bytes::{decode_base64, encode_base64};
    use super::*;

    #[derive(Debug, PartialEq, serde::Deserialize)]
    #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
    enum Color {
        Red,
        Green,
    }

    impl From<Color> for i32 {
        fn from(c: Color) -> i32 {
            match c {
                Color::Red => 0,
                Color::Green => 1,
            }
        }
    }

    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    #[serde(default)]
    struct Msg {
        #[serde(deserialize_with = "int64")]
        big: i64,
        #[serde(deserialize_with = "int64")]
        many: Vec<u64>,
        #[serde(deserialize_with = "enumeration::<_, Color, _>")]
        color: i32,
        #[serde(deserialize_with = "enumeration::<_, Color, _>")]
        colors: Vec<i32>,
        #[serde(with = "bytes")]
        data: Vec<u8>,
    }

    #[test]
    fn reads_numbers_strings_and_names() {
        let msg: Msg = serde_json::from_str(
            r#"{"big":"-9007199254740993","many":[1,"18446744073709551615"],"color":"GREEN","colors":[1,"RED"],"data":"aGk="}"#,
        )
        .unwrap();
        assert_eq!(
            msg,
            Msg {
                big: -9007199254740993,
                many: vec![1, u64::MAX],
                color: 1,
                colors: vec![1, 0],
                data: b"hi".to_vec(),
            }
        );
        let empty: Msg = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, Msg::default());
        assert!(serde_json::from_str::<Msg>(r#"{"color":"BLUE"}"#).is_err());
    }

    #[test]
    fn null_is_an_empty_repeated_field_or_map() {
        #[derive(Debug, Default, PartialEq, serde::Deserialize)]
        #[serde(default)]
        struct Lists {
            #[serde(deserialize_with = "null_as_default")]
            names: Vec<String>,
            #[serde(deserialize_with = "null_as_default")]
            counts: std::collections::HashMap<String, u32>,
        }
        let nil: Lists = serde_json::from_str(r#"{"names":null,"counts":null}"#).unwrap();
        assert_eq!(nil, Lists::default());
        // msgpack: {"names": nil, "counts": nil}, as a Go encoder writes nil slices and maps.
        let nil: Lists = rmp_serde::from_slice(b"\x82\xa5names\xc0\xa6counts\xc0").unwrap();
        assert_eq!(nil, Lists::default());
        let full: Lists = serde_json::from_str(r#"{"names":["a"],"counts":{"b":2}}"#).unwrap();
        assert_eq!(full.names, ["a"]);
        assert_eq!(full.counts["b"], 2);
    }

    #[test]
    fn repeated_bytes_are_base64_strings_in_json_and_binary_in_msgpack() {
        #[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(default)]
        struct Chunks {
            #[serde(with = "bytes_list")]
            vecs: Vec<Vec<u8>>,
            #[serde(with = "bytes_list")]
            shared: Vec<::bytes::Bytes>,
        }
        let chunks = Chunks {
            vecs: vec![b"hi".to_vec(), Vec::new()],
            shared: vec![::bytes::Bytes::from_static(b"\xff")],
        };
        // What Go's encoding/json writes for a [][]byte, and reads back.
        let json = serde_json::to_string(&chunks).unwrap();
        assert_eq!(json, r#"{"vecs":["aGk=",""],"shared":["/w=="]}"#);
        assert_eq!(serde_json::from_str::<Chunks>(&json).unwrap(), chunks);
        let nil: Chunks = serde_json::from_str(r#"{"vecs":null,"shared":null}"#).unwrap();
        assert_eq!(nil, Chunks::default());
        // msgpack: arrays of bin, as a Go encoder writes a [][]byte; nil is empty.
        let packed = rmp_serde::to_vec_named(&chunks).unwrap();
        assert_eq!(
            packed,
            b"\x82\xa4vecs\x92\xc4\x02hi\xc4\x00\xa6shared\x91\xc4\x01\xff"
        );
        assert_eq!(rmp_serde::from_slice::<Chunks>(&packed).unwrap(), chunks);
        let nil: Chunks = rmp_serde::from_slice(b"\x82\xa4vecs\xc0\xa6shared\xc0").unwrap();
        assert_eq!(nil, Chunks::default());
    }

    #[test]
    fn base64_round_trips() {
        for input in [&b""[..], b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar"] {
            assert_eq!(decode_base64(&encode_base64(input)).unwrap(), input);
        }
        assert_eq!(encode_base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(encode_base64(b"fo"), "Zm8=");
        assert_eq!(decode_base64("_-8").unwrap(), vec![0xff, 0xef]);
    }
}
