//! Writing one record into the API server: create it for a new pair, add
//! to its count for a repeat, repair it when it was edited into something
//! else, and keep each namespace under its bound.
//!
//! Agents on several nodes write the same record (a Deployment's replicas
//! race at the same call sites), so every update is a read-modify-write
//! guarded by `resourceVersion`: a conflict reads again, nothing is counted
//! twice or lost. Objects are read untyped first, so an object that no
//! longer parses (edited by hand, or written by another release) is
//! recognised and replaced instead of failing every write.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, PostParams, Preconditions};
use kube::{Api, Client};
use tracing::{debug, warn};

use super::error::{ApiOutcome, RecordError, classify};
use super::queue::{Pending, RecordKey};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use mapguard_api::keys::KIND_LABEL;
use mapguard_api::resource::{MapViolation, MapViolationStatus};

/// Reads and writes of one record before giving up as contended (other
/// writers changing it each time).
const ATTEMPTS: u32 = 8;

/// How long a namespace found at its bound is taken to still be there
/// before listing it again (records are only removed by people).
const FULL_RECHECK: Duration = Duration::from_secs(30);

/// Label on every record, for selection and clean-up.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "mapguard-enforcer");

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    Created,
    Updated,
    /// The stored object was invalid or stood for another pair; it now
    /// holds this one.
    Repaired,
    /// A new pair in a namespace at its bound: not recorded.
    OverBound,
}

/// The step after one read-modify-write attempt.
enum Step {
    Done(Written),
    /// The object changed or vanished meanwhile: read it again.
    Again,
}

/// Writes records; owned by the writer task.
pub(crate) struct Store {
    client: Client,
    resource: ApiResource,
    node: String,
    max_per_namespace: usize,
    full_since: HashMap<String, Instant>,
}

impl Store {
    pub fn new(client: Client, node: String, max_per_namespace: usize) -> Self {
        Store {
            client,
            resource: ApiResource::erase::<MapViolation>(&()),
            node,
            max_per_namespace,
            full_since: HashMap::new(),
        }
    }

