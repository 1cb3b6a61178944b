//! The one mapping from a failed call to an HTTP answer.
//!
//! Every error answer says what the client can do with it, in a status and
//! two headers:
//!
//! | failure | status | `x-odo-error` | `x-odo-retryable` |
//! | --- | --- | --- | --- |
//! | the object's queue is full | 503, `Retry-After: 1` | `overloaded` | `true` |
//! | the door holds too many bodies (`max_held_body_bytes`), not sent | 503, `Retry-After: 1` | `busy` | `true` |
//! | no worker could take it (restarting, moving) | 503, `Retry-After: 1` | `unavailable` | `true` |
//! | the deadline passed before it was sent | 504 | `deadline` | `true` |
//! | the object's handler failed (turn rolled back) | 500 | `object-error` | `false` |
//! | delivered, outcome unknown (worker died, commit failed) | 502 | `outcome-unknown` | `false` |
//! | the deadline passed after it was sent (outcome unknown) | 504 | `deadline` | `false` |
//! | a call cycle | 508 | `call-cycle` | `false` |
//! | unknown class | 404 | `unknown-class` | `false` |
//! | malformed request | 400 | `bad-request` | `false` |
//! | anything else | 500 | `internal` | `false` |
//!
//! `x-odo-retryable: true` means the request never reached the object:
//! sending it again cannot apply it twice. DURABILITY.md says what each
//! promises about the object's state.

use bytes::Bytes;
use http::StatusCode;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http_body_util::Full;
use odo_core::WireError;

use crate::service::ForwardError;

/// The header naming the kind of failure.
pub const ERROR_HEADER: &str = "x-odo-error";
/// The header saying whether the request is safe to send again.
pub const RETRYABLE_HEADER: &str = "x-odo-retryable";

/// The status, error kind and message of a failure.
fn classify(error: &ForwardError) -> (StatusCode, &'static str, String) {
    match error {
        ForwardError::Object(e) => match e {
            WireError::UnknownClass { class } => (
                StatusCode::NOT_FOUND,
                "unknown-class",
                format!("unknown class {class}"),
            ),
            WireError::BadRequest { message } => {
                (StatusCode::BAD_REQUEST, "bad-request", message.clone())
            }
            WireError::Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "object overloaded: retry later".into(),
            ),
            WireError::Moved { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "object unavailable: retry later".into(),
            ),
            WireError::ObjectReset { reason } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "object-error",
                format!("object reset: {reason}"),
            ),
            WireError::OutcomeUnknown { reason } => (
                StatusCode::BAD_GATEWAY,
                "outcome-unknown",
                format!("outcome unknown: {reason}"),
            ),
            WireError::PartlyDelivered { .. } => (
                StatusCode::BAD_GATEWAY,
                "outcome-unknown",
                format!("outcome unknown: {e}"),
            ),
            WireError::DeadlineExceeded => (
                StatusCode::GATEWAY_TIMEOUT,
                "deadline",
                "request deadline exceeded".into(),
            ),
            WireError::CallCycle { .. } => (StatusCode::LOOP_DETECTED, "call-cycle", e.to_string()),
            WireError::CallTooDeep { .. } => {
                (StatusCode::LOOP_DETECTED, "call-too-deep", e.to_string())
            }
            // A worker's answer to the registry, never to a request; as
            // a shard no one serves, if it ever came here.
            WireError::UnknownSocket | WireError::ShardRefused { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
            WireError::Internal { message } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("internal error: {message}"),
            ),
        },
        ForwardError::Unavailable(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "object unavailable: retry later".into(),
        ),
        ForwardError::Lost(reason) => (
            StatusCode::BAD_GATEWAY,
            "outcome-unknown",
            format!("outcome unknown: {reason}"),
        ),
        ForwardError::Deadline { .. } => (
            StatusCode::GATEWAY_TIMEOUT,
            "deadline",
            "request deadline exceeded".into(),
        ),
    }
}

/// The HTTP answer to a failed call.
pub(crate) fn error_response(error: &ForwardError) -> http::Response<Full<Bytes>> {
    let (status, kind, message) = classify(error);
    let mut response = http::Response::new(Full::new(Bytes::from(format!("{message}\n"))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(ERROR_HEADER, HeaderValue::from_static(kind));
    let retryable = error.retryable();
    headers.insert(
        RETRYABLE_HEADER,
        HeaderValue::from_static(if retryable { "true" } else { "false" }),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// The answer to a request the door refused before it reached its object
/// because it holds too many body bytes already
/// ([`RouterConfig::max_held_body_bytes`](crate::RouterConfig)): 503, safe
/// to send again.
pub(crate) fn busy_response() -> http::Response<Full<Bytes>> {
    let mut response = http::Response::new(Full::new(Bytes::from_static(
        b"server busy: it holds too many request and answer bodies: retry later\n",
    )));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(ERROR_HEADER, HeaderValue::from_static("busy"));
    headers.insert(RETRYABLE_HEADER, HeaderValue::from_static("true"));
    headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(error: ForwardError, expected: &str) {
        let response = error_response(&error);
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        let got = format!(
            "{} {} retryable={} retry-after={}",
            response.status().as_u16(),
            header(ERROR_HEADER),
            header(RETRYABLE_HEADER),
            header("retry-after"),
        );
        assert_eq!(got, expected, "{error:?}");
    }

    #[test]
    fn every_failure_says_what_the_client_can_do() {
        let o = ForwardError::Object;
        check(
            o(WireError::Overloaded),
            "503 overloaded retryable=true retry-after=1",
        );
        check(
            o(WireError::Moved { epoch: 1 }),
            "503 unavailable retryable=true retry-after=1",
        );
        check(
            ForwardError::Unavailable("x".into()),
            "503 unavailable retryable=true retry-after=1",
        );
        check(
            ForwardError::Deadline { written: false },
            "504 deadline retryable=true retry-after=-",
        );
        check(
            ForwardError::Deadline { written: true },
            "504 deadline retryable=false retry-after=-",
        );
        check(
            o(WireError::DeadlineExceeded),
            "504 deadline retryable=false retry-after=-",
        );
        check(
            o(WireError::ObjectReset { reason: "x".into() }),
            "500 object-error retryable=false retry-after=-",
        );
        check(
            ForwardError::Lost("x".into()),
            "502 outcome-unknown retryable=false retry-after=-",
        );
        check(
            o(WireError::OutcomeUnknown { reason: "x".into() }),
            "502 outcome-unknown retryable=false retry-after=-",
        );
        check(
            o(WireError::CallCycle { chain: vec![] }),
            "508 call-cycle retryable=false retry-after=-",
        );
        check(
            o(WireError::UnknownClass { class: "X".into() }),
            "404 unknown-class retryable=false retry-after=-",
        );
        check(
            o(WireError::BadRequest {
                message: "x".into(),
            }),
            "400 bad-request retryable=false retry-after=-",
        );
        check(
            o(WireError::Internal {
                message: "x".into(),
            }),
            "500 internal retryable=false retry-after=-",
        );
    }
}
