//! What a connection runs for an incoming request or notify: the middleware, handler and
//! listeners of its action, resolved once per connection while the router does not change, and
//! run on the reading task as far as they go without waiting.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Waker};

use bytes::Bytes;
use futures_util::FutureExt;

use super::{BoxFuture, Flow, Layers, Listeners, Route, Router, describe, lazy, panic_message};
use crate::id_map::IdMap;
use crate::sync::{read, write};
use crate::telemetry::CallSeries;
use crate::wire::Action;
use crate::{Context, Status};

/// Everything a packet of one action runs through: the middleware, the handler and the
/// listeners as they were when it was resolved. A packet keeps the snapshot it started with;
/// changes to the router reach the packets resolved after them.
pub(crate) struct ActionTarget {
    method: Option<&'static str>,
    route: Option<Arc<Route>>,
    listeners: Option<Listeners>,
    middleware: Layers,
}

/// A request as far as it went on the reading task.
pub(crate) enum Started {
    /// Answered without waiting.
    Done(Result<Bytes, Status>),
    /// Something waits: the rest, to be run on a task of its own.
    Waiting(Answering),
}

/// The rest of a request whose middleware or handler waits. A panic while it runs is an
/// `InternalServerError` for this request only, as one while it started is.
pub(crate) struct Answering {
    rest: BoxFuture<'static, Result<Bytes, Status>>,
    method: Option<&'static str>,
}

impl Future for Answering {
    type Output = Result<Bytes, Status>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let method = self.method;
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.rest.as_mut().poll(cx))) {
            Ok(polled) => polled,
            Err(panic) => Poll::Ready(Err(handler_panicked(method, &panic))),
        }
    }
}

impl ActionTarget {
    fn resolve(router: &Router, action: &Action) -> ActionTarget {
        let (id, target) = router.resolve(action);
        ActionTarget {
            method: target.method,
            route: target.route,
            listeners: id.and_then(|id| read(&router.inner.listeners).get(&id).cloned()),
            middleware: router.middleware(),
        }
    }

    /// The target of numeric action `id` as resolved at `generation` (read before this call),
    /// the same one for every connection. Those of actions nothing is registered for are not
    /// kept: a peer chooses those, and they would pile up.
    fn shared(router: &Router, generation: u64, id: u64) -> Arc<ActionTarget> {
        let kept = read(&router.inner.action_targets);
        if kept.generation == generation
            && let Some(target) = kept.by_action.get(&id)
        {
            return target.clone();
        }
        drop(kept);
        let target = Arc::new(ActionTarget::resolve(router, &Action::Id(id)));
        if target.route.is_none() && target.listeners.is_none() {
            return target;
        }
        let mut kept = write(&router.inner.action_targets);
        if kept.generation < generation {
            *kept = Shared {
                generation,
                by_action: IdMap::default(),
            };
        }
        if kept.generation == generation {
            kept.by_action.entry(id).or_insert_with(|| target.clone());
        }
        target
    }