    /// Adds `pending`'s unrecorded occurrences to the record `key`.
    pub async fn write(
        &mut self,
        key: &RecordKey,
        pending: &Pending,
    ) -> Result<Written, RecordError> {
        let what = format!("MapViolation {}/{}", key.namespace, key.name);
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &key.namespace, &self.resource);
        // What earlier attempts did, which the final one may not see: the
        // object was created (its status write then lost a race) or
        // replaced.
        let (mut created, mut repaired) = (false, false);
        for _ in 0..ATTEMPTS {
            let stored = match api.get(&key.name).await {
                Ok(object) => Some(object),
                Err(e) => match classify("get", &what, e) {
                    ApiOutcome::NotFound => None,
                    ApiOutcome::Conflict => continue,
                    ApiOutcome::Failed(e) => return Err(e),
                },
            };
            let step = match stored {
                None => self.create(&api, key, pending, &what, &mut created).await?,
                Some(object) => {
                    self.update(&api, key, pending, &what, object, &mut repaired)
                        .await?
                }
            };
            if let Step::Done(written) = step {
                return Ok(match written {
                    Written::Created | Written::Updated if repaired => Written::Repaired,
                    Written::Updated if created => Written::Created,
                    w => w,
                });
            }
        }
        Err(RecordError::Contended {
            what,
            attempts: ATTEMPTS,
        })
    }

    async fn create(
        &mut self,
        api: &Api<DynamicObject>,
        key: &RecordKey,
        pending: &Pending,
        what: &str,
        created: &mut bool,
    ) -> Result<Step, RecordError> {
        if self.namespace_full(api, &key.namespace, what).await? {
            return Ok(Step::Done(Written::OverBound));
        }
        let record = fresh(key, pending);
        let object = match api.create(&PostParams::default(), &dynamic(&record)).await {
            Ok(object) => object,
            Err(e) => {
                return match classify("create", what, e) {
                    // Another agent created it first: add to theirs.
                    ApiOutcome::Conflict => Ok(Step::Again),
                    ApiOutcome::NotFound => Err(RecordError::NotInstalled {
                        verb: "create",
                        what: what.to_owned(),
                    }),
                    ApiOutcome::Failed(e) => Err(e),
                };
            }
        };
        // The status subresource ignores status in a create: write it now,
        // at the version just created. If this fails, the next attempt
        // finds a record without status and counts from zero: no occurrence
        // is counted twice.
        *created = true;
        let mut record = record;
        record.metadata = object.metadata;
        record.status = Some(status(None, pending, &self.node));
        self.replace_status(api, &key.name, &record, what, Written::Created)
            .await
    }

    async fn update(
        &mut self,
        api: &Api<DynamicObject>,
        key: &RecordKey,
        pending: &Pending,
        what: &str,
        stored: DynamicObject,
        repaired: &mut bool,
    ) -> Result<Step, RecordError> {
        let version = stored.metadata.resource_version.clone();
        let value = serde_json::to_value(&stored).unwrap_or_default();
        let mut record = match serde_json::from_value::<MapViolation>(value) {
            Ok(record) => record,
            Err(e) => {
                warn!(
                    namespace = %key.namespace,
                    record = %key.name,
                    "{what} has an invalid shape ({e}); deleting and recreating it (its count restarts)"
                );
                let delete = DeleteParams {
                    preconditions: Some(Preconditions {
                        resource_version: version,
                        uid: stored.metadata.uid.clone(),
                    }),
                    ..DeleteParams::default()
                };
                if let Err(e) = api.delete(&key.name, &delete).await {
                    match classify("delete", what, e) {
                        ApiOutcome::NotFound | ApiOutcome::Conflict => {}
                        ApiOutcome::Failed(e) => return Err(e),
                    }
                }
                *repaired = true;
                return Ok(Step::Again);
            }
        };
        if !pending.pair.is_pair_of(&record.spec) {
            warn!(
                namespace = %key.namespace,
                record = %key.name,
                "{what} does not hold the call-site pair its name stands for (edited by hand?); \
                 overwriting its spec"
            );
            record.spec = fresh(key, pending).spec;
            let replaced = match api
                .replace(&key.name, &PostParams::default(), &dynamic(&record))
                .await
            {
                Ok(replaced) => replaced,
                Err(e) => {
                    return match classify("update", what, e) {
                        ApiOutcome::NotFound | ApiOutcome::Conflict => Ok(Step::Again),
                        ApiOutcome::Failed(e) => Err(e),
                    };
                }
            };
            record.metadata = replaced.metadata;
            *repaired = true;
        }
        record.status = Some(status(record.status.as_ref(), pending, &self.node));
        self.replace_status(api, &key.name, &record, what, Written::Updated)
            .await
    }

    async fn replace_status(
        &self,
        api: &Api<DynamicObject>,
        name: &str,
        record: &MapViolation,
        what: &str,
        written: Written,
    ) -> Result<Step, RecordError> {
        match api
            .replace_status(name, &PostParams::default(), &dynamic(record))
            .await
        {
            Ok(_) => Ok(Step::Done(written)),
            Err(e) => match classify("update the status of", what, e) {
                ApiOutcome::NotFound | ApiOutcome::Conflict => Ok(Step::Again),
                ApiOutcome::Failed(e) => Err(e),
            },
        }
    }

    /// Whether `namespace` holds its bound of records already.
    async fn namespace_full(
        &mut self,
        api: &Api<DynamicObject>,
        namespace: &str,
        what: &str,
    ) -> Result<bool, RecordError> {
        if self.max_per_namespace == 0 {
            return Ok(true);
        }
        if let Some(since) = self.full_since.get(namespace)
            && since.elapsed() < FULL_RECHECK
        {
            return Ok(true);
        }
        let limit = u32::try_from(self.max_per_namespace).unwrap_or(u32::MAX);
        let listed = match api.list_metadata(&ListParams::default().limit(limit)).await {
            Ok(list) => list.items.len(),
            Err(e) => {
                return Err(match classify("list", what, e) {
                    ApiOutcome::NotFound | ApiOutcome::Conflict => RecordError::NotInstalled {
                        verb: "list",
                        what: what.to_owned(),
                    },
                    ApiOutcome::Failed(e) => e,
                });
            }
        };
        let full = listed >= self.max_per_namespace;
        if full {
            if self
                .full_since
                .insert(namespace.to_owned(), Instant::now())
                .is_none()
            {
                warn!(
                    namespace,
                    limit = self.max_per_namespace,
                    "namespace {namespace} holds {} MapViolation records, its bound: violations \
                     at new call-site pairs there are not recorded (counted in \
                     mapguard_violations_dropped_total{{reason=\"namespace_bound\"}}); \
                     delete records that are dealt with",
                    self.max_per_namespace
                );
            } else {
                debug!(namespace, "namespace still at its record bound");
            }
        } else {
            self.full_since.remove(namespace);
        }
        Ok(full)
    }
}

