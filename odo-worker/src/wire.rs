//! Conversions between the wire envelopes of odo-core and the HTTP types
//! objects see, for programs that carry requests to a [`Runtime`](crate::Runtime)
//! themselves (an in-process front door).

use bytes::Bytes;
use odo_core::WireError;
use odo_core::wire::{CallMeta, FetchRequest, FetchResponse, Header, HttpHead, Target};

use crate::types::{Request, Response};

/// Rebuilds the HTTP request a router or worker sent; a malformed one is a
/// [`WireError::BadRequest`].
pub fn request_from_wire(
    fetch: FetchRequest,
    body: Bytes,
) -> Result<(Target, CallMeta, Request), WireError> {
    let request = request_from_parts(fetch.head, body)?;
    Ok((fetch.target, fetch.meta, request))
}

/// Rebuilds an HTTP request from its wire head and body; a malformed one
/// is a [`WireError::BadRequest`].
pub fn request_from_parts(head: HttpHead, body: Bytes) -> Result<Request, WireError> {
    let mut builder = http::Request::builder()
        .method(head.method.as_str())
        .uri(head.uri.as_str());
    for (name, value) in &head.headers {
        builder = builder.header(name.as_str(), value.as_slice());
    }
    builder.body(body).map_err(|e| WireError::BadRequest {
        message: format!("malformed request: {e}"),
    })
}

/// Splits an HTTP request into its wire head and body.
pub fn request_parts(request: Request) -> (HttpHead, Bytes) {
    let (parts, body) = request.into_parts();
    (
        HttpHead {
            method: parts.method.to_string(),
            uri: parts.uri.to_string(),
            headers: headers_to_wire(&parts.headers),
        },
        body,
    )
}

/// Splits an object's HTTP response into the wire envelope and body.
pub fn response_to_wire(response: Response) -> (FetchResponse, Bytes) {
    let (parts, body) = response.into_parts();
    (
        FetchResponse {
            status: parts.status.as_u16(),
            headers: headers_to_wire(&parts.headers),
        },
        body,
    )
}

/// Rebuilds an object's HTTP response from the wire.
pub fn response_from_wire(fetch: FetchResponse, body: Bytes) -> Result<Response, WireError> {
    let mut builder = http::Response::builder().status(fetch.status);
    for (name, value) in &fetch.headers {
        builder = builder.header(name.as_str(), value.as_slice());
    }
    builder.body(body).map_err(|e| WireError::Internal {
        message: format!("malformed response from another worker: {e}"),
    })
}

/// Every header value, in order, as the wire carries them.
pub fn headers_to_wire(headers: &http::HeaderMap) -> Vec<Header> {
    headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_headers_and_bodies_survive_the_round_trip() {
        let request = http::Request::builder()
            .method("PUT")
            .uri("/kv/x/k?a=1&a=2")
            .header("x-a", "1")
            .header("x-a", "2")
            .header("x-b", "3")
            .body(Bytes::from_static(&[0, 255, 1]))
            .unwrap();
        let (head, body) = request_parts(request);
        assert_eq!(
            head.headers,
            vec![
                ("x-a".to_owned(), b"1".to_vec()),
                ("x-a".to_owned(), b"2".to_vec()),
                ("x-b".to_owned(), b"3".to_vec())
            ]
        );
        let back = request_from_parts(head, body).unwrap();
        assert_eq!(back.method(), "PUT");
        assert_eq!(back.uri(), "/kv/x/k?a=1&a=2");
        let values: Vec<_> = back.headers().get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(back.body().as_ref(), &[0, 255, 1]);
    }

    #[test]
    fn malformed_requests_are_bad_requests() {
        let head = HttpHead {
            method: "GET".into(),
            uri: "/".into(),
            headers: vec![("bad header".into(), b"v".to_vec())],
        };
        assert!(matches!(
            request_from_parts(head, Bytes::new()),
            Err(WireError::BadRequest { .. })
        ));
    }
}
