//! The bounded queue between `submit` (the enforcer's loop, never waiting)
//! and the writer task (waiting on the API server as long as it must).
//!
//! One entry per record (namespace and call-site pair): a repeat of a pair
//! already waiting merges into its entry (its count grows, the latest
//! occurrence wins), so a burst of one race, or a long outage, costs one
//! entry and loses no count. The bound is on distinct entries, including
//! the one being written, in all and per namespace; a new pair that finds
//! the queue, or its namespace's share of it, full is dropped, and the
//! caller counts it. Namespaces are served in turn (one entry each, round
//! robin), so a namespace racing at many call sites neither crowds out
//! another's records nor delays them behind its own.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use k8s_openapi::jiff::Timestamp;

use mapguard_api::frame::Frame;
use mapguard_api::pair::CallSitePair;
use mapguard_api::vocab::{Action, Detector};

/// Pods with a pending Event per entry; more distinct Pods between two
/// writes (replicas racing at once during an outage) lose their Event, not
/// their count in the record.
pub(crate) const MAX_EVENT_PODS: usize = 8;

/// The Pod a violation happened in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// One record: its namespace and object name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct RecordKey {
    pub namespace: String,
    pub name: String,
}

/// What one occurrence says beyond its pair.
#[derive(Debug, Clone)]
pub(crate) struct Observation {
    pub at: Timestamp,
    pub action: Action,
    pub detected_by: Detector,
    pub pod: PodRef,
    pub container: Option<String>,
    pub binary: String,
    pub go_version: Option<String>,
    pub stack: Vec<Frame>,
    pub conflicting_stack: Vec<Frame>,
}

/// An Event to publish on a Pod.
#[derive(Debug, Clone)]
pub(crate) struct PendingEvent {
    pub pod: PodRef,
    pub container: Option<String>,
    pub action: Action,
}

/// Writes waiting for one record.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub pair: CallSitePair,
    /// Occurrences not yet added to the record (0: only Events are left).
    pub unrecorded: u64,
    /// When the earliest of them happened.
    pub first: Timestamp,
    /// The latest occurrence.
    pub latest: Observation,
    /// Events to publish, at most one per Pod and action.
    pub events: Vec<PendingEvent>,
    /// The last write found the namespace at its record bound (the
    /// Events say the race was not recorded).
    pub over_bound: bool,
}

impl Pending {
    /// One occurrence.
    pub fn new(pair: CallSitePair, latest: Observation) -> Self {
        let event = PendingEvent {
            pod: latest.pod.clone(),
            container: latest.container.clone(),
            action: latest.action,
        };
        Pending {
            pair,
            unrecorded: 1,
            first: latest.at,
            latest,
            events: vec![event],
            over_bound: false,
        }
    }

    /// Adds `newer` (which arrived after `self`) into `self`; returns the
    /// number of Events that did not fit.
    fn absorb(&mut self, newer: Pending) -> u64 {
        if self.unrecorded == 0 {
            self.first = newer.first;
        } else if newer.unrecorded > 0 {
            self.first = self.first.min(newer.first);
        }
        self.unrecorded += newer.unrecorded;
        if newer.unrecorded > 0 && newer.latest.at >= self.latest.at {
            self.latest = newer.latest;
        }
        let mut lost = 0;
        for event in newer.events {
            let same = |e: &PendingEvent| e.pod.uid == event.pod.uid && e.action == event.action;
            if self.events.iter().any(same) {
                continue;
            }
            if self.events.len() < MAX_EVENT_PODS {
                self.events.push(event);
            } else {
                lost += 1;
            }
        }
        lost
    }
}

/// What `push` did with an occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A new entry.
    Queued,
    /// Added to the entry of the same record.
    Merged,
    /// The queue was full: not recorded.
    Dropped,
}

#[derive(Debug, Default)]
struct Inner {
    /// Entries waiting, by namespace, oldest first.
    waiting: HashMap<String, VecDeque<RecordKey>>,
    /// The namespaces with entries waiting, in the order they are served.
    turns: VecDeque<String>,
    items: HashMap<RecordKey, Pending>,
    /// The record being written: it holds one place in the bound, shared
    /// with the entry of what arrived for it meanwhile.
    in_flight: Option<RecordKey>,
}

