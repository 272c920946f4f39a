//! Where immutable blocks live: a [`BlockStore`] holds named objects (one per block) and is
//! either the local data directory ([`LocalBlockStore`], the default) or S3-compatible object
//! storage ([`S3BlockStore`], through the `object_store` crate).
//!
//! Calls block the calling thread (the store's own threads and the query service's blocking
//! threads make them); the S3 backend drives its async client on a small runtime of its own.

mod local;
mod s3;

pub use local::LocalBlockStore;
pub use s3::{S3BlockStore, S3Config};

use std::ops::Range;

use crate::error::StoreError;

/// One stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The name given to [`BlockStore::put`] (no directory part).
    pub name: String,
    pub size: u64,
}

/// A flat namespace of immutable objects.
///
/// Names are file names: ASCII letters, digits, `-`, `_` and `.`, no `/`.
pub trait BlockStore: Send + Sync + 'static {
    /// Where the objects live, for logs and `sextant store inspect` (`/data/blocks`,
    /// `s3://bucket/prefix`).
    fn describe(&self) -> String;

    /// Stores an object atomically (a reader sees all of it or nothing) and durably (it survives
    /// a crash once this returns). An existing object of that name is replaced.
    fn put(&self, name: &str, data: Vec<u8>) -> Result<(), StoreError>;

    /// The whole object.
    fn get(&self, name: &str) -> Result<Vec<u8>, StoreError>;

    /// `range` of the object (`range.end` at most its size).
    fn get_range(&self, name: &str, range: Range<u64>) -> Result<Vec<u8>, StoreError>;

    /// Every object, in no particular order. Objects being written (temporary files) and
    /// quarantined objects are not listed.
    fn list(&self) -> Result<Vec<ObjectInfo>, StoreError>;

    /// Removes an object; removing one that does not exist is not an error.
    fn delete(&self, name: &str) -> Result<(), StoreError>;

    /// Moves an object aside (`quarantine/NAME`): it is no longer listed nor readable by
    /// name, but kept for a person to look at.
    fn quarantine(&self, name: &str) -> Result<(), StoreError>;

    /// Whether the backend answers (a cheap request).
    fn health(&self) -> Result<(), StoreError>;
}

/// Whether `name` is acceptable as an object name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

pub(crate) fn check_name(name: &str) -> Result<(), StoreError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(StoreError::Backend(format!("invalid object name {name:?}")))
    }
}
