//! `trace`: each Go map race as it happens, in every context and namespace
//! read, until interrupted.
//!
//! The source is the `MapViolation` records: the node agent adds every
//! violation to its call-site pair's record (`status.count`, with the
//! latest Pod, container, node, action and time), so a count that grows is
//! a race that happened, and nothing is lost while the API server was slow
//! (repeats that the agent merged show as `N times`). What existed when
//! `trace` started is the baseline and is not printed; a ready line on
//! stderr says when the baseline of every context is read.
//!
//! The agent's `MapRace` Warning Events say the same per Pod; they are not
//! read here because the records keep every count, while Events can be
//! switched off and, during an outage, those of more than a few Pods of
//! one pair are dropped. The one race records miss: a new pair in a
//! namespace already at the agent's record bound is only an Event
//! (`kubectl get events --field-selector reason=MapRace`).

use std::io::Write;

use mapguard_api::vocab::Action;
use serde::Serialize;

use crate::clusters::{Scope, Target};
use crate::config::{TraceArgs, TraceOutput};
use crate::error::PluginError;
use crate::follow::{Change, follow};

/// One or more races of one call-site pair, as `-o json` prints them.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Occurrence {
    /// When the latest of them happened (RFC 3339).
    pub time: String,
    pub context: String,
    pub namespace: String,
    pub pod: String,
    pub container: Option<String>,
    pub node: String,
    pub kind: String,
    pub op: String,
    pub site: String,
    pub conflicting_op: String,
    /// `None` when the other side is not on record.
    pub conflicting_site: Option<String>,
    /// `audit`, `stopped` or `killed`.
    pub action: String,
    /// How many happened since the last line of this record.
    pub occurrences: i64,
    /// The record's count after them.
    pub count: i64,
    /// The record's name.
    pub record: String,
}

impl Occurrence {
    /// The races `change` shows, if any: a new record's count, or what a
    /// record's count grew by.
    pub fn of(change: &Change) -> Option<Occurrence> {
        let (record, before) = match change {
            Change::Added(new) => (new, 0),
            Change::Modified { old_count, new } => (new, *old_count),
            Change::Initial(_) | Change::Deleted(_) => return None,
        };
        let occurrences = record.count() - before;
        if occurrences <= 0 {
            return None;
        }
        // A count above zero was written with the status.
        let status = record.status.clone()?;
        Some(Occurrence {
            time: record
                .last_seen()
                .map_or_else(|| "-".to_owned(), |t| t.to_string()),
            context: record.context.clone(),
            namespace: record.namespace().to_owned(),
            pod: status.pod,
            container: status.container,
            node: status.node,
            kind: record.spec.kind.clone(),
            op: record.spec.op.clone(),
            site: record.spec.site.clone(),
            conflicting_op: record.spec.conflicting_op.clone(),
            conflicting_site: record.spec.conflicting_site.clone(),
            action: status.action,
            occurrences,
            count: record.count(),
            record: record.name().to_owned(),
        })
    }

    /// `2026-11-25T19:20:16Z shop/cart-1 (app): concurrent_write: assign at
    /// main.assigner main.go:38 while delete at main.deleter main.go:26;
    /// process killed (record concurrent-write-…, node node-a)`, with the
    /// context in brackets when several are read.
    pub fn line(&self, name_context: bool) -> String {
        let context = if name_context {
            format!("[{}] ", self.context)
        } else {
            String::new()
        };
        let container = self
            .container
            .as_ref()
            .map_or_else(String::new, |c| format!(" ({c})"));
        let other = match &self.conflicting_site {
            Some(site) => format!("while {} at {site}", self.conflicting_op),
            None => "(the other side is not on record)".to_owned(),
        };
        let action = match self.action.parse() {
            Ok(Action::Audit) => "process left running (audit)".to_owned(),
            Ok(Action::Stopped) => "process stopped (SIGSTOP)".to_owned(),
            Ok(Action::Killed) => "process killed (SIGKILL)".to_owned(),
            Ok(Action::Unknown) | Err(_) => format!("action {}", self.action),
        };
        let times = if self.occurrences > 1 {
            format!(", {} times", self.occurrences)
        } else {
            String::new()
        };
        format!(
            "{} {context}{}/{}{container}: {}: {} at {} {other}; {action}{times} (record {}, node {})",
            self.time,
            self.namespace,
            self.pod,
            self.kind,
            self.op,
            self.site,
            self.record,
            self.node
        )
    }
}

