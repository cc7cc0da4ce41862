//! A Warning Event on the Pod for each violation, through kube's event
//! `Recorder` (events.k8s.io/v1): a repeat of the same race on the same
//! Pod within minutes becomes a series (`kubectl describe pod` shows
//! `(x3 over 2m)`) rather than a new Event.
//!
//! The Recorder tells series apart by type, reason, action, reporter, the
//! Pod and the related object; the related object is the pair's record, so
//! two different races in one Pod are two series, each with its own
//! message. A series counts publications: repeats that merged in the queue
//! while the API server was away count once there (the record's `count`
//! has them all).

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::Resource as _;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tracing::debug;

use super::error::{ApiOutcome, RecordError, classify};
use super::queue::{PendingEvent, RecordKey};
use mapguard_api::pair::CallSitePair;
use mapguard_api::resource::MapViolation;
use mapguard_api::vocab::Action;

/// `reason` of every violation Event.
pub const REASON: &str = "MapRace";

/// `reportingController` of the Events.
pub const REPORTING_CONTROLLER: &str = "mapguard.io/enforcer";

/// Longest note the API server accepts (1 kB).
const MAX_NOTE: usize = 1024;

/// Publishes violation Events; owned by the writer task.
pub(crate) struct PodEvents {
    client: Client,
    node: String,
    recorder: Recorder,
}

impl PodEvents {
    pub fn new(client: Client, node: String) -> Self {
        let recorder = recorder(&client, &node);
        PodEvents {
            client,
            node,
            recorder,
        }
    }

    /// Publishes (or adds to the series of) the Event of `event`.
    pub async fn publish(
        &mut self,
        key: &RecordKey,
        pair: &CallSitePair,
        event: &PendingEvent,
        recorded: bool,
    ) -> Result<(), RecordError> {
        let what = format!("Event on Pod {}/{}", event.pod.namespace, event.pod.name);
        let regarding = ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Pod".to_owned()),
            namespace: Some(event.pod.namespace.clone()),
            name: Some(event.pod.name.clone()),
            uid: Some(event.pod.uid.clone()),
            field_path: event
                .container
                .as_ref()
                .map(|c| format!("spec.containers{{{c}}}")),
            ..ObjectReference::default()
        };
        let related = ObjectReference {
            api_version: Some(MapViolation::api_version(&()).into_owned()),
            kind: Some(MapViolation::kind(&()).into_owned()),
            namespace: Some(key.namespace.clone()),
            name: Some(key.name.clone()),
            ..ObjectReference::default()
        };
        let record = recorded.then_some(key.name.as_str());
        let note = message(pair, event.action, event.container.as_deref(), record);
        let ev = Event {
            type_: EventType::Warning,
            reason: REASON.to_owned(),
            note: Some(note),
            action: action_word(event.action).to_owned(),
            secondary: Some(related),
        };
        let mut result = self.recorder.publish(&ev, &regarding).await;
        if let Err(kube::Error::Api(status)) = &result
            && status.is_not_found()
        {
            // The series' Event expired or was deleted while the Recorder
            // still remembered it: start afresh (a new Event).
            debug!(pod = %event.pod.name, "event series gone; starting a new Event");
            self.recorder = recorder(&self.client, &self.node);
            result = self.recorder.publish(&ev, &regarding).await;
        }
        result.map_err(|e| match classify("create", &what, e) {
            ApiOutcome::Failed(e) => e,
            ApiOutcome::NotFound | ApiOutcome::Conflict => RecordError::Rejected {
                verb: "create",
                what,
                message: "the Pod's namespace or the Event series is gone".to_owned(),
            },
        })
    }
}

fn recorder(client: &Client, node: &str) -> Recorder {
    Recorder::new(
        client.clone(),
        Reporter {
            controller: REPORTING_CONTROLLER.to_owned(),
            instance: Some(format!("mapguard-enforcer-{node}")),
        },
    )
}

/// The Event's `action` (what was done to the process), in the
/// PascalCase Events use.
fn action_word(action: Action) -> &'static str {
    match action {
        Action::Audit => "Audit",
        Action::Stopped => "Stop",
        Action::Killed => "Kill",
        Action::Unknown => "Report",
    }
}

/// `concurrent_write in container app: assign at main.assigner main.go:38
/// while delete at main.deleter main.go:26; process killed (record
/// mapviolation/concurrent-write-…)`, at most 1 kB. `record` is `None`
/// when the namespace was at its record bound.
pub fn message(
    pair: &CallSitePair,
    action: Action,
    container: Option<&str>,
    record: Option<&str>,
) -> String {
    let other = match pair.conflicting_site() {
        Some(site) => format!("while {} at {site}", pair.conflicting_op),
        None => "(the other writer is not on record)".to_owned(),
    };
    let container = container.map_or(String::new(), |c| format!(" in container {c}"));
    let done = match action {
        Action::Audit => "process left running (audit)".to_owned(),
        Action::Stopped => "process stopped (SIGSTOP)".to_owned(),
        Action::Killed => "process killed (SIGKILL)".to_owned(),
        Action::Unknown => "action unknown".to_owned(),
    };
    let record = match record {
        Some(name) => format!("record mapviolation/{name}"),
        None => "not recorded: the namespace holds its bound of MapViolation records".to_owned(),
    };
    let mut text = format!(
        "{}{container}: {} at {} {other}; {done} ({record})",
        pair.kind,
        pair.op,
        pair.site()
    );
    if text.len() > MAX_NOTE {
        let mut end = MAX_NOTE - 3;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use mapguard_api::frame::Frame;
    use mapguard_api::vocab::{Kind, Op};

    #[test]
    fn the_message_names_kind_both_sites_and_the_action() {
        let pair = CallSitePair {
            kind: Kind::ConcurrentWrite,
            op: Op::Assign,
            conflicting_op: Op::Delete,
            frame: Some(Frame::source("main.assigner", "/src/main.go", 38)),
            conflicting_frame: Some(Frame::source("main.deleter", "/src/main.go", 26)),
        };
        assert_eq!(
            message(
                &pair,
                Action::Killed,
                Some("app"),
                Some("concurrent-write-1")
            ),
            "concurrent_write in container app: assign at main.assigner main.go:38 while delete \
             at main.deleter main.go:26; process killed (SIGKILL) (record \
             mapviolation/concurrent-write-1)"
        );
        let one_sided = CallSitePair {
            conflicting_frame: None,
            frame: Some(Frame::source("x".repeat(2000), "a.go", 1)),
            ..pair
        };
        let text = message(&one_sided, Action::Audit, None, Some("r"));
        assert!(
            text.len() <= MAX_NOTE && text.ends_with("..."),
            "{}",
            text.len()
        );
        let unrecorded = message(
            &CallSitePair {
                frame: Some(Frame::source("f", "a.go", 1)),
                ..one_sided
            },
            Action::Audit,
            None,
            None,
        );
        assert!(
            unrecorded.ends_with(
                "(the other writer is not on record); process left running (audit) (not \
                 recorded: the namespace holds its bound of MapViolation records)"
            ),
            "{unrecorded}"
        );
    }
}
