//! A failed request sorted by what the caller does next: handle the answer
//! itself (absent, conflict), report a refusal that retrying cannot change
//! (RBAC, credentials, an invalid object), or retry later (the API server
//! is away or busy). Each binary words the outcome for its own users.

use kube::core::Status;

/// What a failed request means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiErrorClass {
    /// 404: the object, or the resource type, is absent.
    NotFound,
    /// 409: the object exists already (create) or changed (update).
    Conflict,
    /// 403: RBAC forbids the verb.
    Forbidden,
    /// 401: the API server did not accept the credentials.
    Unauthorized,
    /// 422: the object is invalid.
    Invalid,
    /// The API server could not be reached, timed out or was overloaded
    /// (429, 500, 502, 503, 504, a connection refused or cut): retry.
    Unavailable,
    /// Anything else the API server refused, or an unreadable answer.
    Rejected,
}

impl ApiErrorClass {
    /// Whether trying again later can succeed.
    pub fn is_retryable(self) -> bool {
        self == ApiErrorClass::Unavailable
    }
}

/// The class of a status answer. By code first: a path the API server does
/// not serve answers a plain "404 page not found", which kube reads into a
/// Status whose reason is not NotFound.
pub fn classify_status(status: &Status) -> ApiErrorClass {
    match status.code {
        404 => ApiErrorClass::NotFound,
        409 => ApiErrorClass::Conflict,
        403 => ApiErrorClass::Forbidden,
        401 => ApiErrorClass::Unauthorized,
        422 => ApiErrorClass::Invalid,
        // Too many requests, internal errors while etcd is away, gateway
        // and timeout answers: all pass.
        429 | 500 | 502 | 503 | 504 => ApiErrorClass::Unavailable,
        _ if status.is_not_found() => ApiErrorClass::NotFound,
        _ if status.is_forbidden() => ApiErrorClass::Forbidden,
        _ if status.is_invalid() => ApiErrorClass::Invalid,
        _ => ApiErrorClass::Rejected,
    }
}

/// The class of a failed request.
pub fn classify(error: &kube::Error) -> ApiErrorClass {
    match error {
        kube::Error::Api(status) => classify_status(status),
        // Connection refused or reset, TLS handshake cut, timeouts.
        kube::Error::HyperError(_) | kube::Error::Service(_) => ApiErrorClass::Unavailable,
        _ => ApiErrorClass::Rejected,
    }
}

/// The API server's words: its message, else its reason.
pub fn message(status: &Status) -> &str {
    if status.message.is_empty() {
        &status.reason
    } else {
        &status.message
    }
}

/// The user named in a 403 message (`... is forbidden: User "alice" cannot
/// list resource ...`), as `User "alice"`.
pub fn forbidden_user(message: &str) -> Option<String> {
    let start = message.find("User \"")?;
    let rest = &message[start + "User ".len()..];
    let end = rest[1..].find('"')? + 2;
    Some(format!("User {}", &rest[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Status::failure("no", reason).with_code(code).boxed())
    }

    #[test]
    fn answers_sort_by_code_then_reason() {
        for (code, reason, class) in [
            (404, "Whatever", ApiErrorClass::NotFound),
            (409, "AlreadyExists", ApiErrorClass::Conflict),
            (403, "Forbidden", ApiErrorClass::Forbidden),
            (401, "Unauthorized", ApiErrorClass::Unauthorized),
            (422, "Invalid", ApiErrorClass::Invalid),
            (429, "TooManyRequests", ApiErrorClass::Unavailable),
            (503, "ServiceUnavailable", ApiErrorClass::Unavailable),
            (400, "BadRequest", ApiErrorClass::Rejected),
            (0, "Forbidden", ApiErrorClass::Forbidden),
            (0, "NotFound", ApiErrorClass::NotFound),
        ] {
            let class_of = classify(&api(code, reason));
            assert_eq!(class_of, class, "{code} {reason}");
            assert_eq!(class_of.is_retryable(), class == ApiErrorClass::Unavailable);
        }
    }

    #[test]
    fn the_message_falls_back_to_the_reason() {
        assert_eq!(message(&Status::failure("", "Reason")), "Reason");
        assert_eq!(message(&Status::failure("said", "Reason")), "said");
    }

    #[test]
    fn the_user_is_taken_from_the_api_servers_words() {
        assert_eq!(
            forbidden_user(
                "mapviolations.mapguard.io is forbidden: User \"system:serviceaccount:shop:auditor\" \
                 cannot delete resource \"mapviolations\" in API group \"mapguard.io\" in the namespace \"shop\""
            )
            .as_deref(),
            Some("User \"system:serviceaccount:shop:auditor\"")
        );
        assert_eq!(forbidden_user("forbidden"), None);
    }
}
