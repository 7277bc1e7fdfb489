//! `gs://bucket/object` through object_store: Application Default
//! Credentials, or `STORAGE_EMULATOR_HOST=host:port` (the Go client's
//! convention, no scheme) for an emulator over plain HTTP without auth.

use anyhow::{anyhow, Result};
use futures_util::TryStreamExt;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::{ClientOptions, ObjectStoreExt};
use tokio_util::io::StreamReader;
use url::Url;

use super::{bucket_and_key, Object, Permanent};

/// Starts a GET of the object and returns the body as a stream.
pub async fn open(url: &Url) -> Result<Object> {
    let (bucket, key) = bucket_and_key(url)?;
    let mut builder = GoogleCloudStorageBuilder::from_env().with_bucket_name(&bucket);
    if let Some(host) = std::env::var("STORAGE_EMULATOR_HOST")
        .ok()
        .filter(|h| !h.is_empty())
    {
        let base = if host.contains("://") {
            host
        } else {
            format!("http://{host}")
        };
        log::info!("GCS emulator: {base}");
        builder = builder
            .with_base_url(&base)
            .with_skip_signature(true)
            .with_client_options(ClientOptions::new().with_allow_http(true));
    }
    let store = builder
        .build()
        .map_err(|e| anyhow!(Permanent(format!("{url}: {e}"))))?;
    let path = object_store::path::Path::from(key.as_str());
    let result = store.get(&path).await.map_err(|e| describe(e, url))?;
    let size = Some(result.meta.size);
    let stream = result.into_stream().map_err(std::io::Error::other);
    Ok(Object {
        body: Box::new(StreamReader::new(stream)),
        size,
    })
}

/// One line naming the URL and the cause. Every kind is worth another
/// attempt: an object may appear, a grant may land.
fn describe(err: object_store::Error, url: &Url) -> anyhow::Error {
    match err {
        object_store::Error::NotFound { .. } => {
            anyhow!("{url}: not found (no such bucket or object)")
        }
        object_store::Error::PermissionDenied { source, .. } => {
            anyhow!("{url}: access denied: {source}")
        }
        object_store::Error::Unauthenticated { source, .. } => {
            anyhow!("{url}: no usable credentials: {source}")
        }
        e => anyhow!("{url}: {e}"),
    }
}