    /// The full name of the method, when something is registered for it.
    pub(crate) fn method(&self) -> Option<&'static str> {
        self.method
    }

    /// The series the method's calls are recorded in, when it has a handler.
    pub(crate) fn series(&self) -> Option<&CallSeries> {
        self.route.as_ref().map(|route| &route.series)
    }

    /// Runs a request here and now as far as it goes without waiting. The common request —
    /// a handler and no middleware, answered at once — costs no boxed future beyond the
    /// handler's own, and counts no reference on anything all connections share.
    pub(crate) fn start_request(self: &Arc<Self>, ctx: &Context, payload: Bytes) -> Started {
        let rest = match &self.route {
            Some(route) if self.middleware.is_empty() => {
                let started = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    let mut answering = (route.handler)(ctx.clone(), payload);
                    let mut here = TaskContext::from_waker(Waker::noop());
                    match answering.as_mut().poll(&mut here) {
                        Poll::Ready(outcome) => Err(outcome),
                        Poll::Pending => Ok(answering),
                    }
                }));
                match started {
                    Ok(Ok(waiting)) => waiting,
                    Ok(Err(outcome)) => return Started::Done(outcome),
                    Err(panic) => return Started::Done(Err(handler_panicked(self.method, &panic))),
                }
            }
            _ => {
                let (target, ctx) = (self.clone(), ctx.clone());
                let mut running: BoxFuture<'static, _> =
                    Box::pin(async move { target.handle_request(&ctx, payload).await });
                let mut here = TaskContext::from_waker(Waker::noop());
                match running.as_mut().poll(&mut here) {
                    Poll::Ready(outcome) => return Started::Done(outcome),
                    Poll::Pending => running,
                }
            }
        };
        // Polled again with a real waker on the task it goes on running on.
        Started::Waiting(Answering {
            rest,
            method: self.method,
        })
    }

    /// Runs a request through the middleware and its handler. A panic in the handler is an
    /// `InternalServerError` for this call only.
    async fn handle_request(&self, ctx: &Context, payload: Bytes) -> Result<Bytes, Status> {
        let mut outcome = None;
        for layer in self.middleware.iter() {
            match AssertUnwindSafe(lazy(|| layer.before(ctx)))
                .catch_unwind()
                .await
            {
                Ok(Ok(Flow::Continue)) => {}
                Ok(Ok(Flow::Respond(payload))) => {
                    outcome = Some(Ok(payload));
                    break;
                }
                Ok(Err(status)) => {
                    outcome = Some(Err(status));
                    break;
                }
                Err(_) => {
                    outcome = Some(Err(Status::internal("middleware panicked")));
                    break;
                }
            }
        }
        let mut outcome = match (outcome, &self.route) {
            (Some(outcome), _) => outcome,
            (None, Some(route)) => {
                match AssertUnwindSafe(lazy(|| (route.handler)(ctx.clone(), payload)))
                    .catch_unwind()
                    .await
                {
                    Ok(outcome) => outcome,
                    Err(panic) => Err(handler_panicked(self.method, &panic)),
                }
            }
            (None, None) => Err(Status::not_found(format!(
                "no handler for {}",
                describe(ctx.action(), self.method)
            ))),
        };
        for layer in self.middleware.iter().rev() {
            if AssertUnwindSafe(lazy(|| layer.after(ctx, &mut outcome)))
                .catch_unwind()
                .await
                .is_err()
            {
                outcome = Err(Status::internal("middleware panicked"));
            }
        }
        outcome
    }

    /// Runs a notify here and now as far as it goes without waiting, and returns what is left
    /// when something waits. The common notify — listeners only, which finish at once — costs
    /// no task, no boxed future of its own and no reference counted on the target.
    pub(crate) fn start_notify(self: &Arc<Self>, ctx: &Context, payload: Bytes) -> Option<Running> {
        if !self.middleware.is_empty() || self.route.is_some() {
            return poll_once(self.clone().run_notify(ctx.clone(), payload));
        }
        if !self.wanted(ctx) {
            return None;
        }
        let listeners = self.listeners.as_ref()?;
        for (at, (_, listener)) in listeners.iter().enumerate() {
            let started = std::panic::catch_unwind(AssertUnwindSafe(|| {
                poll_once(listener(ctx.clone(), payload.clone()))
            }));
            match started {
                Ok(None) => {}
                Ok(Some(waiting)) => {
                    let (listeners, method, ctx) = (listeners.clone(), self.method, ctx.clone());
                    return Some(Box::pin(async move {
                        if AssertUnwindSafe(waiting).catch_unwind().await.is_err() {
                            listener_panicked(method);
                        }
                        run_listeners(&listeners[at + 1..], method, &ctx, &payload).await;
                    }));
                }
                Err(_) => listener_panicked(self.method),
            }
        }
        None
    }

    /// Runs a notify through the middleware, then its handler (result dropped) and listeners.
    pub(crate) fn run_notify(self: Arc<Self>, ctx: Context, payload: Bytes) -> Running {
        Box::pin(async move {
            if !self.wanted(&ctx) {
                return;
            }
            for layer in self.middleware.iter() {
                match AssertUnwindSafe(lazy(|| layer.before(&ctx)))
                    .catch_unwind()
                    .await
                {
                    Ok(Ok(Flow::Continue)) => {}
                    Ok(Ok(Flow::Respond(_))) => return,
                    Ok(Err(status)) => {
                        tracing::debug!(%status, "middleware dropped a notify");
                        return;
                    }
                    Err(_) => return,
                }
            }
            if let Some(route) = &self.route
                && let Ok(Err(status)) =
                    AssertUnwindSafe(lazy(|| (route.handler)(ctx.clone(), payload.clone())))
                        .catch_unwind()
                        .await
            {
                tracing::debug!(%status, "handler of a notify failed");
            }
            let listeners = self.listeners.as_deref().unwrap_or_default();
            run_listeners(listeners, self.method, &ctx, &payload).await;
        })
    }

    /// Whether the notify goes to the middleware and listeners: not when history recovery
    /// takes it, nor when nothing is registered for its action.
    fn wanted(&self, ctx: &Context) -> bool {
        if crate::history::observe_notify(ctx) {
            return false;
        }
        if self.route.is_none() && self.listeners.is_none() {
            tracing::debug!(action = %describe(ctx.action(), None), "dropping a notify nobody listens to");
            return false;
        }
        true
    }
}

