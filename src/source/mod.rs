//! Where manifests and archives come from: one module per URL scheme, each
//! returning an async byte stream. A source knows nothing of manifests.

mod file;
#[cfg(feature = "gcs")]
mod gcs;
mod http;
#[cfg(feature = "s3")]
mod s3;

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt};
use url::Url;

/// An open byte stream from a source.
pub type Body = Box<dyn AsyncRead + Send + Unpin>;

/// An opened object: its bytes, and its size when the source says it (a
/// file's length, `Content-Length`, the object's size in the store).
pub struct Object {
    /// The bytes.
    pub body: Body,
    /// How many bytes `body` will yield, if known in advance.
    pub size: Option<u64>,
}

/// Opens `url` for reading. Scheme errors use upstream's wording.
pub async fn open(url: &str) -> Result<Object> {
    log::info!("Loading URL {url}");
    let parsed = Url::parse(url).map_err(|e| Permanent(format!("invalid URL {url}: {e}")))?;
    match parsed.scheme() {
        "file" => file::open(&parsed).await,
        "http" | "https" => http::open(&parsed).await,
        #[cfg(feature = "s3")]
        "s3" => s3::open(&parsed).await,
        #[cfg(feature = "gcs")]
        "gs" => gcs::open(&parsed).await,
        #[cfg(not(feature = "s3"))]
        "s3" => Err(Permanent(format!(
            "s3:// support is not built in (build with --features s3): {url}"
        ))
        .into()),
        #[cfg(not(feature = "gcs"))]
        "gs" => Err(Permanent(format!(
            "gs:// support is not built in (build with --features gcs): {url}"
        ))
        .into()),
        _ => Err(Permanent(format!(
            "manifest URL scheme must be s3, gs, http(s) or file: {url}"
        ))
        .into()),
    }
}

/// The largest manifest: a root agent holds no more of what a server sends
/// before the manifest is verified.
pub const MAX_MANIFEST: u64 = 1 << 20;

/// Reads a manifest into a string. Reading stops past [`MAX_MANIFEST`]
/// bytes: a larger one is refused, naming the URL, and the rest is never
/// read.
pub async fn read_to_string(url: &str) -> Result<String> {
    let body = open(url).await?.body;
    let mut bytes = Vec::new();
    body.take(MAX_MANIFEST + 1)
        .read_to_end(&mut bytes)
        .await
        .with_context(|| format!("reading {url}"))?;
    if bytes.len() as u64 > MAX_MANIFEST {
        bail!("{url} is larger than 1 MiB: too large for a manifest");
    }
    String::from_utf8(bytes).map_err(|_| anyhow!("reading {url}: the manifest is not UTF-8"))
}

/// An error that cannot change between attempts: a malformed URL, an
/// unsupported scheme, no region configured. Everything else (a 404 or a
/// missing key included: a mirror or CDN may lag an upload) is worth another
/// attempt, as in Go stretcher.
#[derive(Debug)]
pub struct Permanent(pub String);

impl std::fmt::Display for Permanent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Permanent {}

/// Whether a failed attempt may succeed when tried again.
pub fn is_retryable(err: &anyhow::Error) -> bool {
    !err.chain().any(|e| e.is::<Permanent>())
}

/// Runs `attempt` until it succeeds, at most `retry` extra times, waiting
/// `wait` between attempts, for any error but a [`Permanent`] one. Each
/// failure is logged as Go stretcher does (`Get <what> failed: …`, `Try
/// again. Waiting: 3s`); the last error is returned as it is.
pub async fn with_retries<T, F, Fut>(
    what: &str,
    retry: u32,
    wait: Duration,
    mut attempt: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut failures = 0;
    loop {
        match attempt().await {
            Err(e) if failures < retry && is_retryable(&e) => {
                failures += 1;
                log::info!("Get {what} failed: {e:#}");
                log::info!(
                    "Try again. Waiting: {}",
                    crate::units::format_duration(wait)
                );
                tokio::time::sleep(wait).await;
            }
            done => return done,
        }
    }
}

/// `bucket` and percent-decoded `key` of an `s3://bucket/key` or
/// `gs://bucket/object` URL.
#[cfg(any(feature = "s3", feature = "gcs"))]
fn bucket_and_key(url: &Url) -> Result<(String, String)> {
    let bucket = url.host_str().unwrap_or_default().to_string();
    let key = percent_encoding::percent_decode_str(url.path().trim_start_matches('/'))
        .decode_utf8()
        .with_context(|| format!("key is not UTF-8: {url}"))?
        .into_owned();
    if bucket.is_empty() || key.is_empty() {
        return Err(Permanent(format!("expected {}://bucket/key: {url}", url.scheme())).into());
    }
    Ok((bucket, key))
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn unknown_schemes_are_named() {
        let err = super::open("ftp://host/m.yml").await.err().unwrap();
        assert_eq!(
            err.to_string(),
            "manifest URL scheme must be s3, gs, http(s) or file: ftp://host/m.yml"
        );
    }

    #[cfg(not(feature = "s3"))]
    #[tokio::test]
    async fn s3_without_its_feature_names_the_feature() {
        let err = super::open("s3://bucket/m.yml").await.err().unwrap();
        assert!(err.to_string().contains("--features s3"), "{err}");
    }

    #[cfg(not(feature = "gcs"))]
    #[tokio::test]
    async fn gs_without_its_feature_names_the_feature() {
        let err = super::open("gs://bucket/m.yml").await.err().unwrap();
        assert!(err.to_string().contains("--features gcs"), "{err}");
    }
}
