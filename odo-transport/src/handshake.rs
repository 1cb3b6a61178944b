//! The handshake both ends run before any call: the client sends
//! [`Message::Hello`], the server answers [`Message::Welcome`] or
//! [`Message::Refused`] and closes.
//!
//! Handshake frames are small and bounded: a token is at most
//! [`MAX_TOKEN_LEN`] bytes, a peer name is cut to [`MAX_PEER_NAME_LEN`],
//! so no handshake frame exceeds [`MAX_HANDSHAKE_FRAME_LEN`], and neither end
//! reads a bigger frame before the handshake is done.

use bytes::Bytes;
use odo_core::Frame;
use odo_core::codec::{self, HEADER_LEN};
use odo_core::wire::{Hello, Message, PROTOCOL_VERSION, Refused, Welcome};
use subtle::ConstantTimeEq;

/// The request id handshake frames carry.
pub(crate) const HANDSHAKE_ID: u64 = 0;

/// The longest cluster token, in bytes. A server or client configured with
/// a longer one refuses to start ([`crate::BindError::Config`],
/// [`crate::ConnectError::Config`]).
pub const MAX_TOKEN_LEN: usize = 512;

/// The longest peer name a handshake carries, in bytes (names are for
/// logs). A longer configured name is cut, on a character boundary.
pub const MAX_PEER_NAME_LEN: usize = 128;

/// The bound on a frame read before the handshake completed (a hello on the
/// server, the answer to it on the client): the size of the largest
/// handshake frame there is, a hello with a [`MAX_TOKEN_LEN`] token, a
/// [`MAX_PEER_NAME_LEN`] name and a protocol version of postcard's longest
/// varint. The welcome and every refusal are smaller. 669 bytes.
pub const MAX_HANDSHAKE_FRAME_LEN: usize = HEADER_LEN
    + varint_len(u32::MAX as usize)
    + varint_len(MAX_TOKEN_LEN)
    + MAX_TOKEN_LEN
    + varint_len(MAX_PEER_NAME_LEN)
    + MAX_PEER_NAME_LEN;

/// How many bytes postcard's varint (LEB128) takes for `n`.
const fn varint_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

/// `name` cut to at most [`MAX_PEER_NAME_LEN`] bytes, on a character
/// boundary.
pub(crate) fn bounded_name(name: &str) -> &str {
    if name.len() <= MAX_PEER_NAME_LEN {
        return name;
    }
    let mut end = MAX_PEER_NAME_LEN;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

pub(crate) fn hello_frame(token: &str, peer: &str) -> Frame {
    Frame {
        request_id: HANDSHAKE_ID,
        message: Message::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            token: token.into(),
            peer: bounded_name(peer).into(),
        }),
        body: Bytes::new(),
    }
}

pub(crate) fn welcome_frame(peer: &str) -> Frame {
    Frame {
        request_id: HANDSHAKE_ID,
        message: Message::Welcome(Welcome {
            protocol_version: PROTOCOL_VERSION,
            peer: bounded_name(peer).into(),
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
/// peer cannot learn a token's prefix by timing refusals. `subtle` does the
/// comparison: slices of different lengths are unequal at once (a token's
/// length is not the secret; its bytes are), equal lengths are compared
/// without an early exit, with the result kept out of the optimiser's reach.
pub(crate) fn tokens_match(given: &[u8], expected: &[u8]) -> bool {
    given.ct_eq(expected).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(tokens_match(b"secret", b"secret"));
        // Same length, one byte off: first, middle, last.
        assert!(!tokens_match(b"Secret", b"secret"));
        assert!(!tokens_match(b"seXret", b"secret"));
        assert!(!tokens_match(b"secreT", b"secret"));
        // A prefix of the token, and the token with more after it.
        assert!(!tokens_match(b"secre", b"secret"));
        assert!(!tokens_match(b"secret!", b"secret"));
        assert!(!tokens_match(b"", b"secret"));
        assert!(tokens_match(b"", b""));
    }

    #[test]
    fn the_server_refuses_a_same_length_token_and_a_prefix() {
        let token = "0123456789abcdef";
        for given in [
            "0123456789abcdeF",
            "X123456789abcdef",
            "0123456789abcde",
            "0",
            "",
        ] {
            let hello = codec::encode(&hello_frame(given, "stranger")).unwrap();
            assert_eq!(refusal(hello, token), Refused::BadToken, "{given:?}");
        }
        let hello = codec::encode(&hello_frame(token, "friend")).unwrap();
        assert_eq!(judge_first_frame(hello, token).unwrap().peer, "friend");
    }

    fn refusal(bytes: Bytes, token: &str) -> Refused {
        judge_first_frame(bytes, token).expect_err("refused").0
    }

    fn encoded_len(frame: &Frame) -> usize {
        codec::encode(frame).expect("encode").len()
    }

    #[test]
    fn the_largest_hello_is_exactly_the_handshake_bound() {
        let mut hello = hello_frame(&"t".repeat(MAX_TOKEN_LEN), &"p".repeat(MAX_PEER_NAME_LEN));
        if let Message::Hello(h) = &mut hello.message {
            h.protocol_version = u32::MAX;
        }
        assert_eq!(encoded_len(&hello), MAX_HANDSHAKE_FRAME_LEN);
        assert_eq!(MAX_HANDSHAKE_FRAME_LEN, 669);
        // A longer name is cut to fit.
        let long = hello_frame(&"t".repeat(MAX_TOKEN_LEN), &"p".repeat(10_000));
        assert!(encoded_len(&long) <= MAX_HANDSHAKE_FRAME_LEN);
    }

    #[test]
    fn every_answer_fits_the_handshake_bound() {
        assert!(encoded_len(&welcome_frame(&"w".repeat(10_000))) <= MAX_HANDSHAKE_FRAME_LEN);
        for refused in [
            Refused::VersionMismatch {
                ours: u32::MAX,
                theirs: u32::MAX,
            },
            Refused::BadToken,
            Refused::NotAHandshake,
        ] {
            assert!(encoded_len(&refused_frame(refused)) <= MAX_HANDSHAKE_FRAME_LEN);
        }
    }

    #[test]
    fn names_are_cut_on_a_character_boundary() {
        assert_eq!(bounded_name("router"), "router");
        let exact = "a".repeat(MAX_PEER_NAME_LEN);
        assert_eq!(bounded_name(&exact), exact);
        // Two-byte characters: 128 bytes is 64 of them.
        let accents = "é".repeat(MAX_PEER_NAME_LEN);
        assert_eq!(bounded_name(&accents), "é".repeat(MAX_PEER_NAME_LEN / 2));
        // A three-byte character straddling the limit is left out whole.
        let straddling = format!("{}€", "a".repeat(MAX_PEER_NAME_LEN - 1));
        assert_eq!(bounded_name(&straddling), "a".repeat(MAX_PEER_NAME_LEN - 1));
    }

    #[test]
    fn varints() {
        assert_eq!(varint_len(0), 1);
        assert_eq!(varint_len(127), 1);
        assert_eq!(varint_len(128), 2);
        assert_eq!(varint_len(16_383), 2);
        assert_eq!(varint_len(16_384), 3);
        assert_eq!(varint_len(u32::MAX as usize), 5);
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
