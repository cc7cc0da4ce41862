//! A cache of one kind kept current by a watch: kube-runtime's reflector
//! [`Store`] plus the [`Connection`] state the binaries report (`/readyz`,
//! a stale-data warning, "disconnected").
//!
//! - The initial list is published at once: the store swaps in the whole
//!   list on `InitDone`, so a reader never sees a half-listed cluster.
//! - While the watch fails, the store keeps what it last knew and the
//!   connection says since when it is stale and why; the watch retries with
//!   kube-runtime's back-off.
//! - A re-list replaces everything.
//!
//! [`Reflector`] writes, [`Cache`] reads (cheap to clone, one per reader).

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures_util::StreamExt as _;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource};

use crate::telemetry::error_chain;

/// Whether a watched source is complete and current.
#[derive(Debug, Default)]
pub struct Connection {
    synced: AtomicBool,
    /// Whether the source has answered at least once.
    answered: AtomicBool,
    failing: Mutex<Option<(SystemTime, String)>>,
}

impl Connection {
    /// A source complete from the start (a file, a test's fixed data).
    pub fn synced() -> Self {
        let connection = Connection::default();
        connection.mark_synced();
        connection
    }

    /// Whether the initial list is done (and published).
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The initial list is published.
    pub fn mark_synced(&self) {
        self.answered.store(true, Ordering::Release);
        self.synced.store(true, Ordering::Release);
    }

    /// The source is failing: from now on its data may be out of date (the
    /// first failure's time is kept, the latest error replaces the last).
    pub fn mark_failing(&self, error: impl Into<String>) {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        let since = failing.as_ref().map_or_else(SystemTime::now, |(t, _)| *t);
        *failing = Some((since, error.into()));
    }

    /// The source answers again.
    pub fn mark_connected(&self) {
        self.answered.store(true, Ordering::Release);
        *self.failing.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Since when the data may be out of date, if the source is failing.
    pub fn stale_since(&self) -> Option<SystemTime> {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(since, _)| *since)
    }

    /// The latest error while the source is failing.
    pub fn error(&self) -> Option<String> {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(_, error)| error.clone())
    }

    /// `Ok` while the source answers; else why not: the latest error, or
    /// that it has not answered yet.
    pub fn state(&self) -> Result<(), String> {
        match &*self.failing.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((_, error)) => Err(error.clone()),
            None if !self.answered.load(Ordering::Acquire) => {
                Err("not connected to the API server yet".to_owned())
            }
            None => Ok(()),
        }
    }
}

/// The reading side: the objects and the connection state.
pub struct Cache<K: Resource + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    store: Store<K>,
    connection: Arc<Connection>,
}

impl<K: Resource + Clone + 'static> Cache<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    /// Every object, in no particular order.
    pub fn state(&self) -> Vec<Arc<K>> {
        self.store.state()
    }

    /// The object `key`, if known.
    pub fn get(&self, key: &ObjectRef<K>) -> Option<Arc<K>> {
        self.store.get(key)
    }

    /// kube-runtime's store itself.
    pub fn store(&self) -> &Store<K> {
        &self.store
    }

    /// Whether the objects are complete, and whether they are current.
    pub fn connection(&self) -> &Arc<Connection> {
        &self.connection
    }
}

impl<K: Resource + 'static> Clone for Cache<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    fn clone(&self) -> Self {
        Cache {
            store: self.store.clone(),
            connection: self.connection.clone(),
        }
    }
}

impl<K: Resource + 'static> Debug for Cache<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

/// What one watch event did, for the caller to publish or report. An event
/// of a list in progress does nothing visible and is not reported.
#[derive(Debug)]
pub enum Update<K> {
    /// A list (the first or a re-list) replaced every object.
    Listed,
    /// An object was added or changed (after the list).
    Applied(K),
    /// An object was deleted (after the list).
    Deleted(K),
    /// The watch failed; it retries with back-off, the objects stay.
    Failed(watcher::Error),
}

/// The writing side: applies a watch's events to the store and keeps the
/// connection state.
pub struct Reflector<K: Resource + Clone + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    writer: Writer<K>,
    connection: Arc<Connection>,
}

impl<K: Resource + Clone + 'static> Default for Reflector<K>
where
    K::DynamicType: Eq + Hash + Clone + Default,
{
    fn default() -> Self {
        Reflector::new(K::DynamicType::default())
    }
}

impl<K: Resource + Clone + 'static> Reflector<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    /// An empty, unsynced cache of the kind `dyntype` describes.
    pub fn new(dyntype: K::DynamicType) -> Self {
        Reflector {
            writer: Writer::new(dyntype),
            connection: Arc::default(),
        }
    }

    /// A reader of this cache.
    pub fn cache(&self) -> Cache<K> {
        Cache {
            store: self.writer.as_reader(),
            connection: self.connection.clone(),
        }
    }

    /// The connection state this reflector keeps.
    pub fn connection(&self) -> Arc<Connection> {
        self.connection.clone()
    }

    /// Applies one watch event, then hands what it did to `publish`. The
    /// cache is marked synced only once `publish` has seen the first list,
    /// so that whatever it publishes is in place before readiness.
    pub fn apply(
        &mut self,
        event: Result<Event<K>, watcher::Error>,
        publish: impl FnOnce(Update<K>),
    ) {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                self.connection.mark_failing(error_chain(&error));
                publish(Update::Failed(error));
                return;
            }
        };
        self.connection.mark_connected();
        self.writer.apply_watcher_event(&event);
        match event {
            Event::Init | Event::InitApply(_) => {}
            Event::InitDone => {
                publish(Update::Listed);
                self.connection.mark_synced();
            }
            Event::Apply(object) => publish(Update::Applied(object)),
            Event::Delete(object) => publish(Update::Deleted(object)),
        }
    }

    /// Watches `api` until the future is dropped (a watch error is retried
    /// with kube-runtime's default back-off), handing each update to
    /// `publish`.
    pub async fn run(
        mut self,
        api: Api<K>,
        config: watcher::Config,
        mut publish: impl FnMut(Update<K>),
    ) where
        K: serde::de::DeserializeOwned + Debug + Send,
    {
        let stream = events(api, config);
        futures_util::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            self.apply(event, &mut publish);
        }
    }
}

