//! Serde attributes of generated messages, so JSON and msgpack read what other STMP peers
//! write: lowerCamel and Go-name aliases, nil for empty repeated fields and maps, 64-bit
//! integers from strings, enums from names, base64 bytes and flattened oneofs.

use heck::ToUpperCamelCase;
use prost_build::Config;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{
    DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorProto,
};
use stmp_names::go_field_name;

const SUPPORT: &str = "::stmp::serde_support";

pub(crate) fn add(
    config: &mut Config,
    files: &[&FileDescriptorProto],
    extern_paths: &[(String, String)],
) {
    for file in files {
        let package = file.package();
        let prefix = if package.is_empty() {
            String::new()
        } else {
            format!(".{package}")
        };
        let scope = Scope {
            package,
            extern_paths,
        };
        for message in &file.message_type {
            scope.message(config, &prefix, &[], message);
        }
        for enumeration in &file.enum_type {
            scope.enumeration(config, &prefix, enumeration);
        }
    }
}

struct Scope<'a> {
    package: &'a str,
    extern_paths: &'a [(String, String)],
}

/// The JSON name protoc gives a field: underscores removed, the letter after one upper-cased.
fn json_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn is_int64(ty: Type) -> bool {
    matches!(
        ty,
        Type::Int64 | Type::Uint64 | Type::Sint64 | Type::Fixed64 | Type::Sfixed64
    )
}

