//! The stmp code of each proto service, appended by prost-build after the package's messages.

use heck::{ToShoutySnakeCase, ToSnakeCase};
use proc_macro2::{Span, TokenStream};
use prost_build::{Comments, Method, Service, ServiceGenerator};
use quote::{format_ident, quote};

use crate::Parts;
use crate::options::{MethodSpec, Plan, ServiceSpec, up_first};

pub(crate) struct StmpGenerator {
    plan: Plan,
    parts: Parts,
}

impl StmpGenerator {
    pub(crate) fn new(plan: Plan, parts: Parts) -> StmpGenerator {
        StmpGenerator { plan, parts }
    }
}

impl ServiceGenerator for StmpGenerator {
    fn generate(&mut self, service: Service, buf: &mut String) {
        let key = if service.package.is_empty() {
            service.proto_name.clone()
        } else {
            format!("{}.{}", service.package, service.proto_name)
        };
        // Every service of a generated file was planned (and checked) before prost-build ran.
        let Some(spec) = self.plan.get(&key) else {
            return;
        };
        let code = ServiceCode::new(&service, spec).render(self.parts);
        buf.push('\n');
        buf.push_str(&code.to_string());
        buf.push('\n');
    }
}

/// Doc attributes of proto comments, as prost renders them (URLs and brackets escaped).
fn docs(comments: &Comments) -> Vec<TokenStream> {
    let mut text = String::new();
    // Detached comments are not about the item.
    let comments = Comments {
        leading_detached: Vec::new(),
        ..comments.clone()
    };
    comments.append_with_indent(0, &mut text);
    text.lines()
        .filter_map(|line| line.strip_prefix("///"))
        .map(|line| quote! { #[doc = #line] })
        .collect()
}

/// Doc attributes of our own text, wrapped at 90 columns.
fn doc(text: &str) -> TokenStream {
    let lines: Vec<TokenStream> = wrap(text, 90)
        .iter()
        .map(|line| {
            let line = if line.is_empty() {
                String::new()
            } else {
                format!(" {line}")
            };
            quote! { #[doc = #line] }
        })
        .collect();
    quote! { #(#lines)* }
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for paragraph in text.lines() {
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            if !line.is_empty() && line.len() + 1 + word.len() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        lines.push(line);
    }
    lines
}

fn hex(value: u64) -> syn::LitInt {
    syn::LitInt::new(&format!("0x{value:X}"), Span::call_site())
}

/// A message's type path as seen from inside a service's module: one level deeper than the
/// package, where prost wrote it.
fn in_service_module(path: &str) -> String {
    if path.starts_with("::") || path.starts_with("crate::") {
        path.to_owned()
    } else {
        format!("super::{path}")
    }
}

fn rust_type(path: &str) -> syn::Type {
    syn::parse_str(path).unwrap_or_else(|error| panic!("prost type path {path:?}: {error}"))
}

struct MethodCode<'a> {
    method: &'a Method,
    spec: &'a MethodSpec,
    /// `JOIN_ROOM`
    constant: syn::Ident,
    /// `join_room`
    function: syn::Ident,
    input: syn::Type,
    output: syn::Type,
}

struct ServiceCode<'a> {
    service: &'a Service,
    spec: &'a ServiceSpec,
    /// `RoomService`
    name: String,
    /// `room_service`
    module: syn::Ident,
    methods: Vec<MethodCode<'a>>,
}

impl<'a> ServiceCode<'a> {
    fn new(service: &'a Service, spec: &'a ServiceSpec) -> Self {
        let methods = service
            .methods
            .iter()
            .filter_map(|method| {
                let spec = spec.methods.get(&method.proto_name)?;
                Some(MethodCode {
                    method,
                    spec,
                    constant: format_ident!("{}", method.proto_name.to_shouty_snake_case()),
                    function: syn::parse_str(&method.name)
                        .unwrap_or_else(|_| format_ident!("{}_", method.name)),
                    input: rust_type(&in_service_module(&method.input_type)),
                    output: rust_type(&in_service_module(&method.output_type)),
                })
            })
            .collect();
        let name = up_first(&service.name);
        ServiceCode {
            service,
            spec,
            module: syn::parse_str(&name.to_snake_case())
                .unwrap_or_else(|_| format_ident!("{}_", name.to_snake_case())),
            name,
            methods,
        }
    }

    /// Everything generated for the service, in its own module so a message named like a
    /// generated item cannot collide with it.
    fn render(&self, parts: Parts) -> TokenStream {
        let module = &self.module;
        let module_doc = doc(&format!(
            "`{}`: its methods (names, actions and message types), and what serves, calls, \
             listens to and sends them.",
            self.proto_name()
        ));
        let table = self.method_table();
        let server = (self.spec.service && parts.server).then(|| self.server());
        let client = (self.spec.service && parts.client).then(|| self.client());
        let events = (self.spec.events && parts.events).then(|| self.events());
        quote! {
            #module_doc
            pub mod #module {
                #table
                #server
                #client
                #events
            }
        }
    }

    fn method_table(&self) -> TokenStream {
        let constants = self.methods.iter().map(|m| {
            let constant = &m.constant;
            let docs = docs(&m.method.comments);
            let sep = if docs.is_empty() { quote!() } else { quote!(#[doc = ""]) };
            let name = &m.spec.full_name;
            let input = &m.spec.input;
            let output = &m.spec.output;
            let (how, value) = match m.spec.ids {
                Some((service_id, method_id)) => {
                    let service_id = hex(service_id);
                    let method_id = hex(u64::from(method_id));
                    (
                        format!(
                            "Action `{:#X}` (`(stmp.service) << 8 | (stmp.method)`).",
                            m.spec.action
                        ),
                        quote! {
                            ::stmp::Method::with_ids(#name, #service_id, #method_id, #input, #output)
                        },
                    )
                }
                None => (
                    format!(
                        "Action `{:#010X}` (MurmurHash3 of `{name}`).",
                        m.spec.action
                    ),
                    quote! { ::stmp::Method::new(#name, #input, #output) },
                ),
            };
            let how = doc(&how);
            quote! {
                #(#docs)*
                #sep
                #how
                pub const #constant: ::stmp::Method = #value;
            }
        });
        let all = self.methods.iter().map(|m| &m.constant);
        let all_doc = doc(&format!(
            "Every method of `{}`, in proto order.",
            self.proto_name()
        ));
        quote! {
            #(#constants)*
            #all_doc
            pub const METHODS: &[::stmp::Method] = &[#(#all),*];
        }
    }

    fn proto_name(&self) -> String {
        if self.service.package.is_empty() {
            self.service.proto_name.clone()
        } else {
            format!("{}.{}", self.service.package, self.service.proto_name)
        }
    }

    fn server(&self) -> TokenStream {
        let trait_name = format_ident!("{}", self.name);
        let server = format_ident!("{}Server", self.name);
        let client = format_ident!("{}Client", self.name);
        let mut trait_doc = docs(&self.service.comments);
        if !trait_doc.is_empty() {
            trait_doc.push(quote!(#[doc = ""]));
        }
        let trait_about = doc(&format!(
            "Implement it with `async fn`s and serve it with [`{server}`] on a \
             [`stmp::Server`] (or on a [`stmp::Client`]: the \
             server may call its clients too); call it with [`{client}`]."
        ));
        let signatures = self.methods.iter().map(|m| {
            let docs = docs(&m.method.comments);
            let function = &m.function;
            let input = &m.input;
            let output = &m.output;
            quote! {
                #(#docs)*
                fn #function(
                    &self,
                    ctx: ::stmp::Context,
                    input: #input,
                ) -> impl ::core::future::Future<
                    Output = ::core::result::Result<#output, ::stmp::Status>,
                > + ::core::marker::Send;
            }
        });
        let routes = self.methods.iter().map(|m| {
            let function = &m.function;
            let constant = &m.constant;
            let input = &m.input;
            quote! {
                let service = self.inner.clone();
                router.route(
                    &#constant,
                    move |ctx: ::stmp::Context, input: #input| {
                        let service = service.clone();
                        async move { service.#function(ctx, input).await }
                    },
                );
            }
        });
        let unused = self.methods.is_empty().then(|| quote! { let _ = router; });
        let server_doc = doc(&format!(
            "Serves a [`{trait_name}`]: pass it to `add_service` of a server or client \
             builder, or of a [`stmp::Router`]."
        ));
        quote! {
            #(#trait_doc)*
            #trait_about
            pub trait #trait_name: ::core::marker::Send + ::core::marker::Sync + 'static {
                #(#signatures)*
            }

            #server_doc
            #[derive(Debug)]
            pub struct #server<T> {
                inner: ::std::sync::Arc<T>,
            }

            impl<T: #trait_name> #server<T> {
                /// Serves `service`.
                pub fn new(service: T) -> Self {
                    Self::from_arc(::std::sync::Arc::new(service))
                }

                /// Serves a shared `service`.
                pub fn from_arc(service: ::std::sync::Arc<T>) -> Self {
                    Self { inner: service }
                }
            }

            impl<T> ::core::clone::Clone for #server<T> {
                fn clone(&self) -> Self {
                    Self {
                        inner: self.inner.clone(),
                    }
                }
            }

            impl<T: #trait_name> ::stmp::Service for #server<T> {
                fn register(self, router: &::stmp::Router) {
                    #unused
                    #(#routes)*
                }
            }
        }
    }

    fn client(&self) -> TokenStream {
        let client = format_ident!("{}Client", self.name);
        let client_doc = doc(&format!(
            "Calls `{}` on the peer, through a [`stmp::Client`] or, from a \
             server, through the client's [`stmp::Conn`].",
            self.proto_name()
        ));
        let calls = self.methods.iter().map(|m| {
            let docs = docs(&m.method.comments);
            let function = &m.function;
            let with = format_ident!("{}_with", function.to_string().trim_start_matches("r#"));
            let constant = &m.constant;
            let input = &m.input;
            let output = &m.output;
            let with_doc = doc(&format!(
                "[`{}`](Self::{}) with options: a deadline, header entries.",
                function.to_string().trim_start_matches("r#"),
                function
            ));
            let notify = format_ident!("notify_{}", function.to_string().trim_start_matches("r#"));
            let notify_doc = doc(&format!(
                "Sends `{}` as a notify: the peer runs it and answers nothing.",
                m.method.proto_name
            ));
            quote! {
                #(#docs)*
                pub async fn #function(
                    &self,
                    input: #input,
                ) -> ::core::result::Result<#output, ::stmp::Status> {
                    self.#with(input, ::stmp::CallOptions::default()).await
                }

                #with_doc
                pub async fn #with(
                    &self,
                    input: #input,
                    options: ::stmp::CallOptions,
                ) -> ::core::result::Result<#output, ::stmp::Status> {
                    ::stmp::Caller::call(&self.caller, &#constant, &input, options).await
                }

                #notify_doc
                pub async fn #notify(
                    &self,
                    input: #input,
                ) -> ::core::result::Result<(), ::stmp::Status> {
                    ::stmp::Caller::notify(
                        &self.caller,
                        &#constant,
                        &input,
                        ::stmp::CallOptions::default(),
                    )
                    .await
                }
            }
        });
        quote! {
            #client_doc
            #[derive(Clone, Debug)]
            pub struct #client<C> {
                caller: C,
            }

            impl<C: ::stmp::Caller> #client<C> {
                /// A client calling through `caller`.
                pub fn new(caller: C) -> Self {
                    Self { caller }
                }

                /// What the calls go through.
                pub fn caller(&self) -> &C {
                    &self.caller
                }

                #(#calls)*
            }
        }
    }

    fn events(&self) -> TokenStream {
        let listener = format_ident!("{}Listener", self.name);
        let handle = format_ident!("{}ListenerHandle", self.name);
        let attach = format_ident!(
            "attach_{}",
            self.module.to_string().trim_start_matches("r#")
        );
        let mut listener_doc = docs(&self.service.comments);
        if !listener_doc.is_empty() {
            listener_doc.push(quote!(#[doc = ""]));
        }
        let listener_about = doc(&format!(
            "Receives the events of `{}`: implement the events you want (the others do \
             nothing) and attach it with [`{attach}`].",
            self.proto_name()
        ));
        let handlers = self.methods.iter().map(|m| {
            let docs = docs(&m.method.comments);
            let function = &m.function;
            let input = &m.input;
            quote! {
                #(#docs)*
                fn #function(
                    &self,
                    ctx: ::stmp::Context,
                    event: #input,
                ) -> impl ::core::future::Future<Output = ()> + ::core::marker::Send {
                    let _ = (ctx, event);
                    async {}
                }
            }
        });
        let listens = self.methods.iter().map(|m| {
            let function = &m.function;
            let constant = &m.constant;
            let input = &m.input;
            quote! {
                {
                    let listener = listener.clone();
                    router.listen(
                        &#constant,
                        move |ctx: ::stmp::Context, event: #input| {
                            let listener = listener.clone();
                            async move { listener.#function(ctx, event).await }
                        },
                    )
                }
            }
        });
        let share = if self.methods.is_empty() {
            quote! { let _ = (router, listener); }
        } else {
            quote! { let listener = ::std::sync::Arc::new(listener); }
        };
        let attach_doc = doc(&format!(
            "Attaches `listener` to a router: a client's ([`stmp::Client::router`]) for events \
             from the server, or a server's ([`stmp::Server::router`]) for events from clients. \
             Until [`{handle}::detach`], every event of `{}` runs its method.",
            self.proto_name()
        ));
        let handle_doc = doc(&format!(
            "The listeners [`{attach}`] added; [`detach`](Self::detach) removes them (dropping \
             the handle keeps them)."
        ));
        let sends = self.methods.iter().map(|m| {
            let docs = docs(&m.method.comments);
            let sep = if docs.is_empty() {
                quote!()
            } else {
                quote!(#[doc = ""])
            };
            let function = &m.function;
            let constant = &m.constant;
            let input = &m.input;
            let send_doc = doc(&format!(
                "Sends `{}` to `to`: a [`stmp::Conn`], a list or [`stmp::ConnSet`] of them, a \
                 room ([`stmp::Rooms::to`]), a user's devices ([`stmp::Users::to`]) or \
                 everyone ([`stmp::Server::everyone`]), with `.except(conn)` to leave one out. \
                 The event is serialised once per content type and never waits: a connection \
                 whose send queue is full misses it, as \
                 [`Delivery::dropped`](::stmp::Delivery::dropped) counts.",
                m.method.proto_name
            ));
            quote! {
                #(#docs)*
                #sep
                #send_doc
                pub fn #function<'a>(
                    to: impl ::core::convert::Into<::stmp::Audience<'a>>,
                    event: &#input,
                ) -> ::core::result::Result<::stmp::Delivery, ::stmp::Status> {
                    ::stmp::broadcast(to, &#constant, event)
                }
            }
        });
        quote! {
            #(#listener_doc)*
            #listener_about
            pub trait #listener: ::core::marker::Send + ::core::marker::Sync + 'static {
                #(#handlers)*
            }

            #attach_doc
            pub fn #attach<L: #listener>(router: &::stmp::Router, listener: L) -> #handle {
                #share
                #handle {
                    handles: ::std::vec::Vec::from([#(#listens),*]),
                }
            }

            #handle_doc
            #[derive(Debug)]
            #[must_use = "dropping the handle keeps the listeners; call detach() to remove them"]
            pub struct #handle {
                handles: ::std::vec::Vec<::stmp::ListenerHandle>,
            }

            impl #handle {
                /// Removes the listeners.
                pub fn detach(self) {
                    for handle in self.handles {
                        handle.detach();
                    }
                }
            }

            #(#sends)*
        }
    }
}
