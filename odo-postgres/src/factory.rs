//! [`PostgresFactory`]: opens shards in PostgreSQL, by name `postgres`.

use std::sync::Arc;

use odo_storage::{Backend, BackendFactory, OpenFuture, ShardSpec, StorageError};
use tracing::info;

use crate::backend::{PostgresBackend, Shared, build_runtime, to_bigint};
use crate::config::PostgresConfig;
use crate::conn::{Settings, connect};
use crate::error::PostgresError;
use crate::sql;
use crate::tls::Connector;

/// The backend's name: what `--storage` takes.
pub const NAME: &str = "postgres";

/// Where a factory's configuration comes from.
#[derive(Debug, Clone)]
enum Source {
    Given(Arc<PostgresConfig>),
    /// Read from the environment at each open ([`PostgresConfig::from_env`]):
    /// what a worker process uses, since it inherits its server's
    /// environment.
    Environment,
}

/// Opens shards of odo's schema in PostgreSQL ([`PostgresBackend`]),
/// named `postgres`, durable.
///
/// Opening a shard makes the schema if it is missing, then claims the
/// shard at the [`ShardSpec::epoch`] it is opened at: the claim fails with
/// [`StorageError::Fenced`] if a newer epoch is recorded, and once it
/// holds, every commit of an older holder is refused.
#[derive(Debug, Clone)]
pub struct PostgresFactory {
    source: Source,
}

impl PostgresFactory {
    /// A factory that connects with `config`.
    pub fn new(config: PostgresConfig) -> Self {
        Self {
            source: Source::Given(Arc::new(config)),
        }
    }

    /// A factory that reads its configuration from the environment when
    /// it opens a shard ([`PostgresConfig::from_env`]).
    pub fn from_env() -> Self {
        Self {
            source: Source::Environment,
        }
    }

    fn config(&self) -> Result<Arc<PostgresConfig>, PostgresError> {
        match &self.source {
            Source::Given(config) => Ok(config.clone()),
            Source::Environment => PostgresConfig::from_env().map(Arc::new),
        }
    }
}

impl BackendFactory for PostgresFactory {
    fn name(&self) -> &str {
        NAME
    }

    fn durable(&self) -> bool {
        true
    }

    fn about(&self) -> &str {
        "durable, in PostgreSQL (--postgres-url), one schema for all shards; commits fenced by the shard's epoch"
    }

    fn open(&self, shard: ShardSpec) -> OpenFuture {
        let config = self.config();
        Box::pin(async move {
            let config = config?;
            let backend = open(&config, shard.shard, shard.epoch).await?;
            Ok(Arc::new(backend) as Arc<dyn Backend>)
        })
    }
}

/// Opens `shard` at `epoch`: the schema, the claim, both connections.
pub(crate) async fn open(
    config: &PostgresConfig,
    shard: u32,
    epoch: u64,
) -> Result<PostgresBackend, StorageError> {
    let pg = config.validate()?;
    let connector = Connector::new(config.tls.as_ref())?;
    let settings = Arc::new(Settings {
        pg,
        connector,
        schema: config.schema.clone(),
        query_timeout: config.query_timeout,
        reconnect_timeout: config.reconnect_timeout,
        first_backoff: config.first_backoff,
        max_backoff: config.max_backoff,
    });
    let runtime = build_runtime(shard)?;
    let shared = Arc::new(Shared::new(shard, epoch, settings.clone()));
    let opening = runtime.spawn({
        let shared = shared.clone();
        async move {
            let timeout = settings.query_timeout;
            match tokio::time::timeout(timeout, set_up(&settings, shard, epoch)).await {
                Ok(result) => result?,
                Err(_) => {
                    return Err(PostgresError::Timeout {
                        context: "opening a shard",
                        timeout_ms: timeout.as_millis() as u64,
                    });
                }
            }
            // Both links now, so that a bad connection shows at open.
            shared.reads().session().await?;
            Ok(())
        }
    });
    let opened = opening.await;
    let backend = PostgresBackend::new(runtime, shared);
    match opened {
        Ok(Ok(())) => {
            info!(shard, epoch, "opened shard in PostgreSQL");
            Ok(backend)
        }
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(StorageError::backend("opening a PostgreSQL shard", e)),
    }
}

/// Makes the schema if missing, checks its format, and claims the shard.
async fn set_up(settings: &Settings, shard: u32, epoch: u64) -> Result<(), PostgresError> {
    let (client, driver, _) = connect(settings, "open").await?;
    let schema = &settings.schema;
    let result = async {
        let shard_param = i32::try_from(shard).unwrap_or(i32::MAX);
        let epoch_param = to_bigint("epoch", epoch)?;
        client
            .batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock({}); {}; COMMIT;",
                sql::SETUP_LOCK,
                sql::create(schema)
            ))
            .await
            .map_err(PostgresError::query("making odo's schema"))?;
        let format: i32 = client
            .query_one(&sql::format(schema), &[])
            .await
            .map_err(PostgresError::query("reading the schema's format"))?
            .get(0);
        if format != sql::FORMAT {
            return Err(PostgresError::Config(format!(
                "schema {schema} has format {format}; this odo reads format {}",
                sql::FORMAT
            )));
        }
        let claimed = client
            .query_opt(&sql::claim(schema), &[&shard_param, &epoch_param])
            .await
            .map_err(PostgresError::query("claiming the shard"))?;
        if claimed.is_none() {
            let newest: i64 = client
                .query_opt(&sql::newest(schema), &[&shard_param])
                .await
                .map_err(PostgresError::query("reading the shard's epoch"))?
                .map_or(0, |row| row.get(0));
            return Err(PostgresError::Fenced {
                shard,
                epoch,
                newest: u64::try_from(newest).unwrap_or(0),
            });
        }
        Ok(())
    }
    .await;
    drop(client);
    let _ = driver.await;
    result
}