impl Inner {
    /// Whether the record in flight has no entry of its own waiting.
    fn in_flight_apart(&self) -> Option<&RecordKey> {
        self.in_flight
            .as_ref()
            .filter(|k| !self.items.contains_key(*k))
    }

    fn len(&self) -> usize {
        self.items.len() + usize::from(self.in_flight_apart().is_some())
    }

    /// Entries of `namespace`, the one in flight included.
    fn namespace_len(&self, namespace: &str) -> usize {
        let apart = self
            .in_flight_apart()
            .is_some_and(|k| k.namespace == namespace);
        self.waiting.get(namespace).map_or(0, VecDeque::len) + usize::from(apart)
    }

    /// Adds `key` last of its namespace.
    fn enqueue(&mut self, key: RecordKey, pending: Pending) {
        let queue = self.waiting.entry(key.namespace.clone()).or_default();
        if queue.is_empty() {
            self.turns.push_back(key.namespace.clone());
        }
        queue.push_back(key.clone());
        self.items.insert(key, pending);
    }

    /// Puts `key` first of its namespace, and its namespace first.
    fn enqueue_first(&mut self, key: RecordKey, pending: Pending) {
        let namespace = key.namespace.clone();
        let queue = self.waiting.entry(namespace.clone()).or_default();
        queue.retain(|k| k != &key);
        queue.push_front(key.clone());
        self.turns.retain(|n| n != &namespace);
        self.turns.push_front(namespace);
        self.items.insert(key, pending);
    }

    /// The first entry of the namespace whose turn it is.
    fn take_next(&mut self) -> Option<RecordKey> {
        while let Some(namespace) = self.turns.pop_front() {
            let Some(queue) = self.waiting.get_mut(&namespace) else {
                continue;
            };
            let key = queue.pop_front();
            if queue.is_empty() {
                self.waiting.remove(&namespace);
            } else {
                self.turns.push_back(namespace);
            }
            if key.is_some() {
                return key;
            }
        }
        None
    }
}

/// Told each new length, under the queue's lock (so that two threads
/// cannot publish their lengths out of order).
pub(crate) type LengthObserver = Box<dyn Fn(usize) + Send + Sync>;

/// The queue; every method takes the lock for a few map operations only.
pub(crate) struct Queue {
    inner: Mutex<Inner>,
    capacity: usize,
    per_namespace: usize,
    observer: LengthObserver,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("inner", &self.inner)
            .field("capacity", &self.capacity)
            .field("per_namespace", &self.per_namespace)
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// At most `capacity` entries, `per_namespace` of them of one namespace.
    pub fn new(capacity: usize, per_namespace: usize, observer: LengthObserver) -> Self {
        Queue {
            inner: Mutex::new(Inner::default()),
            capacity,
            per_namespace,
            observer,
        }
    }

