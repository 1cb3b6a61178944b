//! The front door's bounds on the messages it holds, against a scripted
//! object service (`scripted/`): what a message still arriving counts,
//! and when a socket its object closed is let go.

mod scripted;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use odo_router::{ClientWebSocket, Door, WebSocketConfig};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use scripted::*;

/// A part of a binary message, as a client sends it.
fn part(first: bool, fin: bool, payload: &[u8]) -> Message {
    let opcode = if first { Data::Binary } else { Data::Continue };
    Message::Frame(Frame::message(payload.to_vec(), OpCode::Data(opcode), fin))
}

/// Pings and waits for the pong: all sent before was read by the door.
async fn sync(ws: &mut ClientWebSocket) {
    if let Err(e) = try_sync(ws).await {
        panic!("expected a pong, got {e}");
    }
}

/// A door with a bound of 100,000 bytes whose object is busy (`a`'s
/// message on its way to it); `b` another socket to that object, `c` a
/// socket to another one.
async fn busy_door() -> (Setup, ClientWebSocket, ClientWebSocket, ClientWebSocket) {
    let s = setup_with(WebSocketConfig {
        door_buffer_bytes: 100_000,
        ..WebSocketConfig::default()
    });
    let mut a = s.open().await;
    let b = s.open().await;
    let c = s.open_at("other").await;
    s.hold(&mut a).await;
    (s, a, b, c)
}

/// Fills the door to its bound of 100,000 bytes with `b`'s messages of
/// `lens` bytes, queued for a busy object (`held` bytes already held).
async fn fill_to_bound(s: &Setup, b: &mut ClientWebSocket, lens: &[usize]) {
    for (n, &len) in lens.iter().enumerate() {
        b.send(Message::binary(vec![b'b'; len])).await.unwrap();
        s.queued(n + 1).await;
    }
    assert_eq!(s.door.held_message_bytes(), 100_000);
}

