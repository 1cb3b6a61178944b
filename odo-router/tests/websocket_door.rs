//! The front door's WebSockets against a scripted object service: the
//! batches of messages (messages that queue for an object while its
//! previous event runs travel as one call, in order; what each way a batch
//! can fail means for the sockets whose messages it carried), and the
//! door's records of a shard's sockets for the shard's new holder; and
//! that an idle socket keeps no task at the door.
//! The scripted service is in `scripted/`.

mod scripted;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use odo_core::socket::{SocketOp, SocketOutput};
use odo_router::{ClientWebSocket, WebSocketConfig};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use scripted::*;

#[tokio::test]
async fn messages_queued_behind_a_running_event_travel_as_one_batch_in_order() {
    let s = setup();
    let mut a = s.open().await;
    let mut b = s.open().await;
    let mut c = s.open().await;
    s.hold(&mut a).await;
    for text in ["b1", "b2"] {
        b.send(Message::text(text)).await.unwrap();
    }
    s.queued(2).await;
    for text in ["c1", "c2"] {
        c.send(Message::text(text)).await.unwrap();
    }
    s.queued(4).await;
    s.service.release.notify_one();
    assert_eq!(text(&mut a).await, "echo:hold");
    assert_eq!(text(&mut b).await, "echo:b1");
    assert_eq!(text(&mut b).await, "echo:b2");
    assert_eq!(text(&mut c).await, "echo:c1");
    assert_eq!(text(&mut c).await, "echo:c2");
    assert_eq!(
        s.service.calls(),
        vec![strings(&["hold"]), strings(&["b1", "b2", "c1", "c2"])]
    );
    let mut metrics = String::new();
    s.door.render_metrics(&mut metrics);
    assert!(
        metrics.contains("odo_websocket_batches_total 1\n")
            && metrics.contains("odo_websocket_batched_messages_total 4\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_batch_whose_outcome_is_unknown_closes_each_of_its_sockets_with_1012() {
    let s = setup();
    let mut d = s.open().await;
    let (mut a, mut b, mut c) = batch_of(&s, "lose").await;
    // Neither b's nor c's message may be sent again: either may have run.
    assert_eq!(close_code(&mut b).await, Some(CloseCode::Restart));
    assert_eq!(close_code(&mut c).await, Some(CloseCode::Restart));
    // The sockets without a message in the batch stay open.
    d.send(Message::text("d1")).await.unwrap();
    assert_eq!(text(&mut d).await, "echo:d1");
    a.send(Message::text("a2")).await.unwrap();
    assert_eq!(text(&mut a).await, "echo:a2");
    assert_eq!(
        s.service.calls(),
        vec![
            strings(&["hold"]),
            strings(&["lose", "c1"]),
            strings(&["d1"]),
            strings(&["a2"])
        ]
    );
}

#[tokio::test]
async fn a_batch_refused_as_a_whole_goes_again_one_message_at_a_time() {
    let s = setup();
    let (_a, mut b, mut c) = batch_of(&s, "unknown").await;
    // Refused alone too (after a hand-over), b's message is dropped; c's
    // is answered, once.
    assert_eq!(text(&mut c).await, "echo:c1");
    b.send(Message::text("b2")).await.unwrap();
    assert_eq!(text(&mut b).await, "echo:b2");
    assert_eq!(
        s.service.calls(),
        vec![
            strings(&["hold"]),
            // Refused, handed the door's sockets, refused again.
            strings(&["unknown", "c1"]),
            strings(&["unknown", "c1"]),
            // One at a time: the same for b's message alone.
            strings(&["unknown"]),
            strings(&["unknown"]),
            strings(&["c1"]),
            strings(&["b2"])
        ]
    );
}

#[tokio::test]
async fn a_batch_with_a_failed_turn_keeps_every_socket_open() {
    let s = setup();
    let (_a, mut b, mut c) = batch_of(&s, "fail").await;
    assert_eq!(text(&mut b).await, "echo:fail");
    assert_eq!(text(&mut c).await, "echo:c1");
    // Failed, not lost: nothing is sent again and no socket is closed.
    b.send(Message::text("b2")).await.unwrap();
    assert_eq!(text(&mut b).await, "echo:b2");
    assert_eq!(
        s.service.calls(),
        vec![
            strings(&["hold"]),
            strings(&["fail", "c1"]),
            strings(&["b2"])
        ]
    );
}

#[tokio::test]
async fn a_shards_records_list_each_of_its_objects_accepted_sockets() {
    let s = setup();
    let names = ["r0", "r1", "r2", "r3", "r4", "r5"];
    let mut open = Vec::new();
    for (i, name) in names.iter().enumerate() {
        for _ in 0..=i % 3 {
            open.push(s.open_at(name).await);
        }
    }
    let namespace = s.client.namespace("ROOM");
    let shard_count = 2;
    let mut listed = 0;
    for shard in 0..shard_count {
        let records = s.door.shard_sockets(shard, shard_count);
        let mut expected: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, name)| (namespace.id_from_name(name), i % 3 + 1))
            .filter(|(id, _)| id.shard(shard_count) == shard)
            .collect();
        expected.sort();
        let got: Vec<_> = records
            .iter()
            .map(|d| (d.object, d.sockets.len()))
            .collect();
        assert_eq!(got, expected, "shard {shard}");
        for d in &records {
            assert_eq!(d.door, "test-door");
            assert!(d.sockets.windows(2).all(|w| w[0].socket < w[1].socket));
        }
        listed += records.iter().map(|d| d.sockets.len()).sum::<usize>();
    }
    assert_eq!(listed, open.len());
}

