//! `gs://bucket/object` through object_store: Application Default
//! Credentials, or `STORAGE_EMULATOR_HOST=host:port` (the Go client's
//! convention, no scheme) for an emulator over plain HTTP without auth.

use anyhow::{anyhow, Result};
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::{ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use url::Url;

use super::{bucket_and_key, stream_body, Object, Permanent, Range, RangeMiss, Ranged};

/// The store holding `url`'s object, and the object's path in it.
fn store(url: &Url) -> Result<(impl ObjectStore, object_store::path::Path)> {
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
    Ok((store, object_store::path::Path::from(key.as_str())))
}

/// Starts a GET of the object and returns the body as a stream.
pub async fn open(url: &Url) -> Result<Object> {
    let (store, path) = store(url)?;
    let result = store.get(&path).await.map_err(|e| describe(e, url))?;
    let size = Some(result.meta.size);
    Ok(Object {
        body: stream_body(result.into_stream()),
        size,
    })
}

/// A ranged GET of the object (with `If-Match` when `etag` is given).
pub async fn open_range(url: &Url, range: Range, etag: Option<&str>) -> Result<Ranged> {
    let (store, path) = store(url)?;
    let options = GetOptions {
        range: Some(match range {
            Range::Suffix(n) => GetRange::Suffix(n),
            Range::Bounded(a, b) => GetRange::Bounded(a..b),
        }),
        if_match: etag.map(str::to_string),
        ..GetOptions::default()
    };
    let result = store.get_opts(&path, options).await.map_err(|e| match e {
        object_store::Error::Precondition { .. } => anyhow!(RangeMiss::Changed),
        e => describe(e, url),
    })?;
    let (start, len, total) = (
        result.range.start,
        result.range.end - result.range.start,
        result.meta.size,
    );
    let etag = result.meta.e_tag.clone();
    Ok(Ranged {
        body: stream_body(result.into_stream()),
        start,
        len,
        total,
        etag,
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