/// Waits until the door counts `want` held bytes; fails the test, saying
/// `what` and the count, if it does not within 3 s.
async fn assert_held_becomes(door: &Door, want: usize, what: &str) {
    let start = Instant::now();
    while door.held_message_bytes() != want {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{what}: the door holds {} bytes, not {want}",
            door.held_message_bytes()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A Rust `Client`'s socket (a 64 KiB in-process pipe) whose program
/// reads 2.5 s after the object sent 1 MiB and closed gets all of it and
/// the close frame: the close grace starts once the close frame is
/// written. (For a while the door let such a socket go a second after it
/// queued the close: the program got none of it.)
#[tokio::test]
async fn an_in_process_client_reading_late_gets_what_came_before_the_close() {
    let s = setup();
    let mut ws = s.open().await;
    ws.send(Message::text("bigclose")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut texts = 0;
    let end = loop {
        match tokio::time::timeout(GUARD, ws.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => texts += 1,
            Ok(Some(Ok(Message::Close(frame)))) => break format!("close {frame:?}"),
            Ok(Some(Ok(_))) => continue,
            other => break format!("{other:?}"),
        }
    };
    assert!(
        texts == 16 && end.contains("4000"),
        "the program got {texts} of 16 messages, then {end}"
    );
}

/// The door's count of held bytes after one byte of a message and 10,000
/// empty parts of it is that byte (before, it counted every part's
/// header).
#[tokio::test]
async fn empty_parts_of_a_message_are_not_held_bytes() {
    let s = setup();
    let mut ws = s.open().await;
    ws.send(part(true, false, b"x")).await.unwrap();
    for _ in 0..10_000 {
        ws.feed(part(false, false, b"")).await.unwrap();
    }
    ws.flush().await.unwrap();
    sync(&mut ws).await;
    let held = s.door.held_message_bytes();
    assert!(
        held < 1024,
        "one byte of an unfinished message, in 10,001 parts: the door counts {held} bytes held"
    );
}

/// The count of a message still arriving goes back to 0 whichever way
/// its socket ends, and a message in parts with pings between them is
/// delivered whole and then uncounted.
#[tokio::test]
async fn held_bytes_return_to_zero_however_an_unfinished_message_ends() {
    let s = setup();
    // Parts with pings between them, then the end: delivered, then 0.
    let mut a = s.open().await;
    a.send(part(true, false, &[b'a'; 10_000])).await.unwrap();
    sync(&mut a).await;
    assert!(s.door.held_message_bytes() >= 10_000);
    a.send(part(false, false, &[b'b'; 10_000])).await.unwrap();
    sync(&mut a).await;
    a.send(part(false, true, b"c")).await.unwrap();
    match tokio::time::timeout(GUARD, a.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => assert_eq!(t.len(), "echo:".len() + 20_001),
        other => panic!("expected the echo, got {other:?}"),
    }
    assert_held_becomes(&s.door, 0, "delivered whole").await;
    // Unfinished, then the client's close frame.
    let mut b = s.open().await;
    b.send(part(true, false, &[b'a'; 50_000])).await.unwrap();
    sync(&mut b).await;
    b.close(None).await.unwrap();
    assert_held_becomes(&s.door, 0, "the client closed").await;
    // Unfinished, then the connection dropped.
    let mut c = s.open().await;
    c.send(part(true, false, &[b'a'; 50_000])).await.unwrap();
    sync(&mut c).await;
    drop(c);
    assert_held_becomes(&s.door, 0, "the connection dropped").await;
    // Unfinished, then a message too big (1009).
    let mut d = s.open().await;
    d.send(part(true, false, &[b'a'; 50_000])).await.unwrap();
    sync(&mut d).await;
    let _ = d.send(part(false, true, &vec![b'a'; 40 << 20])).await;
    assert_held_becomes(&s.door, 0, "a message too big").await;
}

/// With the door at its bound (messages queued for a busy object), a
/// client whose pong (or ping, or close frame) arrives in two pieces is
/// not refused: a control frame is no message. (Before, its first piece
/// counted as a message still arriving, and the socket got 1013.)
#[tokio::test]
async fn a_pong_in_two_pieces_on_a_full_door_is_not_refused() {
    use tokio::io::AsyncWriteExt;
    let (s, _a, mut b, mut c) = busy_door().await;
    // The door holds "hold" (on its way) and 99,996 bytes queued: its
    // bound (in three messages: one may arrive with half of it at most).
    fill_to_bound(&s, &mut b, &[33_332; 3]).await;
    // c's pong, masked with the zero key, in two writes.
    let pong = [0x8a, 0x80, 0, 0, 0, 0];
    c.get_mut().write_all(&pong[..3]).await.unwrap();
    c.get_mut().flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rest = c.get_mut().write_all(&pong[3..]).await;
    if let Err(e) = rest {
        let got = tokio::time::timeout(GUARD, c.next()).await;
        panic!("a pong in two pieces: the rest could not be written ({e}); the client got {got:?}");
    }
    sync(&mut c).await;
}

/// A masked client frame header (mask key 0, so the payload goes as is)
/// with first byte `b0` and a payload length `len` in the 64-bit form.
fn raw_header(b0: u8, len: u64) -> Vec<u8> {
    let mut h = vec![b0, 0x80 | 127];
    h.extend(len.to_be_bytes());
    h.extend([0, 0, 0, 0]);
    h
}

/// A ping whose header claims 4 MiB closes its socket (1002) before its
/// payload is read. Before, tungstenite buffered the payload until the
/// frame was whole (it checks the 125-byte control limit only then),
/// while the door counted no control payload: four sockets each got 1 MiB
/// of it into the door, against a door bound of 200,000 bytes, uncounted
/// and not closed.
#[tokio::test]
async fn a_control_frame_with_a_long_length_is_not_held_uncounted() {
    use tokio::io::AsyncWriteExt;
    let s = setup_with(WebSocketConfig {
        door_buffer_bytes: 200_000,
        max_message_bytes: 4 << 20,
        ..WebSocketConfig::default()
    });
    let mut sockets = Vec::new();
    let mut taken = 0usize;
    for _ in 0..4 {
        let mut ws = s.open().await;
        ws.get_mut()
            .write_all(&raw_header(0x89, 4 << 20))
            .await
            .unwrap();
        let chunk = vec![0u8; 64 * 1024];
        for _ in 0..16 {
            // The pipe holds 64 KiB: what passes it, the door read.
            match tokio::time::timeout(Duration::from_secs(2), ws.get_mut().write_all(&chunk)).await
            {
                Ok(Ok(())) => taken += chunk.len(),
                _ => break,
            }
        }
        sockets.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = s.door.held_message_bytes();
    let mut closed = 0;
    for ws in &mut sockets {
        if tokio::time::timeout(Duration::from_millis(300), ws.next())
            .await
            .is_ok()
        {
            closed += 1;
        }
    }
    assert!(
        closed == 4 || held >= taken.saturating_sub(4 * 64 * 1024),
        "{taken} bytes of pings' payload taken by the door (bound 200,000): it counts {held} held, {closed} of 4 sockets closed"
    );
}

/// A client with a message under way (begun while the door had room)
/// whose ping arrives once the door reached its bound (complete messages
/// queued for a busy object) gets its pong: a ping is no byte of a
/// message. Before, the bound was checked before any read, whatever was
/// to be read, and the socket got 1013.
#[tokio::test]
async fn a_ping_mid_message_on_a_full_door_is_not_refused() {
    let (s, _a, mut b, mut c) = busy_door().await;
    // c begins a message while the door has room.
    c.send(part(true, false, b"0123456789")).await.unwrap();
    sync(&mut c).await;
    // The door reaches its bound: "hold" (4) + c's 10 + 99,986 queued.
    fill_to_bound(&s, &mut b, &[33_329, 33_329, 33_328]).await;
    // c sends a ping: no byte of its message.
    assert_eq!(
        try_sync(&mut c).await,
        Ok(()),
        "a ping mid-message on a full door"
    );
}

/// Pings and waits for the pong; how the socket ended if it was closed
/// (or failed) instead.
async fn try_sync(ws: &mut ClientWebSocket) -> Result<(), String> {
    ws.send(Message::Ping(Bytes::from_static(b"sync")))
        .await
        .map_err(|e| format!("ping not sent: {e}"))?;
    loop {
        match tokio::time::timeout(GUARD, ws.next()).await {
            Ok(Some(Ok(Message::Pong(_)))) => return Ok(()),
            Ok(Some(Ok(Message::Close(f)))) => return Err(format!("close {f:?}")),
            Ok(Some(Ok(_))) => continue,
            other => return Err(format!("{other:?}")),
        }
    }
}

/// An unfinished message may hold half the door's bound at most (then
/// 1013), also when it comes in parts of 1,000 bytes, each read by the
/// door on its own (a ping after each). For a while each such read began
/// at a frame's first byte, where the door did not check its bound, and
/// the message grew to the message limit.
#[tokio::test]
async fn a_message_in_parts_each_read_alone_is_bounded_by_the_door() {
    let s = setup_with(WebSocketConfig {
        door_buffer_bytes: 100_000,
        max_message_bytes: 1 << 20,
        ..WebSocketConfig::default()
    });
    let mut ws = s.open().await;
    ws.send(part(true, false, &[b'a'; 1000])).await.unwrap();
    sync(&mut ws).await;
    let mut sent = 1000;
    let mut end = String::from("all parts taken");
    for _ in 0..300 {
        if let Err(e) = ws.send(part(false, false, &[b'a'; 1000])).await {
            end = format!("part not sent: {e}");
            break;
        }
        if let Err(e) = try_sync(&mut ws).await {
            end = e;
            break;
        }
        sent += 1000;
    }
    let held = s.door.held_message_bytes();
    assert!(
        held <= 50_000 + 8192,
        "an unfinished message of {sent} bytes was taken in 1,000-byte parts ({end}): the door \
         holds {held} bytes against a bound of 100,000 (half of it for messages still arriving)"
    );
}

/// The same at full speed: raw masked frames of exactly 4,096 bytes
/// (header 8 + payload 4,088), the size of the door's read scratch, so
/// that every read of the pipe ends at a frame's end and the next one
/// begins at a frame's first byte. 256 frames, 1 MiB of payload, against
/// a door bound of 100,000 bytes.
#[tokio::test]
async fn a_message_in_frames_the_size_of_the_scratch_is_bounded_by_the_door() {
    use tokio::io::AsyncWriteExt;
    let s = setup_with(WebSocketConfig {
        door_buffer_bytes: 100_000,
        max_message_bytes: 2 << 20,
        ..WebSocketConfig::default()
    });
    let mut ws = s.open().await;
    let frame = |first: bool| {
        let mut f = vec![if first { 0x02 } else { 0x00 }, 0x80 | 126];
        f.extend(4088u16.to_be_bytes());
        f.extend([0, 0, 0, 0]);
        f.resize(4096, b'a');
        f
    };
    let mut bytes = frame(true);
    for _ in 1..256 {
        bytes.extend(frame(false));
    }
    let written =
        tokio::time::timeout(Duration::from_secs(5), ws.get_mut().write_all(&bytes)).await;
    let synced = try_sync(&mut ws).await;
    let held = s.door.held_message_bytes();
    assert!(
        held <= 50_000 + 8192,
        "1 MiB of an unfinished message in 4,096-byte frames (write: {written:?}, then {synced:?}): \
         the door holds {held} bytes against a bound of 100,000"
    );
}

/// After its object closed it, a socket whose client does not read (the
/// close frame waits behind what the object sent) sends one more message
/// of 40,000 bytes. tungstenite keeps the buffer it read that message
/// into until the socket ends (its state is not renewed once it is
/// closing), so the door counts it as held until then. Before, the door
/// counted nothing of it once it came whole: each socket so closed could
/// keep half the door's bound uncounted for the idle timeout.
#[tokio::test]
async fn a_message_read_after_the_objects_close_counts_until_the_socket_ends() {
    let s = setup();
    let mut ws = s.open().await;
    ws.send(Message::text("bigclose")).await.unwrap();
    // The object's messages and close came: the first one is here.
    match tokio::time::timeout(GUARD, ws.next()).await {
        Ok(Some(Ok(Message::Text(_)))) => {}
        other => panic!("expected the object's first message, got {other:?}"),
    }
    ws.send(Message::binary(vec![b'x'; 40_000])).await.unwrap();
    assert_held_becomes(&s.door, 40_000, "a message read while closing").await;
    drop(ws);
    assert_held_becomes(&s.door, 0, "the socket ended").await;
}
