//! Namespace metadata kept current from the API server: a kube-runtime
//! watcher on Namespaces feeding a [`NamespaceCache`].
//!
//! The initial list is buffered and published at once (`InitDone`), so the
//! cache never holds a half-listed cluster; after that each added, changed
//! or deleted Namespace updates the cache. Re-lists after a watch error
//! replace everything again. Needs RBAC `list` and `watch` on namespaces.

use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use mapguard_policy::NamespaceData;

use super::NamespaceCache;
use crate::metrics::{Metrics, ReloadResult};

/// Watches Namespaces until the stream ends (it only ends when the task is
/// dropped; errors are retried with backoff). While the watch fails, the
/// cache is marked stale (requests judged meanwhile carry a warning) and
/// each failure counts as a failed reload; the re-list when it is back
/// replaces everything.
pub async fn watch(client: kube::Client, cache: Arc<NamespaceCache>, metrics: Arc<Metrics>) {
    let api: Api<Namespace> = Api::all(client);
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    futures_util::pin_mut!(stream);
    let mut buffer: Option<NamespaceData> = None;
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => {
                if matches!(event, Event::InitDone) {
                    metrics.namespace_reload(ReloadResult::success);
                }
                cache.mark_fresh();
                apply(&cache, &mut buffer, event);
            }
            Err(error) => {
                metrics.namespace_reload(ReloadResult::failure);
                cache.mark_stale();
                // The whole chain: kube's own text stops at "client error
                // (Connect)", the TLS or DNS cause is further down.
                let error = crate::telemetry::error_chain(&error);
                tracing::warn!(%error, "namespace watch failed; namespace labels may be stale until it is back; retrying");
            }
        }
    }
}

/// Applies one watcher event. The initial list (`Init` … `InitDone`) is
/// collected in `buffer` and published at once.
pub fn apply(cache: &NamespaceCache, buffer: &mut Option<NamespaceData>, event: Event<Namespace>) {
    match event {
        Event::Init => *buffer = Some(NamespaceData::new()),
        Event::InitApply(ns) => {
            if let Some(data) = buffer.as_mut() {
                upsert(data, &ns);
            }
        }
        Event::InitDone => {
            let data = buffer.take().unwrap_or_default();
            tracing::info!(namespaces = data.len(), "namespace cache synced");
            cache.replace(data);
        }
        Event::Apply(ns) => cache.update(|data| upsert(data, &ns)),
        Event::Delete(ns) => {
            let name = ns.metadata.name.unwrap_or_default();
            cache.update(|data| {
                data.remove(&name);
            });
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
        let cache = NamespaceCache::unsynced();
        let mut buffer = None;
        apply(&cache, &mut buffer, Event::Init);
        apply(
            &cache,
            &mut buffer,
            Event::InitApply(ns("payments", Some("kill"))),
        );
        assert!(!cache.is_synced(), "not synced before InitDone");
        assert!(
            cache.snapshot().is_empty(),
            "half-listed data must not be visible"
        );
        apply(&cache, &mut buffer, Event::InitApply(ns("default", None)));
        apply(&cache, &mut buffer, Event::InitDone);
        assert!(cache.is_synced());
        assert_eq!(cache.snapshot().len(), 2);
        assert_eq!(mode(&cache, "payments").as_deref(), Some("kill"));

        apply(
            &cache,
            &mut buffer,
            Event::Apply(ns("payments", Some("audit"))),
        );
        assert_eq!(mode(&cache, "payments").as_deref(), Some("audit"));
        apply(&cache, &mut buffer, Event::Delete(ns("payments", None)));
        assert!(cache.snapshot().get("payments").is_none());

        // A re-list replaces everything.
        apply(&cache, &mut buffer, Event::Init);
        apply(&cache, &mut buffer, Event::InitApply(ns("fresh", None)));
        apply(&cache, &mut buffer, Event::InitDone);
        assert_eq!(cache.snapshot().len(), 1);
        assert!(cache.snapshot().get("default").is_none());
    }
}
