//! `sqlite`: the matrix cell where every class of the test server is
//! SQLite-backed (`cargo xtask test-multiprocess --backend sqlite`). Its
//! shards are fjall's; the test server sees `--storage sqlite` and
//! registers `Counter`, `Kv` and `Probe` SQLite-backed, so every
//! key-value scenario runs on the key-value API inside each object's
//! database and must produce the same transcript as on the other cells.

use odo_storage::{BackendFactory, FjallFactory, OpenFuture, ShardSpec};

/// The cell's name (`--storage sqlite`).
pub const NAME: &str = "sqlite";

/// Whether `args` (a server's or a worker's command line) choose the
/// `sqlite` cell.
pub fn chosen(args: &[String]) -> bool {
    args.windows(2).any(|w| w[0] == "--storage" && w[1] == NAME)
}

/// fjall's factory under the cell's name.
#[derive(Debug, Default, Clone)]
pub struct SqliteCellFactory(FjallFactory);

impl BackendFactory for SqliteCellFactory {
    fn name(&self) -> &str {
        NAME
    }

    fn durable(&self) -> bool {
        true
    }

    fn about(&self) -> &str {
        "fjall, with every class of the test server SQLite-backed (a matrix cell)"
    }

    fn open(&self, shard: ShardSpec) -> OpenFuture {
        self.0.open(shard)
    }
}
