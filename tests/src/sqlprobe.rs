//! `SqlProbe`: a SQLite-backed class of the test server that hands its SQL
//! API to the scenarios over HTTP, so every part of it (typed values,
//! refused statements, limits, `transaction_sync`, point-in-time recovery)
//! can be driven from outside, across processes, on every cell.
//!
//! Routes under `/sqlprobe/{name}`:
//!
//! - `POST /exec`: the body is `{"sql": "...", "params": [...]}`; answers
//!   `{"columns": [...], "rows": [[...]], "read": N, "written": N}`. With
//!   `?fail=1` the turn then fails (the object is reset, its writes rolled
//!   back).
//! - `POST /txn`: the body is a list of such statements, run in one
//!   `transaction_sync`: all of them, or (the first one that fails
//!   answering 400) none.
//! - `GET /size`: `database_size()`.
//! - `PUT /kv/{key}` (the body is the value), `GET /kv/{key}`: the
//!   key-value API in the same database.
//! - `GET /bookmark` (`?at=MS`: `bookmark_for_time`), `GET /oldest`,
//!   `POST /restore` (the body is a bookmark; answers the undoing
//!   bookmark), `POST /reset` (fails on purpose, so the next request starts
//!   a new activation, which restores), `DELETE /` (`delete_all`).
//!
//! Values travel as JSON: `null`, `{"integer": N}`, `{"real": X}`,
//! `{"text": "..."}`, `{"blob": "<hex>"}`. An SQL error answers 400 with
//! its variant and message (`Refused: ...`), the same on every cell.

use bytes::Bytes;
use http::{Method, StatusCode};
use odo::storage::{SqlError, SqlStorage, StorageError};
use odo::{Context, DurableObject, ObjectError, Request, Response, SqlValue};
use serde::Deserialize;
use serde_json::{Value, json};

/// The class; see the module docs.
#[derive(Debug, Default)]
pub struct SqlProbe;

#[derive(Debug, Deserialize)]
struct Statement {
    sql: String,
    #[serde(default)]
    params: Vec<Value>,
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Bytes> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()
        .map(Bytes::from)
}

/// A JSON parameter as a typed value.
fn value_of(json: &Value) -> Result<SqlValue, String> {
    let tagged = |tag: &str| json.get(tag);
    Ok(match json {
        Value::Null => SqlValue::Null,
        _ if tagged("integer").is_some() => SqlValue::Integer(
            tagged("integer")
                .and_then(Value::as_i64)
                .ok_or("an integer must be a 64-bit integer")?,
        ),
        _ if tagged("real").is_some() => SqlValue::Real(
            tagged("real")
                .and_then(Value::as_f64)
                .ok_or("a real must be a number")?,
        ),
        _ if tagged("text").is_some() => SqlValue::Text(
            tagged("text")
                .and_then(Value::as_str)
                .ok_or("a text must be a string")?
                .to_owned(),
        ),
        _ if tagged("blob").is_some() => SqlValue::Blob(
            tagged("blob")
                .and_then(Value::as_str)
                .and_then(unhex)
                .ok_or("a blob must be hex")?,
        ),
        other => return Err(format!("not a typed value: {other}")),
    })
}

/// A typed value as JSON.
fn json_of(value: &SqlValue) -> Value {
    match value {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(n) => json!({ "integer": n }),
        SqlValue::Real(x) => json!({ "real": x }),
        SqlValue::Text(s) => json!({ "text": s }),
        SqlValue::Blob(b) => json!({ "blob": hex(b) }),
    }
}

/// An SQL error as the 400 the scenarios record: its variant and message.
fn sql_error(error: &SqlError) -> Response {
    let debug = format!("{error:?}");
    let variant: String = debug
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    reply(StatusCode::BAD_REQUEST, format!("{variant}: {error}\n"))
}

/// A storage error: an SQL one is the caller's (400); any other fails the
/// turn.
fn answer(result: Result<Response, StorageError>) -> Result<Response, ObjectError> {
    match result {
        Ok(response) => Ok(response),
        Err(StorageError::Sql(e)) => Ok(sql_error(&e)),
        Err(e) => Err(e.into()),
    }
}

