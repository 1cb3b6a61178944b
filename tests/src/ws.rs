//! A WebSocket client for tests (tokio-tungstenite), with every wait
//! bounded: a failure guard, not a timing.

use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single wait on a socket may take before the test fails.
pub const GUARD: Duration = Duration::from_secs(20);

/// One client socket.
#[derive(Debug)]
pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What a socket received next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
    /// A close frame: its code and reason (1005 without one).
    Close(u16, String),
    /// The connection ended without a close frame.
    Dropped,
}

impl std::fmt::Display for Got {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Got::Text(t) if t.len() <= 200 => write!(f, "text {t:?}"),
            Got::Text(t) => write!(f, "text <{} bytes>", t.len()),
            Got::Binary(b) => write!(f, "binary <{} bytes>", b.len()),
            Got::Close(code, reason) => write!(f, "close {code} {reason:?}"),
            Got::Dropped => write!(f, "dropped"),
        }
    }
}

impl Ws {
    /// Opens a WebSocket to `base` (`http://host:port`) + `path`; the
    /// HTTP status and body of a refused upgrade make the error.
    pub async fn connect(base: &str, path: &str) -> Result<Ws> {
        Self::connect_with(base, path, None).await
    }

    /// As [`Ws::connect`], with a limit on the messages this client
    /// accepts.
    pub async fn connect_with(base: &str, path: &str, max_message: Option<usize>) -> Result<Ws> {
        let url = format!("{}{path}", base.replacen("http://", "ws://", 1));
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(max_message.or(Some(64 << 20)))
            .max_frame_size(max_message.or(Some(64 << 20)))
            // tungstenite zero-fills this much before every read.
            .read_buffer_size(4096);
        let connect = tokio_tungstenite::connect_async_with_config(url, Some(config), false);
        match tokio::time::timeout(GUARD, connect).await {
            Err(_) => bail!("no answer to the upgrade of {path}"),
            Ok(Ok((stream, _))) => Ok(Ws { stream }),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
                let body = response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Err(anyhow!("{} {}", response.status().as_u16(), body.trim()))
            }
            Ok(Err(e)) => Err(e.into()),
        }
    }

    /// As [`Ws::connect`], trying again (for up to [`GUARD`], a pause of
    /// 20 ms between tries) while the upgrade is answered 503 (the object
    /// is being re-placed, or its queue is full), as a client reconnecting
    /// after a 1012 would.
    pub async fn reconnect(base: &str, path: &str) -> Result<Ws> {
        let start = std::time::Instant::now();
        loop {
            match Self::connect(base, path).await {
                Err(e) if e.to_string().starts_with("503 ") && start.elapsed() < GUARD => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    /// Sends a text message.
    pub async fn send(&mut self, text: &str) -> Result<()> {
        self.send_message(Message::text(text)).await
    }

    /// Sends any message.
    pub async fn send_message(&mut self, message: Message) -> Result<()> {
        tokio::time::timeout(GUARD, self.stream.send(message))
            .await
            .map_err(|_| anyhow!("a send did not finish"))??;
        Ok(())
    }

    /// The next message (pings and pongs skipped).
    pub async fn next(&mut self) -> Result<Got> {
        loop {
            let next = tokio::time::timeout(GUARD, self.stream.next())
                .await
                .map_err(|_| anyhow!("nothing arrived"))?;
            return Ok(match next {
                None => Got::Dropped,
                Some(Err(_)) => Got::Dropped,
                Some(Ok(Message::Text(t))) => Got::Text(t.as_str().to_owned()),
                Some(Ok(Message::Binary(b))) => Got::Binary(b.to_vec()),
                Some(Ok(Message::Close(frame))) => match frame {
                    Some(CloseFrame { code, reason }) => {
                        Got::Close(u16::from(code), reason.as_str().to_owned())
                    }
                    None => Got::Close(1005, String::new()),
                },
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            });
        }
    }

    /// The next frame as it came, pings and pongs included.
    pub async fn next_raw(&mut self) -> Result<Option<Message>> {
        let next = tokio::time::timeout(GUARD, self.stream.next())
            .await
            .map_err(|_| anyhow!("nothing arrived"))?;
        Ok(next.transpose()?)
    }

    /// The TCP stream under the socket (to write raw bytes).
    pub fn raw(&mut self) -> &mut TcpStream {
        match self.stream.get_mut() {
            MaybeTlsStream::Plain(stream) => stream,
            _ => unreachable!("tests connect without TLS"),
        }
    }

    /// The next message, which must be text.
    pub async fn text(&mut self) -> Result<String> {
        match self.next().await? {
            Got::Text(t) => Ok(t),
            other => bail!("expected a text message, got {other}"),
        }
    }

    /// Sends `command` and returns the text answer.
    pub async fn ask(&mut self, command: &str) -> Result<String> {
        self.send(command).await?;
        self.text().await
    }

    /// Closes with `code` and waits for the server's close frame.
    pub async fn close(mut self, code: u16) -> Result<Got> {
        let frame = CloseFrame {
            code: code.into(),
            reason: "bye".into(),
        };
        self.send_message(Message::Close(Some(frame))).await?;
        loop {
            match self.next().await? {
                Got::Text(_) | Got::Binary(_) => continue,
                end => return Ok(end),
            }
        }
    }

    /// Reads until the socket ends and returns how.
    pub async fn until_end(&mut self) -> Result<Got> {
        loop {
            match self.next().await? {
                Got::Text(_) | Got::Binary(_) => continue,
                end => return Ok(end),
            }
        }
    }

    /// The raw TCP stream (to drop it without a close frame).
    pub fn into_inner(self) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
        self.stream
    }
}

/// A client frame written by hand (opcode, final bit, payload), masked
/// with the all-zero key so the payload goes as it is: for tests that
/// send what tungstenite would not (a message left unfinished, a close
/// never answered).
pub fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
    let len = payload.len();
    if len < 126 {
        frame.push(0x80 | len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        frame.push(0x80 | 126);
        frame.extend(short.to_be_bytes());
    } else {
        frame.push(0x80 | 127);
        frame.extend((len as u64).to_be_bytes());
    }
    frame.extend([0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// The next server frame read from `stream` by hand: its opcode and
/// payload, `None` at the end of the connection.
pub async fn server_frame(stream: &mut TcpStream) -> Result<Option<(u8, Vec<u8>)>> {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut head = [0u8; 2];
        if stream.read_exact(&mut head).await.is_err() {
            return Ok(None);
        }
        let len = match head[1] & 0x7f {
            126 => u64::from(stream.read_u16().await?),
            127 => stream.read_u64().await?,
            n => u64::from(n),
        };
        let mut payload = vec![0; usize::try_from(len)?];
        stream.read_exact(&mut payload).await?;
        Ok::<_, anyhow::Error>(Some((head[0] & 0x0f, payload)))
    };
    tokio::time::timeout(GUARD, read)
        .await
        .map_err(|_| anyhow!("no frame arrived"))?
}
