//! Routing incoming requests and notifies to handlers, listeners and middleware.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use crate::codec::Message;
use crate::id_map::IdMap;
use crate::sync::{read, write};
use crate::telemetry::CallSeries;
use crate::wire::Action;
use crate::{Context, Method, Status};

mod target;

pub(crate) use target::{ActionTarget, ActionTargets, Started};

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

type Handler =
    Arc<dyn Fn(Context, Bytes) -> BoxFuture<'static, Result<Bytes, Status>> + Send + Sync>;
type Layers = Arc<[Arc<dyn ErasedMiddleware>]>;
type Listener = Arc<dyn Fn(Context, Bytes) -> BoxFuture<'static, ()> + Send + Sync>;
/// The listeners of one action, each with its id.
type Listeners = Arc<[(u64, Listener)]>;

/// What a middleware's [`before`](Middleware::before) decides.
#[derive(Debug)]
pub enum Flow {
    /// Go on to the next middleware and the handler.
    Continue,
    /// Answer the request with this (already encoded) payload; the handler does not run.
    Respond(Bytes),
}

/// Code around every handler: stmp-go's pre, intercept and post hooks in one trait.
///
/// ```
/// use stmp::{Context, Flow, Middleware, Router, Status};
///
/// /// Refuses every call from a connection that authentication did not mark.
/// struct RequireUser;
///
/// #[derive(Clone)]
/// struct User(String);
///
/// impl Middleware for RequireUser {
///     async fn before(&self, ctx: &Context) -> Result<Flow, Status> {
///         match ctx.conn().extension::<User>() {
///             Some(_) => Ok(Flow::Continue),
///             None => Err(Status::unauthorized("sign in first")),
///         }
///     }
/// }
///
/// let router = Router::new();
/// router.layer(RequireUser);
/// ```
pub trait Middleware: Send + Sync + 'static {
    /// Runs before the handler (for requests and notifies, in the order layers were added):
    /// an `Err` rejects the call with that status, [`Flow::Respond`] answers it.
    fn before(&self, ctx: &Context) -> impl Future<Output = Result<Flow, Status>> + Send {
        let _ = ctx;
        async { Ok(Flow::Continue) }
    }

    /// Sees a request's outcome (in reverse order of the layers) and may change it, or add to
    /// the response header through `ctx`.
    fn after(
        &self,
        ctx: &Context,
        outcome: &mut Result<Bytes, Status>,
    ) -> impl Future<Output = ()> + Send {
        let _ = (ctx, outcome);
        async {}
    }
}

trait ErasedMiddleware: Send + Sync {
    fn before<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<Flow, Status>>;
    fn after<'a>(
        &'a self,
        ctx: &'a Context,
        outcome: &'a mut Result<Bytes, Status>,
    ) -> BoxFuture<'a, ()>;
}

impl<M: Middleware> ErasedMiddleware for M {
    fn before<'a>(&'a self, ctx: &'a Context) -> BoxFuture<'a, Result<Flow, Status>> {
        Box::pin(Middleware::before(self, ctx))
    }

    fn after<'a>(
        &'a self,
        ctx: &'a Context,
        outcome: &'a mut Result<Bytes, Status>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(Middleware::after(self, ctx, outcome))
    }
}

/// A set of methods a side serves: one of [`Router::route`]'s registrations.
///
/// Generated `…Server` types implement it; [`Router::add_service`] takes them.
pub trait Service {
    /// Registers every method of the service.
    fn register(self, router: &Router);
}

