//! Blocks as files in a directory: `put` writes `.NAME.tmp`, fsyncs it, renames it into place
//! and fsyncs the directory, so a crash leaves either the whole object or none (and at worst a
//! temporary file, removed at the next open).

use std::fs::{self, File};
use std::io::Write as _;
use std::ops::Range;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use super::{check_name, BlockStore, ObjectInfo};
use crate::error::StoreError;

/// The local-directory backend.
#[derive(Debug, Clone)]
pub struct LocalBlockStore {
    dir: PathBuf,
}

const QUARANTINE: &str = "quarantine";

impl LocalBlockStore {
    /// Opens (or creates) `dir`, removing temporary files a crash left behind.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.ends_with(".tmp") {
                tracing::info!(file = %entry.path().display(), "removing a block left unfinished by a crash");
                fs::remove_file(entry.path())?;
            }
        }
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> Result<PathBuf, StoreError> {
        check_name(name)?;
        Ok(self.dir.join(name))
    }

    fn not_found(name: &str, e: std::io::Error) -> StoreError {
        if e.kind() == std::io::ErrorKind::NotFound {
            StoreError::NotFound(name.to_string())
        } else {
            StoreError::Io(e)
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

impl BlockStore for LocalBlockStore {
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn put(&self, name: &str, data: Vec<u8>) -> Result<(), StoreError> {
        let path = self.path(name)?;
        let tmp = self.dir.join(format!(".{name}.tmp"));
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        sync_dir(&self.dir)
    }

    fn get(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        fs::read(self.path(name)?).map_err(|e| Self::not_found(name, e))
    }

    fn get_range(&self, name: &str, range: Range<u64>) -> Result<Vec<u8>, StoreError> {
        let f = File::open(self.path(name)?).map_err(|e| Self::not_found(name, e))?;
        let len = range.end.saturating_sub(range.start) as usize;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, range.start).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                StoreError::Corrupt {
                    key: name.to_string(),
                    problem: format!(
                        "bytes {}..{} are past the end of the file",
                        range.start, range.end
                    ),
                }
            } else {
                StoreError::Io(e)
            }
        })?;
        Ok(buf)
    }

    fn list(&self) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if !meta.is_file() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            out.push(ObjectInfo {
                name,
                size: meta.len(),
            });
        }
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<(), StoreError> {
        match fs::remove_file(self.path(name)?) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn quarantine(&self, name: &str) -> Result<(), StoreError> {
        let from = self.path(name)?;
        let dir = self.dir.join(QUARANTINE);
        fs::create_dir_all(&dir)?;
        fs::rename(&from, dir.join(name)).map_err(|e| Self::not_found(name, e))?;
        sync_dir(&self.dir)
    }

    fn health(&self) -> Result<(), StoreError> {
        fs::metadata(&self.dir)?;
        Ok(())
    }
}
