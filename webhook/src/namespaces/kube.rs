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

/// Watches Namespaces until the stream ends (it only ends when the task is
/// dropped; errors are retried with backoff).
pub async fn watch(client: kube::Client, cache: Arc<NamespaceCache>) {
    let api: Api<Namespace> = Api::all(client);
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    futures_util::pin_mut!(stream);
    let mut buffer: Option<NamespaceData> = None;
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => buffer = Some(NamespaceData::new()),
            Ok(Event::InitApply(ns)) => {
                if let Some(data) = buffer.as_mut() {
                    upsert(data, &ns);
                }
            }
            Ok(Event::InitDone) => {
                let data = buffer.take().unwrap_or_default();
                tracing::info!(namespaces = data.len(), "namespace cache synced");
                cache.replace(data);
            }
            Ok(Event::Apply(ns)) => cache.update(|data| upsert(data, &ns)),
            Ok(Event::Delete(ns)) => {
                let name = ns.metadata.name.unwrap_or_default();
                cache.update(|data| {
                    data.remove(&name);
                });
            }
            Err(error) => tracing::warn!(%error, "namespace watch failed; retrying"),
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
