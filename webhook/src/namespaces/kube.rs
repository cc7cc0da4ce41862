//! Namespace metadata kept current from the API server: the toolkit's
//! reflector on Namespaces ([`mapguard_kube::Reflector`]) feeding a
//! [`NamespaceCache`] that shares its connection state.
//!
//! The initial list is published at once (the reflector's store swaps it
//! in whole, then the cache is filled from it), so the cache never holds a
//! half-listed cluster; after that each added, changed or deleted Namespace
//! updates the cache. Re-lists after a watch error replace everything
//! again. Needs RBAC `list` and `watch` on namespaces.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::runtime::watcher;
use mapguard_kube::{Cache, Reflector, Update};
use mapguard_policy::NamespaceData;

use super::NamespaceCache;
use crate::metrics::{Metrics, ReloadResult};

/// A reflector on Namespaces and the cache that follows it (not synced
/// until [`watch`] has published the first list).
pub fn cache() -> (Reflector<Namespace>, Arc<NamespaceCache>) {
    let reflector = Reflector::default();
    let cache = Arc::new(NamespaceCache::following(reflector.connection()));
    (reflector, cache)
}

/// Watches Namespaces until the future is dropped (errors are retried with
/// backoff). While the watch fails, the cache is marked stale (requests
/// judged meanwhile carry a warning) and each failure counts as a failed
/// reload; the re-list when it is back replaces everything.
pub async fn watch(
    client: kube::Client,
    reflector: Reflector<Namespace>,
    cache: Arc<NamespaceCache>,
    metrics: Arc<Metrics>,
) {
    let store = reflector.cache();
    let api: Api<Namespace> = Api::all(client);
    reflector
        .run(api, watcher::Config::default(), |update| {
            publish(&store, &cache, &metrics, update)
        })
        .await;
}

/// Publishes one update of the reflector in the cache.
pub fn publish(
    store: &Cache<Namespace>,
    cache: &NamespaceCache,
    metrics: &Metrics,
    update: Update<Namespace>,
) {
    match update {
        Update::Listed => {
            metrics.namespace_reload(ReloadResult::success);
            let mut data = NamespaceData::new();
            for ns in store.state() {
                upsert(&mut data, &ns);
            }
            tracing::info!(namespaces = data.len(), "namespace cache synced");
            cache.replace(data);
        }
        Update::Applied(ns) => cache.update(|data| upsert(data, &ns)),
        Update::Deleted(ns) => {
            let name = ns.metadata.name.unwrap_or_default();
            cache.update(|data| {
                data.remove(&name);
            });
        }
        Update::Failed(error) => {
            metrics.namespace_reload(ReloadResult::failure);
            // The whole chain: kube's own text stops at "client error
            // (Connect)", the TLS or DNS cause is further down.
            let error = crate::telemetry::error_chain(&error);
            tracing::warn!(%error, "namespace watch failed; namespace labels may be stale until it is back; retrying");
        }
    }
}

fn upsert(data: &mut NamespaceData, ns: &Namespace) {
    match serde_json::to_value(ns) {
        Ok(json) => {
            if let Err(error) = data.upsert(&json) {
                tracing::warn!(%error, name = ?ns.metadata.name, "ignoring namespace");
            }
        }
        Err(error) => tracing::warn!(%error, "cannot serialize namespace"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kube::runtime::watcher::Event;

    use super::*;
    use crate::namespaces::NamespaceSource;

    fn ns(name: &str, mode: Option<&str>) -> Namespace {
        let mut n = Namespace::default();
        n.metadata.name = Some(name.to_owned());
        n.metadata.labels =
            mode.map(|m| BTreeMap::from([("mapguard.io/mode".to_owned(), m.to_owned())]));
        n
    }

    fn mode(cache: &NamespaceCache, name: &str) -> Option<String> {
        cache
            .snapshot()
            .get(name)
            .and_then(|m| m.labels.get("mapguard.io/mode").cloned())
    }

    #[test]
    fn initial_list_is_published_at_once_then_events_apply() {
        let (mut reflector, cache) = super::cache();
        let store = reflector.cache();
        let metrics = Metrics::new();
        let mut apply = |event: Event<Namespace>| {
            reflector.apply(Ok(event), |u| publish(&store, &cache, &metrics, u))
        };
        apply(Event::Init);
        apply(Event::InitApply(ns("payments", Some("kill"))));
        assert!(!cache.is_synced(), "not synced before InitDone");
        assert!(
            cache.snapshot().is_empty(),
            "half-listed data must not be visible"
        );
        apply(Event::InitApply(ns("default", None)));
        apply(Event::InitDone);
        assert!(cache.is_synced());
        assert_eq!(cache.snapshot().len(), 2);
        assert_eq!(mode(&cache, "payments").as_deref(), Some("kill"));

        apply(Event::Apply(ns("payments", Some("audit"))));
        assert_eq!(mode(&cache, "payments").as_deref(), Some("audit"));
        apply(Event::Delete(ns("payments", None)));
        assert!(cache.snapshot().get("payments").is_none());

        // A re-list replaces everything.
        apply(Event::Init);
        apply(Event::InitApply(ns("fresh", None)));
        apply(Event::InitDone);
        assert_eq!(cache.snapshot().len(), 1);
        assert!(cache.snapshot().get("default").is_none());
    }

    #[test]
    fn a_failing_watch_marks_the_cache_stale_until_it_answers() {
        let (mut reflector, cache) = super::cache();
        let store = reflector.cache();
        let metrics = Metrics::new();
        reflector.apply(Err(watcher::Error::NoResourceVersion), |u| {
            publish(&store, &cache, &metrics, u)
        });
        assert!(cache.stale_since().is_some());
        reflector.apply(Ok(Event::Init), |u| publish(&store, &cache, &metrics, u));
        assert!(cache.stale_since().is_none());
    }
}