/// What is left of a notify once something in it waits.
pub(crate) type Running = BoxFuture<'static, ()>;

/// Polls `future` once, with a waker that does nothing: `None` when it is done. One that waits
/// is polled again with a real waker wherever it goes on running.
fn poll_once(mut future: Running) -> Option<Running> {
    let mut here = TaskContext::from_waker(Waker::noop());
    match future.as_mut().poll(&mut here) {
        Poll::Ready(()) => None,
        Poll::Pending => Some(future),
    }
}

async fn run_listeners(
    listeners: &[(u64, super::Listener)],
    method: Option<&'static str>,
    ctx: &Context,
    payload: &Bytes,
) {
    for (_, listener) in listeners {
        if AssertUnwindSafe(lazy(|| listener(ctx.clone(), payload.clone())))
            .catch_unwind()
            .await
            .is_err()
        {
            listener_panicked(method);
        }
    }
}

fn handler_panicked(method: Option<&'static str>, panic: &Box<dyn std::any::Any + Send>) -> Status {
    tracing::error!(
        method = method.unwrap_or("?"),
        panic = panic_message(panic),
        "handler panicked"
    );
    Status::internal("handler panicked")
}

fn listener_panicked(method: Option<&'static str>) {
    tracing::error!(method = method.unwrap_or("?"), "listener panicked");
}

/// The action targets of one generation of a router, shared by its connections: the memory a
/// broadcast's receivers (or a server's many callers) read is then the same for all of them,
/// and stays in every core's cache, where a copy per connection would be one more cold line
/// for each.
#[derive(Default)]
pub(super) struct Shared {
    generation: u64,
    by_action: IdMap<u64, Arc<ActionTarget>>,
}

/// The actions one connection keeps resolved; a client listens to a few events, and most
/// connections call a few methods.
const CACHED_ACTIONS: usize = 4;

/// One connection's resolved action targets. A broadcast reaches every connection with the
/// same action, and many connections call the same methods; resolving each packet again would
/// read-lock the router's maps and count references on its shared slices from every core at
/// once: the cache lines all connections share would move between cores with every packet.
/// Here a packet of a known action costs one read of the router's generation, a line no
/// packet writes.
#[repr(C)]
pub(crate) struct ActionTargets {
    router: Router,
    /// The router's generation the entries were resolved at.
    generation: u64,
    /// Numeric actions and their targets, the most recently resolved first; held in place, so
    /// looking one up touches no memory of its own.
    resolved: [Option<(u64, Arc<ActionTarget>)>; CACHED_ACTIONS],
    /// The target of the last packet named by its method rather than its action.
    named: Option<Arc<ActionTarget>>,
}

impl ActionTargets {
    pub(crate) fn new(router: Router) -> ActionTargets {
        ActionTargets {
            router,
            generation: 0,
            resolved: Default::default(),
            named: None,
        }
    }

    /// The target of a request or notify of `action`, as the router is now.
    pub(crate) fn get(&mut self, action: &Action) -> &Arc<ActionTarget> {
        // Read before resolving: a change made while resolving moves it again, so what was
        // resolved is not taken for the changed router's.
        let generation = self.router.inner.generation();
        if generation != self.generation {
            self.resolved = Default::default();
            self.generation = generation;
        }
        let router = &self.router;
        let Action::Id(id) = *action else {
            // Named actions (SA packets) are rare: resolved every time.
            return self
                .named
                .insert(Arc::new(ActionTarget::resolve(router, action)));
        };
        let found = self
            .resolved
            .iter()
            .position(|entry| matches!(entry, Some((cached, _)) if *cached == id));
        let slot = match found {
            Some(at) => &mut self.resolved[at],
            None => {
                self.resolved.rotate_right(1);
                self.resolved[0] = None;
                &mut self.resolved[0]
            }
        };
        &slot
            .get_or_insert_with(|| (id, ActionTarget::shared(router, generation, id)))
            .1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Method, Middleware};

    const EVENT: Method = Method::new("demo.Room.Joined", "demo.Joined", "demo.Empty");

    #[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
    struct Joined {
        #[prost(string, tag = "1")]
        user: String,
    }

    fn listener_count(targets: &mut ActionTargets) -> usize {
        let target = targets.get(&Action::Id(EVENT.action));
        target.listeners.as_ref().map_or(0, |list| list.len())
    }

