//! Connections: one session (a client plus its prepared statements) per
//! link, made again with backoff when it breaks.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::{Client, Statement};
use tracing::{info, warn};

use crate::error::PostgresError;
use crate::sql;
use crate::tls::Connector;

/// What every link of one backend shares: where to connect, and the waits.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) pg: tokio_postgres::Config,
    pub(crate) connector: Connector,
    pub(crate) schema: String,
    pub(crate) query_timeout: Duration,
    pub(crate) reconnect_timeout: Duration,
    pub(crate) first_backoff: Duration,
    pub(crate) max_backoff: Duration,
}

/// The statements of one session, prepared once per connection.
#[derive(Debug)]
pub(crate) struct Statements {
    pub(crate) get: Statement,
    pub(crate) scan_asc: Statement,
    pub(crate) scan_desc: Statement,
    pub(crate) alarm: Statement,
    pub(crate) due: Statement,
    pub(crate) fence: Statement,
    pub(crate) newest: Statement,
    pub(crate) clear: Statement,
    pub(crate) delete: Statement,
    pub(crate) upsert: Statement,
    pub(crate) set_alarms: Statement,
    pub(crate) delete_alarms: Statement,
}

/// One connection and its statements.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) client: Client,
    pub(crate) statements: Statements,
    driver: JoinHandle<()>,
}

/// A connection that is made again when it breaks: the reads' link or the
/// commits' link of one backend (commits have their own, so a read never
/// runs inside a commit's transaction).
#[derive(Debug)]
pub(crate) struct Link {
    name: &'static str,
    settings: Arc<Settings>,
    current: Mutex<Option<Arc<Session>>>,
}

impl Link {
    pub(crate) fn new(name: &'static str, settings: Arc<Settings>) -> Self {
        Self {
            name,
            settings,
            current: Mutex::new(None),
        }
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The live session, connecting (with backoff, up to the reconnect
    /// timeout) if there is none or it broke.
    pub(crate) async fn session(&self) -> Result<Arc<Session>, PostgresError> {
        let mut current = self.current.lock().await;
        if let Some(session) = current.as_ref()
            && !session.client.is_closed()
        {
            return Ok(session.clone());
        }
        let reconnecting = current.take().is_some();
        let session = Arc::new(self.connect(reconnecting).await?);
        *current = Some(session.clone());
        Ok(session)
    }

    /// Forgets `session` (after an error that broke it, or a timeout that
    /// leaves its state unknown): the next call connects again.
    pub(crate) async fn drop_session(&self, session: &Arc<Session>) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, session)) {
            *current = None;
        }
    }

    /// Closes the session, letting its connection say goodbye (bounded).
    pub(crate) async fn close(&self) {
        let session = self.current.lock().await.take();
        if let Some(session) = session
            && let Ok(session) = Arc::try_unwrap(session)
        {
            let Session { client, driver, .. } = session;
            drop(client);
            let _ = tokio::time::timeout(Duration::from_secs(1), driver).await;
        }
    }

    async fn connect(&self, reconnecting: bool) -> Result<Session, PostgresError> {
        let settings = &self.settings;
        let (client, driver, attempts) = connect(settings, self.name).await?;
        if reconnecting || attempts > 1 {
            info!(link = self.name, attempts, "connected to PostgreSQL again");
        }
        match tokio::time::timeout(settings.query_timeout, prepare(&client, &settings.schema)).await
        {
            Ok(Ok(statements)) => Ok(Session {
                client,
                statements,
                driver,
            }),
            Ok(Err(source)) => Err(PostgresError::Query {
                context: "preparing odo's statements",
                source,
            }),
            Err(_) => Err(PostgresError::Timeout {
                context: "preparing odo's statements",
                timeout_ms: settings.query_timeout.as_millis() as u64,
            }),
        }
    }
}

/// A new connection, trying again with backoff (doubling from
/// `first_backoff` up to `max_backoff`) until `reconnect_timeout` has
/// passed. Also returns how many attempts it took.
pub(crate) async fn connect(
    settings: &Settings,
    name: &'static str,
) -> Result<(Client, JoinHandle<()>, u32), PostgresError> {
    let started = Instant::now();
    let mut backoff = settings.first_backoff;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let source = match settings.connector.connect(&settings.pg).await {
            Ok((client, driver)) => return Ok((client, driver, attempts)),
            Err(source) => source,
        };
        let waited = started.elapsed();
        if waited + backoff > settings.reconnect_timeout {
            return Err(PostgresError::Unreachable {
                attempts,
                waited_ms: waited.as_millis() as u64,
                source,
            });
        }
        warn!(link = name, attempts, error = %source, "PostgreSQL unreachable; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(settings.max_backoff);
    }
}

async fn prepare(client: &Client, schema: &str) -> Result<Statements, tokio_postgres::Error> {
    Ok(Statements {
        get: client.prepare(&sql::get(schema)).await?,
        scan_asc: client.prepare(&sql::scan(schema, false)).await?,
        scan_desc: client.prepare(&sql::scan(schema, true)).await?,
        alarm: client.prepare(&sql::alarm(schema)).await?,
        due: client.prepare(&sql::due(schema)).await?,
        fence: client.prepare(&sql::fence(schema)).await?,
        newest: client.prepare(&sql::newest(schema)).await?,
        clear: client.prepare(&sql::clear(schema)).await?,
        delete: client.prepare(&sql::delete(schema)).await?,
        upsert: client.prepare(&sql::upsert(schema)).await?,
        set_alarms: client.prepare(&sql::set_alarms(schema)).await?,
        delete_alarms: client.prepare(&sql::delete_alarms(schema)).await?,
    })
}

/// Runs `work` on `link`'s session within the query timeout. A timeout or
/// an error that broke the connection drops the session; a read (`retry`)
/// is tried once more on a new one.
pub(crate) async fn with_session<T, F, Fut>(
    link: &Link,
    context: &'static str,
    retry: bool,
    work: F,
) -> Result<T, PostgresError>
where
    F: Fn(Arc<Session>) -> Fut,
    Fut: std::future::Future<Output = Result<T, PostgresError>>,
{
    let timeout = link.settings().query_timeout;
    let mut tries = if retry { 2 } else { 1 };
    loop {
        tries -= 1;
        let session = link.session().await?;
        let error = match tokio::time::timeout(timeout, work(session.clone())).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => e,
            Err(_) => PostgresError::Timeout {
                context,
                timeout_ms: timeout.as_millis() as u64,
            },
        };
        if error.broke_connection() {
            link.drop_session(&session).await;
            if tries > 0 {
                continue;
            }
        }
        return Err(error);
    }
}
