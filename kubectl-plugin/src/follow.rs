//! Following records as they change, in every context at once: kube's
//! watcher (list, then watch from the list's resourceVersion, relisting
//! after a gap, with back-off: [`mapguard_kube::cache::events`]) per
//! context, merged into one stream, and a [`Follower`] per context that
//! turns its events into [`Change`]s that `watch` prints and `trace` counts.
//!
//! After a gap (the watch expired, the API server restarted) the watcher
//! lists again; the follower compares that list with what it knew, so
//! records added, changed or deleted meanwhile are reported once, and
//! unchanged ones not at all. (This is why it keeps its own map rather
//! than the toolkit's reflector: a reflector's store swaps in the new list
//! and forgets what it replaced, which is what the comparison needs.)

use std::collections::HashMap;
use std::pin::Pin;

use futures_util::stream::{self, Stream, StreamExt as _};
use kube::api::DynamicObject;
use kube::runtime::watcher::{self, Event};

use crate::clusters::Target;
use crate::error::PluginError;
use crate::records::{self, Record, where_};

/// What happened to the records of one context.
#[derive(Debug, Clone)]
pub enum Change {
    /// The records that existed when following started (least recently
    /// seen first).
    Initial(Vec<Record>),
    Added(Record),
    /// A record changed; `old_count` is its count before the change.
    Modified {
        old_count: i64,
        new: Record,
    },
    Deleted(Record),
}

/// The state of one context's records.
#[derive(Debug, Default)]
pub struct Follower {
    context: String,
    known: HashMap<(String, String), Record>,
    synced: bool,
    listing: Vec<Record>,
}

fn key(record: &Record) -> (String, String) {
    (record.namespace().to_owned(), record.name().to_owned())
}

fn same_version(a: &Record, b: &Record) -> bool {
    a.object.metadata.resource_version.is_some()
        && a.object.metadata.resource_version == b.object.metadata.resource_version
}

impl Follower {
    pub fn new(context: &str) -> Self {
        Follower {
            context: context.to_owned(),
            ..Follower::default()
        }
    }

    /// Whether the first list is complete.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// The changes `event` makes.
    pub fn on(&mut self, event: Event<DynamicObject>) -> Vec<Change> {
        match event {
            Event::Init => {
                self.listing.clear();
                Vec::new()
            }
            Event::InitApply(object) => {
                self.listing.push(Record::new(&self.context, object));
                Vec::new()
            }
            Event::InitDone => self.listed(),
            Event::Apply(object) => self
                .apply(Record::new(&self.context, object))
                .into_iter()
                .collect(),
            Event::Delete(object) => {
                let record = Record::new(&self.context, object);
                self.known.remove(&key(&record));
                vec![Change::Deleted(record)]
            }
        }
    }

    fn apply(&mut self, record: Record) -> Option<Change> {
        match self.known.insert(key(&record), record.clone()) {
            None => Some(Change::Added(record)),
            Some(old) if same_version(&old, &record) => None,
            Some(old) => Some(Change::Modified {
                old_count: old.count(),
                new: record,
            }),
        }
    }

    fn listed(&mut self) -> Vec<Change> {
        let mut listing = std::mem::take(&mut self.listing);
        if !self.synced {
            self.synced = true;
            listing.sort_by(Record::by_last_seen);
            self.known = listing.iter().map(|r| (key(r), r.clone())).collect();
            return vec![Change::Initial(listing)];
        }
        let mut gone = std::mem::take(&mut self.known);
        let mut changes = Vec::new();
        for record in listing {
            if let Some(old) = gone.remove(&key(&record)) {
                self.known.insert(key(&old), old);
            }
            changes.extend(self.apply(record));
        }
        let mut gone: Vec<Record> = gone.into_values().collect();
        gone.sort_by(Record::by_last_seen);
        changes.extend(gone.into_iter().map(Change::Deleted));
        changes
    }
}

/// One event of context `.0` (an index into the targets).
pub type Item = (usize, Result<Event<DynamicObject>, watcher::Error>);

/// The watchers of every target's records (that `selector` matches), merged.
pub fn watch_all(
    targets: &[Target],
    selector: Option<&str>,
) -> impl Stream<Item = Item> + Unpin + use<> {
    let streams: Vec<Pin<Box<dyn Stream<Item = Item> + Send>>> = targets
        .iter()
        .enumerate()
        .map(|(i, target)| {
            let mut config = watcher::Config::default();
            if let Some(selector) = selector {
                config = config.labels(selector);
            }
            let s = mapguard_kube::cache::events(records::api(target), config).map(move |e| (i, e));
            Box::pin(s) as Pin<Box<dyn Stream<Item = Item> + Send>>
        })
        .collect();
    stream::select_all(streams)
}

