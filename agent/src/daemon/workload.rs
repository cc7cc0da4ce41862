//! The workload a Pod belongs to: the label the node agent's per-workload
//! metrics carry (`workload`, `workload_kind`), so that a series outlives
//! the Pods of a Deployment as they are replaced and the number of series
//! stays bounded by the workloads, not the Pods.
//!
//! Found from the Pod alone, without asking the API server, by the
//! controllers' naming conventions:
//!
//! - a Pod whose controller is a ReplicaSet named `NAME-HASH`, where `HASH`
//!   is the Pod's `pod-template-hash` label, belongs to the Deployment
//!   `NAME` (the Deployment controller names its ReplicaSets so and labels
//!   their Pods with that hash); any other ReplicaSet is the workload;
//! - a Pod whose controller is a Job named `NAME-DIGITS` (eight or more
//!   digits: the scheduled time in minutes the CronJob controller appends)
//!   belongs to the CronJob `NAME`; any other Job is the workload;
//! - any other controller (StatefulSet, DaemonSet, ...) is the workload;
//! - a Pod without a controller is its own workload (`workload_kind="Pod"`).

use k8s_openapi::api::core::v1::Pod;

/// The label Deployments put on their ReplicaSets' Pods.
const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Digits the CronJob controller appends to a Job's name (at least).
const CRONJOB_SUFFIX_DIGITS: usize = 8;

/// A workload: the controller a Pod's series are counted under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Workload {
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `CronJob`, `Job`,
    /// `ReplicaSet`, `Pod`, ... (the owner's kind).
    pub kind: String,
    pub name: String,
}

impl Workload {
    /// The workload of `pod` (see the module's conventions).
    pub fn of(pod: &Pod) -> Workload {
        let meta = &pod.metadata;
        let controller = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true));
        let Some(owner) = controller else {
            return Workload {
                kind: "Pod".into(),
                name: meta.name.clone().unwrap_or_default(),
            };
        };
        let label = |key: &str| meta.labels.as_ref().and_then(|l| l.get(key));
        match owner.kind.as_str() {
            "ReplicaSet" => {
                let deployment = label(POD_TEMPLATE_HASH)
                    .and_then(|hash| owner.name.strip_suffix(hash.as_str()))
                    .and_then(|name| name.strip_suffix('-'))
                    .filter(|name| !name.is_empty());
                match deployment {
                    Some(name) => Workload {
                        kind: "Deployment".into(),
                        name: name.into(),
                    },
                    None => Workload {
                        kind: "ReplicaSet".into(),
                        name: owner.name.clone(),
                    },
                }
            }
            "Job" => match cronjob_of(&owner.name) {
                Some(name) => Workload {
                    kind: "CronJob".into(),
                    name: name.into(),
                },
                None => Workload {
                    kind: "Job".into(),
                    name: owner.name.clone(),
                },
            },
            kind => Workload {
                kind: kind.into(),
                name: owner.name.clone(),
            },
        }
    }
}

/// `nightly-29012345` → `nightly`.
fn cronjob_of(job: &str) -> Option<&str> {
    let (name, digits) = job.rsplit_once('-')?;
    (!name.is_empty()
        && digits.len() >= CRONJOB_SUFFIX_DIGITS
        && digits.bytes().all(|b| b.is_ascii_digit()))
    .then_some(name)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::*;

    fn pod(name: &str, owner: Option<(&str, &str, bool)>, hash: Option<&str>) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.owner_references = owner.map(|(kind, name, controller)| {
            vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: kind.into(),
                name: name.into(),
                uid: "u".into(),
                controller: Some(controller),
                ..OwnerReference::default()
            }]
        });
        p.metadata.labels = hash.map(|h| [(POD_TEMPLATE_HASH.to_string(), h.to_string())].into());
        p
    }

    fn w(kind: &str, name: &str) -> Workload {
        Workload {
            kind: kind.into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_replicaset_of_a_deployment_names_the_deployment() {
        let p = pod(
            "checkout-7d9f8b6c5d-x2x4z",
            Some(("ReplicaSet", "checkout-7d9f8b6c5d", true)),
            Some("7d9f8b6c5d"),
        );
        assert_eq!(Workload::of(&p), w("Deployment", "checkout"));
        // No hash label, or one that does not match: the ReplicaSet itself.
        let p = pod("rs-abc", Some(("ReplicaSet", "rs", true)), None);
        assert_eq!(Workload::of(&p), w("ReplicaSet", "rs"));
        let p = pod("x", Some(("ReplicaSet", "web-1234", true)), Some("9999"));
        assert_eq!(Workload::of(&p), w("ReplicaSet", "web-1234"));
    }

    #[test]
    fn jobs_of_a_cronjob_name_the_cronjob() {
        let p = pod("n-1", Some(("Job", "nightly-29012345", true)), None);
        assert_eq!(Workload::of(&p), w("CronJob", "nightly"));
        let p = pod("m-1", Some(("Job", "migrate-42", true)), None);
        assert_eq!(Workload::of(&p), w("Job", "migrate-42"));
    }

    #[test]
    fn other_controllers_are_the_workload_and_bare_pods_their_own() {
        let p = pod("db-0", Some(("StatefulSet", "db", true)), None);
        assert_eq!(Workload::of(&p), w("StatefulSet", "db"));
        let p = pod("tool", None, None);
        assert_eq!(Workload::of(&p), w("Pod", "tool"));
        // An owner that is not the controller does not count.
        let p = pod("tool", Some(("ConfigMap", "cfg", false)), None);
        assert_eq!(Workload::of(&p), w("Pod", "tool"));
    }
}
