//! The room's chat page in a real browser: headless Chromium (the Debian
//! package; `cargo xtask ci` installs it when missing), driven over the
//! DevTools protocol. Two pages join one room, one sends, both show the
//! message; the screenshot is kept in `target/test-artifacts/`.
//!
//! Without a Chromium binary the test says why and passes, unless
//! `ODO_REQUIRE_BROWSER` is set (as `cargo xtask ci` sets it).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use odo_tests::topology::ServerSpec;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A bound on every wait: a failure guard, not a timing.
const GUARD: Duration = Duration::from_secs(30);

/// The Chromium binary, if one is installed.
fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH")?
                .to_str()?
                .split(':')
                .map(|dir| PathBuf::from(dir).join(name))
                .find(|p| p.is_file())
        })
}

/// A browser process, killed and reaped when dropped.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    /// The DevTools WebSocket URL.
    url: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium's helpers (zygote, renderers) share its process group.
        #[cfg(unix)]
        if let Some(group) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    fn launch(binary: &PathBuf) -> Result<Browser> {
        let profile = tempfile::tempdir()?;
        let mut command = Command::new(binary);
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--window-size=800,600",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            // Chromium makes its singleton socket's directory in the temp
            // directory, and leaves it there when killed: in the profile,
            // it goes with it (one was left in /tmp at every run).
            .env("TMPDIR", profile.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let mut browser = Browser {
            child,
            _profile: profile,
            url: String::new(),
        };
        // Chromium says where DevTools listens on its standard error; the
        // reader ends with the process, so this wait is bounded by it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent && let Some(at) = line.find("ws://") {
                    let _ = tx.send(line[at..].trim().to_owned());
                    sent = true;
                }
            }
        });
        browser.url = rx
            .recv_timeout(GUARD)
            .map_err(|_| anyhow!("Chromium did not say where DevTools listens"))?;
        Ok(browser)
    }
}

/// A DevTools protocol connection: one command at a time.
struct Cdp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Cdp {
    async fn connect(url: &str) -> Result<Cdp> {
        let (ws, _) = tokio::time::timeout(GUARD, tokio_tungstenite::connect_async(url))
            .await
            .map_err(|_| anyhow!("DevTools did not answer"))??;
        Ok(Cdp { ws, next_id: 1 })
    }

    /// Sends `method` (to the page `session`, if given) and returns its
    /// result, skipping events.
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            command["sessionId"] = json!(session);
        }
        self.ws.send(Message::text(command.to_string())).await?;
        let answer = async {
            while let Some(message) = self.ws.next().await {
                let Message::Text(text) = message? else {
                    continue;
                };
                let value: Value = serde_json::from_str(text.as_str())?;
                if value["id"] == json!(id) {
                    if let Some(error) = value.get("error") {
                        bail!("{method}: {error}");
                    }
                    return Ok(value["result"].clone());
                }
            }
            bail!("DevTools closed")
        };
        tokio::time::timeout(GUARD, answer)
            .await
            .map_err(|_| anyhow!("{method}: no answer"))?
    }

    /// Opens `url` in a new page; returns its session.
    async fn open(&mut self, url: &str) -> Result<String> {
        let target = self
            .call(None, "Target.createTarget", json!({"url": url}))
            .await?;
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await?;
        attached["sessionId"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no session: {attached}"))
    }

    /// Evaluates `expression` in the page; its value.
    async fn eval(&mut self, session: &str, expression: &str) -> Result<Value> {
        let result = self
            .call(
                Some(session),
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await?;
        Ok(result["result"]["value"].clone())
    }

    /// Waits until `expression` is true in the page.
    async fn until(&mut self, session: &str, expression: &str) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < GUARD {
            if self.eval(session, expression).await? == json!(true) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("never true in the page: {expression}")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_chat_in_one_room() -> Result<()> {
    let Some(binary) = chromium() else {
        if std::env::var_os("ODO_REQUIRE_BROWSER").is_some() {
            bail!("no Chromium binary on PATH, and ODO_REQUIRE_BROWSER is set");
        }
        eprintln!(
            "skipped: no Chromium on PATH (`apt-get install chromium`; `cargo xtask ci` installs it)"
        );
        return Ok(());
    };
    let before = chromium_leftovers();
    let dir = tempfile::tempdir()?;
    let server = ServerSpec::new(env!("CARGO_BIN_EXE_odo-test-server"), 2).start(dir.path())?;
    let browser = Browser::launch(&binary)?;
    let mut cdp = Cdp::connect(&browser.url).await?;
    let page = format!("{}/room/browser", server.base);
    let a = cdp.open(&page).await?;
    let b = cdp.open(&page).await?;
    let joined = "document.body.dataset.joined === 'true'";
    cdp.until(&a, joined).await?;
    cdp.until(&b, joined).await?;
    cdp.eval(
        &a,
        "document.getElementById('text').value = 'hello from a browser'; \
         document.getElementById('send').click(); true",
    )
    .await?;
    let shown = "[...document.querySelectorAll('#log li')]\
                 .some(li => li.textContent === '1hello from a browser')";
    cdp.until(&a, shown).await?;
    cdp.until(&b, shown).await?;
    let shot = cdp
        .call(Some(&b), "Page.captureScreenshot", json!({"format": "png"}))
        .await?;
    let png = data_encoding::BASE64
        .decode(shot["data"].as_str().unwrap_or_default().as_bytes())
        .context("the screenshot's base64")?;
    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    let artifacts = std::env::var_os("CARGO_TARGET_DIR")
        .map(|t| PathBuf::from(t).join("test-artifacts"))
        .unwrap_or(artifacts);
    std::fs::create_dir_all(&artifacts)?;
    let path = artifacts.join("room-two-pages.png");
    std::fs::write(&path, &png)?;
    eprintln!("screenshot: {}", path.display());
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let history = odo_tests::http::HttpClient::new(&server.base)
        .get("/room/browser/history")
        .await?
        .text();
    assert_eq!(history, r#"[[1,"hello from a browser"]]"#);
    drop(cdp);
    drop(browser);
    let left: Vec<_> = chromium_leftovers().difference(&before).cloned().collect();
    assert!(
        left.is_empty(),
        "the browser left {left:?} in the temp directory"
    );
    Ok(())
}

/// Chromium's directories in the system's temp directory.
fn chromium_leftovers() -> std::collections::HashSet<std::ffi::OsString> {
    std::fs::read_dir(std::env::temp_dir())
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name())
                .filter(|name| name.to_string_lossy().starts_with("org.chromium.Chromium."))
                .collect()
        })
        .unwrap_or_default()
}
