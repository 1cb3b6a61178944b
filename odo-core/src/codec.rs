//! The frame codec: pure functions between [`Frame`] and bytes.
//!
//! A frame (inside the transport's u32 length prefix) is:
//!
//! | offset | size | field                                        |
//! | ------ | ---- | -------------------------------------------- |
//! | 0      | 1    | format version ([`FORMAT_VERSION`])          |
//! | 1      | 1    | kind ([`Kind`])                              |
//! | 2      | 2    | flags, must be zero                          |
//! | 4      | 8    | request id, little-endian                    |
//! | 12     | 4    | envelope length `E`, little-endian           |
//! | 16     | 4    | body length `B`, little-endian               |
//! | 20     | `E`  | envelope: the kind's payload, postcard       |
//! | 20+`E` | `B`  | body: raw bytes, never re-encoded            |
//!
//! The frame is exactly `20 + E + B` bytes; anything else is rejected.
//! Decoding never panics, whatever the input.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::wire::{Frame, Kind, Message};

/// The version of the frame layout and envelope encoding. Any change to
/// either, other than appending an enum variant, bumps it.
pub const FORMAT_VERSION: u8 = 2;

/// The size of the fixed header in bytes.
pub const HEADER_LEN: usize = 20;

/// Why bytes are not a valid frame, or a frame cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Fewer bytes than the fixed header.
    #[error("frame of {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    Truncated {
        /// The length received.
        len: usize,
    },
    /// A format version this build does not speak.
    #[error("unsupported frame format version {found} (this build speaks {FORMAT_VERSION})")]
    UnsupportedVersion {
        /// The version byte received.
        found: u8,
    },
    /// A kind byte that names no message.
    #[error("unknown frame kind {found}")]
    UnknownKind {
        /// The kind byte received.
        found: u8,
    },
    /// Reserved flag bits are set.
    #[error("reserved frame flags {found:#06x} are set")]
    ReservedFlags {
        /// The flags received.
        found: u16,
    },
    /// The header's lengths disagree with the frame's size.
    #[error("frame header announces {announced} bytes but the frame has {actual}")]
    LengthMismatch {
        /// Header plus envelope plus body lengths, as announced.
        announced: u64,
        /// The frame's actual size.
        actual: usize,
    },
    /// The envelope does not decode as the kind's payload (or, encoding,
    /// the payload cannot be serialized).
    #[error("malformed {kind:?} envelope: {source}")]
    Envelope {
        /// The frame's kind.
        kind: Kind,
        /// postcard's error.
        #[source]
        source: postcard::Error,
    },
    /// The envelope decodes, but bytes follow it inside its announced
    /// length.
    #[error("malformed {kind:?} envelope: {count} trailing bytes after it")]
    TrailingBytes {
        /// The frame's kind.
        kind: Kind,
        /// How many bytes follow the envelope.
        count: usize,
    },
    /// A body or envelope over 4 GiB cannot be framed.
    #[error("frame part of {len} bytes exceeds the u32 length field")]
    TooLarge {
        /// The offending length.
        len: usize,
    },
}

/// Encodes `frame` into a new buffer.
pub fn encode(frame: &Frame) -> Result<Bytes, CodecError> {
    let mut dst = BytesMut::new();
    encode_into(frame, &mut dst)?;
    Ok(dst.freeze())
}