/// A statement's text and typed parameters, or why a parameter is not a
/// typed value.
fn typed(statement: Statement) -> Result<(String, Vec<SqlValue>), String> {
    let params = statement
        .params
        .iter()
        .map(value_of)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad parameter: {e}"))?;
    Ok((statement.sql, params))
}

fn run(
    sql: &mut SqlStorage,
    (text, params): &(String, Vec<SqlValue>),
) -> Result<Value, StorageError> {
    let cursor = sql.exec(text, params)?;
    let rows: Vec<Value> = cursor
        .raw()
        .map(|row| Value::Array(row.iter().map(json_of).collect()))
        .collect();
    Ok(json!({
        "columns": cursor.column_names(),
        "rows": rows,
        "read": cursor.rows_read(),
        "written": cursor.rows_written(),
    }))
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("bad request body: {e}"))
}

fn bad_request(why: String) -> Response {
    reply(StatusCode::BAD_REQUEST, format!("{why}\n"))
}

fn ok_json(value: &Value) -> Response {
    reply(StatusCode::OK, format!("{value}\n"))
}

impl DurableObject for SqlProbe {
    fn create(_: &Context) -> Self {
        SqlProbe
    }

    async fn fetch(
        &mut self,
        ctx: &mut Context,
        request: Request,
    ) -> Result<Response, ObjectError> {
        let path: Vec<&str> = request.uri().path().split('/').skip(3).collect();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let body = request.body().clone();
        let storage = ctx.storage();
        match (request.method().clone(), path.as_slice()) {
            (Method::POST, ["exec"]) => {
                let statement = match parse(&body).and_then(typed) {
                    Ok(s) => s,
                    Err(why) => return Ok(bad_request(why)),
                };
                let result = answer(run(storage.sql()?, &statement).map(|v| ok_json(&v)))?;
                if query == "fail=1" {
                    return Err(ObjectError::msg("failing after the statement, on purpose"));
                }
                Ok(result)
            }
            (Method::POST, ["txn"]) => {
                let statements = match parse::<Vec<Statement>>(&body)
                    .and_then(|all| all.into_iter().map(typed).collect::<Result<Vec<_>, _>>())
                {
                    Ok(s) => s,
                    Err(why) => return Ok(bad_request(why)),
                };
                answer(
                    storage
                        .sql()?
                        .transaction_sync(|sql| {
                            statements
                                .iter()
                                .map(|statement| run(sql, statement))
                                .collect::<Result<Vec<_>, StorageError>>()
                        })
                        .map(|results| ok_json(&Value::Array(results))),
                )
            }
            (Method::GET, ["size"]) => answer(
                storage
                    .sql()?
                    .database_size()
                    .map(|size| reply(StatusCode::OK, size.to_string())),
            ),
            (Method::PUT, ["kv", key]) => {
                storage.put(key, body).await?;
                Ok(reply(StatusCode::OK, "stored\n"))
            }
            (Method::GET, ["kv", key]) => Ok(match storage.get(key).await? {
                Some(value) => reply(StatusCode::OK, value),
                None => reply(StatusCode::NOT_FOUND, "no such key\n"),
            }),
            (Method::GET, ["bookmark"]) => {
                let at = query
                    .strip_prefix("at=")
                    .and_then(|ms| ms.parse::<u64>().ok());
                let bookmark = match at {
                    Some(ms) => storage.bookmark_for_time(ms).await,
                    None => storage.current_bookmark().await,
                };
                answer(bookmark.map(|b| reply(StatusCode::OK, b)))
            }
            (Method::GET, ["oldest"]) => answer(
                storage
                    .oldest_bookmark()
                    .await
                    .map(|b| reply(StatusCode::OK, b)),
            ),
            (Method::POST, ["restore"]) => {
                let bookmark = String::from_utf8_lossy(&body).into_owned();
                answer(
                    storage
                        .on_next_session_restore_bookmark(&bookmark)
                        .await
                        .map(|undo| reply(StatusCode::OK, undo)),
                )
            }
            (Method::POST, ["reset"]) => Err(ObjectError::msg("reset on purpose")),
            (Method::DELETE, [] | [""]) => {
                storage.delete_all().await?;
                Ok(reply(StatusCode::OK, "deleted\n"))
            }
            _ => Ok(reply(StatusCode::NOT_FOUND, "no such sqlprobe route\n")),
        }
    }
}
