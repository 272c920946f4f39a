//! S3-compatible object storage (AWS S3, SeaweedFS, MinIO, ...) through the `object_store`
//! crate.
//!
//! Every object is `<prefix>/<name>` in one bucket; quarantined objects are
//! `<prefix>/quarantine/<name>`.
//!
//! # Threads and runtimes
//!
//! [`BlockStore`]'s methods are synchronous. [`S3BlockStore`] owns a small multi-thread tokio
//! runtime (two workers drive the connections and timers) and runs each call with
//! [`Runtime::block_on`] on the calling thread. Call these methods from a plain thread or from
//! a `spawn_blocking` thread (of any runtime); from inside an async task they still work (the
//! call is made from a scoped helper thread, since tokio refuses to block a thread that runs
//! async code) but block that task's worker thread like any synchronous I/O.
//! Dropping an [`S3BlockStore`] is allowed anywhere (its runtime is shut down in the
//! background).
//!
//! # Atomicity, sizes and retries
//!
//! An object up to [`MULTIPART_THRESHOLD`] is written with a single PUT; a larger one with a
//! multipart upload, which S3 publishes only when it completes. Either way a reader sees the
//! whole object or none. Requests are retried with exponential backoff on connection errors and
//! server errors (5xx, 429), a few times and for a bounded time (see [`retry_config`]), so a
//! brief outage does not fail an upload but a dead endpoint fails within about 15 s.
//!
//! # Credentials
//!
//! `access_key_id`/`secret_access_key` from the config when given, else the usual `AWS_*`
//! environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! web identity, ECS or instance metadata as `object_store` resolves them). With
//! `skip_signature` requests are sent unsigned (anonymous access).

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, PutPayload, RetryConfig, WriteMultipart,
};
use tokio::runtime::Runtime;

use super::{check_name, valid_name, BlockStore, ObjectInfo};
use crate::error::StoreError;

/// Objects larger than this are written with a multipart upload (in [`MULTIPART_PART_SIZE`]
/// parts) instead of a single PUT.
pub const MULTIPART_THRESHOLD: usize = 64 * 1024 * 1024;

/// The part size of multipart uploads (S3 wants at least 5 MiB per part but the last).
pub const MULTIPART_PART_SIZE: usize = 16 * 1024 * 1024;

/// How many parts of one multipart upload are in flight at once.
const MULTIPART_CONCURRENCY: usize = 4;

/// The bound on `open`'s health check, whatever the retry settings.
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);

const QUARANTINE: &str = "quarantine";

fn default_region() -> String {
    "us-east-1".to_string()
}

/// Where and how to reach the bucket (the `s3` section of the store's configuration).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The bucket; it must exist.
    pub bucket: String,
    /// Objects are `<prefix>/<name>`; no leading or trailing slash is needed (they are
    /// ignored). Empty: the bucket's root.
    #[serde(default)]
    pub prefix: String,
    /// The endpoint of an S3-compatible service, e.g. `http://127.0.0.1:8333`. `None`: AWS
    /// (or `AWS_ENDPOINT` from the environment).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The region requests are signed for.
    #[serde(default = "default_region")]
    pub region: String,
    /// The access key; `None`: from the environment.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// The secret key; `None`: from the environment.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Allows `http://` endpoints (otherwise only HTTPS is used).
    #[serde(default)]
    pub allow_http: bool,
    /// Addresses the bucket as `https://<bucket>.<endpoint>` instead of
    /// `https://<endpoint>/<bucket>` (path style, the default, which S3-compatible services
    /// expect).
    #[serde(default)]
    pub virtual_hosted_style: bool,
    /// Sends requests unsigned (anonymous access to a bucket that allows it); no credentials
    /// are looked up.
    #[serde(default)]
    pub skip_signature: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            bucket: String::new(),
            prefix: String::new(),
            endpoint: None,
            region: default_region(),
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            virtual_hosted_style: false,
            skip_signature: false,
        }
    }
}

/// The retries of every request: up to 10 retries with (jittered) exponential backoff from
/// 250 ms to at most 4 s, and none started later than 15 s after the first attempt, so an
/// outage of several seconds is ridden out and a dead endpoint fails within about 15 s.
pub fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(4),
            base: 2.0,
        },
        max_retries: 10,
        retry_timeout: Duration::from_secs(15),
    }
}

/// The S3 backend. See the [module documentation](self) for the threading rule.
pub struct S3BlockStore {
    store: AmazonS3,
    /// `Some` until drop.
    runtime: Option<Runtime>,
    /// `<prefix>` as an object path (empty at the bucket root).
    prefix: Path,
    quarantine: Path,
    bucket: String,
    /// For messages: the endpoint, or `AWS` when none is configured.
    endpoint: String,
}

