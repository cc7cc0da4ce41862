//! The responder's cluster-wide budget: the times of its actions in the
//! last hour, kept in a ConfigMap in its own namespace
//! ([`BUDGET_CONFIGMAP`]) that only its ServiceAccount may write
//! (`manifests/responder/rbac.yaml`). Tenants who may create Events, or
//! anything else in their own namespaces, cannot add to it; a restarted
//! responder reads what its predecessor spent.
//!
//! An action is claimed before it is taken (written with the ConfigMap's
//! `resourceVersion`, so two responders overlapping during a rollout never
//! both take the last unit) and released if it did not happen (a budget
//! refused the eviction). One line per action: `UNIX_SECONDS WHAT`.

use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

/// The ConfigMap (in the responder's namespace) that holds the budget.
pub const BUDGET_CONFIGMAP: &str = "mapguard-responder-budget";
const KEY: &str = "actions";
const WINDOW_SECONDS: i64 = 3600;
/// Conflicting writes retried before giving up.
const ATTEMPTS: usize = 5;

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The action may go ahead; release the line if it does not happen.
    Granted(String),
    /// `in_last_hour` actions already: none more.
    Exhausted { in_last_hour: u32 },
}

/// Claims and releases actions in the budget ConfigMap.
#[derive(Clone)]
pub struct Budget {
    configmaps: Api<ConfigMap>,
    per_hour: u32,
}

impl Budget {
    /// The budget of `per_hour` actions, kept in `namespace`.
    pub fn new(client: Client, namespace: &str, per_hour: u32) -> Budget {
        Budget {
            configmaps: Api::namespaced(client, namespace),
            per_hour,
        }
    }

    /// Claims one action described by `what`, unless the last hour used
    /// the budget up.
    pub async fn claim(&self, what: &str) -> Result<Claim, String> {
        let now = unix_now();
        let line = format!("{now} {}", what.replace('\n', " "));
        self.modify(|lines| {
            let recent = recent(lines, now);
            let in_last_hour = u32::try_from(recent.len()).unwrap_or(u32::MAX);
            if in_last_hour >= self.per_hour {
                return (recent, Claim::Exhausted { in_last_hour });
            }
            let mut kept = recent;
            kept.push(line.clone());
            (kept, Claim::Granted(line.clone()))
        })
        .await
    }

    /// Gives back a claim whose action did not happen.
    pub async fn release(&self, line: &str) -> Result<(), String> {
        let now = unix_now();
        self.modify(|lines| {
            let mut kept = recent(lines, now);
            if let Some(i) = kept.iter().position(|l| l == line) {
                kept.remove(i);
            }
            (kept, ())
        })
        .await
    }

    /// Reads the lines, lets `change` decide the new ones, and writes
    /// them guarded by the read's `resourceVersion` (created when absent).
    async fn modify<T>(&self, change: impl Fn(&[String]) -> (Vec<String>, T)) -> Result<T, String> {
        for _ in 0..ATTEMPTS {
            let current = self
                .configmaps
                .get_opt(BUDGET_CONFIGMAP)
                .await
                .map_err(|e| format!("read the budget ConfigMap {BUDGET_CONFIGMAP}: {e}"))?;
            let lines: Vec<String> = current
                .as_ref()
                .and_then(|c| c.data.as_ref())
                .and_then(|d| d.get(KEY))
                .map(|text| text.lines().map(str::to_owned).collect())
                .unwrap_or_default();
            let (kept, answer) = change(&lines);
            let text: String = kept.iter().map(|l| format!("{l}\n")).collect();
            let written = match current {
                Some(mut configmap) => {
                    configmap
                        .data
                        .get_or_insert_default()
                        .insert(KEY.to_owned(), text);
                    self.configmaps
                        .replace(BUDGET_CONFIGMAP, &PostParams::default(), &configmap)
                        .await
                }
                None => {
                    let configmap = ConfigMap {
                        metadata: ObjectMeta {
                            name: Some(BUDGET_CONFIGMAP.to_owned()),
                            labels: Some(
                                [(
                                    "app.kubernetes.io/part-of".to_owned(),
                                    "mapguard".to_owned(),
                                )]
                                .into(),
                            ),
                            ..ObjectMeta::default()
                        },
                        data: Some([(KEY.to_owned(), text)].into()),
                        ..ConfigMap::default()
                    };
                    self.configmaps
                        .create(&PostParams::default(), &configmap)
                        .await
                }
            };
            match written {
                Ok(_) => return Ok(answer),
                // Another writer came first: read again.
                Err(kube::Error::Api(status)) if status.code == 409 => continue,
                Err(e) => {
                    return Err(format!(
                        "write the budget ConfigMap {BUDGET_CONFIGMAP}: {e}"
                    ));
                }
            }
        }
        Err(format!(
            "the budget ConfigMap {BUDGET_CONFIGMAP} kept changing under {ATTEMPTS} attempts"
        ))
    }
}

/// The lines of actions within the last hour (unreadable lines dropped).
fn recent(lines: &[String], now: i64) -> Vec<String> {
    lines
        .iter()
        .filter(|l| {
            l.split_whitespace()
                .next()
                .and_then(|t| t.parse::<i64>().ok())
                .is_some_and(|t| t > now - WINDOW_SECONDS)
        })
        .cloned()
        .collect()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_last_hours_lines_count() {
        let lines = [
            "1000 evict shop/a".to_owned(),
            "1400 evict shop/b".to_owned(),
            "1401 cordon node-1".to_owned(),
            "garbage".to_owned(),
        ];
        assert_eq!(recent(&lines, 5000), ["1401 cordon node-1"]);
    }
}
