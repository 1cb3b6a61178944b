//! The `room` demo class: a chat room whose members hold WebSockets, with
//! its history kept in storage. It serves the design's contract exactly:
//!
//! - `GET /room/{name}/ws` (Upgrade: websocket): 101; each text message M
//!   a member sends is stored as message number N (1, 2, ...) and then sent
//!   to every member, the sender included, as `N:M`; a binary message
//!   closes the socket with 1003; without an upgrade: 426.
//! - `GET /room/{name}/history?limit=K`: 200, JSON `[[N, M], ...]`, the
//!   last K messages (default 100, 1 to 1000), ascending.
//! - `GET /room/{name}`: a small chat page that joins the room.
//!
//! The broadcast passes the output gate: no member sees `N:M` before the
//! message is durable in the history. A message too large to store (over
//! the 128 KiB value limit) closes its socket with 1009.

use bytes::Bytes;
use http::{Method, StatusCode};
use odo_storage::ListOptions;
use odo_worker::{
    Context, DurableObject, ObjectError, Request, Response, WebSocket, WebSocketMessage,
    is_websocket_upgrade,
};

/// The chat page, plain HTML and JavaScript.
const PAGE: &str = include_str!("room.html");

/// A chat room. See the module documentation for its routes.
#[derive(Debug, Default)]
pub struct Room;

fn reply(status: StatusCode, body: impl Into<Bytes>, content_type: &'static str) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response {
    reply(status, body, "text/plain; charset=utf-8")
}

/// The storage key of message `n`: zero-padded, so keys sort as numbers.
fn key(n: u64) -> String {
    format!("m/{n:020}")
}

/// The `limit` of a history request: 100 by default, 1 to 1000.
fn history_limit(request: &Request) -> Result<usize, String> {
    let Some(query) = request.uri().query() else {
        return Ok(100);
    };
    match form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "limit") {
        None => Ok(100),
        Some((_, v)) => match v.parse::<usize>() {
            Ok(limit) if (1..=1000).contains(&limit) => Ok(limit),
            _ => Err(format!("limit={v:?} must be an integer from 1 to 1000")),
        },
    }
}

impl DurableObject for Room {
    fn create(_: &Context) -> Self {
        Room
    }

    async fn fetch(
        &mut self,
        ctx: &mut Context,
        request: Request,
    ) -> Result<Response, ObjectError> {
        let path: Vec<&str> = request.uri().path().split('/').skip(3).collect();
        match (request.method().clone(), path.as_slice()) {
            (Method::GET, ["ws"]) => {
                if !is_websocket_upgrade(&request) {
                    return Ok(text(
                        StatusCode::UPGRADE_REQUIRED,
                        "this route needs a WebSocket upgrade\n",
                    ));
                }
                // Over the sockets an object may hold: refused, not a reset.
                match ctx.accept_websocket(Vec::<String>::new()) {
                    Ok(response) => Ok(response),
                    Err(e) => Ok(text(StatusCode::TOO_MANY_REQUESTS, format!("{e}\n"))),
                }
            }
            (Method::GET, ["history"]) => {
                let limit = match history_limit(&request) {
                    Ok(limit) => limit,
                    Err(message) => return Ok(text(StatusCode::BAD_REQUEST, message + "\n")),
                };
                let options = ListOptions {
                    prefix: Some("m/".into()),
                    reverse: true,
                    limit: Some(limit),
                    ..ListOptions::default()
                };
                let mut rows = Vec::new();
                for (k, v) in ctx.storage().list(&options).await?.into_iter().rev() {
                    let n: u64 = k[2..].parse().map_err(ObjectError::msg)?;
                    rows.push(serde_json::json!([n, String::from_utf8_lossy(&v)]));
                }
                let body = serde_json::to_string(&rows).map_err(ObjectError::msg)?;
                Ok(reply(StatusCode::OK, body, "application/json"))
            }
            (Method::GET, [] | [""]) => Ok(reply(StatusCode::OK, PAGE, "text/html; charset=utf-8")),
            _ => Ok(text(StatusCode::NOT_FOUND, "no such room route\n")),
        }
    }

    async fn websocket_message(
        &mut self,
        ctx: &mut Context,
        ws: WebSocket,
        message: WebSocketMessage,
    ) -> Result<(), ObjectError> {
        let message = match message {
            WebSocketMessage::Text(message) => message,
            WebSocketMessage::Binary(_) => {
                ws.close(1003, "binary messages are not supported")?;
                return Ok(());
            }
        };
        if message.len() > odo_storage::MAX_VALUE_BYTES {
            ws.close(1009, "message too large for the room's history")?;
            return Ok(());
        }
        let n = ctx.storage().get_typed::<u64>("n").await?.unwrap_or(0) + 1;
        ctx.storage().put_typed("n", &n).await?;
        ctx.storage()
            .put(&key(n), Bytes::from(message.clone()))
            .await?;
        let line = format!("{n}:{message}");
        for member in ctx.websockets(None) {
            member.send(line.as_str())?;
        }
        Ok(())
    }
}