    /// The length after a change, told to the observer before the lock
    /// is released.
    fn changed(&self, inner: &Inner) -> usize {
        let length = inner.len();
        (self.observer)(length);
        length
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding it leaves consistent maps behind.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues or merges one occurrence. Returns what happened, the Events
    /// lost to the per-entry bound and the new length.
    pub fn push(&self, key: RecordKey, pending: Pending) -> (Admission, u64, usize) {
        let mut inner = self.lock();
        if let Some(entry) = inner.items.get_mut(&key) {
            let lost = entry.absorb(pending);
            return (Admission::Merged, lost, inner.len());
        }
        if inner.in_flight.as_ref() == Some(&key) {
            // A repeat of the record being written: waits in an entry of
            // its own (merged back on a retry), in the same place.
            inner.enqueue(key, pending);
            return (Admission::Merged, 0, self.changed(&inner));
        }
        if inner.len() >= self.capacity || inner.namespace_len(&key.namespace) >= self.per_namespace
        {
            return (Admission::Dropped, 0, inner.len());
        }
        inner.enqueue(key, pending);
        (Admission::Queued, 0, self.changed(&inner))
    }

    /// Takes the next entry to write: the oldest of the namespace whose
    /// turn it is. It counts against the bounds until [`Queue::done`] or
    /// [`Queue::requeue`].
    pub fn pop(&self) -> Option<(RecordKey, Pending)> {
        let mut inner = self.lock();
        while let Some(key) = inner.take_next() {
            if let Some(pending) = inner.items.remove(&key) {
                inner.in_flight = Some(key.clone());
                return Some((key, pending));
            }
        }
        None
    }

    /// The entry taken by `pop` is written; returns the new length.
    pub fn done(&self) -> usize {
        let mut inner = self.lock();
        inner.in_flight = None;
        self.changed(&inner)
    }

    /// Puts what is left of the entry taken by `pop` back in front, merged
    /// with what arrived for it meanwhile. Returns Events lost and the new
    /// length.
    pub fn requeue(&self, key: RecordKey, mut rest: Pending) -> (u64, usize) {
        let mut inner = self.lock();
        inner.in_flight = None;
        let mut lost = 0;
        if let Some(newer) = inner.items.remove(&key) {
            lost = rest.absorb(newer);
        }
        inner.enqueue_first(key, rest);
        (lost, self.changed(&inner))
    }

    /// Entries waiting, plus the one being written.
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mapguard_api::vocab::{Kind, Op};

    fn key(name: &str) -> RecordKey {
        key_in("ns", name)
    }

    fn key_in(namespace: &str, name: &str) -> RecordKey {
        RecordKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    fn occurrence(pod: &str, second: i64) -> Pending {
        let pair = CallSitePair {
            kind: Kind::ConcurrentWrite,
            op: Op::Assign,
            conflicting_op: Op::Delete,
            frame: Some(Frame::source("main.a", "/a.go", 1)),
            conflicting_frame: None,
        };
        Pending::new(
            pair,
            Observation {
                at: Timestamp::from_second(second).expect("a valid time"),
                action: Action::Audit,
                detected_by: Detector::WritingFlag,
                pod: PodRef {
                    namespace: "ns".to_owned(),
                    name: pod.to_owned(),
                    uid: format!("uid-{pod}"),
                },
                container: None,
                binary: "/app".to_owned(),
                go_version: None,
                stack: Vec::new(),
                conflicting_stack: Vec::new(),
            },
        )
    }

    #[test]
    fn repeats_merge_and_new_pairs_beyond_the_bound_are_dropped() {
        let queue = Queue::new(2, 2, Box::new(|_| {}));
        assert_eq!(
            queue.push(key("a"), occurrence("p1", 10)).0,
            Admission::Queued
        );
        assert_eq!(
            queue.push(key("a"), occurrence("p2", 5)).0,
            Admission::Merged
        );
        assert_eq!(
            queue.push(key("b"), occurrence("p1", 11)).0,
            Admission::Queued
        );
        assert_eq!(
            queue.push(key("c"), occurrence("p1", 12)),
            (Admission::Dropped, 0, 2)
        );
        // Repeats still merge into a full queue.
        assert_eq!(
            queue.push(key("b"), occurrence("p1", 13)).0,
            Admission::Merged
        );

        let (k, a) = queue.pop().expect("an entry");
        assert_eq!(k, key("a"));
        assert_eq!(a.unrecorded, 2);
        assert_eq!(a.first.as_second(), 5);
        assert_eq!(a.latest.pod.name, "p1", "the later occurrence wins");
        assert_eq!(a.events.len(), 2, "one Event per Pod");
        // The entry in flight holds its place in the bound.
        assert_eq!(queue.len(), 2);
        assert_eq!(
            queue.push(key("c"), occurrence("p1", 14)).0,
            Admission::Dropped
        );
        assert_eq!(queue.done(), 1);
        assert_eq!(
            queue.push(key("c"), occurrence("p1", 15)).0,
            Admission::Queued
        );
    }

    #[test]
    fn a_requeued_entry_goes_first_and_keeps_what_arrived_meanwhile() {
        let queue = Queue::new(4, 4, Box::new(|_| {}));
        queue.push(key("a"), occurrence("p1", 10));
        queue.push(key("b"), occurrence("p1", 11));
        let (k, mut a) = queue.pop().expect("an entry");
        // Arrives while `a` is being written.
        assert_eq!(
            queue.push(key("a"), occurrence("p3", 20)).0,
            Admission::Merged
        );
        a.events.clear();
        assert_eq!(queue.requeue(k, a), (0, 2));
        let (k, a) = queue.pop().expect("an entry");
        assert_eq!(k, key("a"));
        assert_eq!((a.unrecorded, a.latest.pod.name.as_str()), (2, "p3"));
        assert_eq!(a.events.len(), 1);
        queue.done();
        assert_eq!(queue.pop().expect("an entry").0, key("b"));
        queue.done();
        assert!(queue.pop().is_none());
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn repeats_of_the_record_in_flight_take_no_place_of_their_own() {
        let queue = Queue::new(2, 2, Box::new(|_| {}));
        queue.push(key("a"), occurrence("p1", 1));
        let (k, a) = queue.pop().expect("an entry");
        assert_eq!(
            queue.push(key("a"), occurrence("p1", 2)),
            (Admission::Merged, 0, 1)
        );
        assert_eq!(
            queue.push(key("a"), occurrence("p1", 3)).0,
            Admission::Merged
        );
        assert_eq!(
            queue.push(key("b"), occurrence("p1", 4)).0,
            Admission::Queued
        );
        assert_eq!(
            queue.push(key("c"), occurrence("p1", 5)).0,
            Admission::Dropped
        );
        // A failed write merges back with its repeats: three occurrences.
        assert_eq!(queue.requeue(k, a), (0, 2));
        let (_, a) = queue.pop().expect("an entry");
        assert_eq!(a.unrecorded, 3);
    }

    #[test]
    fn events_beyond_the_per_entry_bound_are_counted_as_lost() {
        let queue = Queue::new(1, 1, Box::new(|_| {}));
        let mut lost = 0;
        for i in 0..MAX_EVENT_PODS + 3 {
            lost += queue.push(key("a"), occurrence(&format!("p{i}"), 1)).1;
        }
        assert_eq!(lost, 3);
        let (_, a) = queue.pop().expect("an entry");
        assert_eq!(a.unrecorded, MAX_EVENT_PODS as u64 + 3);
        assert_eq!(a.events.len(), MAX_EVENT_PODS);
    }

    #[test]
    fn one_namespace_cannot_take_more_than_its_share() {
        let queue = Queue::new(10, 2, Box::new(|_| {}));
        assert_eq!(
            queue.push(key_in("flood", "a"), occurrence("p1", 1)).0,
            Admission::Queued
        );
        assert_eq!(
            queue.push(key_in("flood", "b"), occurrence("p1", 2)).0,
            Admission::Queued
        );
        assert_eq!(
            queue.push(key_in("flood", "c"), occurrence("p1", 3)).0,
            Admission::Dropped,
            "the flooding namespace is at its share"
        );
        // Its repeats still merge; another namespace still gets in.
        assert_eq!(
            queue.push(key_in("flood", "a"), occurrence("p1", 4)).0,
            Admission::Merged
        );
        assert_eq!(
            queue.push(key_in("quiet", "x"), occurrence("p2", 5)).0,
            Admission::Queued
        );
        // The entry in flight counts against its namespace's share.
        let (k, _) = queue.pop().expect("an entry");
        assert_eq!(k, key_in("flood", "a"));
        assert_eq!(
            queue.push(key_in("flood", "c"), occurrence("p1", 6)).0,
            Admission::Dropped
        );
        queue.done();
        assert_eq!(
            queue.push(key_in("flood", "c"), occurrence("p1", 7)).0,
            Admission::Queued
        );
    }

    #[test]
    fn namespaces_are_served_in_turn() {
        let queue = Queue::new(10, 10, Box::new(|_| {}));
        for name in ["a", "b", "c"] {
            queue.push(key_in("flood", name), occurrence("p1", 1));
        }
        queue.push(key_in("quiet", "x"), occurrence("p2", 2));
        queue.push(key_in("other", "y"), occurrence("p3", 3));
        let mut order = Vec::new();
        while let Some((k, _)) = queue.pop() {
            order.push(format!("{}/{}", k.namespace, k.name));
            queue.done();
        }
        assert_eq!(
            order,
            ["flood/a", "quiet/x", "other/y", "flood/b", "flood/c"],
            "one entry of each namespace per turn"
        );
        // A failed write goes first again, its namespace's turn kept.
        queue.push(key_in("flood", "a"), occurrence("p1", 4));
        queue.push(key_in("flood", "b"), occurrence("p1", 5));
        queue.push(key_in("quiet", "x"), occurrence("p2", 6));
        let (k, a) = queue.pop().expect("an entry");
        assert_eq!(k, key_in("flood", "a"));
        queue.requeue(k, a);
        let next: Vec<String> = std::iter::from_fn(|| {
            let (k, _) = queue.pop()?;
            queue.done();
            Some(k.name)
        })
        .collect();
        assert_eq!(next, ["a", "x", "b"]);
        assert_eq!(queue.len(), 0);
    }
}