/// Runs `trace` until Ctrl-C or SIGTERM.
pub async fn run(
    args: &TraceArgs,
    targets: &[Target],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<bool, PluginError> {
    let several = targets.len() > 1;
    let selector = args.cluster.selector.as_deref();
    let print = |_: usize, change: Change, _: &mut dyn Write| -> Result<(), PluginError> {
        let Some(occurrence) = Occurrence::of(&change) else {
            return Ok(());
        };
        match args.output {
            TraceOutput::Text => writeln!(out, "{}", occurrence.line(several))?,
            TraceOutput::Json => {
                serde_json::to_writer(&mut *out, &occurrence).map_err(std::io::Error::from)?;
                writeln!(out)?;
            }
        }
        out.flush()?;
        Ok(())
    };
    let ready = |err: &mut dyn Write| -> Result<(), PluginError> {
        writeln!(err, "{}", ready_line(targets))?;
        err.flush()?;
        Ok(())
    };
    follow(targets, selector, err, print, ready).await
}

/// `Tracing Go map races in all namespaces of contexts east, west; Ctrl-C to stop.`
fn ready_line(targets: &[Target]) -> String {
    let scopes: Vec<String> = targets
        .iter()
        .map(|t| match &t.scope {
            Scope::All => format!("all namespaces of {}", t.context),
            Scope::Namespace(ns) => format!("namespace {ns} of {}", t.context),
        })
        .collect();
    format!(
        "Tracing Go map races in {} (from now on); Ctrl-C to stop.",
        scopes.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Record;
    use serde_json::json;

    fn record(rv: &str, count: i64, conflicting: Option<&str>) -> Record {
        Record::new(
            "east",
            crate::records::sample(json!({
                "metadata": {"name": "concurrent-write-1", "namespace": "shop", "resourceVersion": rv},
                "spec": {"kind": "concurrent_write", "op": "assign", "conflictingOp": "delete",
                         "site": "main.assigner main.go:38", "conflictingSite": conflicting},
                "status": {"count": count, "lastSeen": "2026-11-25T19:20:16Z", "action": "killed",
                           "pod": "cart-1", "container": "app", "node": "node-a"},
            })),
        )
    }

    #[test]
    fn a_grown_count_is_a_line_with_both_sites_and_the_action() {
        let old = record("1", 2, Some("main.deleter main.go:26"));
        let new = record("2", 5, Some("main.deleter main.go:26"));
        let o = Occurrence::of(&Change::Modified {
            old_count: old.count(),
            new,
        })
        .expect("3 races");
        assert_eq!(o.occurrences, 3);
        assert_eq!(
            o.line(false),
            "2026-11-25T19:20:16Z shop/cart-1 (app): concurrent_write: assign at main.assigner \
             main.go:38 while delete at main.deleter main.go:26; process killed (SIGKILL), 3 times \
             (record concurrent-write-1, node node-a)"
        );
        let one_sided = Occurrence::of(&Change::Added(record("3", 1, None))).expect("1 race");
        assert_eq!(one_sided.occurrences, 1);
        assert!(
            one_sided.line(true).starts_with(
                "2026-11-25T19:20:16Z [east] shop/cart-1 (app): concurrent_write: assign at \
                 main.assigner main.go:38 (the other side is not on record); process killed (SIGKILL) (record"
            ),
            "{}",
            one_sided.line(true)
        );
    }

    #[test]
    fn records_without_new_races_print_nothing() {
        let same = record("1", 2, None);
        assert_eq!(
            Occurrence::of(&Change::Modified {
                old_count: same.count(),
                new: record("2", 2, None)
            }),
            None,
            "a status rewrite without a new race"
        );
        let mut fresh = same.clone();
        fresh.status = None;
        assert_eq!(
            Occurrence::of(&Change::Added(fresh)),
            None,
            "created, no status yet"
        );
        assert_eq!(Occurrence::of(&Change::Deleted(same.clone())), None);
        assert_eq!(Occurrence::of(&Change::Initial(vec![same])), None);
    }
}