/// An idle socket has no task of its own at the door: its connection runs
/// only when its client, its queue or the idle sweep wakes it, and the
/// door's tasks do not grow with its sockets. (With a task per socket,
/// 200 sockets kept 200 tasks alive.)
#[tokio::test]
async fn idle_sockets_keep_no_task_and_wake_for_their_client_and_their_queue() {
    let s = setup();
    let metrics = tokio::runtime::Handle::current().metrics();
    let mut sockets = Vec::new();
    for i in 0..200 {
        sockets.push(s.open_at(&format!("room-{}", i % 20)).await);
    }
    for (i, ws) in sockets.iter_mut().enumerate() {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        assert_eq!(text(ws).await, format!("echo:m{i}"));
    }
    let start = Instant::now();
    while metrics.num_alive_tasks() >= 20 {
        assert!(
            start.elapsed() < GUARD,
            "{} tasks alive for 200 idle sockets",
            metrics.num_alive_tasks()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Each still answers: its client wakes it, and the door's queue (the
    // echo) does.
    for (i, ws) in sockets.iter_mut().enumerate().rev() {
        ws.send(Message::text(format!("again{i}"))).await.unwrap();
        assert_eq!(text(ws).await, format!("echo:again{i}"));
    }
    assert_eq!(s.door.open_sockets(), 200);
}

/// An upgrade whose future is dropped before the object answers (its
/// client went away, its connection timed out) lets its socket go: it
/// leaves the cap and the door's maps, and the object, which may have
/// accepted it before the answer was lost, gets its close event. Before,
/// each such upgrade kept its place under the socket cap for good.
#[tokio::test]
async fn an_upgrade_dropped_before_its_answer_lets_its_socket_go() {
    let s = setup();
    let room = s.client.namespace("ROOM").get_by_name("r");
    let request = http::Request::get("/room/r/held").body(()).unwrap();
    let upgrade = tokio::spawn(async move { room.websocket(request).await.map(drop) });
    let start = Instant::now();
    while s.service.fetches.load(std::sync::atomic::Ordering::SeqCst) < 1 {
        assert!(
            start.elapsed() < GUARD,
            "the upgrade never reached the object"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(s.door.open_sockets(), 1);
    upgrade.abort();
    assert!(upgrade.await.unwrap_err().is_cancelled());
    assert_eq!(s.door.open_sockets(), 0, "the socket left the cap");
    while s.service.closes.lock().unwrap().is_empty() {
        assert!(
            start.elapsed() < GUARD,
            "the object never got the close event"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(s.door.queued_events(), 0);
    // Another upgrade is served as before.
    let mut ws = s.open().await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(text(&mut ws).await, "echo:hi");
}

/// A client that pings and never reads: each ping's pong waits to be
/// written. They are bounded like the door's own frames (the send
/// buffer): past it the socket is closed with 1008, instead of the door
/// holding a byte for every byte the client sends.
#[tokio::test]
async fn a_client_that_pings_and_never_reads_is_closed_not_buffered() {
    use tokio::io::AsyncWriteExt;
    let s = setup();
    let ws = s.open().await;
    let mut raw = ws.into_inner();
    // Masked pings of 125 bytes (mask 0: the payload as is): 2.5 MB of
    // pongs against the default 1 MiB send buffer.
    let mut ping = vec![0x89, 0x80 | 125, 0, 0, 0, 0];
    ping.extend_from_slice(&[b'p'; 125]);
    let flood = tokio::spawn(async move {
        for _ in 0..20_000 {
            if raw.write_all(&ping).await.is_err() {
                break;
            }
        }
        raw
    });
    let start = Instant::now();
    while s.service.closes.lock().unwrap().is_empty() {
        assert!(
            start.elapsed() < GUARD,
            "the door kept answering pings no one read"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    flood.abort();
}

/// An object's queue is bounded in bytes as well as in events: a message
/// that would pass `object_buffer_bytes` closes its socket with 1013, as
/// one past `object_buffer_events` does (one message always fits an
/// empty queue). Before, 1,024 messages of 32 MiB could wait for one
/// object. The socket's messages still waiting go with it (left queued,
/// they would keep the queue full for its neighbours).
#[tokio::test]
async fn an_objects_queue_is_bounded_in_bytes() {
    let config = WebSocketConfig {
        object_buffer_bytes: 10 * 1024,
        ..WebSocketConfig::default()
    };
    let s = setup_with(config);
    let mut a = s.open().await;
    let mut b = s.open().await;
    s.hold(&mut a).await;
    let big = "x".repeat(4 * 1024);
    b.send(Message::text(format!("1{big}"))).await.unwrap();
    b.send(Message::text(format!("2{big}"))).await.unwrap();
    s.queued(2).await;
    b.send(Message::text(format!("3{big}"))).await.unwrap();
    assert_eq!(close_code(&mut b).await, Some(CloseCode::Again));
    s.service.release.notify_one();
    assert_eq!(text(&mut a).await, "echo:hold");
    // What queued before the limit was dropped with the socket.
    let start = Instant::now();
    while s.door.queued_events() > 0 {
        assert!(start.elapsed() < GUARD, "the queue never drained");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let delivered: Vec<char> = s
        .service
        .calls()
        .concat()
        .iter()
        .filter_map(|m| m.chars().next())
        .filter(|c| c.is_ascii_digit())
        .collect();
    assert_eq!(delivered, Vec::<char>::new());
}

/// A hand-over of an object's socket records that its worker refuses
/// (they do not fit one frame, say) closes the object's sockets here with
/// 1011, so their clients reconnect. Before, each message was dropped
/// with a warning and its socket stayed open: the room went silent.
#[tokio::test]
async fn a_refused_hand_over_closes_the_objects_sockets_with_1011() {
    let s = setup();
    let mut a = s.open().await;
    let mut b = s.open().await;
    s.service
        .refuse_sync
        .store(true, std::sync::atomic::Ordering::SeqCst);
    a.send(Message::text("unknown")).await.unwrap();
    assert_eq!(close_code(&mut a).await, Some(CloseCode::Error));
    assert_eq!(close_code(&mut b).await, Some(CloseCode::Error));
}

/// The id the door gave the only socket open at it.
fn only_socket(s: &Setup) -> u64 {
    let records = s.door.shard_sockets(0, 1);
    assert_eq!(records.len(), 1, "one object");
    assert_eq!(records[0].sockets.len(), 1, "one socket");
    records[0].sockets[0].socket
}

/// A part of a message to `socket`, as a worker sends a message larger
/// than a push: `more` when the next part follows, `continued` when it
/// follows one.
fn part(socket: u64, text: &str, more: bool, continued: bool) -> (SocketOutput, Bytes) {
    let output = SocketOutput {
        ops: vec![SocketOp::Send {
            sockets: vec![socket],
            binary: false,
            len: text.len() as u32,
            more,
            continued,
            message: 1,
        }],
    };
    (output, Bytes::from(text.to_owned()))
}

/// What `ws` gets until its close: its text messages and the close code.
async fn until_closed(ws: &mut ClientWebSocket) -> (Vec<String>, Option<CloseCode>) {
    let mut texts = Vec::new();
    loop {
        match tokio::time::timeout(GUARD, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => texts.push(t.to_string()),
            Ok(Some(Ok(Message::Close(frame)))) => return (texts, frame.map(|f| f.code)),
            Ok(Some(Ok(_))) => {}
            other => panic!("expected a message or a close, got {other:?}"),
        }
    }
}

/// A message cut off after its first part (its worker died between two
/// pushes, or their connection broke) is not glued to the socket's next
/// message: the socket is closed with 1012, since it missed a message, and
/// the next message's bytes never reach it prefixed by the lost part's.
/// Before, the door kept the first part and sent it and the next message
/// as one.
#[tokio::test]
async fn a_message_cut_off_after_its_first_part_closes_its_socket_with_1012() {
    let s = setup();
    let mut a = s.open().await;
    let id = only_socket(&s);
    let (head, body) = part(id, "lost-head|", true, false);
    s.door.apply(head, body).unwrap();
    let (next, body) = part(id, "next", false, false);
    s.door.apply(next, body).unwrap();
    let (texts, code) = until_closed(&mut a).await;
    assert!(
        texts.iter().all(|t| !t.contains("lost-head")),
        "the lost part reached the client: {texts:?}"
    );
    assert_eq!(code, Some(CloseCode::Restart));
}

/// The parts of one message arrive as that message, once, however many
/// parts it took; the part that ended a message (or a part whose head
/// never came) starts nothing.
#[tokio::test]
async fn a_message_in_parts_arrives_whole_and_a_headless_part_is_dropped() {
    let s = setup();
    let mut a = s.open().await;
    let id = only_socket(&s);
    let parts = ["one|", "two|", "three"];
    for (i, text) in parts.iter().enumerate() {
        let (op, body) = part(id, text, i + 1 < parts.len(), i > 0);
        s.door.apply(op, body).unwrap();
    }
    assert_eq!(text(&mut a).await, "one|two|three");
    // The end of a message whose head this door never got: dropped, and
    // the socket closed (it missed that message).
    let (tail, body) = part(id, "tail", false, true);
    s.door.apply(tail, body).unwrap();
    let (texts, code) = until_closed(&mut a).await;
    assert_eq!(texts, Vec::<String>::new());
    assert_eq!(code, Some(CloseCode::Restart));
}

/// The sockets the door holds, in order.
fn socket_ids(s: &Setup) -> Vec<u64> {
    let mut ids: Vec<u64> = s
        .door
        .shard_sockets(0, 1)
        .iter()
        .flat_map(|r| r.sockets.iter().map(|x| x.socket))
        .collect();
    ids.sort_unstable();
    ids
}

/// A hand-over of an object to its new worker leaves alone a message
/// being sent in parts: the new worker may be sending it. (A first
/// version dropped every half-joined message of the object at a
/// hand-over, and closed its sockets with 1012.)
#[tokio::test]
async fn a_hand_over_leaves_a_message_in_parts_alone() {
    let s = setup();
    let mut a = s.open().await;
    let mut b = s.open().await;
    let a_id = socket_ids(&s)[0];
    let (head, body) = part(a_id, "head|", true, false);
    s.door.apply(head, body).unwrap();
    // "unknown": the worker does not know b, so the door hands over.
    b.send(Message::text("unknown")).await.unwrap();
    s.called(1).await;
    let (tail, body) = part(a_id, "tail", false, true);
    s.door.apply(tail, body).unwrap();
    assert_eq!(text(&mut a).await, "head|tail");
}

/// A message whose rest never comes, and that no later message to its
/// sockets reveals, is dropped by the door's idle sweep once its last
/// part is an idle timeout old, and its sockets closed with 1012 (they
/// missed it), even after its first socket closed. Before, it stayed at
/// the door for good, and its other sockets were never told.
#[tokio::test]
async fn a_message_whose_rest_never_comes_is_dropped_by_the_sweep() {
    let s = setup_with(WebSocketConfig {
        idle_timeout: Duration::from_millis(200),
        ..WebSocketConfig::default()
    });
    let mut a = s.open().await;
    let mut b = s.open().await;
    let ids = socket_ids(&s);
    let out = SocketOutput {
        ops: vec![SocketOp::Send {
            sockets: ids.clone(),
            binary: false,
            len: 5,
            more: true,
            continued: false,
            message: 1,
        }],
    };
    s.door.apply(out, Bytes::from_static(b"head|")).unwrap();
    a.close(None).await.unwrap();
    let (texts, code) = until_closed(&mut b).await;
    assert!(texts.iter().all(|t| !t.contains("head")), "{texts:?}");
    assert_eq!(code, Some(CloseCode::Restart));
    assert_eq!(s.door.partial_messages(), 0);
}

/// An output the door refuses (a later op overruns the body) still closes
/// the sockets of a message it cut off on the way. Before, the refusal
/// returned before they were closed: the socket missed a message and
/// stayed open.
#[tokio::test]
async fn a_refused_output_still_closes_the_sockets_it_cut() {
    let s = setup();
    let mut a = s.open().await;
    let id = only_socket(&s);
    let (head, body) = part(id, "head|", true, false);
    s.door.apply(head, body).unwrap();
    let out = SocketOutput {
        ops: vec![
            SocketOp::Send {
                sockets: vec![id],
                binary: false,
                len: 4,
                more: false,
                continued: false,
                message: 1,
            },
            SocketOp::Send {
                sockets: vec![id],
                binary: false,
                len: 100,
                more: false,
                continued: false,
                message: 1,
            },
        ],
    };
    assert!(s.door.apply(out, Bytes::from_static(b"next")).is_err());
    let (_, code) = until_closed(&mut a).await;
    assert_eq!(code, Some(CloseCode::Restart));
}

/// The messages the door holds for all its objects together (queued, or
/// on their way to an object) are bounded in bytes: a message beyond
/// closes its socket with 1013, whichever object it was for, while the
/// message in flight stands. Before, each object's queue was bounded on
/// its own, so many busy objects could hold without bound.
#[tokio::test]
async fn the_messages_the_door_holds_are_bounded_in_bytes_across_objects() {
    let s = setup_with(WebSocketConfig {
        door_buffer_bytes: 8,
        ..WebSocketConfig::default()
    });
    let mut a = s.open_at("r1").await;
    let mut c = s.open_at("r2").await;
    // "hold" (4 bytes) is on its way to r1 and stays there.
    s.hold(&mut a).await;
    assert_eq!(s.door.held_message_bytes(), 4);
    // 8 bytes more for r2, whose queue is empty: over the door's 8.
    c.send(Message::text("abcdefgh")).await.unwrap();
    assert_eq!(close_code(&mut c).await, Some(CloseCode::Again));
    s.service.release.notify_one();
    assert_eq!(text(&mut a).await, "echo:hold");
    // Nothing held now: the same 8 bytes fit.
    let start = Instant::now();
    while s.door.held_message_bytes() > 0 {
        assert!(start.elapsed() < GUARD, "the held bytes were never let go");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut d = s.open_at("r2").await;
    d.send(Message::text("abcdefgh")).await.unwrap();
    assert_eq!(text(&mut d).await, "echo:abcdefgh");
}

/// A shard's records come in pages of at most the bound asked for (a
/// record larger alone), in (object, socket) order, an object's sockets
/// straddling pages where they must; joined, they are what the door holds.
/// Before, they came in one answer, which a shard of 1,000 sockets with
/// 16 KiB attachments made larger than a frame.
#[tokio::test]
async fn a_shards_records_come_in_pages_that_join_to_the_whole() {
    let s = setup();
    let mut open = Vec::new();
    for name in ["p0", "p1", "p2", "p3"] {
        for _ in 0..5 {
            open.push(s.open_at(name).await);
        }
    }
    let whole = s.door.shard_sockets(0, 1);
    assert_eq!(whole.iter().map(|d| d.sockets.len()).sum::<usize>(), 20);
    // Three records a page (each is 64 bytes, no tags, no attachment).
    let bound = 3 * 64;
    let mut asked = odo_core::socket::ShardSockets {
        shard: 0,
        shard_count: 1,
        after: None,
    };
    let mut joined = Vec::new();
    let mut pages = 0;
    loop {
        let page = s.door.shard_sockets_page(&asked, bound);
        pages += 1;
        let bytes: usize = page
            .objects
            .iter()
            .flat_map(|d| &d.sockets)
            .map(|r| r.estimated_bytes())
            .sum();
        assert!(bytes <= bound, "a page of {bytes} bytes");
        odo_core::socket::append_page(&mut joined, page.objects);
        match page.next {
            Some(next) => asked.after = Some(next),
            None => break,
        }
        assert!(pages < 100, "the pages never end");
    }
    assert_eq!(pages, 7);
    assert_eq!(joined, whole);
}
