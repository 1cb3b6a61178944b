//! `--websocket-max-message-bytes` is one limit for the whole server: the
//! front door's, for what clients send, and the workers', for what their
//! objects receive and send. A message under the flag's value reaches the
//! object and comes back whole, also when the value is above the workers'
//! built-in default (32 MiB). (One byte more closes the socket with 1009:
//! the `ws_limits` scenario shows that on every cell of the matrix.)
//! (Before, the flag reached only the front door: a message between the
//! workers' default and the flag's value was dropped by the worker with a
//! warning, and its socket stayed open.)

use anyhow::Result;
use odo_tests::topology::ServerSpec;
use odo_tests::ws::{Got, Ws};
use tokio_tungstenite::tungstenite::Message;

/// The flag's value: 8 MiB above the workers' default.
const LIMIT: usize = 40 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_limit_above_the_default_holds_at_the_door_and_in_the_workers() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut spec = ServerSpec::new(env!("CARGO_BIN_EXE_odo-test-server"), 1);
    spec.storage = "memory".into();
    spec.extra_args = vec!["--websocket-max-message-bytes".into(), LIMIT.to_string()];
    let server = spec.start(dir.path())?;
    let mut ws = Ws::connect(&server.base, "/probe/large/ws").await?;
    let largest: Vec<u8> = (0..LIMIT).map(|i| (i % 251) as u8).collect();
    ws.send_message(Message::binary(largest.clone())).await?;
    assert!(
        ws.next().await? == Got::Binary(largest),
        "the largest message came back intact"
    );
    let end = ws.close(1000).await?;
    assert!(
        matches!(end, Got::Close(1000, _)),
        "a clean close, got {end}"
    );
    Ok(())
}
