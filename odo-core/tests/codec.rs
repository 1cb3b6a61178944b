//! Codec tests: round trips of every message type, golden bytes of one frame
//! of each kind, and rejection of garbage.

use bytes::{Bytes, BytesMut};
use odo_core::codec::{self, CodecError, HEADER_LEN};
use odo_core::wire::*;
use odo_core::{Namespace, ObjectAddress, ObjectId};
use proptest::prelude::*;

fn id() -> impl Strategy<Value = ObjectId> {
    any::<[u8; 32]>().prop_map(ObjectId::from_bytes)
}

fn target() -> impl Strategy<Value = Target> {
    (
        ".{0,12}",
        id(),
        proptest::option::of(".{0,12}"),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(|(class, id, name, shard, epoch)| Target {
            object: ObjectAddress {
                class: class.into(),
                id,
                name: name.map(Into::into),
            },
            shard,
            epoch,
        })
}

fn meta() -> impl Strategy<Value = CallMeta> {
    (any::<u64>(), proptest::collection::vec(id(), 0..4))
        .prop_map(|(deadline_ms, chain)| CallMeta { deadline_ms, chain })
}

fn headers() -> impl Strategy<Value = Vec<Header>> {
    proptest::collection::vec(
        (
            "[a-z-]{1,10}",
            proptest::collection::vec(any::<u8>(), 0..16),
        ),
        0..6,
    )
}

fn control() -> impl Strategy<Value = Control> {
    prop_oneof![
        (
            any::<u32>(),
            any::<u32>(),
            ".{0,20}",
            proptest::collection::vec(".{0,8}", 0..3)
        )
            .prop_map(|(worker, pid, endpoint, classes)| Control::WorkerHello {
                worker,
                pid,
                endpoint,
                classes
            }),
        (any::<u32>(), any::<u64>())
            .prop_map(|(shard, epoch)| Control::AssignShard { shard, epoch }),
        (any::<u32>(), any::<u64>())
            .prop_map(|(shard, epoch)| Control::ReleaseShard { shard, epoch }),
        any::<u64>().prop_map(|now_ms| Control::Heartbeat { now_ms }),
        (
            any::<u64>(),
            proptest::collection::vec((any::<u64>(), proptest::option::of(".{0,10}")), 0..5)
        )
            .prop_map(|(version, shards)| Control::Placement(Placement {
                version,
                shards: shards
                    .into_iter()
                    .map(|(epoch, endpoint)| ShardPlacement { epoch, endpoint })
                    .collect(),
            })),
        Just(Control::Drain),
        Just(Control::Shutdown),
    ]
}

fn wire_error() -> impl Strategy<Value = WireError> {
    prop_oneof![
        any::<u64>().prop_map(|epoch| WireError::Moved { epoch }),
        ".{0,20}".prop_map(|reason| WireError::ObjectReset { reason }),
        Just(WireError::Overloaded),
        ".{0,20}".prop_map(|class| WireError::UnknownClass { class }),
        ".{0,20}".prop_map(|message| WireError::BadRequest { message }),
        ".{0,20}".prop_map(|message| WireError::Internal { message }),
        proptest::collection::vec(id(), 0..4).prop_map(|chain| WireError::CallCycle { chain }),
        (any::<u32>(), any::<u32>()).prop_map(|(depth, max)| WireError::CallTooDeep { depth, max }),
        ".{0,20}".prop_map(|reason| WireError::OutcomeUnknown { reason }),
        Just(WireError::DeadlineExceeded),
        (any::<u32>(), ".{0,20}")
            .prop_map(|(shard, reason)| WireError::ShardRefused { shard, reason }),
    ]
}

fn socket_event_kind() -> impl Strategy<Value = odo_core::socket::SocketEventKind> {
    use odo_core::socket::{BatchedMessage, SocketEventKind as Kind, SocketRecord};
    prop_oneof![
        any::<bool>().prop_map(|binary| Kind::Message { binary }),
        any::<bool>().prop_map(|first| Kind::Part { first }),
        (any::<u16>(), ".{0,12}", any::<bool>()).prop_map(|(code, reason, was_clean)| {
            Kind::Close {
                code,
                reason,
                was_clean,
            }
        }),
        ".{0,12}".prop_map(|message| Kind::Error { message }),
        proptest::collection::vec(
            (
                any::<u64>(),
                any::<bool>(),
                any::<u32>(),
                proptest::option::of(any::<u64>())
            )
                .prop_map(|(socket, binary, len, auto_response_ms)| BatchedMessage {
                    socket,
                    binary,
                    len,
                    auto_response_ms,
                }),
            0..4
        )
        .prop_map(|messages| Kind::Messages { messages }),
        (
            proptest::collection::vec(
                (
                    any::<u64>(),
                    proptest::collection::vec(".{0,6}", 0..3),
                    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
                    proptest::option::of(any::<u64>())
                )
                    .prop_map(|(socket, tags, attachment, auto_response_ms)| {
                        SocketRecord {
                            socket,
                            tags,
                            attachment,
                            auto_response_ms,
                        }
                    }),
                0..3
            ),
            proptest::option::of((".{0,6}", ".{0,6}")),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(sockets, auto_response, more, continued)| Kind::Sync {
                sockets,
                auto_response,
                more,
                continued
            }),
    ]
}

fn socket_op() -> impl Strategy<Value = odo_core::socket::SocketOp> {
    use odo_core::socket::SocketOp;
    prop_oneof![
        (
            proptest::collection::vec(any::<u64>(), 0..4),
            any::<bool>(),
            any::<u32>(),
            any::<bool>(),
            any::<bool>(),
            any::<u64>()
        )
            .prop_map(
                |(sockets, binary, len, more, continued, message)| SocketOp::Send {
                    sockets,
                    binary,
                    len,
                    more,
                    continued,
                    message,
                }
            ),
        (any::<u64>(), any::<u16>(), ".{0,8}").prop_map(|(socket, code, reason)| {
            SocketOp::Close {
                socket,
                code,
                reason,
            }
        }),
        (any::<u64>(), proptest::option::of(any::<u32>()))
            .prop_map(|(socket, len)| SocketOp::Attach { socket, len }),
        (
            any::<[u8; 32]>(),
            proptest::option::of((".{0,6}", ".{0,6}"))
        )
            .prop_map(|(id, pair)| SocketOp::AutoResponse {
                object: ObjectId::from_bytes(id),
                pair
            }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u32>(), ".{0,20}", ".{0,10}").prop_map(|(protocol_version, token, peer)| {
            Message::Hello(Hello {
                protocol_version,
                token,
                peer,
            })
        }),
        (any::<u32>(), ".{0,10}").prop_map(|(protocol_version, peer)| Message::Welcome(Welcome {
            protocol_version,
            peer
        })),
        prop_oneof![
            (any::<u32>(), any::<u32>())
                .prop_map(|(ours, theirs)| Refused::VersionMismatch { ours, theirs }),
            Just(Refused::BadToken),
            Just(Refused::NotAHandshake),
        ]
        .prop_map(Message::Refused),
        (target(), meta(), "[A-Z]{1,7}", ".{0,30}", headers()).prop_map(
            |(target, meta, method, uri, headers)| {
                Message::Request(Request::Fetch(FetchRequest {
                    target,
                    meta,
                    head: HttpHead {
                        method,
                        uri,
                        headers,
                    },
                }))
            }
        ),
        (target(), meta(), ".{0,12}").prop_map(|(target, meta, method)| Message::Request(
            Request::Rpc(RpcCall {
                target,
                meta,
                method
            })
        )),
        (target(), any::<u64>(), any::<u32>()).prop_map(|(target, scheduled_ms, retry_count)| {
            Message::Request(Request::Alarm(AlarmEvent {
                target,
                scheduled_ms,
                retry_count,
            }))
        }),
        control().prop_map(|c| Message::Request(Request::Control(c))),
        (
            target(),
            meta(),
            ".{0,12}",
            any::<u64>(),
            proptest::option::of(any::<u64>()),
            socket_event_kind()
        )
            .prop_map(|(target, meta, door, socket, auto_response_ms, kind)| {
                Message::Request(Request::Socket(odo_core::socket::SocketEvent {
                    target,
                    meta,
                    door,
                    socket,
                    auto_response_ms,
                    kind,
                }))
            }),
        proptest::collection::vec(socket_op(), 0..4).prop_map(|ops| Message::Request(
            Request::SocketOutput(odo_core::socket::SocketOutput { ops })
        )),
        (
            any::<u32>(),
            any::<u32>(),
            proptest::option::of((any::<[u8; 32]>(), any::<u64>()))
        )
            .prop_map(|(shard, shard_count, after)| Message::Request(
                Request::SocketRecords(odo_core::socket::ShardSockets {
                    shard,
                    shard_count,
                    after: after.map(|(id, socket)| (ObjectId::from_bytes(id), socket)),
                })
            )),
        (any::<u16>(), headers()).prop_map(|(status, headers)| Message::Response(Response::Fetch(
            FetchResponse { status, headers }
        ))),
        Just(Message::Response(Response::Rpc)),
        Just(Message::Response(Response::Alarm)),
        Just(Message::Response(Response::Control(ControlReply::Ack))),
        (any::<u64>(), any::<u64>()).prop_map(|(now_ms, live_objects)| Message::Response(
            Response::Control(ControlReply::Heartbeat {
                now_ms,
                live_objects
            })
        )),
        any::<[u64; 5]>().prop_map(
            |[
                now_ms,
                live_objects,
                commit_batches,
                commit_turns,
                stalled_ms,
            ]| {
                Message::Response(Response::Control(ControlReply::Stats(WorkerStats {
                    now_ms,
                    live_objects,
                    commit_batches,
                    commit_turns,
                    stalled_ms,
                })))
            }
        ),
        wire_error().prop_map(|e| Message::Response(Response::Error(e))),
        Just(Message::Cancel),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    (
        any::<u64>(),
        message(),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(request_id, message, body)| Frame {
            request_id,
            message,
            body: Bytes::from(body),
        })
}

proptest! {
    #[test]
    fn every_message_round_trips(frame in frame()) {
        let bytes = codec::encode(&frame).unwrap();
        prop_assert_eq!(codec::decode(bytes).unwrap(), frame);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = codec::decode(Bytes::from(bytes));
    }

    #[test]
    fn valid_header_with_garbage_envelope_never_panics(
        kind in 1u8..=6,
        envelope in proptest::collection::vec(any::<u8>(), 0..100),
        body in proptest::collection::vec(any::<u8>(), 0..10),
    ) {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[codec::FORMAT_VERSION, kind, 0, 0]);
        buf.extend_from_slice(&9u64.to_le_bytes());
        buf.extend_from_slice(&(envelope.len() as u32).to_le_bytes());
        buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
        buf.extend_from_slice(&envelope);
        buf.extend_from_slice(&body);
        let _ = codec::decode(buf.freeze());
    }

    #[test]
    fn every_truncation_of_a_valid_frame_is_rejected(frame in frame(), cut in any::<prop::sample::Index>()) {
        let bytes = codec::encode(&frame).unwrap();
        let cut = cut.index(bytes.len());
        prop_assert!(codec::decode(bytes.slice(..cut)).is_err());
    }
}

fn sample_target() -> Target {
    let id = Namespace::new("COUNTER").id_from_name("hot");
    Target {
        object: ObjectAddress {
            class: "COUNTER".into(),
            id,
            name: Some("hot".into()),
        },
        shard: 3,
        epoch: 2,
    }
}

/// Hex dump of an encoded frame: header on its own line, then 32 bytes a line.
fn dump(frame: &Frame) -> String {
    let bytes = codec::encode(frame).unwrap();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut out = format!("header {}\n", hex(&bytes[..HEADER_LEN]));
    for chunk in bytes[HEADER_LEN..].chunks(32) {
        out.push_str(&hex(chunk));
        out.push('\n');
    }
    out
}

#[test]
fn golden_frames() {
    let target = sample_target();
    let frames = [
        (
            "hello",
            Message::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                token: "secret".into(),
                peer: "router".into(),
            }),
            "",
        ),
        (
            "welcome",
            Message::Welcome(Welcome {
                protocol_version: PROTOCOL_VERSION,
                peer: "worker 0".into(),
            }),
            "",
        ),
        ("refused", Message::Refused(Refused::BadToken), ""),
        (
            "fetch",
            Message::Request(Request::Fetch(FetchRequest {
                target: target.clone(),
                meta: CallMeta {
                    deadline_ms: 30_000,
                    chain: Vec::new(),
                },
                head: HttpHead {
                    method: "POST".into(),
                    uri: "/counter/hot/increment?x=1".into(),
                    headers: vec![("x-a".into(), b"1".to_vec()), ("x-a".into(), b"2".to_vec())],
                },
            })),
            "body",
        ),
        (
            "rpc",
            Message::Request(Request::Rpc(RpcCall {
                target: target.clone(),
                meta: CallMeta {
                    deadline_ms: 1_500,
                    chain: vec![Namespace::new("PROBE").id_from_name("caller")],
                },
                method: "add".into(),
            })),
            "\u{1}",
        ),
        (
            "alarm",
            Message::Request(Request::Alarm(AlarmEvent {
                target,
                scheduled_ms: 1_700_000_000_000,
                retry_count: 1,
            })),
            "",
        ),
        (
            "control",
            Message::Request(Request::Control(Control::AssignShard {
                shard: 1,
                epoch: 5,
            })),
            "",
        ),
        (
            "fetch-response",
            Message::Response(Response::Fetch(FetchResponse {
                status: 200,
                headers: vec![("content-type".into(), b"text/plain".to_vec())],
            })),
            "42",
        ),
        (
            "error-response",
            Message::Response(Response::Error(WireError::Moved { epoch: 9 })),
            "",
        ),
        (
            "cycle-response",
            Message::Response(Response::Error(WireError::CallCycle {
                chain: vec![
                    Namespace::new("PROBE").id_from_name("a"),
                    Namespace::new("PROBE").id_from_name("a"),
                ],
            })),
            "",
        ),
        ("cancel", Message::Cancel, ""),
        (
            "socket-messages",
            Message::Request(Request::Socket(odo_core::socket::SocketEvent {
                target: sample_target(),
                meta: CallMeta {
                    deadline_ms: 1_700_000_030_000,
                    chain: Vec::new(),
                },
                door: "uds:/run/odo/door.sock".into(),
                socket: 7,
                auto_response_ms: None,
                kind: odo_core::socket::SocketEventKind::Messages {
                    messages: vec![
                        odo_core::socket::BatchedMessage {
                            socket: 7,
                            binary: false,
                            len: 2,
                            auto_response_ms: None,
                        },
                        odo_core::socket::BatchedMessage {
                            socket: 9,
                            binary: true,
                            len: 1,
                            auto_response_ms: Some(1_700_000_000_000),
                        },
                    ],
                },
            })),
            "hi!",
        ),
        (
            "socket-output-parts",
            Message::Request(Request::SocketOutput(odo_core::socket::SocketOutput {
                ops: vec![
                    odo_core::socket::SocketOp::Send {
                        sockets: vec![7, 9],
                        binary: true,
                        len: 3,
                        more: true,
                        continued: false,
                        message: 0x0123_4567_89ab_cdef,
                    },
                    odo_core::socket::SocketOp::Close {
                        socket: 11,
                        code: 4000,
                        reason: "bye".into(),
                    },
                ],
            })),
            "abc",
        ),
        (
            "socket-records",
            Message::Request(Request::SocketRecords(odo_core::socket::ShardSockets {
                shard: 3,
                shard_count: 8,
                after: Some((Namespace::new("ROOM").id_from_name("hall"), 41)),
            })),
            "",
        ),
        (
            "socket-records-response",
            Message::Response(Response::SocketRecords(
                odo_core::socket::ShardSocketsPage {
                    objects: vec![odo_core::socket::DoorSockets {
                        door: "tcp:10.0.0.2:7000".into(),
                        object: Namespace::new("ROOM").id_from_name("lobby"),
                        sockets: vec![odo_core::socket::SocketRecord {
                            socket: 7,
                            tags: vec!["a".into()],
                            attachment: Some(vec![1, 2]),
                            auto_response_ms: None,
                        }],
                        auto_response: Some(("ping".into(), "pong".into())),
                    }],
                    next: Some((Namespace::new("ROOM").id_from_name("lobby"), 7)),
                },
            )),
            "",
        ),
    ];
    let mut out = String::new();
    for (name, message, body) in frames {
        let frame = Frame {
            request_id: 0x0102_0304,
            message,
            body: Bytes::from(body),
        };
        out.push_str(&format!("# {name}\n{}", dump(&frame)));
    }
    insta::assert_snapshot!(out);
}