/// Handlers, listeners and middleware of one side (a server, or a client — clients serve
/// methods too). Cheap to clone; every clone is the same router, and it can change while
/// connections use it.
///
/// ```
/// use stmp::{Context, Method, Router, Status};
/// # #[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
/// # struct Ping { #[prost(string, tag = "1")] text: String }
///
/// const ECHO: Method = Method::new("demo.Echo.Echo", "demo.Ping", "demo.Ping");
///
/// let router = Router::new();
/// router.route(&ECHO, |_ctx: Context, ping: Ping| async move { Ok::<_, Status>(ping) });
/// assert!(router.serves(&ECHO));
/// ```
#[derive(Clone, Default)]
pub struct Router {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    routes: RwLock<Routes>,
    /// Replaced whole when one is added or detached, so a notify takes them with one clone.
    listeners: RwLock<IdMap<u64, Listeners>>,
    /// Replaced whole when a layer is added, so an action's target takes them with one clone.
    middleware: RwLock<Layers>,
    next_listener: AtomicU64,
    /// Counts the changes to routes, listeners and middleware: what a connection resolved for
    /// an action ([`ActionTargets`]) stands while it has not moved.
    generation: Generation,
    /// What requests and notifies of the actions registered here run through, resolved once
    /// per generation for all connections.
    action_targets: RwLock<target::Shared>,
}

/// A counter on a cache line of its own. Every connection reads it for every packet and it
/// is written only when the router changes, so it stays in every core's cache; the locks
/// next to it are written by every read-lock and would drag it along.
#[derive(Default)]
#[repr(align(128))]
struct Generation(AtomicU64);

impl Inner {
    /// Marks a change; called once the change is made, so a connection that sees the new
    /// generation resolves against the changed router.
    fn changed(&self) {
        self.generation.0.fetch_add(1, Ordering::Release);
    }

    fn generation(&self) -> u64 {
        self.generation.0.load(Ordering::Acquire)
    }
}

#[derive(Default)]
struct Routes {
    handlers: IdMap<u64, Arc<Route>>,
    /// Action → full name, and back, for every method served or listened to.
    names: IdMap<u64, &'static str>,
    actions: HashMap<&'static str, u64>,
}

/// A method served: its handler, and the series its calls are recorded in.
pub(crate) struct Route {
    handler: Handler,
    pub(crate) series: CallSeries,
}

impl Routes {
    fn name(&mut self, name: &'static str, action: u64) {
        self.names.insert(action, name);
        self.actions.insert(name, action);
    }
}

/// What the router found for an incoming request.
pub(crate) struct Target {
    pub(crate) method: Option<&'static str>,
    pub(crate) route: Option<Arc<Route>>,
}

/// Listeners added by one [`Router::listen`] call; [`detach`](ListenerHandle::detach) removes them.
#[derive(Debug)]
#[must_use = "dropping the handle keeps the listener; call detach() to remove it"]
pub struct ListenerHandle {
    router: std::sync::Weak<Inner>,
    action: u64,
    id: u64,
}

