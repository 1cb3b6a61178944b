//! The handshake both ends run before any call: the client sends
//! [`Message::Hello`], the server answers [`Message::Welcome`] or
//! [`Message::Refused`] and closes.

use bytes::Bytes;
use odo_core::Frame;
use odo_core::codec;
use odo_core::wire::{Hello, Message, PROTOCOL_VERSION, Refused, Welcome};

/// The request id handshake frames carry.
pub(crate) const HANDSHAKE_ID: u64 = 0;

pub(crate) fn hello_frame(token: &str, peer: &str) -> Frame {
    Frame {
        request_id: HANDSHAKE_ID,
        message: Message::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            token: token.into(),
            peer: peer.into(),
        }),
        body: Bytes::new(),
    }
}

pub(crate) fn welcome_frame(peer: &str) -> Frame {
    Frame {
        request_id: HANDSHAKE_ID,
        message: Message::Welcome(Welcome {
            protocol_version: PROTOCOL_VERSION,
            peer: peer.into(),
        }),
        body: Bytes::new(),
    }
}

pub(crate) fn refused_frame(reason: Refused) -> Frame {
    Frame {
        request_id: HANDSHAKE_ID,
        message: Message::Refused(reason),
        body: Bytes::new(),
    }
}

/// The server's verdict on a client's first frame: the client's hello, or
/// the refusal to send with a description for the log.
pub(crate) fn judge_first_frame(bytes: Bytes, token: &str) -> Result<Hello, (Refused, String)> {
    let refuse = |refused: Refused, detail: String| Err((refused, detail));
    match codec::decode(bytes) {
        Ok(Frame {
            message: Message::Hello(hello),
            ..
        }) => {
            if hello.protocol_version != PROTOCOL_VERSION {
                let refused = Refused::VersionMismatch {
                    ours: PROTOCOL_VERSION,
                    theirs: hello.protocol_version,
                };
                let detail = refused.to_string();
                return refuse(refused, detail);
            }
            if !tokens_match(hello.token.as_bytes(), token.as_bytes()) {
                return refuse(
                    Refused::BadToken,
                    format!("wrong cluster token from {:?}", hello.peer),
                );
            }
            Ok(hello)
        }
        Ok(frame) => refuse(
            Refused::NotAHandshake,
            format!(
                "expected a handshake, got a {:?} frame",
                frame.message.kind()
            ),
        ),
        Err(e) => refuse(
            Refused::NotAHandshake,
            format!("malformed first frame: {e}"),
        ),
    }
}

/// Compares two tokens in time that depends only on their lengths, so a
/// peer cannot learn a token's prefix by timing refusals.
pub(crate) fn tokens_match(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    let mut diff = 0u8;
    for (a, b) in given.iter().zip(expected) {
        diff |= std::hint::black_box(a ^ b);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(tokens_match(b"secret", b"secret"));
        assert!(!tokens_match(b"secret", b"secreT"));
        assert!(!tokens_match(b"secret", b"secret!"));
        assert!(!tokens_match(b"", b"x"));
        assert!(tokens_match(b"", b""));
    }

    fn refusal(bytes: Bytes, token: &str) -> Refused {
        judge_first_frame(bytes, token).expect_err("refused").0
    }

    #[test]
    fn judging() {
        let good = codec::encode(&hello_frame("t", "me")).unwrap();
        assert_eq!(judge_first_frame(good.clone(), "t").unwrap().peer, "me");
        assert_eq!(refusal(good, "u"), Refused::BadToken);
        let welcome = codec::encode(&welcome_frame("x")).unwrap();
        assert_eq!(refusal(welcome, "t"), Refused::NotAHandshake);
        assert_eq!(
            refusal(Bytes::from_static(b"garbage"), "t"),
            Refused::NotAHandshake
        );
        let mut old = hello_frame("t", "me");
        if let Message::Hello(h) = &mut old.message {
            h.protocol_version = PROTOCOL_VERSION + 1;
        }
        assert_eq!(
            refusal(codec::encode(&old).unwrap(), "t"),
            Refused::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: PROTOCOL_VERSION + 1
            }
        );
    }
}
