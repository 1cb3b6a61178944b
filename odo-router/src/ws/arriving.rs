//! The bytes of a client's message still arriving, followed frame by frame
//! beside tungstenite (which parses and checks the frames; this only reads
//! their headers): the payload of the data frames of a message not
//! finished yet, what tungstenite holds of it. Frame headers, masks and
//! control frames (pings, pongs, a close) are no part of a message, so a
//! client cannot make the door count bytes it does not hold, nor keep a
//! message alive with empty parts.
//!
//! It also says where frames end, so that the door hands tungstenite no
//! byte past the frame it is reading: once a message came whole,
//! tungstenite then holds nothing of the client's, and its buffers may be
//! replaced by small ones (it keeps the allocation of the largest frame it
//! read otherwise). And it sees at once a control frame that claims more
//! than 125 bytes (or comes in parts), which tungstenite would buffer
//! whole, up to the message limit, before refusing it.
//!
//! I/O-free: [`Arriving::feed`] takes the bytes in the order tungstenite
//! reads them, in pieces of any size.
//!
//! Hand-written rather than tungstenite's `FrameHeader::parse`: that wants
//! a frame's whole header in one buffer and says nothing until it has it,
//! while this must follow a header that arrives a byte at a time and stop
//! at its end, before the payload, without a buffer of its own per socket.

/// Where the reader stands in a client's stream of frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// The first byte of a frame's header is next.
    Head,
    /// The second (mask bit, length): `data` and `fin` from the first.
    Length { data: bool, fin: bool },
    /// `left` more bytes of an extended length, `len` so far.
    Extended {
        data: bool,
        fin: bool,
        masked: bool,
        left: u8,
        len: u64,
    },
    /// `left` more bytes of the mask, then `len` bytes of payload.
    Mask {
        data: bool,
        fin: bool,
        left: u8,
        len: u64,
    },
    /// `left` more bytes of payload.
    Payload { data: bool, fin: bool, left: u64 },
}

/// A client's message still arriving. See the module's docs.
#[derive(Debug, Clone)]
pub(super) struct Arriving {
    at: At,
    /// Payload bytes of the message being put together (its finished
    /// frames and what came of the one arriving).
    unfinished: u64,
    /// A control frame longer than 125 bytes, or in parts, began: the
    /// connection is to be closed (1002) before its payload is read.
    refused: bool,
}

impl Default for Arriving {
    fn default() -> Self {
        Self {
            at: At::Head,
            unfinished: 0,
            refused: false,
        }
    }
}

/// What one [`Arriving::feed`] took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fed {
    /// Bytes taken from the front of those given: all of them, or up to
    /// the end of a frame (or of a refused control frame's header).
    pub(super) taken: usize,
    /// Payload bytes of messages among them.
    pub(super) payload: u64,
}

impl Arriving {
    /// The payload bytes of the message not finished yet.
    pub(super) fn unfinished(&self) -> u64 {
        self.unfinished
    }

    /// Whether a control frame began that tungstenite would refuse once
    /// whole (longer than 125 bytes, or in parts).
    pub(super) fn refused(&self) -> bool {
        self.refused
    }

    /// Whether the next bytes are a message's payload (of a data frame
    /// whose header was read): what the door's bound may refuse.
    pub(super) fn in_data_payload(&self) -> bool {
        matches!(self.at, At::Payload { data: true, left, .. } if left > 0)
    }

    /// Whether the stream stands between two frames.
    pub(super) fn between_frames(&self) -> bool {
        self.at == At::Head
    }

    /// Reads the next bytes of the stream, from the front of `bytes` up
    /// to the end of the frame they are in (or all of them); stops also
    /// at the end of a data frame's header (so that its payload can be
    /// checked against the door's bound before it is taken) and at the
    /// header of a control frame it refuses, and takes nothing once it
    /// refused one.
    pub(super) fn feed(&mut self, all: &[u8]) -> Fed {
        let mut bytes = all;
        let mut payload = 0;
        while !bytes.is_empty() && !self.refused {
            match self.at {
                At::Payload { data, fin, left } => {
                    let n = left.min(bytes.len() as u64);
                    bytes = &bytes[n as usize..];
                    if data {
                        payload += n;
                        self.unfinished += n;
                    }
                    self.at = At::Payload {
                        data,
                        fin,
                        left: left - n,
                    };
                }
                _ => {
                    self.step(bytes[0]);
                    bytes = &bytes[1..];
                    if self.in_data_payload() {
                        break;
                    }
                }
            }
            if let At::Payload { data, fin, left: 0 } = self.at {
                // A data frame with its final bit ends its message.
                if data && fin {
                    self.unfinished = 0;
                }
                self.at = At::Head;
                break;
            }
        }
        Fed {
            taken: all.len() - bytes.len(),
            payload,
        }
    }