/// A watcher error that retrying cannot cure (RBAC, no CRD), as the
/// command's error; `None` for the transient ones, which the watcher
/// retries with backoff.
pub fn fatal(target: &Target, error: &watcher::Error) -> Option<PluginError> {
    let (verb, source) = match error {
        watcher::Error::InitialListFailed(e) => ("list", e),
        watcher::Error::WatchStartFailed(e) => ("watch", e),
        _ => return None,
    };
    match source {
        kube::Error::Api(status) => {
            PluginError::refusal(&target.context, verb, &where_(&target.scope), status)
        }
        _ => None,
    }
}

/// Follows the records of every target until Ctrl-C, SIGTERM or the end of
/// the watches (`Ok(true)`), or an error retrying cannot cure. Transient
/// watch errors are warnings on `err`. `on_change` sees each change with
/// its target's index; `on_synced` runs once, when every target's initial
/// list is in.
pub async fn follow(
    targets: &[Target],
    selector: Option<&str>,
    err: &mut dyn std::io::Write,
    mut on_change: impl FnMut(usize, Change, &mut dyn std::io::Write) -> Result<(), PluginError>,
    mut on_synced: impl FnMut(&mut dyn std::io::Write) -> Result<(), PluginError>,
) -> Result<bool, PluginError> {
    let mut followers: Vec<Follower> = targets.iter().map(|t| Follower::new(&t.context)).collect();
    let mut changes = watch_all(targets, selector);
    let mut synced = false;
    let stop = interrupted();
    tokio::pin!(stop);
    loop {
        let (i, event) = tokio::select! {
            () = &mut stop => return Ok(true),
            next = changes.next() => match next {
                Some(item) => item,
                None => return Ok(true),
            },
        };
        let target = &targets[i];
        let event = match event {
            Ok(event) => event,
            Err(e) => match fatal(target, &e) {
                Some(fatal) => return Err(fatal),
                None => {
                    writeln!(err, "warning: context {:?}: {e}; retrying", target.context)?;
                    continue;
                }
            },
        };
        for change in followers[i].on(event) {
            on_change(i, change, err)?;
        }
        if !synced && followers.iter().all(Follower::synced) {
            synced = true;
            on_synced(err)?;
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM: how `watch` and `trace` end.
pub async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(name: &str, rv: &str, count: i64) -> DynamicObject {
        crate::records::sample(json!({
            "metadata": {"name": name, "namespace": "shop", "resourceVersion": rv},
            "status": {"count": count},
        }))
    }

    fn names(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::Initial(rs) => format!(
                    "initial {}",
                    rs.iter().map(Record::name).collect::<Vec<_>>().join(",")
                ),
                Change::Added(r) => format!("added {}", r.name()),
                Change::Modified { old_count, new } => {
                    format!("modified {} {}->{}", new.name(), old_count, new.count())
                }
                Change::Deleted(r) => format!("deleted {}", r.name()),
            })
            .collect()
    }

    #[test]
    fn a_relist_reports_what_changed_during_the_gap_once() {
        let mut f = Follower::new("east");
        assert!(f.on(Event::Init).is_empty());
        f.on(Event::InitApply(object("a", "1", 1)));
        f.on(Event::InitApply(object("b", "2", 1)));
        assert!(!f.synced());
        assert_eq!(names(&f.on(Event::InitDone)), ["initial a,b"]);
        assert!(f.synced());
        assert_eq!(
            names(&f.on(Event::Apply(object("a", "3", 2)))),
            ["modified a 1->2"]
        );
        assert!(
            f.on(Event::Apply(object("a", "3", 2))).is_empty(),
            "the same version twice is one change"
        );
        assert_eq!(names(&f.on(Event::Apply(object("c", "4", 0)))), ["added c"]);
        // A gap: a changed, b deleted, c unchanged, d new.
        f.on(Event::Init);
        f.on(Event::InitApply(object("a", "5", 7)));
        f.on(Event::InitApply(object("c", "4", 0)));
        f.on(Event::InitApply(object("d", "6", 1)));
        assert_eq!(
            names(&f.on(Event::InitDone)),
            ["modified a 2->7", "added d", "deleted b"]
        );
        assert_eq!(
            names(&f.on(Event::Delete(object("a", "7", 7)))),
            ["deleted a"]
        );
        assert_eq!(names(&f.on(Event::Apply(object("a", "8", 1)))), ["added a"]);
    }
}
