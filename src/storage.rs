//! File storage (docs/files.md): a local directory or an S3 bucket (AWS, Tigris, R2, MinIO)
//! behind `object_store`'s one interface. Keys are the service's own, each kind of object under
//! a prefix of its own (the example's `attachments/`); nothing a client sends becomes part of a
//! key.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::body::Bytes;
use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, PutPayloadMut, RetryConfig, WriteMultipart,
};

use crate::config::StorageConfig;
use crate::error::ApiError;

/// Parts of a streamed upload: S3's smallest part (5 MiB) is also what one upload holds in
/// memory at most, twice (the part being filled and the one being sent).
const PART_BYTES: usize = 5 << 20;
/// How often `/readyz`'s storage status is refreshed, and how long one check may take: the
/// status it shows is at most their sum (5 s) old.
const HEALTH_INTERVAL: Duration = Duration::from_secs(3);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// The configured store, cheap to clone.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// The last health check's result (see [`Storage::watch_health`]).
    healthy: Arc<AtomicBool>,
}

impl Storage {
    /// Opens the store; nothing is sent over the network yet. A local directory is created.
    pub fn open(config: &StorageConfig) -> anyhow::Result<Storage> {
        let store: Arc<dyn ObjectStore> = match config {
            StorageConfig::Local(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| anyhow::anyhow!("STORAGE_URL: cannot create {}: {e}", dir.display()))?;
                Arc::new(LocalFileSystem::new_with_prefix(dir)?)
            }
            StorageConfig::S3(s3) => {
                // The S3 client's TLS needs the process's provider (ring); `main` installs it
                // first, but a library caller (a test, a tool) may not have.
                crate::install_crypto_provider();
                let mut builder = AmazonS3Builder::new()
                    .with_bucket_name(&s3.bucket)
                    .with_region(&s3.region)
                    .with_virtual_hosted_style_request(s3.virtual_hosted_style)
                    .with_client_options(
                        ClientOptions::new()
                            .with_allow_http(true)
                            .with_connect_timeout(Duration::from_secs(3))
                            // A download streams for as long as its client reads; a stalled read
                            // is what is cut.
                            .with_timeout_disabled()
                            .with_read_timeout(Duration::from_secs(20)),
                    )
                    // Few, quick retries: an unreachable store answers 503 within about 6 s,
                    // well before the request's own deadline.
                    .with_retry(RetryConfig {
                        backoff: BackoffConfig {
                            init_backoff: Duration::from_millis(100),
                            max_backoff: Duration::from_secs(1),
                            base: 2.0,
                        },
                        max_retries: 2,
                        retry_timeout: Duration::from_secs(5),
                    });
                if let Some(endpoint) = &s3.endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                if let (Some(id), Some(secret)) = (&s3.access_key_id, &s3.secret_access_key) {
                    builder = builder.with_access_key_id(id).with_secret_access_key(secret.expose());
                }
                let s3_store = builder.build()?;
                match s3.prefix.is_empty() {
                    true => Arc::new(s3_store),
                    false => Arc::new(PrefixStore::new(s3_store, s3.prefix.as_str())),
                }
            }
        };
        Ok(Storage {
            store,
            healthy: Arc::new(AtomicBool::new(false)),
        })
    }

    /// A writer of a new object at `key`, streamed in parts.
    pub fn writer(&self, key: Path) -> ObjectWriter {
        ObjectWriter {
            store: Arc::clone(&self.store),
            key,
            buffer: PutPayloadMut::new(),
            multipart: None,
        }
    }

    /// The object's size and its bytes as a stream.
    pub async fn read(&self, key: &Path) -> Result<(u64, BoxStream<'static, object_store::Result<Bytes>>), ApiError> {
        let found = self.store.get(key).await.map_err(unavailable)?;
        Ok((found.meta.size, found.into_stream()))
    }

    /// A small object's bytes, whole.
    pub async fn get(&self, key: &Path) -> Result<Bytes, ApiError> {
        let found = self.store.get(key).await.map_err(unavailable)?;
        found.bytes().await.map_err(unavailable)
    }

    /// Writes a small object in one request.
    pub async fn put(&self, key: &Path, bytes: Vec<u8>) -> Result<(), ApiError> {
        self.store
            .put(key, PutPayload::from(bytes))
            .await
            .map(drop)
            .map_err(unavailable)
    }

    pub async fn exists(&self, key: &Path) -> Result<bool, ApiError> {
        match self.store.head(key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The key of every object in the store.
    pub async fn keys(&self) -> Result<Vec<Path>, ApiError> {
        self.store
            .list(None)
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(unavailable)
    }

    /// Deletes the object; one already gone counts as deleted.
    pub async fn delete(&self, key: &Path) -> Result<(), ApiError> {
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The key of every object under `prefix` last modified more than `age` ago.
    pub fn list_older_than(&self, prefix: &str, age: Duration) -> BoxStream<'static, Result<Path, ApiError>> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let before = now.saturating_sub(age).as_secs() as i64;
        self.store
            .list(Some(&Path::from(prefix)))
            .map_err(unavailable)
            .try_filter_map(move |meta| async move {
                Ok((meta.last_modified.timestamp() < before).then_some(meta.location))
            })
            .boxed()
    }

    /// Writes, reads back and deletes a small object (`check --deploy --connect`, W019).
    pub async fn probe(&self) -> anyhow::Result<()> {
        let key = Path::from(format!("probe/{}", uuid::Uuid::new_v4()));
        let written = b"shipshape storage probe";
        self.put(&key, written.to_vec()).await?;
        let read = self.get(&key).await;
        self.delete(&key).await?;
        anyhow::ensure!(
            read?[..] == written[..],
            "the probe object read back differs from what was written"
        );
        Ok(())
    }

    /// Whether the last health check passed (see [`Storage::watch_health`]).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Checks the store every few seconds for `/readyz`, until the last clone of this
    /// `Storage` is dropped. A missing object's metadata is the cheapest request that proves
    /// the store answers and accepts the credentials.
    pub fn watch_health(&self) {
        let store = Arc::downgrade(&self.store);
        let healthy: Weak<AtomicBool> = Arc::downgrade(&self.healthy);
        tokio::spawn(async move {
            let key = Path::from("health/readyz");
            loop {
                let (Some(store), Some(healthy)) = (store.upgrade(), healthy.upgrade()) else {
                    return;
                };
                let checked = tokio::time::timeout(HEALTH_TIMEOUT, store.head(&key)).await;
                let ok = matches!(checked, Ok(Ok(_) | Err(object_store::Error::NotFound { .. })));
                healthy.store(ok, Ordering::Relaxed);
                drop((store, healthy));
                tokio::time::sleep(HEALTH_INTERVAL).await;
            }
        });
    }
}

/// A storage failure as the client sees it: 503 with `Retry-After`, the cause logged. A
/// missing object is a 404.
fn unavailable(error: object_store::Error) -> ApiError {
    match error {
        object_store::Error::NotFound { .. } => ApiError::NotFound,
        other => ApiError::StorageUnavailable(other.into()),
    }
}

/// A new object written a chunk at a time: one `PUT` when it ends within one part, a
/// multipart upload otherwise. Only [`ObjectWriter::finish`] makes the object exist; a writer
/// dropped before (a failed or abandoned upload) leaves nothing behind.
pub struct ObjectWriter {
    store: Arc<dyn ObjectStore>,
    key: Path,
    buffer: PutPayloadMut,
    multipart: Option<WriteMultipart>,
}

impl ObjectWriter {
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), ApiError> {
        if let Some(upload) = &mut self.multipart {
            // At most one part in flight while the next fills.
            upload.wait_for_capacity(1).await.map_err(unavailable)?;
            upload.put(chunk);
            return Ok(());
        }
        self.buffer.push(chunk);
        if self.buffer.content_length() >= PART_BYTES {
            let upload = self.store.put_multipart(&self.key).await.map_err(unavailable)?;
            let mut upload = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
            for chunk in std::mem::take(&mut self.buffer).freeze().iter() {
                upload.put(chunk.clone());
            }
            self.multipart = Some(upload);
        }
        Ok(())
    }

    /// Completes the object.
    pub async fn finish(mut self) -> Result<(), ApiError> {
        match self.multipart.take() {
            Some(upload) => upload.finish().await.map(drop).map_err(unavailable),
            None => {
                let payload = std::mem::take(&mut self.buffer).freeze();
                self.store.put(&self.key, payload).await.map(drop).map_err(unavailable)
            }
        }
    }
}

impl Drop for ObjectWriter {
    /// An unfinished multipart upload is aborted, so its parts are not kept (and billed) by S3.
    fn drop(&mut self) {
        if let Some(upload) = self.multipart.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                if let Err(e) = upload.abort().await {
                    tracing::warn!(error = %e, "could not abort an unfinished upload");
                }
            });
        }
    }
}
