//! What the responder acts on: the node agents' `MapViolation` records.
//! Each increase of a record's `status.count` is that many violations or
//! crashes of the Pod in `status.pod`. Only `status` is read, and `status`
//! is a subresource only the agents' ServiceAccount may write
//! (`manifests/enforcer/rbac-records.yaml`): a tenant allowed to create or
//! edit records, or Events, cannot make the responder count anything (the
//! API server drops `status` from a create and ignores it in an update).
//!
//! The first listing is a baseline (what happened before the responder
//! started is not counted again); a later relisting counts what grew
//! meanwhile. The Pod is read to check that it is the one the record names
//! (same UID), to find its workload and its node.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use kube::{Api, Client};
use mapguard_api::{resource::MapViolation, vocab::Detector};

use super::decide::{Cause, Responder, Trigger};
use crate::daemon::workload::Workload;

/// Violations of one record that count, at most, per change: past the
/// threshold more change nothing.
fn counted(added: i64, threshold: u32) -> u32 {
    u32::try_from(added.max(0))
        .unwrap_or(u32::MAX)
        .min(threshold.max(1))
}

/// Last `status.count` seen per record UID.
#[derive(Debug, Default)]
struct Counts {
    by_uid: HashMap<String, i64>,
}

impl Counts {
    /// How much `record`'s count grew since it was last seen (its whole
    /// count when it is new), remembering the new count.
    fn grew(&mut self, record: &MapViolation) -> i64 {
        let (Some(uid), Some(status)) = (&record.metadata.uid, &record.status) else {
            return 0;
        };
        let before = self.by_uid.insert(uid.clone(), status.count).unwrap_or(0);
        status.count - before
    }
}

/// Watches every namespace's records and hands what grew to `responder`;
/// sets `synced` once the first listing is in. Runs until the process
/// ends (the watcher retries with backoff while the API server is away).
pub async fn run(client: Client, responder: Arc<Responder>, synced: Arc<AtomicBool>) {
    let records: Api<MapViolation> = Api::all(client.clone());
    let mut counts = Counts::default();
    let mut baseline = true;
    let stream = mapguard_kube::cache::events(records, watcher::Config::default());
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        let record = match event {
            Ok(watcher::Event::Init) => continue,
            Ok(watcher::Event::InitApply(record)) if baseline => {
                counts.grew(&record);
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                baseline = false;
                synced.store(true, Ordering::SeqCst);
                continue;
            }
            Ok(watcher::Event::InitApply(record) | watcher::Event::Apply(record)) => record,
            Ok(watcher::Event::Delete(record)) => {
                if let Some(uid) = &record.metadata.uid {
                    counts.by_uid.remove(uid);
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "watching MapViolation records");
                continue;
            }
        };
        let added = counts.grew(&record);
        let times = counted(added, responder.config().threshold);
        if times == 0 {
            continue;
        }
        let Some(trigger) = trigger_of(&client, &record).await else {
            continue;
        };
        for _ in 0..times {
            responder.observe(&trigger).await;
        }
    }
}

/// The trigger a grown record stands for: its latest Pod, if that Pod
/// still exists with the UID the record names.
async fn trigger_of(client: &Client, record: &MapViolation) -> Option<Trigger> {
    let namespace = record.metadata.namespace.as_deref()?;
    let status = record.status.as_ref()?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = match pods.get_opt(&status.pod).await {
        Ok(Some(pod)) => pod,
        Ok(None) => {
            tracing::debug!(%namespace, pod = %status.pod, "the record's Pod is gone");
            return None;
        }
        Err(e) => {
            tracing::warn!(%namespace, pod = %status.pod, error = %e, "cannot read the record's Pod");
            return None;
        }
    };
    if pod.metadata.uid.as_deref() != Some(status.pod_uid.as_str()) {
        tracing::debug!(%namespace, pod = %status.pod, "the record names an earlier Pod of that name");
        return None;
    }
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone())?;
    let workload = Workload::of(&pod);
    Some(Trigger {
        namespace: namespace.to_owned(),
        pod: status.pod.clone(),
        node,
        workload: format!("{}/{}", workload.kind, workload.name),
        cause: match status.detected_by.parse::<Detector>() {
            Ok(detector) if detector.is_crash_path() => Cause::Crash,
            _ => Cause::Violation,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::counted;

    #[test]
    fn a_burst_counts_up_to_the_threshold() {
        assert_eq!(counted(0, 3), 0);
        assert_eq!(counted(-4, 3), 0);
        assert_eq!(counted(2, 3), 2);
        assert_eq!(counted(1000, 3), 3);
    }
}