impl std::fmt::Debug for S3BlockStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3BlockStore")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix.as_ref())
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl S3BlockStore {
    /// Builds the client and its runtime, then checks that the bucket answers (a one-page
    /// listing under the prefix, bounded to 20 s). Fails with an error naming the endpoint
    /// and the bucket.
    pub fn open(config: &S3Config) -> Result<Self, StoreError> {
        let endpoint = config.endpoint.clone().unwrap_or_else(|| "AWS".to_string());
        if config.bucket.is_empty() {
            return Err(StoreError::Backend(format!(
                "s3 at {endpoint}: no bucket configured"
            )));
        }
        let prefix_str = config.prefix.trim_matches('/');
        let prefix = Path::parse(prefix_str).map_err(|e| {
            StoreError::Backend(format!(
                "s3 bucket {} at {endpoint}: invalid prefix {:?}: {e}",
                config.bucket, config.prefix
            ))
        })?;
        let quarantine = prefix.child(QUARANTINE);

        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_virtual_hosted_style_request(config.virtual_hosted_style)
            .with_retry(retry_config())
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(60)),
            );
        if let Some(url) = &config.endpoint {
            builder = builder.with_endpoint(url);
        }
        if config.allow_http {
            builder = builder.with_allow_http(true);
        }
        if let Some(key) = &config.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &config.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        if config.skip_signature {
            builder = builder.with_skip_signature(true);
        }
        let store = builder.build().map_err(|e| {
            StoreError::Backend(format!(
                "s3 bucket {} at {endpoint}: invalid configuration: {e}",
                config.bucket
            ))
        })?;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sextant-s3")
            .enable_all()
            .build()?;

        let this = Self {
            store,
            runtime: Some(runtime),
            prefix,
            quarantine,
            bucket: config.bucket.clone(),
            endpoint,
        };
        let checked =
            this.block_on(async { tokio::time::timeout(OPEN_TIMEOUT, this.probe()).await });
        match checked {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(StoreError::Backend(format!(
                    "s3 bucket {} at {} does not answer: {e}",
                    this.bucket, this.endpoint
                )))
            }
            Err(_) => {
                return Err(StoreError::Backend(format!(
                    "s3 bucket {} at {} does not answer within {} s",
                    this.bucket,
                    this.endpoint,
                    OPEN_TIMEOUT.as_secs()
                )))
            }
        }
        tracing::info!(store = %this.describe(), "opened S3 block storage");
        Ok(this)
    }

    /// Runs `fut` on the owned runtime, blocking the calling thread (which must not be
    /// executing async code).
    ///
    /// Called from a thread that is inside a runtime (an async task opening the store, say),
    /// it runs the future from a scoped helper thread instead of panicking, blocking the caller
    /// as any synchronous call would.
    fn block_on<F>(&self, fut: F) -> F::Output
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        match &self.runtime {
            Some(rt) if tokio::runtime::Handle::try_current().is_ok() => {
                std::thread::scope(|s| match s.spawn(|| rt.block_on(fut)).join() {
                    Ok(out) => out,
                    Err(panic) => std::panic::resume_unwind(panic),
                })
            }
            Some(rt) => rt.block_on(fut),
            // Only `drop` takes the runtime, and nothing runs after it.
            None => unreachable!("S3BlockStore used after drop"),
        }
    }

    fn path(&self, name: &str) -> Result<Path, StoreError> {
        check_name(name)?;
        Ok(self.prefix.child(name))
    }

    fn location(&self, path: &Path) -> String {
        format!("s3://{}/{}", self.bucket, path)
    }

    /// Maps an `object_store` error: a missing object is [`StoreError::NotFound`], anything
    /// else a [`StoreError::Backend`] naming the operation, the object and the endpoint.
    fn error(&self, op: &str, name: &str, path: &Path, e: object_store::Error) -> StoreError {
        match e {
            object_store::Error::NotFound { .. } => StoreError::NotFound(name.to_string()),
            e => {
                tracing::warn!(op, object = %self.location(path), endpoint = %self.endpoint, error = %e, "s3 request failed");
                StoreError::Backend(format!(
                    "s3 {op} of {} at {} failed: {e}",
                    self.location(path),
                    self.endpoint
                ))
            }
        }
    }

    /// One page of the listing under the prefix: proves the bucket exists and answers.
    async fn probe(&self) -> Result<(), object_store::Error> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let mut listing = self.store.list(prefix);
        match listing.next().await {
            Some(Err(e)) => Err(e),
            Some(Ok(_)) | None => Ok(()),
        }
    }

    async fn put_multipart(&self, path: &Path, data: Bytes) -> Result<(), object_store::Error> {
        let upload = self.store.put_multipart(path).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_PART_SIZE);
        let mut offset = 0;
        while offset < data.len() {
            let end = (offset + MULTIPART_PART_SIZE).min(data.len());
            if let Err(e) = writer.wait_for_capacity(MULTIPART_CONCURRENCY).await {
                // The upload is already broken; aborting tidies the parts sent so far.
                let _ = writer.abort().await;
                return Err(e);
            }
            writer.put(data.slice(offset..end));
            offset = end;
        }
        writer.finish().await.map(|_| ())
    }
}

impl Drop for S3BlockStore {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Never blocks, so dropping the store inside an async task is fine too.
            rt.shutdown_background();
        }
    }
}

