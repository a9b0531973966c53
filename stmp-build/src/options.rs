//! Reads the stmp options of services and methods (through prost-reflect, which keeps extension
//! values) and checks them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prost_reflect::{
    DescriptorPool, DynamicMessage, ExtensionDescriptor, ServiceDescriptor, Value,
};

use crate::Error;

/// What to generate for one proto service.
#[derive(Clone, Debug)]
pub(crate) struct ServiceSpec {
    /// The generated service side: trait, server, client.
    pub(crate) service: bool,
    /// The generated events side: listener, broadcaster.
    pub(crate) events: bool,
    /// Per method, by proto name.
    pub(crate) methods: HashMap<String, MethodSpec>,
}

/// One method's names and action.
#[derive(Clone, Debug)]
pub(crate) struct MethodSpec {
    /// `package.Service.Method`, names with their first letter upper-cased (as stmp-go).
    pub(crate) full_name: String,
    /// The input message's full name.
    pub(crate) input: String,
    /// The output message's full name.
    pub(crate) output: String,
    /// `(stmp.service)` and `(stmp.method)`, when both are set.
    pub(crate) ids: Option<(u64, u8)>,
    /// The numeric action.
    pub(crate) action: u64,
}

/// Specs by the proto full name of the service (`package.Service`).
pub(crate) type Plan = HashMap<String, ServiceSpec>;

struct Extensions {
    service: Option<ExtensionDescriptor>,
    kind: Option<ExtensionDescriptor>,
    method: Option<ExtensionDescriptor>,
}

impl Extensions {
    fn find(pool: &DescriptorPool) -> Extensions {
        Extensions {
            service: pool.get_extension_by_name("stmp.service"),
            kind: pool.get_extension_by_name("stmp.kind"),
            method: pool.get_extension_by_name("stmp.method"),
        }
    }
}

fn get_u64(options: &DynamicMessage, extension: Option<&ExtensionDescriptor>) -> Option<u64> {
    let extension = extension?;
    if !options.has_extension(extension) {
        return None;
    }
    match options.get_extension(extension).as_ref() {
        Value::U64(value) => Some(*value),
        _ => None,
    }
}

fn get_kind(
    options: &DynamicMessage,
    extension: Option<&ExtensionDescriptor>,
) -> Option<(bool, bool)> {
    let extension = extension?;
    if !options.has_extension(extension) {
        return None;
    }
    match options.get_extension(extension).as_ref() {
        Value::Message(kind) => {
            let flag = |name: &str| {
                kind.get_field_by_name(name)
                    .is_some_and(|value| value.as_bool() == Some(true))
            };
            Some((flag("service"), flag("events")))
        }
        _ => None,
    }
}

pub(crate) fn up_first(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

/// The kind of a service without `(stmp.kind)`: by its name's suffix, as stmp-go.
fn kind_by_name(name: &str) -> (bool, bool) {
    if name.ends_with("Service") {
        (true, false)
    } else if name.ends_with("Events") {
        (false, true)
    } else {
        (true, true)
    }
}

/// Reads the options of every service of `files` and checks them: `(stmp.method)` needs
/// `(stmp.service)`, method ids fit a byte, and no two methods share an action.
pub(crate) fn plan(pool: &DescriptorPool, files: &BTreeSet<String>) -> Result<Plan, Error> {
    let extensions = Extensions::find(pool);
    let mut plan = Plan::new();
    let mut errors = Vec::new();
    // action → (file, full method name), for duplicates.
    let mut actions: BTreeMap<u64, (String, String)> = BTreeMap::new();
    for file in pool.files().filter(|f| files.contains(f.name())) {
        for service in file.services() {
            let spec = service_spec(&service, &extensions, &mut errors);
            let mut methods: Vec<&MethodSpec> = spec.methods.values().collect();
            methods.sort_by(|a, b| a.full_name.cmp(&b.full_name));
            for method in methods {
                match actions.get(&method.action) {
                    Some((other_file, other)) => errors.push(format!(
                        "{file}: methods {other} ({other_file}) and {this} have the same action \
                         {action:#X}; give one of them other (stmp.service)/(stmp.method) ids",
                        file = file.name(),
                        this = method.full_name,
                        action = method.action,
                    )),
                    None => {
                        actions.insert(
                            method.action,
                            (file.name().to_owned(), method.full_name.clone()),
                        );
                    }
                }
            }
            plan.insert(service.full_name().to_owned(), spec);
        }
    }
    if errors.is_empty() {
        Ok(plan)
    } else {
        Err(Error::new(format!(
            "stmp-build: invalid stmp options:\n  {}",
            errors.join("\n  ")
        )))
    }
}

fn service_spec(
    service: &ServiceDescriptor,
    extensions: &Extensions,
    errors: &mut Vec<String>,
) -> ServiceSpec {
    let file = service.parent_file();
    let options = service.options();
    let service_name = up_first(service.name());
    let mut service_id = get_u64(&options, extensions.service.as_ref());
    let bad_service_id = service_id.is_some_and(|id| id > 0x00FF_FFFF_FFFF_FFFF);
    if let Some(id) = service_id
        && id > 0x00FF_FFFF_FFFF_FFFF
    {
        errors.push(format!(
            "{}: service {service_name} has (stmp.service) = {id:#X}, more than 7 bytes (the \
             action is `service << 8 | method` in 64 bits)",
            file.name()
        ));
        service_id = None;
    }
    let (is_service, is_events) =
        get_kind(&options, extensions.kind.as_ref()).unwrap_or_else(|| kind_by_name(&service_name));
    let mut methods = HashMap::new();
    for method in service.methods() {
        let method_name = up_first(method.name());
        let full_name = format!("{}.{}.{}", file.package_name(), service_name, method_name);
        let method_id = get_u64(&method.options(), extensions.method.as_ref());
        let ids = match (service_id, method_id) {
            (_, Some(id)) if id > 255 => {
                errors.push(format!(
                    "{}: method {service_name}.{method_name} has (stmp.method) = {id}, more than \
                     255 (a method id is one byte)",
                    file.name()
                ));
                None
            }
            (None, Some(_)) if bad_service_id => None,
            (None, Some(id)) => {
                errors.push(format!(
                    "{}: method {service_name}.{method_name} sets (stmp.method) = {id} but its \
                     service {service_name} has no (stmp.service)",
                    file.name()
                ));
                None
            }
            (Some(service_id), Some(method_id)) => Some((service_id, method_id as u8)),
            (_, None) => None,
        };
        let action = match ids {
            Some((service_id, method_id)) => (service_id << 8) | u64::from(method_id),
            None => stmp_names::action_id(&full_name),
        };
        methods.insert(
            method.name().to_owned(),
            MethodSpec {
                full_name,
                input: method.input().full_name().to_owned(),
                output: method.output().full_name().to_owned(),
                ids,
                action,
            },
        );
    }
    ServiceSpec {
        service: is_service,
        events: is_events,
        methods,
    }
}
