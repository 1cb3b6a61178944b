//! A small HTTP client for black-box tests (hyper, keep-alive pool).

use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// An answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

impl Answer {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Every value of header `name`.
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A keep-alive HTTP/1.1 client bound to one server.
#[derive(Debug, Clone)]
pub struct HttpClient {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl HttpClient {
    /// A client for `base` (`http://127.0.0.1:PORT`).
    pub fn new(base: &str) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build_http();
        Self {
            base: base.trim_end_matches('/').to_owned(),
            client,
        }
    }

    /// The base URL (`http://127.0.0.1:PORT`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The pid of the worker that holds the object at `path`
    /// (`class/name`), from `/_odo/placement`.
    pub async fn owner_pid(&self, path: &str) -> Result<u32> {
        let answer = self.get(&format!("/_odo/placement/{path}")).await?;
        let value: serde_json::Value = serde_json::from_slice(&answer.body)?;
        value["pid"]
            .as_u64()
            .map(|p| p as u32)
            .ok_or_else(|| anyhow::anyhow!("unassigned: {}", answer.text()))
    }

    /// The pids of the running workers, from `/_odo/workers`.
    pub async fn running_worker_pids(&self) -> Result<Vec<u32>> {
        let answer = self.get("/_odo/workers").await?;
        let workers: serde_json::Value = serde_json::from_slice(&answer.body)?;
        Ok(workers
            .as_array()
            .ok_or_else(|| anyhow::anyhow!("/_odo/workers is not a list: {}", answer.text()))?
            .iter()
            .filter(|w| w["state"] == "running")
            .filter_map(|w| w["pid"].as_u64().map(|p| p as u32))
            .collect())
    }

    /// Sends a request with headers and body; fails only on transport
    /// errors or after 30 s.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Answer> {
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body.into()))?;
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
            .await
            .with_context(|| format!("{method} {path}: no answer within 30 s"))?
            .with_context(|| format!("{method} {path}"))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Answer> {
        self.send("GET", path, &[], Bytes::new()).await
    }

    /// `POST path` with an empty body.
    pub async fn post(&self, path: &str) -> Result<Answer> {
        self.send("POST", path, &[], Bytes::new()).await
    }
}