impl BlockStore for S3BlockStore {
    fn describe(&self) -> String {
        let mut s = format!("s3://{}", self.bucket);
        if !self.prefix.as_ref().is_empty() {
            s.push('/');
            s.push_str(self.prefix.as_ref());
        }
        if self.endpoint != "AWS" {
            s.push_str(" at ");
            s.push_str(&self.endpoint);
        }
        s
    }

    fn put(&self, name: &str, data: Vec<u8>) -> Result<(), StoreError> {
        let path = self.path(name)?;
        let size = data.len();
        let result = if size > MULTIPART_THRESHOLD {
            self.block_on(self.put_multipart(&path, Bytes::from(data)))
        } else {
            self.block_on(self.store.put(&path, PutPayload::from(data)))
                .map(|_| ())
        };
        result.map_err(|e| self.error("put", name, &path, e))?;
        tracing::debug!(object = %self.location(&path), size, "stored object");
        Ok(())
    }

    fn get(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.path(name)?;
        let bytes = self
            .block_on(async {
                let got = self.store.get(&path).await?;
                got.bytes().await
            })
            .map_err(|e| self.error("get", name, &path, e))?;
        Ok(Vec::from(bytes))
    }

    fn get_range(&self, name: &str, range: Range<u64>) -> Result<Vec<u8>, StoreError> {
        let path = self.path(name)?;
        if range.end <= range.start {
            // HTTP cannot ask for zero bytes; still tell a missing object apart.
            self.block_on(self.store.head(&path))
                .map_err(|e| self.error("head", name, &path, e))?;
            return Ok(Vec::new());
        }
        let past_end = || StoreError::Corrupt {
            key: name.to_string(),
            problem: format!(
                "bytes {}..{} are past the end of the object",
                range.start, range.end
            ),
        };
        let bytes = match self.block_on(self.store.get_range(&path, range.clone())) {
            Ok(bytes) => bytes,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(StoreError::NotFound(name.to_string()))
            }
            Err(e) => {
                // A range past the end is refused (416) or answered short, which
                // object_store reports as a generic error: the size tells them apart from
                // a real failure.
                if let Ok(meta) = self.block_on(self.store.head(&path)) {
                    if range.end > meta.size {
                        return Err(past_end());
                    }
                }
                return Err(self.error("ranged get", name, &path, e));
            }
        };
        if bytes.len() as u64 != range.end - range.start {
            return Err(past_end());
        }
        Ok(Vec::from(bytes))
    }

    fn list(&self) -> Result<Vec<ObjectInfo>, StoreError> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let listing = self
            .block_on(self.store.list_with_delimiter(prefix))
            .map_err(|e| self.error("list", "", &self.prefix, e))?;
        let mut out = Vec::with_capacity(listing.objects.len());
        for meta in listing.objects {
            // Some services (SeaweedFS) list the prefix's own "directory" entry too: only
            // direct children count.
            match meta.location.filename() {
                Some(name) if valid_name(name) && self.prefix.child(name) == meta.location => out
                    .push(ObjectInfo {
                        name: name.to_string(),
                        size: meta.size,
                    }),
                _ => {
                    tracing::debug!(object = %self.location(&meta.location), "not a block name, not listed");
                }
            }
        }
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<(), StoreError> {
        let path = self.path(name)?;
        match self.block_on(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error("delete", name, &path, e)),
        }
    }

    fn quarantine(&self, name: &str) -> Result<(), StoreError> {
        let from = self.path(name)?;
        let to = self.quarantine.child(name);
        self.block_on(self.store.copy(&from, &to))
            .map_err(|e| self.error("quarantine copy", name, &from, e))?;
        match self.block_on(self.store.delete(&from)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.error("quarantine delete", name, &from, e)),
        }
        tracing::warn!(object = %self.location(&from), quarantined = %self.location(&to), "quarantined object");
        Ok(())
    }

    fn health(&self) -> Result<(), StoreError> {
        self.block_on(self.probe())
            .map_err(|e| self.error("health check", "", &self.prefix, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_unknown_keys() {
        let c: S3Config = serde_json_like("bucket", "b");
        assert_eq!(c.region, "us-east-1");
        assert_eq!(c.bucket, "b");
        assert!(!c.allow_http && !c.virtual_hosted_style && c.endpoint.is_none());
        assert_eq!(S3Config::default().region, "us-east-1");
    }

    /// A one-key document through serde's own map deserializer (no format crate needed).
    fn serde_json_like(key: &str, value: &str) -> S3Config {
        use serde::de::value::{Error, MapDeserializer};
        use serde::Deserialize as _;
        let map = MapDeserializer::<_, Error>::new([(key, value)].into_iter());
        S3Config::deserialize(map).unwrap()
    }

    #[test]
    fn unknown_key_refused() {
        use serde::de::value::{Error, MapDeserializer};
        use serde::Deserialize as _;
        let map = MapDeserializer::<_, Error>::new([("bucket", "b"), ("bukket", "c")].into_iter());
        assert!(S3Config::deserialize(map).is_err());
    }
}
