//! The demo classes of `odo serve`, serving the HTTP contract in the
//! design: `Counter` (increments, alarms, whoami), `SqlCounter` (the same
//! routes, SQLite-backed, in SQL) and `Kv` (a key-value store with list).

use bytes::Bytes;
use http::{Method, StatusCode};
use odo_storage::{ListOptions, SqlValue, StorageError};
use odo_worker::{
    AlarmInfo, Context, DurableObject, ObjectError, Request, Response, RpcCall, RpcReply, now_ms,
};

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response
}

fn ok(body: impl Into<Bytes>) -> Response {
    reply(StatusCode::OK, body)
}

/// The path after `/{class}/{name}`, split on `/`.
fn rest(request: &Request) -> Vec<&str> {
    request
        .uri()
        .path()
        .trim_start_matches('/')
        .split('/')
        .skip(2)
        .collect()
}

fn query(request: &Request) -> Vec<(String, String)> {
    request
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// A counter with an alarm. Its routes (under `/counter/{name}`):
/// `POST /increment`, `GET` (the value), `POST /alarm?in_ms=N`,
/// `GET /alarms`, `GET /whoami`. RPC methods: `add(u64) -> u64`, `get() -> u64`.
#[derive(Debug, Default)]
pub struct Counter;

async fn read(ctx: &mut Context, key: &str) -> Result<u64, ObjectError> {
    Ok(ctx.storage().get_typed::<u64>(key).await?.unwrap_or(0))
}

impl DurableObject for Counter {
    fn create(_: &Context) -> Self {
        Counter
    }

    async fn fetch(
        &mut self,
        ctx: &mut Context,
        request: Request,
    ) -> Result<Response, ObjectError> {
        let method = request.method().clone();
        match (method, rest(&request).as_slice()) {
            (Method::POST, ["increment"]) => {
                let n = read(ctx, "count").await? + 1;
                ctx.storage().put_typed("count", &n).await?;
                Ok(ok(n.to_string()))
            }
            (Method::GET, [] | [""]) => Ok(ok(read(ctx, "count").await?.to_string())),
            (Method::POST, ["alarm"]) => {
                let params = query(&request);
                let Some(in_ms) = params
                    .iter()
                    .find(|(k, _)| k == "in_ms")
                    .and_then(|(_, v)| v.parse::<u64>().ok())
                else {
                    return Ok(reply(
                        StatusCode::BAD_REQUEST,
                        "in_ms must be a non-negative integer\n",
                    ));
                };
                ctx.storage()
                    .set_alarm(now_ms().saturating_add(in_ms))
                    .await?;
                Ok(ok("ok"))
            }
            (Method::GET, ["alarms"]) => Ok(ok(read(ctx, "alarms").await?.to_string())),
            (Method::GET, ["whoami"]) => {
                let body = serde_json::json!({
                    "id": ctx.id().to_string(),
                    "pid": std::process::id(),
                    "activation": ctx.activation(),
                });
                let mut response = ok(body.to_string());
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                Ok(response)
            }
            _ => Ok(reply(StatusCode::NOT_FOUND, "no such counter route\n")),
        }
    }

    async fn call(&mut self, ctx: &mut Context, call: RpcCall) -> Result<RpcReply, ObjectError> {
        match call.method.as_str() {
            "add" => {
                let delta: u64 = call.args()?;
                let n = read(ctx, "count").await?.saturating_add(delta);
                ctx.storage().put_typed("count", &n).await?;
                RpcReply::new(&n)
            }
            "get" => RpcReply::new(&read(ctx, "count").await?),
            _ => Err(ObjectError::UnknownMethod(call.method)),
        }
    }

    async fn alarm(&mut self, ctx: &mut Context, _alarm: AlarmInfo) -> Result<(), ObjectError> {
        let fired = read(ctx, "alarms").await? + 1;
        ctx.storage().put_typed("alarms", &fired).await?;
        Ok(())
    }
}

/// The counter of [`Counter`], SQLite-backed and in SQL: the same routes
/// (under `/sqlcounter/{name}`) and RPC methods, its values in a table
/// `counter (name TEXT PRIMARY KEY, value INTEGER)` incremented with
/// `UPDATE ... RETURNING`; its alarm is the object's alarm (in its
/// database).
#[derive(Debug, Default)]
pub struct SqlCounter;

impl SqlCounter {
    /// Adds `delta` to value `name` and answers the new value.
    fn add(ctx: &mut Context, name: &str, delta: i64) -> Result<u64, ObjectError> {
        let row = ctx
            .storage()
            .sql()?
            .exec(
                "UPDATE counter SET value = value + ? WHERE name = ? RETURNING value",
                &[SqlValue::from(delta), SqlValue::from(name)],
            )?
            .one()
            .map_err(StorageError::from)?;
        Ok(row.values()[0].as_i64().unwrap_or(0).max(0) as u64)
    }

    fn get(ctx: &mut Context, name: &str) -> Result<u64, ObjectError> {
        let row = ctx
            .storage()
            .sql()?
            .exec(
                "SELECT value FROM counter WHERE name = ?",
                &[SqlValue::from(name)],
            )?
            .one()
            .map_err(StorageError::from)?;
        Ok(row.values()[0].as_i64().unwrap_or(0).max(0) as u64)
    }
}

impl DurableObject for SqlCounter {
    fn create(_: &Context) -> Self {
        SqlCounter
    }

    async fn init(&mut self, ctx: &mut Context) -> Result<(), ObjectError> {
        // Writes nothing once the table and its rows exist.
        ctx.storage().sql()?.exec(
            "CREATE TABLE IF NOT EXISTS counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
             INSERT OR IGNORE INTO counter VALUES ('count', 0), ('alarms', 0)",
            &[],
        )?;
        Ok(())
    }

    async fn fetch(
        &mut self,
        ctx: &mut Context,
        request: Request,
    ) -> Result<Response, ObjectError> {
        let method = request.method().clone();
        match (method, rest(&request).as_slice()) {
            (Method::POST, ["increment"]) => Ok(ok(Self::add(ctx, "count", 1)?.to_string())),
            (Method::GET, [] | [""]) => Ok(ok(Self::get(ctx, "count")?.to_string())),
            (Method::GET, ["alarms"]) => Ok(ok(Self::get(ctx, "alarms")?.to_string())),
            (Method::POST, ["alarm"] | ["whoami"]) | (Method::GET, ["whoami"]) => {
                // The same answers as the key-value counter's.
                Counter.fetch(ctx, request).await
            }
            _ => Ok(reply(StatusCode::NOT_FOUND, "no such counter route\n")),
        }
    }

    async fn call(&mut self, ctx: &mut Context, call: RpcCall) -> Result<RpcReply, ObjectError> {
        match call.method.as_str() {
            "add" => {
                let delta: u64 = call.args()?;
                let delta = i64::try_from(delta).unwrap_or(i64::MAX);
                RpcReply::new(&Self::add(ctx, "count", delta)?)
            }
            "get" => RpcReply::new(&Self::get(ctx, "count")?),
            _ => Err(ObjectError::UnknownMethod(call.method)),
        }
    }

    async fn alarm(&mut self, ctx: &mut Context, _alarm: AlarmInfo) -> Result<(), ObjectError> {
        Self::add(ctx, "alarms", 1)?;
        Ok(())
    }
}

/// A key-value store. Its routes (under `/kv/{name}`): `PUT /{key}` (the
/// body is the value), `GET /{key}`, `DELETE /{key}`, and `GET` with the
/// list options `prefix`, `start`, `start_after`, `end`, `reverse`, `limit`.
/// Keys are percent-decoded path segments (a key may contain `/`).
#[derive(Debug, Default)]
pub struct Kv;

/// A storage error that is the caller's fault, as an HTTP answer.
fn refused(error: &StorageError) -> Option<Response> {
    match error {
        StorageError::ValueTooLarge { .. } | StorageError::ListTooLarge { .. } => {
            Some(reply(StatusCode::PAYLOAD_TOO_LARGE, format!("{error}\n")))
        }
        StorageError::KeyTooLarge { .. }
        | StorageError::InvalidListOptions(_)
        | StorageError::TooManyKeys { .. } => {
            Some(reply(StatusCode::BAD_REQUEST, format!("{error}\n")))
        }
        _ => None,
    }
}

fn list_options(params: &[(String, String)]) -> Result<ListOptions, String> {
    let mut options = ListOptions::default();
    for (key, value) in params {
        match key.as_str() {
            "prefix" => options.prefix = Some(value.clone()),
            "start" => options.start = Some(value.clone()),
            "start_after" => options.start_after = Some(value.clone()),
            "end" => options.end = Some(value.clone()),
            "reverse" => {
                options.reverse = match value.as_str() {
                    "true" | "1" => true,
                    "false" | "0" | "" => false,
                    _ => return Err(format!("reverse={value:?} is not true or false")),
                }
            }
            "limit" => {
                options.limit = Some(
                    value
                        .parse()
                        .map_err(|_| format!("limit={value:?} is not a non-negative integer"))?,
                )
            }
            other => return Err(format!("unknown list option {other:?}")),
        }
    }
    Ok(options)
}

impl DurableObject for Kv {
    fn create(_: &Context) -> Self {
        Kv
    }

    async fn fetch(
        &mut self,
        ctx: &mut Context,
        request: Request,
    ) -> Result<Response, ObjectError> {
        let segments = rest(&request);
        let raw_key = segments.join("/");
        let key = match percent_encoding::percent_decode_str(&raw_key).decode_utf8() {
            Ok(key) => key.into_owned(),
            Err(_) => return Ok(reply(StatusCode::BAD_REQUEST, "the key is not UTF-8\n")),
        };
        let storage = ctx.storage();
        let result = match (request.method().clone(), key.is_empty()) {
            (Method::GET, true) => {
                let options = match list_options(&query(&request)) {
                    Ok(options) => options,
                    Err(message) => {
                        return Ok(reply(StatusCode::BAD_REQUEST, format!("{message}\n")));
                    }
                };
                storage.list(&options).await.map(|entries| {
                    let rows: Vec<(String, String)> = entries
                        .into_iter()
                        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                        .collect();
                    let mut response =
                        ok(serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into()));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    response
                })
            }
            (Method::PUT, false) => {
                let value = request.into_body();
                storage
                    .put(&key, value)
                    .await
                    .map(|()| reply(StatusCode::NO_CONTENT, Bytes::new()))
            }
            (Method::GET, false) => storage.get(&key).await.map(|value| match value {
                Some(value) => ok(value),
                None => reply(StatusCode::NOT_FOUND, "no such key\n"),
            }),
            (Method::DELETE, false) => storage
                .delete(&key)
                .await
                .map(|existed| ok(existed.to_string())),
            _ => {
                return Ok(reply(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method not allowed\n",
                ));
            }
        };
        match result {
            Ok(response) => Ok(response),
            // A refused write wrote nothing; any other failure resets.
            Err(error) => refused(&error).ok_or_else(|| error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<ListOptions, String> {
        list_options(
            &form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn list_options_parse_and_refuse() {
        let o = parse("prefix=a_&reverse=true&limit=2&start=b&end=c").unwrap();
        assert_eq!(o.prefix.as_deref(), Some("a_"));
        assert!(o.reverse);
        assert_eq!(o.limit, Some(2));
        assert_eq!(o.start.as_deref(), Some("b"));
        assert_eq!(o.end.as_deref(), Some("c"));
        assert!(parse("limit=-1").is_err());
        assert!(parse("reverse=maybe").is_err());
        assert!(parse("color=red").is_err());
        assert_eq!(parse("prefix=%C3%A9").unwrap().prefix.as_deref(), Some("é"));
    }
}