/// Appends the encoding of `frame` to `dst`.
pub fn encode_into(frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
    let envelope = match &frame.message {
        Message::Hello(m) => to_vec(m),
        Message::Welcome(m) => to_vec(m),
        Message::Refused(m) => to_vec(m),
        Message::Request(m) => to_vec(m),
        Message::Response(m) => to_vec(m),
        Message::Cancel => Ok(Vec::new()),
    }
    .map_err(|source| CodecError::Envelope {
        kind: frame.message.kind(),
        source,
    })?;
    let envelope_len = u32::try_from(envelope.len()).map_err(|_| CodecError::TooLarge {
        len: envelope.len(),
    })?;
    let body_len = u32::try_from(frame.body.len()).map_err(|_| CodecError::TooLarge {
        len: frame.body.len(),
    })?;
    dst.reserve(HEADER_LEN + envelope.len() + frame.body.len());
    dst.put_u8(FORMAT_VERSION);
    dst.put_u8(frame.message.kind() as u8);
    dst.put_u16_le(0);
    dst.put_u64_le(frame.request_id);
    dst.put_u32_le(envelope_len);
    dst.put_u32_le(body_len);
    dst.put_slice(&envelope);
    dst.put_slice(&frame.body);
    Ok(())
}

/// The fixed header of a frame, decoded without touching the envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The frame's kind.
    pub kind: Kind,
    /// The frame's request id.
    pub request_id: u64,
    /// Envelope length.
    pub envelope_len: u32,
    /// Body length.
    pub body_len: u32,
}

/// Decodes and checks the fixed header, including that the lengths match
/// `frame.len()`.
pub fn decode_header(frame: &[u8]) -> Result<Header, CodecError> {
    if frame.len() < HEADER_LEN {
        return Err(CodecError::Truncated { len: frame.len() });
    }
    let mut h = &frame[..HEADER_LEN];
    let version = h.get_u8();
    if version != FORMAT_VERSION {
        return Err(CodecError::UnsupportedVersion { found: version });
    }
    let kind_byte = h.get_u8();
    let kind = Kind::from_byte(kind_byte).ok_or(CodecError::UnknownKind { found: kind_byte })?;
    let flags = h.get_u16_le();
    if flags != 0 {
        return Err(CodecError::ReservedFlags { found: flags });
    }
    let request_id = h.get_u64_le();
    let envelope_len = h.get_u32_le();
    let body_len = h.get_u32_le();
    let announced = HEADER_LEN as u64 + u64::from(envelope_len) + u64::from(body_len);
    if announced != frame.len() as u64 {
        return Err(CodecError::LengthMismatch {
            announced,
            actual: frame.len(),
        });
    }
    Ok(Header {
        kind,
        request_id,
        envelope_len,
        body_len,
    })
}

/// Decodes one frame. The body is a zero-copy slice of `frame`.
pub fn decode(frame: Bytes) -> Result<Frame, CodecError> {
    let header = decode_header(&frame)?;
    let envelope_end = HEADER_LEN + header.envelope_len as usize;
    let envelope = &frame[HEADER_LEN..envelope_end];
    let kind = header.kind;
    let message = match kind {
        Kind::Hello => Message::Hello(from_slice(kind, envelope)?),
        Kind::Welcome => Message::Welcome(from_slice(kind, envelope)?),
        Kind::Refused => Message::Refused(from_slice(kind, envelope)?),
        Kind::Request => Message::Request(from_slice(kind, envelope)?),
        Kind::Response => Message::Response(from_slice(kind, envelope)?),
        Kind::Cancel => {
            if !envelope.is_empty() {
                // A cancel frame's envelope is empty: all of it is extra.
                return Err(CodecError::TrailingBytes {
                    kind,
                    count: envelope.len(),
                });
            }
            Message::Cancel
        }
    };
    Ok(Frame {
        request_id: header.request_id,
        message,
        body: frame.slice(envelope_end..),
    })
}

fn to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    // Sized for a typical envelope up front: growing from empty reallocates
    // several times per frame, a cost every call pays.
    postcard::to_extend(value, Vec::with_capacity(256))
}

fn from_slice<T: DeserializeOwned>(kind: Kind, envelope: &[u8]) -> Result<T, CodecError> {
    let (value, rest) = postcard::take_from_bytes(envelope)
        .map_err(|source| CodecError::Envelope { kind, source })?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes {
            kind,
            count: rest.len(),
        });
    }
    Ok(value)
}