fn check_rejects(bytes: &[u8], expected: CodecError) {
    assert_eq!(codec::decode(Bytes::copy_from_slice(bytes)), Err(expected));
}

fn header(version: u8, kind: u8, flags: u16, envelope: u32, body: u32) -> Vec<u8> {
    let mut v = vec![version, kind];
    v.extend_from_slice(&flags.to_le_bytes());
    v.extend_from_slice(&1u64.to_le_bytes());
    v.extend_from_slice(&envelope.to_le_bytes());
    v.extend_from_slice(&body.to_le_bytes());
    v
}

#[test]
fn rejections() {
    const V: u8 = codec::FORMAT_VERSION;
    check_rejects(b"", CodecError::Truncated { len: 0 });
    check_rejects(&[1; 19], CodecError::Truncated { len: 19 });
    check_rejects(
        &header(V + 1, 6, 0, 0, 0),
        CodecError::UnsupportedVersion { found: V + 1 },
    );
    // The format before call deadlines and chains.
    check_rejects(
        &header(1, 6, 0, 0, 0),
        CodecError::UnsupportedVersion { found: 1 },
    );
    check_rejects(&header(V, 0, 0, 0, 0), CodecError::UnknownKind { found: 0 });
    check_rejects(
        &header(V, 99, 0, 0, 0),
        CodecError::UnknownKind { found: 99 },
    );
    check_rejects(
        &header(V, 6, 1, 0, 0),
        CodecError::ReservedFlags { found: 1 },
    );
    check_rejects(
        &header(V, 6, 0, 0, 5),
        CodecError::LengthMismatch {
            announced: 25,
            actual: 20,
        },
    );
    check_rejects(
        &header(V, 6, 0, u32::MAX, u32::MAX),
        CodecError::LengthMismatch {
            announced: 20 + 2 * u64::from(u32::MAX),
            actual: 20,
        },
    );
    let mut cancel_with_envelope = header(V, 6, 0, 1, 0);
    cancel_with_envelope.push(0);
    check_rejects(
        &cancel_with_envelope,
        CodecError::TrailingBytes {
            kind: Kind::Cancel,
            count: 1,
        },
    );
    // A Welcome envelope followed by a stray byte.
    let mut trailing = header(V, 2, 0, 3, 0);
    trailing.extend_from_slice(&[1, 0, 7]);
    check_rejects(
        &trailing,
        CodecError::TrailingBytes {
            kind: Kind::Welcome,
            count: 1,
        },
    );
}
