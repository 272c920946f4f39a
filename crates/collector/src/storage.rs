//! The `file_storage` extension: a directory holding one sled database, in which each
//! component that must survive a restart (a persistent sending queue, tail sampling's
//! undecided traces) keeps its own tree.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `extensions: file_storage[/name]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the database lives (the reference's default).
    pub directory: PathBuf,
    /// Accepted for compatibility; sled creates the directory as needed.
    pub create_directory: bool,
    /// Accepted for compatibility: how long to wait for the lock on the directory.
    #[serde(with = "crate::config::duration")]
    pub timeout: std::time::Duration,
    /// Accepted for compatibility: sled flushes every write it acknowledges (see
    /// [`Storage::flush`]), so there is nothing to switch on.
    pub fsync: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            directory: PathBuf::from("/var/lib/otelcol/file_storage"),
            create_directory: true,
            timeout: std::time::Duration::from_secs(1),
            fsync: true,
        }
    }
}

/// An open storage directory. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    db: sled::Db,
    dir: PathBuf,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").field("dir", &self.dir).finish()
    }
}

impl Storage {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, sled::Error> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(16 * 1024 * 1024)
            .flush_every_ms(None)
            .open()?;
        Ok(Self {
            db,
            dir: dir.to_path_buf(),
        })
    }

    /// The tree a component keeps its data in; name it after the component id
    /// (`exporter/otlp/backend`, `processor/tail_sampling`).
    pub fn tree(&self, component: &str) -> Result<sled::Tree, sled::Error> {
        self.db.open_tree(component)
    }

    /// Makes every write so far durable. Call before acknowledging what was written.
    pub async fn flush(&self) -> Result<(), sled::Error> {
        self.db.flush_async().await.map(|_| ())
    }

    pub fn directory(&self) -> &Path {
        &self.dir
    }
}
