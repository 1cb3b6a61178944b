//! Conversions between the wire envelopes of odo-core and the HTTP types
//! objects see, for programs that carry requests to a [`Runtime`](crate::Runtime)
//! themselves (an in-process front door).

use bytes::Bytes;
use odo_core::WireError;
use odo_core::wire::{FetchRequest, FetchResponse, Header, Target};

use crate::object::{Request, Response};

/// Rebuilds the HTTP request a router sent; a malformed one is a
/// [`WireError::BadRequest`].
pub fn request_from_wire(fetch: FetchRequest, body: Bytes) -> Result<(Target, Request), WireError> {
    let bad = |message: String| WireError::BadRequest { message };
    let mut builder = http::Request::builder()
        .method(fetch.method.as_str())
        .uri(fetch.uri.as_str());
    for (name, value) in &fetch.headers {
        builder = builder.header(name.as_str(), value.as_slice());
    }
    let request = builder
        .body(body)
        .map_err(|e| bad(format!("malformed request: {e}")))?;
    Ok((fetch.target, request))
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

/// Builds the wire envelope of a request to another object.
pub fn request_to_wire(target: Target, request: Request) -> (FetchRequest, Bytes) {
    let (parts, body) = request.into_parts();
    (
        FetchRequest {
            target,
            method: parts.method.to_string(),
            uri: parts.uri.to_string(),
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
        let target = Target {
            class: "C".into(),
            id: odo_core::Namespace::new("C").id_from_name("x"),
            name: None,
            shard: 0,
            epoch: 1,
        };
        let request = http::Request::builder()
            .method("PUT")
            .uri("/kv/x/k?a=1&a=2")
            .header("x-a", "1")
            .header("x-a", "2")
            .header("x-b", "3")
            .body(Bytes::from_static(&[0, 255, 1]))
            .unwrap();
        let (wire, body) = request_to_wire(target.clone(), request);
        assert_eq!(
            wire.headers,
            vec![
                ("x-a".to_owned(), b"1".to_vec()),
                ("x-a".to_owned(), b"2".to_vec()),
                ("x-b".to_owned(), b"3".to_vec())
            ]
        );
        let (back_target, back) = request_from_wire(wire, body).unwrap();
        assert_eq!(back_target, target);
        assert_eq!(back.method(), "PUT");
        assert_eq!(back.uri(), "/kv/x/k?a=1&a=2");
        let values: Vec<_> = back.headers().get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(back.body().as_ref(), &[0, 255, 1]);
    }

    #[test]
    fn malformed_requests_are_bad_requests() {
        let target = Target {
            class: "C".into(),
            id: odo_core::Namespace::new("C").id_from_name("x"),
            name: None,
            shard: 0,
            epoch: 1,
        };
        let fetch = FetchRequest {
            target,
            method: "GET".into(),
            uri: "/".into(),
            headers: vec![("bad header".into(), b"v".to_vec())],
        };
        assert!(matches!(
            request_from_wire(fetch, Bytes::new()),
            Err(WireError::BadRequest { .. })
        ));
    }
}
