//! Why a record or Event write failed, sorted by what the writer does next:
//! retry later (the API server is away or busy, or other writers raced us)
//! or give up on that write, log it and count it (RBAC, a missing CRD, an
//! object the API server refuses).

use mapguard_kube::ApiErrorClass;

use super::metrics::FailureReason;

/// A failed write of a record or an Event.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// RBAC forbids the verb.
    #[error(
        "cannot {verb} {what}: forbidden by RBAC ({message}); the node agent needs the rules in \
         manifests/enforcer/rbac-records.yaml"
    )]
    Forbidden {
        verb: &'static str,
        what: String,
        message: String,
    },
    /// The API server did not accept the credentials.
    #[error(
        "cannot {verb} {what}: the API server did not accept the agent's credentials ({message})"
    )]
    Unauthorized {
        verb: &'static str,
        what: String,
        message: String,
    },
    /// The resource type is not served.
    #[error(
        "cannot {verb} {what}: the API server does not serve mapviolations.mapguard.io; apply \
         manifests/crd/mapviolations.yaml"
    )]
    NotInstalled { verb: &'static str, what: String },
    /// The API server refused the request for good (invalid object, bad
    /// request) or answered something unreadable.
    #[error("cannot {verb} {what}: {message}")]
    Rejected {
        verb: &'static str,
        what: String,
        message: String,
    },
    /// The API server could not be reached, timed out or was overloaded.
    #[error("cannot {verb} {what}: the API server is unavailable ({message})")]
    Unavailable {
        verb: &'static str,
        what: String,
        message: String,
    },
    /// The object changed under every attempt (other agents writing it).
    #[error("cannot update {what}: it changed under each of {attempts} attempts")]
    Contended { what: String, attempts: u32 },
}

impl RecordError {
    /// Whether trying again later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RecordError::Unavailable { .. } | RecordError::Contended { .. }
        )
    }

    /// The metric label of the failure.
    pub fn reason(&self) -> FailureReason {
        match self {
            RecordError::Forbidden { .. } => FailureReason::forbidden,
            RecordError::Unauthorized { .. } => FailureReason::unauthorized,
            RecordError::NotInstalled { .. } => FailureReason::not_installed,
            RecordError::Rejected { .. } => FailureReason::rejected,
            RecordError::Unavailable { .. } => FailureReason::unavailable,
            RecordError::Contended { .. } => FailureReason::contended,
        }
    }
}

/// An API answer the caller handles itself, or a failure.
#[derive(Debug)]
pub(crate) enum ApiOutcome {
    /// 404: the object (or, for a create or list, the resource type) is absent.
    NotFound,
    /// 409: the object exists already (create) or changed (update).
    Conflict,
    /// Anything else.
    Failed(RecordError),
}

/// Sorts a kube error of `verb` on `what` (the toolkit's classes).
pub(crate) fn classify(verb: &'static str, what: &str, error: kube::Error) -> ApiOutcome {
    let what = what.to_owned();
    let class = mapguard_kube::classify(&error);
    let message = match &error {
        kube::Error::Api(status) => {
            let message = mapguard_kube::errors::message(status).to_owned();
            match class {
                ApiErrorClass::Rejected | ApiErrorClass::Invalid => {
                    format!("{} ({})", message, status.code)
                }
                _ => message,
            }
        }
        e => e.to_string(),
    };
    let failed = ApiOutcome::Failed;
    match class {
        ApiErrorClass::NotFound => ApiOutcome::NotFound,
        ApiErrorClass::Conflict => ApiOutcome::Conflict,
        ApiErrorClass::Forbidden => failed(RecordError::Forbidden {
            verb,
            what,
            message,
        }),
        ApiErrorClass::Unauthorized => failed(RecordError::Unauthorized {
            verb,
            what,
            message,
        }),
        ApiErrorClass::Unavailable => failed(RecordError::Unavailable {
            verb,
            what,
            message,
        }),
        ApiErrorClass::Invalid | ApiErrorClass::Rejected => failed(RecordError::Rejected {
            verb,
            what,
            message,
        }),
    }
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Status::failure("no", "Reason").with_code(code).boxed())
    }

    #[test]
    fn answers_sort_into_retry_give_up_and_handled() {
        let sort = |code| classify("create", "MapViolation ns/x", api(code));
        assert!(matches!(sort(404), ApiOutcome::NotFound));
        assert!(matches!(sort(409), ApiOutcome::Conflict));
        for (code, reason, retry) in [
            (403, FailureReason::forbidden, false),
            (401, FailureReason::unauthorized, false),
            (422, FailureReason::rejected, false),
            (503, FailureReason::unavailable, true),
            (429, FailureReason::unavailable, true),
        ] {
            let ApiOutcome::Failed(e) = sort(code) else {
                panic!("{code} is a failure");
            };
            assert_eq!(
                (e.reason(), e.is_retryable()),
                (reason, retry),
                "{code}: {e}"
            );
        }
        let ApiOutcome::Failed(forbidden) = sort(403) else {
            panic!("403 is a failure");
        };
        let text = forbidden.to_string();
        assert!(
            text.contains("cannot create MapViolation ns/x: forbidden by RBAC (no)")
                && text.contains("rbac-records.yaml"),
            "{text}"
        );
    }
}