    /// Reads one byte of a frame's header.
    fn step(&mut self, byte: u8) {
        self.at = match self.at {
            At::Head => At::Length {
                // Opcodes 0 (continuation), 1 (text), 2 (binary) and the
                // reserved 3 to 7 (which tungstenite refuses) are data;
                // 8 and up are control frames.
                data: byte & 0x08 == 0,
                fin: byte & 0x80 != 0,
            },
            At::Length { data, fin } => {
                let masked = byte & 0x80 != 0;
                match byte & 0x7f {
                    126 => At::Extended {
                        data,
                        fin,
                        masked,
                        left: 2,
                        len: 0,
                    },
                    127 => At::Extended {
                        data,
                        fin,
                        masked,
                        left: 8,
                        len: 0,
                    },
                    len => self.after_length(data, fin, masked, u64::from(len)),
                }
            }
            At::Extended {
                data,
                fin,
                masked,
                left,
                len,
            } => {
                let len = len << 8 | u64::from(byte);
                if left == 1 {
                    self.after_length(data, fin, masked, len)
                } else {
                    At::Extended {
                        data,
                        fin,
                        masked,
                        left: left - 1,
                        len,
                    }
                }
            }
            At::Mask {
                data,
                fin,
                left,
                len,
            } => {
                if left == 1 {
                    At::Payload {
                        data,
                        fin,
                        left: len,
                    }
                } else {
                    At::Mask {
                        data,
                        fin,
                        left: left - 1,
                        len,
                    }
                }
            }
            At::Payload { .. } => unreachable!("payload bytes are taken in `feed`"),
        };
    }