/// A new record of `pending`'s pair, without status.
fn fresh(key: &RecordKey, pending: &Pending) -> MapViolation {
    let mut record = MapViolation::new(
        &key.name,
        pending
            .pair
            .spec(&pending.latest.stack, &pending.latest.conflicting_stack),
    );
    record.metadata.namespace = Some(key.namespace.clone());
    record.metadata.labels = Some(
        [
            (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
            (KIND_LABEL.to_owned(), pending.pair.kind.as_str().to_owned()),
        ]
        .into(),
    );
    record
}

/// `old` with `pending`'s occurrences added. The latest occurrence's
/// details win unless another node recorded a later one already.
fn status(old: Option<&MapViolationStatus>, pending: &Pending, node: &str) -> MapViolationStatus {
    let latest = &pending.latest;
    let added = i64::try_from(pending.unrecorded).unwrap_or(i64::MAX);
    let ours = MapViolationStatus {
        count: added,
        first_seen: Time(pending.first),
        last_seen: Time(latest.at),
        action: latest.action.as_str().to_owned(),
        detected_by: latest.detected_by.as_str().to_owned(),
        node: node.to_owned(),
        pod: latest.pod.name.clone(),
        pod_uid: latest.pod.uid.clone(),
        container: latest.container.clone(),
        binary: latest.binary.clone(),
        go_version: latest.go_version.clone(),
    };
    let Some(old) = old else {
        return ours;
    };
    let count = old.count.max(0).saturating_add(added);
    let first_seen = Time(old.first_seen.0.min(pending.first));
    if latest.at >= old.last_seen.0 {
        MapViolationStatus {
            count,
            first_seen,
            ..ours
        }
    } else {
        MapViolationStatus {
            count,
            first_seen,
            ..old.clone()
        }
    }
}

/// A typed record as the untyped object the API calls take.
fn dynamic(record: &MapViolation) -> DynamicObject {
    serde_json::to_value(record)
        .and_then(serde_json::from_value)
        .expect("a MapViolation is a JSON object with metadata")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::records::queue::{Observation, PodRef};
    use mapguard_api::frame::Frame;
    use mapguard_api::pair::CallSitePair;
    use mapguard_api::vocab::{Action, Detector, Kind, Op};

    fn pending(pod: &str, at: i64, first: i64, unrecorded: u64) -> Pending {
        let mut p = Pending::new(
            CallSitePair {
                kind: Kind::DeleteDuringIteration,
                op: Op::Delete,
                conflicting_op: Op::IterNext,
                frame: Some(Frame::source("main.d", "/a.go", 1)),
                conflicting_frame: Some(Frame::source("main.r", "/a.go", 9)),
            },
            Observation {
                at: Timestamp::from_second(at).expect("time"),
                action: Action::Killed,
                detected_by: Detector::WritingFlag,
                pod: PodRef {
                    namespace: "ns".to_owned(),
                    name: pod.to_owned(),
                    uid: "u".to_owned(),
                },
                container: Some("app".to_owned()),
                binary: "/app".to_owned(),
                go_version: Some("go1.24.4".to_owned()),
                stack: vec![Frame::source("main.d", "/a.go", 1)],
                conflicting_stack: vec![Frame::source("main.r", "/a.go", 9)],
            },
        );
        p.first = Timestamp::from_second(first).expect("time");
        p.unrecorded = unrecorded;
        p
    }

    #[test]
    fn counts_add_up_and_the_later_occurrence_names_the_pod() {
        let first = status(None, &pending("p1", 100, 90, 3), "node-a");
        assert_eq!((first.count, first.pod.as_str()), (3, "p1"));
        assert_eq!(first.first_seen.0.as_second(), 90);

        let newer = status(Some(&first), &pending("p2", 200, 150, 2), "node-b");
        assert_eq!(newer.count, 5);
        assert_eq!((newer.pod.as_str(), newer.node.as_str()), ("p2", "node-b"));
        assert_eq!(newer.first_seen.0.as_second(), 90);
        assert_eq!(newer.last_seen.0.as_second(), 200);

        // A late writer adds its count but does not roll "last" back.
        let late = status(Some(&newer), &pending("p0", 120, 80, 1), "node-c");
        assert_eq!(late.count, 6);
        assert_eq!((late.pod.as_str(), late.node.as_str()), ("p2", "node-b"));
        assert_eq!(late.first_seen.0.as_second(), 80);
        assert_eq!(late.last_seen.0.as_second(), 200);
    }

    #[test]
    fn a_fresh_record_is_labelled_and_stands_for_its_pair() {
        let p = pending("p1", 1, 1, 1);
        let key = RecordKey {
            namespace: "ns".to_owned(),
            name: p.pair.object_name(),
        };
        let record = fresh(&key, &p);
        assert!(p.pair.is_pair_of(&record.spec));
        assert_eq!(record.spec.site, "main.d a.go:1");
        assert_eq!(
            record.spec.conflicting_site.as_deref(),
            Some("main.r a.go:9")
        );
        let labels = record.metadata.labels.clone().expect("labels");
        assert_eq!(labels["mapguard.io/kind"], "delete_during_iteration");
        let object = dynamic(&record);
        assert_eq!(object.metadata.name.as_deref(), Some(key.name.as_str()));
        assert_eq!(object.data["spec"]["conflictingOp"], "iterate");
    }
}