impl ListenerHandle {
    /// Removes the listener: no notify read after this call reaches it. The closure itself
    /// is dropped once no connection holds it any more: a connection that has received this
    /// event keeps what it resolved until its next notify, or its end.
    pub fn detach(self) {
        if let Some(inner) = self.router.upgrade() {
            let mut listeners = write(&inner.listeners);
            if let Some(list) = listeners.get(&self.action) {
                let kept: Listeners = list
                    .iter()
                    .filter(|(id, _)| *id != self.id)
                    .cloned()
                    .collect();
                if kept.is_empty() {
                    listeners.remove(&self.action);
                } else {
                    listeners.insert(self.action, kept);
                }
            }
            drop(listeners);
            inner.changed();
        }
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let routes = read(&self.inner.routes);
        f.debug_struct("Router")
            .field("methods", &routes.actions.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Router {
    /// An empty router.
    pub fn new() -> Router {
        Router::default()
    }

    /// Serves `method` with `handler`; the message types are decoded and encoded with the
    /// connection's codec. A later registration of the same method replaces it.
    pub fn route<I, O, F, Fut>(&self, method: &'static Method, handler: F) -> &Self
    where
        I: Message,
        O: Message,
        F: Fn(Context, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, Status>> + Send + 'static,
    {
        self.route_raw(
            method.name,
            method.action,
            move |ctx: Context, payload: Bytes| {
                // The handler is called here, not in the future: the future then holds no
                // reference to it, whose count every worker handling the method would write.
                let codec = ctx.conn().codec().clone();
                let answering = codec
                    .decode_payload::<I>(payload)
                    .map(|input| handler(ctx, input));
                async move {
                    let output = answering?.await?;
                    codec.encode(&output)
                }
            },
        )
    }

    /// Serves a method with a handler of encoded bytes (for proxies and dynamic servers).
    pub fn route_raw<F, Fut>(&self, name: &'static str, action: u64, handler: F) -> &Self
    where
        F: Fn(Context, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, Status>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |ctx, payload| Box::pin(handler(ctx, payload)));
        let route = Arc::new(Route {
            handler,
            series: CallSeries::new(name),
        });
        let mut routes = write(&self.inner.routes);
        routes.handlers.insert(action, route);
        routes.name(name, action);
        drop(routes);
        self.inner.changed();
        self
    }

    /// Registers every method of a service.
    pub fn add_service(&self, service: impl Service) -> &Self {
        service.register(self);
        self
    }

    /// Whether `method` has a handler.
    pub fn serves(&self, method: &Method) -> bool {
        read(&self.inner.routes)
            .handlers
            .contains_key(&method.action)
    }

    /// Adds a listener for notifies of `method` (events). Several listeners may listen to the
    /// same method; they run one after another, in the order notifies arrive.
    pub fn listen<E, F, Fut>(&self, method: &'static Method, listener: F) -> ListenerHandle
    where
        E: Message,
        F: Fn(Context, E) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        // The event is decoded and the listener called right away; only its future is kept,
        // so a notify counts no reference on the listener, which every connection shares.
        let erased: Listener = Arc::new(move |ctx: Context, payload: Bytes| {
            match ctx.conn().codec().decode_payload::<E>(payload) {
                Ok(event) => Box::pin(listener(ctx, event)) as BoxFuture<'static, ()>,
                Err(status) => {
                    tracing::warn!(
                        method = method.name,
                        %status,
                        "dropping an event that does not decode"
                    );
                    Box::pin(std::future::ready(()))
                }
            }
        });
        let id = self.inner.next_listener.fetch_add(1, Ordering::Relaxed);
        write(&self.inner.routes).name(method.name, method.action);
        let mut listeners = write(&self.inner.listeners);
        let grown: Listeners = listeners
            .get(&method.action)
            .into_iter()
            .flat_map(|list| list.iter().cloned())
            .chain([(id, erased)])
            .collect();
        listeners.insert(method.action, grown);
        drop(listeners);
        self.inner.changed();
        ListenerHandle {
            router: Arc::downgrade(&self.inner),
            action: method.action,
            id,
        }
    }

    /// Adds a middleware around every handler.
    pub fn layer(&self, middleware: impl Middleware) -> &Self {
        let mut layers = write(&self.inner.middleware);
        let mut grown: Vec<_> = layers.iter().cloned().collect();
        grown.push(Arc::new(middleware));
        *layers = grown.into();
        drop(layers);
        self.inner.changed();
        self
    }

    /// The numeric action, the method's name and its handler; a method name (SA packets) is
    /// resolved like its numeric action.
    fn resolve(&self, action: &Action) -> (Option<u64>, Target) {
        let routes = read(&self.inner.routes);
        let id = match action {
            Action::Id(id) => Some(*id),
            Action::Method(name) => routes.actions.get(name.as_str()).copied(),
        };
        let target = Target {
            method: id.and_then(|id| routes.names.get(&id).copied()),
            route: id.and_then(|id| routes.handlers.get(&id).cloned()),
        };
        (id, target)
    }

    fn middleware(&self) -> Layers {
        read(&self.inner.middleware).clone()
    }
}

/// Makes the future only when first polled, so a handler that panics before returning its
/// future panics inside `catch_unwind` too.
async fn lazy<F: Future>(make: impl FnOnce() -> F) -> F::Output {
    make().await
}

fn describe(action: &Action, method: Option<&str>) -> String {
    match (method, action) {
        (Some(name), _) => name.to_owned(),
        (None, Action::Id(id)) => format!("action {id:#x}"),
        (None, Action::Method(name)) => name.clone(),
    }
}

pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic")
}