impl Scope<'_> {
    /// `message` is defined at `prefix` (`.pkg` or `.pkg.Outer`); `outer` names the messages
    /// around it (the module its struct is in).
    fn message(
        &self,
        config: &mut Config,
        prefix: &str,
        outer: &[String],
        message: &DescriptorProto,
    ) {
        let fq = format!("{prefix}.{}", message.name());
        if message.options.as_ref().is_some_and(|o| o.map_entry()) {
            return;
        }
        let map_entries: Vec<String> = message
            .nested_type
            .iter()
            .filter(|m| m.options.as_ref().is_some_and(|o| o.map_entry()))
            .map(|m| format!("{fq}.{}", m.name()))
            .collect();
        let mut inner = outer.to_vec();
        inner.push(message.name().to_owned());
        for field in &message.field {
            let is_map = field.r#type() == Type::Message
                && map_entries.iter().any(|entry| entry == field.type_name());
            let real_oneof = field.oneof_index.is_some() && !field.proto3_optional();
            if real_oneof {
                continue;
            }
            let mut attributes = Vec::new();
            // Serde names the field after its Rust ident; the other spellings are aliases.
            let mut names = vec![snake(field.name()).trim_start_matches("r#").to_owned()];
            for other in [json_name(field.name()), go_field_name(field.name())] {
                if !names.contains(&other) {
                    attributes.push(format!("#[serde(alias = \"{other}\")]"));
                    names.push(other);
                }
            }
            let value = if is_map {
                None
            } else {
                self.value_attribute(field, outer, false)
            };
            match value {
                Some(value) => attributes.push(value),
                // stmp-go writes an empty repeated field or map as nil.
                None if is_map || field.label() == Label::Repeated => attributes.push(format!(
                    "#[serde(deserialize_with = \"{SUPPORT}::null_as_default\")]"
                )),
                None => {}
            }
            for attribute in attributes {
                config.field_attribute(format!("{fq}.{}", field.name()), attribute);
            }
        }
        for (index, oneof) in message.oneof_decl.iter().enumerate() {
            let fields: Vec<&FieldDescriptorProto> = message
                .field
                .iter()
                .filter(|f| f.oneof_index == Some(index as i32) && !f.proto3_optional())
                .collect();
            if fields.is_empty() {
                continue;
            }
            // Without the leading dot the path matches the oneof field only: a fully
            // qualified one would match its variants too (prost-build matches prefixes).
            config.field_attribute(
                format!("{}.{}", &fq[1..], oneof.name()),
                "#[serde(flatten)]",
            );
            let oneof_path = format!("{fq}.{}", oneof.name());
            for field in fields {
                let mut attributes = vec![format!("#[serde(rename = \"{}\")]", field.name())];
                let json = json_name(field.name());
                if json != field.name() {
                    attributes.push(format!("#[serde(alias = \"{json}\")]"));
                }
                attributes.extend(self.value_attribute(field, &inner, true));
                for attribute in attributes {
                    config.field_attribute(format!("{oneof_path}.{}", field.name()), attribute);
                }
            }
        }
        for nested in &message.nested_type {
            self.message(config, &fq, &inner, nested);
        }
        for enumeration in &message.enum_type {
            self.enumeration(config, &fq, enumeration);
        }
    }

    /// The (de)serializer of a field's values; `scope` names the messages whose module the
    /// field's Rust type is in.
    fn value_attribute(
        &self,
        field: &FieldDescriptorProto,
        scope: &[String],
        in_oneof: bool,
    ) -> Option<String> {
        let repeated = field.label() == Label::Repeated;
        match field.r#type() {
            ty if is_int64(ty) => {
                Some(format!("#[serde(deserialize_with = \"{SUPPORT}::int64\")]"))
            }
            Type::Enum => {
                let path = self.resolve(field.type_name(), scope)?;
                Some(format!(
                    "#[serde(deserialize_with = \"{SUPPORT}::enumeration::<_, {path}, _>\")]"
                ))
            }
            Type::Bytes if !repeated || in_oneof => {
                Some(format!("#[serde(with = \"{SUPPORT}::bytes\")]"))
            }
            Type::Bytes => Some(format!("#[serde(with = \"{SUPPORT}::bytes_list\")]")),
            _ => None,
        }
    }

    fn enumeration(&self, config: &mut Config, prefix: &str, enumeration: &EnumDescriptorProto) {
        let fq = format!("{prefix}.{}", enumeration.name());
        for value in &enumeration.value {
            config.field_attribute(
                format!("{fq}.{}", value.name()),
                format!("#[serde(rename = \"{}\")]", value.name()),
            );
        }
    }

    /// The Rust path prost writes for `type_name` from a struct in the module of `scope`
    /// (prost-build's `resolve_ident`); `None` for extern types.
    fn resolve(&self, type_name: &str, scope: &[String]) -> Option<String> {
        if self.extern_paths.iter().any(|(proto, _)| {
            type_name == proto || type_name.starts_with(&format!("{proto}.")) || proto == "."
        }) {
            return None;
        }
        let mut local = self
            .package
            .split('.')
            .filter(|s| !s.is_empty())
            .chain(scope.iter().map(String::as_str))
            .peekable();
        let mut ident: Vec<&str> = type_name.trim_start_matches('.').split('.').collect();
        let last = ident.pop()?;
        let mut ident = ident.into_iter().peekable();
        while local.peek().is_some() && local.peek() == ident.peek() {
            local.next();
            ident.next();
        }
        let mut parts: Vec<String> = local.map(|_| "super".to_owned()).collect();
        parts.extend(ident.map(snake));
        parts.push(last.to_upper_camel_case());
        Some(parts.join("::"))
    }
}

/// prost-build's module names: snake case, keywords raw.
fn snake(name: &str) -> String {
    let snake = heck::ToSnakeCase::to_snake_case(name);
    match snake.as_str() {
        "as" | "break" | "const" | "continue" | "else" | "enum" | "false" | "fn" | "for" | "if"
        | "impl" | "in" | "let" | "loop" | "match" | "mod" | "move" | "mut" | "pub" | "ref"
        | "return" | "static" | "struct" | "trait" | "true" | "type" | "unsafe" | "use"
        | "where" | "while" | "dyn" | "abstract" | "become" | "box" | "do" | "final" | "macro"
        | "override" | "priv" | "typeof" | "unsized" | "virtual" | "yield" | "async" | "await"
        | "try" | "gen" => format!("r#{snake}"),
        "self" | "super" | "extern" | "crate" => format!("{snake}_"),
        _ => snake,
    }
}
