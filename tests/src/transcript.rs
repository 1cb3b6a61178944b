//! Scenario transcripts: the requests a scenario made and what came back,
//! with volatile values left out, plus an unredacted summary of figures.

use std::fmt::Write;

use anyhow::Result;
use bytes::Bytes;

use crate::http::{Answer, HttpClient};

/// What one scenario saw.
#[derive(Debug, Default)]
pub struct Transcript {
    lines: Vec<String>,
    summary: Vec<String>,
}

/// Headers worth recording; the rest (date, content-length) vary or add
/// nothing.
const RECORDED_HEADERS: &[&str] = &[
    "retry-after",
    "content-type",
    "x-odo-error",
    "x-odo-retryable",
];

fn show_body(body: &Bytes) -> String {
    match std::str::from_utf8(body) {
        Ok(text) if body.len() <= 200 => format!("{text:?}"),
        _ => format!("<{} bytes>", body.len()),
    }
}

impl Transcript {
    /// Sends a request and records it and its answer.
    pub async fn send(
        &mut self,
        client: &HttpClient,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Answer> {
        let body = body.into();
        let answer = client.send(method, path, headers, body.clone()).await?;
        let mut line = if path.len() > 120 {
            format!(
                "{method} {}... ({} bytes)",
                path.chars().take(60).collect::<String>(),
                path.len()
            )
        } else {
            format!("{method} {path}")
        };
        for (name, value) in headers {
            let _ = write!(line, " [{name}: {value}]");
        }
        if !body.is_empty() {
            let _ = write!(line, " body={}", show_body(&body));
        }
        let _ = write!(line, "\n  -> {} {}", answer.status, show_body(&answer.body));
        for name in RECORDED_HEADERS {
            for value in answer.header(name) {
                let _ = write!(line, " [{name}: {value}]");
            }
        }
        self.lines.push(line);
        Ok(answer)
    }

    /// `GET path`, recorded.
    pub async fn get(&mut self, client: &HttpClient, path: &str) -> Result<Answer> {
        self.send(client, "GET", path, &[], Bytes::new()).await
    }

    /// `POST path`, recorded.
    pub async fn post(&mut self, client: &HttpClient, path: &str) -> Result<Answer> {
        self.send(client, "POST", path, &[], Bytes::new()).await
    }

    /// Records a fact the scenario checked (must be the same on every
    /// cell: write booleans and deterministic values, not timings). A
    /// boolean fact is an invariant: one that is `false` fails the scenario
    /// (see [`Transcript::false_facts`]), whatever the snapshot says.
    pub fn fact(&mut self, name: &str, value: impl std::fmt::Display) {
        self.lines.push(format!("fact {name}: {value}"));
    }

    /// The facts recorded as `false`.
    pub fn false_facts(&self) -> Vec<&str> {
        self.lines
            .iter()
            .filter_map(|line| line.strip_prefix("fact ")?.strip_suffix(": false"))
            .collect()
    }

    /// Records a figure for the summary (not compared between cells).
    pub fn figure(&mut self, name: &str, value: impl std::fmt::Display) {
        self.summary.push(format!("{name}={value}"));
    }

    /// The compared part.
    pub fn text(&self) -> String {
        let mut out = self.lines.join("\n");
        out.push('\n');
        out
    }

    /// The unredacted figures, one `name=value` each.
    pub fn summary(&self) -> &[String] {
        &self.summary
    }
}
