//! HTTP headers between the front door and the wire: every value kept, in
//! order; connection-level headers never cross.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use odo_core::wire::Header;
use tracing::warn;

/// Connection-level headers that must not cross a proxy.
pub(crate) fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
    )
}

/// Headers as the wire carries them: every value, in order.
pub(crate) fn headers_to_wire(headers: &HeaderMap) -> Vec<Header> {
    headers
        .iter()
        .filter(|(name, _)| !is_hop_by_hop(name.as_str()))
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect()
}

/// Appends wire headers to `into`, skipping ones that are not valid HTTP
/// and the ones hyper computes itself.
pub(crate) fn headers_from_wire(headers: &[Header], into: &mut HeaderMap) {
    for (name, value) in headers {
        if is_hop_by_hop(name) || name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            (Ok(name), Ok(value)) => {
                into.append(name, value);
            }
            _ => warn!(header = %name, "dropping an invalid header from an object's response"),
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn headers_keep_repeats_and_drop_hop_by_hop() {
        let mut map = HeaderMap::new();
        map.append("x-a", HeaderValue::from_static("1"));
        map.append("x-a", HeaderValue::from_static("2"));
        map.append("connection", HeaderValue::from_static("keep-alive"));
        let wire = headers_to_wire(&map);
        assert_eq!(
            wire,
            vec![
                ("x-a".to_owned(), b"1".to_vec()),
                ("x-a".to_owned(), b"2".to_vec())
            ]
        );
        let mut back = HeaderMap::new();
        headers_from_wire(
            &[
                ("x-b".into(), b"1".to_vec()),
                ("x-b".into(), b"2".to_vec()),
                ("content-length".into(), b"99".to_vec()),
                ("bad name".into(), b"v".to_vec()),
            ],
            &mut back,
        );
        assert_eq!(back.get_all("x-b").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(back.len(), 2);
    }
}