    fn after_length(&mut self, data: bool, fin: bool, masked: bool, len: u64) -> At {
        if !data && (len > 125 || !fin) {
            self.refused = true;
        }
        if masked {
            At::Mask {
                data,
                fin,
                left: 4,
                len,
            }
        } else {
            At::Payload {
                data,
                fin,
                left: len,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;
    use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
    use tungstenite::protocol::frame::{Frame, FrameHeader};

    /// A frame as a client sends it (masked), its length written in the
    /// shortest form or, `long`, in the 64-bit one (which tungstenite
    /// accepts too).
    fn client_frame(opcode: OpCode, fin: bool, payload: &[u8], long: bool) -> Vec<u8> {
        let header = FrameHeader {
            is_final: fin,
            opcode,
            mask: Some([1, 2, 3, 4]),
            ..FrameHeader::default()
        };
        let frame = Frame::from_payload(header, Bytes::copy_from_slice(payload));
        let mut bytes = Vec::new();
        frame.format(&mut bytes).expect("a frame formats");
        if long {
            let head = bytes[0];
            let at = bytes.len() - payload.len() - 4;
            let mut long = vec![head, 0x80 | 127];
            long.extend((payload.len() as u64).to_be_bytes());
            long.extend_from_slice(&bytes[at..]);
            bytes = long;
        }
        bytes
    }

    /// Feeds all of `bytes`, a frame at a time; the payload read.
    fn feed_all(arriving: &mut Arriving, mut bytes: &[u8]) -> u64 {
        let mut payload = 0;
        while !bytes.is_empty() {
            let fed = arriving.feed(bytes);
            assert!(fed.taken > 0, "a feed takes something");
            payload += fed.payload;
            bytes = &bytes[fed.taken..];
        }
        payload
    }

    #[test]
    fn a_feed_stops_after_a_data_frames_header_and_at_its_end() {
        let mut arriving = Arriving::default();
        let mut stream = client_frame(OpCode::Data(Data::Text), true, b"hi", false);
        stream.extend(client_frame(
            OpCode::Control(Control::Ping),
            true,
            b"p",
            false,
        ));
        stream.extend(client_frame(
            OpCode::Data(Data::Text),
            true,
            b"there",
            false,
        ));
        let mut takes = Vec::new();
        let mut rest = &stream[..];
        while !rest.is_empty() {
            let fed = arriving.feed(rest);
            takes.push((fed.taken, fed.payload, arriving.in_data_payload()));
            rest = &rest[fed.taken..];
        }
        // Header (2 + mask 4), payload; the ping whole; header, payload.
        assert_eq!(
            takes,
            vec![
                (6, 0, true),
                (2, 2, false),
                (7, 0, false),
                (6, 0, true),
                (5, 5, false)
            ]
        );
        assert!(arriving.between_frames());
    }

    #[test]
    fn a_control_frame_tungstenite_would_refuse_is_seen_at_its_header() {
        for (first, len) in [(0x89u8, 126u64), (0x8a, 4 << 20), (0x09, 1), (0x88, 200)] {
            let mut arriving = Arriving::default();
            let mut header = vec![first, 0x80 | 127];
            header.extend(len.to_be_bytes());
            header.extend([0, 0, 0, 0]);
            header.extend([0; 64]);
            let fed = arriving.feed(&header);
            assert!(arriving.refused(), "{first:#x} {len}");
            assert_eq!(fed.taken, 10, "{first:#x} {len}: stops after the length");
            assert_eq!(arriving.feed(&header[2..]).taken, 0);
        }
        let mut arriving = Arriving::default();
        arriving.feed(&client_frame(
            OpCode::Control(Control::Ping),
            true,
            &[1; 125],
            true,
        ));
        assert!(!arriving.refused());
    }

    #[test]
    fn headers_and_control_frames_are_no_part_of_a_message() {
        let mut arriving = Arriving::default();
        let mut stream = client_frame(OpCode::Data(Data::Binary), false, b"abc", false);
        stream.extend(client_frame(
            OpCode::Data(Data::Continue),
            false,
            b"",
            false,
        ));
        stream.extend(client_frame(
            OpCode::Control(Control::Pong),
            true,
            b"pong",
            true,
        ));
        stream.extend(client_frame(
            OpCode::Data(Data::Continue),
            false,
            &[7; 300],
            false,
        ));
        assert_eq!(feed_all(&mut arriving, &stream), 303);
        assert_eq!(arriving.unfinished(), 303);
        let end = client_frame(OpCode::Data(Data::Continue), true, b"!", true);
        assert_eq!(feed_all(&mut arriving, &end), 1);
        assert_eq!(arriving.unfinished(), 0);
    }

    /// One frame of a generated stream: a data frame (`Some(fin)`) or a
    /// control frame (`None`), its payload length, the long length form.
    type Step = (Option<bool>, usize, bool);

    proptest! {
        /// Against a model: fed any stream of frames (data frames of
        /// messages, control frames between them) in pieces of any size,
        /// it counts exactly the payload of the message being put together,
        /// at every frame's end, and the data payload it read.
        #[test]
        fn counts_the_payload_of_the_unfinished_message(
            steps in proptest::collection::vec(
                (proptest::option::of(any::<bool>()), 0usize..70_000, any::<bool>()),
                1..12,
            ),
            cuts in proptest::collection::vec(1usize..5_000, 1..8),
        ) {
            let steps: Vec<Step> = steps
                .into_iter()
                .map(|(kind, len, long)| match kind {
                    // Control payloads are at most 125 bytes.
                    None => (None, len % 126, long),
                    data => (data, len, long),
                })
                .collect();
            let mut arriving = Arriving::default();
            let mut model = 0u64;
            let mut in_message = false;
            let mut total_payload = 0;
            let mut read_payload = 0;
            for (kind, len, long) in steps {
                let payload = vec![0x5a; len];
                let bytes = match kind {
                    Some(fin) => {
                        let opcode = if in_message {
                            OpCode::Data(Data::Continue)
                        } else {
                            OpCode::Data(Data::Binary)
                        };
                        in_message = !fin;
                        total_payload += len as u64;
                        model = if fin { 0 } else { model + len as u64 };
                        client_frame(opcode, fin, &payload, long)
                    }
                    None => client_frame(OpCode::Control(Control::Ping), true, &payload, long),
                };
                // Fed in pieces.
                let mut rest = &bytes[..];
                let mut i = 0;
                while !rest.is_empty() {
                    let n = cuts[i % cuts.len()].min(rest.len());
                    let fed = arriving.feed(&rest[..n]);
                    prop_assert!(fed.taken > 0);
                    read_payload += fed.payload;
                    rest = &rest[fed.taken..];
                    i += 1;
                }
                prop_assert_eq!(arriving.unfinished(), model);
                prop_assert!(arriving.between_frames());
            }
            prop_assert_eq!(read_payload, total_payload);
        }
    }
}