    #[test]
    fn a_known_actions_lookup_reads_the_first_half_line_only() {
        let first_entry = std::mem::offset_of!(ActionTargets, resolved)
            + std::mem::size_of::<Option<(u64, Arc<ActionTarget>)>>();
        assert!(first_entry <= 32, "{first_entry}");
        assert!(std::mem::offset_of!(ActionTargets, generation) < first_entry);
    }

    #[test]
    fn listeners_come_and_go_and_the_last_one_leaves_nothing_behind() {
        let router = Router::new();
        // One connection's targets, kept across the changes: the next notify sees each.
        let mut targets = ActionTargets::new(router.clone());
        assert_eq!(listener_count(&mut targets), 0);
        let first = router.listen(&EVENT, |_: Context, _: Joined| async {});
        let second = router.listen(&EVENT, |_: Context, _: Joined| async {});
        assert_eq!(listener_count(&mut targets), 2);
        // A notify's snapshot is not changed by a later detach.
        let taken = targets.get(&Action::Id(EVENT.action)).clone();
        first.detach();
        assert_eq!(listener_count(&mut targets), 1);
        assert_eq!(taken.listeners.as_ref().map(|list| list.len()), Some(2));
        second.detach();
        assert_eq!(listener_count(&mut targets), 0);
        assert!(read(&router.inner.listeners).is_empty());
    }

    struct PassThrough;

    impl Middleware for PassThrough {}

    #[test]
    fn a_connection_resolves_an_action_once_until_the_router_changes() {
        let router = Router::new();
        let _listening = router.listen(&EVENT, |_: Context, _: Joined| async {});
        let mut targets = ActionTargets::new(router.clone());
        let action = Action::Id(EVENT.action);
        let first = targets.get(&action).clone();
        assert_eq!(first.method(), Some(EVENT.name));
        assert!(Arc::ptr_eq(&first, targets.get(&action)), "resolved again");

        router.layer(PassThrough);
        let layered = targets.get(&action).clone();
        assert_eq!(layered.middleware.len(), 1, "a new layer is seen");
        assert!(first.middleware.is_empty(), "a taken snapshot stays");

        router.route_raw(
            EVENT.name,
            EVENT.action,
            |_, payload| async move { Ok(payload) },
        );
        let routed = targets.get(&action).clone();
        assert!(routed.route.is_some(), "a new route is seen");
        assert!(Arc::ptr_eq(&routed, targets.get(&action)));
    }

    #[test]
    fn a_few_actions_stay_resolved_and_any_number_of_others_take_no_more_room() {
        let router = Router::new();
        let _listening = router.listen(&EVENT, |_: Context, _: Joined| async {});
        let mut targets = ActionTargets::new(router.clone());
        let known = targets.get(&Action::Id(EVENT.action)).clone();
        for id in 1..=(CACHED_ACTIONS as u64 - 1) {
            targets.get(&Action::Id(id));
        }
        assert!(Arc::ptr_eq(&known, targets.get(&Action::Id(EVENT.action))));
        for id in 100..200 {
            let target = targets.get(&Action::Id(id));
            assert!(target.listeners.is_none() && target.route.is_none());
        }
        assert_eq!(targets.resolved.len(), CACHED_ACTIONS);
        assert_eq!(
            read(&router.inner.action_targets).by_action.len(),
            1,
            "only registered actions are kept for all connections"
        );
        // Named like its action, a notify finds the same listeners.
        let named = targets.get(&Action::Method(EVENT.name.to_owned()));
        assert_eq!(named.listeners.as_ref().map(|list| list.len()), Some(1));
    }

    #[test]
    fn connections_share_the_target_of_an_action_until_the_router_changes() {
        let router = Router::new();
        let _listening = router.listen(&EVENT, |_: Context, _: Joined| async {});
        let action = Action::Id(EVENT.action);
        let (mut one, mut two) = (
            ActionTargets::new(router.clone()),
            ActionTargets::new(router.clone()),
        );
        let first = one.get(&action).clone();
        assert!(Arc::ptr_eq(&first, two.get(&action)), "one target for both");
        let _another = router.listen(&EVENT, |_: Context, _: Joined| async {});
        let changed = two.get(&action).clone();
        assert!(!Arc::ptr_eq(&first, &changed));
        assert_eq!(changed.listeners.as_ref().map(|list| list.len()), Some(2));
        assert!(
            Arc::ptr_eq(&changed, one.get(&action)),
            "one target for both"
        );
    }
}