/// The events of a watch on `api`, retried with kube-runtime's default
/// back-off, for a caller that applies them to a [`Reflector`] itself.
pub fn events<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl futures_util::Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + serde::de::DeserializeOwned + Debug + Send + 'static,
{
    watcher::watcher(api, config).default_backoff()
}

impl<K: Resource + Clone + 'static> Debug for Reflector<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reflector")
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Namespace;

    use super::*;

    /// Without a back-off kube's watcher retries at once, in a loop, for as
    /// long as the API server is away (thousands of attempts a second).
    #[tokio::test]
    async fn an_unreachable_api_server_is_retried_with_back_off() {
        let config = kube::Config::new("http://127.0.0.1:1".parse().expect("a URL"));
        let client = kube::Client::try_from(config).expect("a client");
        let stream = events(Api::<Namespace>::all(client), watcher::Config::default());
        futures_util::pin_mut!(stream);
        let mut failures = 0;
        let window = tokio::time::sleep(std::time::Duration::from_secs(2));
        tokio::pin!(window);
        loop {
            tokio::select! {
                () = &mut window => break,
                event = stream.next() => match event.expect("the stream goes on") {
                    Ok(Event::Init) => {}
                    Ok(event) => panic!("nothing listens there, yet {event:?}"),
                    Err(_) => failures += 1,
                },
            }
        }
        assert!((1..=6).contains(&failures), "{failures} attempts in 2 s");
    }

    fn ns(name: &str) -> Namespace {
        let mut n = Namespace::default();
        n.metadata.name = Some(name.to_owned());
        n
    }

    fn names(cache: &Cache<Namespace>) -> Vec<String> {
        let mut names: Vec<String> = cache
            .state()
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_list_is_published_at_once_kept_while_failing_and_replaced_by_a_relist() {
        let mut reflector = Reflector::<Namespace>::default();
        let cache = reflector.cache();
        assert_eq!(
            cache.connection().state(),
            Err("not connected to the API server yet".to_owned())
        );
        let mut seen = Vec::new();
        let mut apply = |event, reflector: &mut Reflector<Namespace>| {
            reflector.apply(event, |update| {
                // Synced only after the list was handed over.
                let synced = cache.connection().is_synced();
                seen.push(match update {
                    Update::Listed => format!("listed {} synced={synced}", names(&cache).len()),
                    Update::Applied(n) => format!("applied {:?}", n.metadata.name),
                    Update::Deleted(n) => format!("deleted {:?}", n.metadata.name),
                    Update::Failed(_) => "failed".to_owned(),
                });
            })
        };
        apply(Ok(Event::Init), &mut reflector);
        assert_eq!(cache.connection().state(), Ok(()));
        apply(Ok(Event::InitApply(ns("a"))), &mut reflector);
        assert!(
            names(&reflector.cache()).is_empty(),
            "half a list is not visible"
        );
        assert!(!reflector.connection().is_synced());
        apply(Ok(Event::InitApply(ns("b"))), &mut reflector);
        apply(Ok(Event::InitDone), &mut reflector);
        assert!(reflector.connection().is_synced());
        assert_eq!(names(&reflector.cache()), ["a", "b"]);
        apply(Ok(Event::Apply(ns("c"))), &mut reflector);
        apply(Ok(Event::Delete(ns("a"))), &mut reflector);
        assert_eq!(names(&reflector.cache()), ["b", "c"]);

        // A failure keeps the objects and says since when they are stale.
        let failure = watcher::Error::NoResourceVersion;
        apply(Err(failure), &mut reflector);
        let connection = reflector.connection();
        let since = connection.stale_since().expect("stale while failing");
        assert!(connection.state().is_err());
        apply(Err(watcher::Error::NoResourceVersion), &mut reflector);
        assert_eq!(
            connection.stale_since(),
            Some(since),
            "the first failure's time"
        );
        assert_eq!(names(&reflector.cache()), ["b", "c"]);
        assert!(connection.is_synced());

        // The re-list replaces everything and the source is current again.
        apply(Ok(Event::Init), &mut reflector);
        assert_eq!(connection.stale_since(), None);
        apply(Ok(Event::InitApply(ns("z"))), &mut reflector);
        assert_eq!(
            names(&reflector.cache()),
            ["b", "c"],
            "until the list is done"
        );
        apply(Ok(Event::InitDone), &mut reflector);
        assert_eq!(names(&reflector.cache()), ["z"]);
        assert_eq!(
            seen,
            [
                "listed 2 synced=false",
                "applied Some(\"c\")",
                "deleted Some(\"a\")",
                "failed",
                "failed",
                "listed 1 synced=true",
            ]
        );
    }
}
