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

/// A [`Body`] reading the chunks of a client's byte stream.
fn stream_body<S, E>(chunks: S) -> Body
where
    S: futures_util::Stream<Item = std::result::Result<bytes::Bytes, E>> + Send + Unpin + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    use futures_util::TryStreamExt;
    Box::new(tokio_util::io::StreamReader::new(
        chunks.map_err(std::io::Error::other),
    ))
}

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

/// A byte range of an object, for a delta fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// The last this many bytes.
    Suffix(u64),
    /// Bytes from `.0` up to (not including) `.1`.
    Bounded(u64, u64),
}

impl Range {
    /// The HTTP `Range` header value: `bytes=-N` or `bytes=A-B`.
    pub fn header(self) -> String {
        match self {
            Range::Suffix(n) => format!("bytes=-{n}"),
            Range::Bounded(a, b) => format!("bytes={a}-{}", b.saturating_sub(1)),
        }
    }
}

/// What a ranged read returned.
pub struct Ranged {
    /// The bytes of the range.
    pub body: Body,
    /// Where they start in the object.
    pub start: u64,
    /// How many there are.
    pub len: u64,
    /// The object's size.
    pub total: u64,
    /// The object's version tag (HTTP `ETag`), when the source gives one.
    pub etag: Option<String>,
}

/// Why a source could not serve a range: it answered with the whole
/// object (no range support), or the object changed (its ETag differs).
#[derive(Debug)]
pub enum RangeMiss {
    /// The server sent the whole object.
    NoRanges,
    /// The object's ETag is not the one asked for.
    Changed,
}

impl std::fmt::Display for RangeMiss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RangeMiss::NoRanges => "the server does not serve ranges",
            RangeMiss::Changed => "the archive changed on the server (ETag)",
        })
    }
}

impl std::error::Error for RangeMiss {}

/// Reads `range` of the object at `url` (http(s), s3, gs), as the object
/// tagged `etag` when one is given. One request, no retries: a delta
/// fetch that misses falls back to the whole download.
pub async fn open_range(url: &str, range: Range, etag: Option<&str>) -> Result<Ranged> {
    let parsed = Url::parse(url).map_err(|e| Permanent(format!("invalid URL {url}: {e}")))?;
    let ranged = match parsed.scheme() {
        "http" | "https" => http::open_range(&parsed, range, etag).await?,
        #[cfg(feature = "s3")]
        "s3" => s3::open_range(&parsed, range, etag).await?,
        #[cfg(feature = "gcs")]
        "gs" => gcs::open_range(&parsed, range, etag).await?,
        _ => anyhow::bail!("no ranged reads for {url}"),
    };
    if let (Some(want), Some(got)) = (etag, ranged.etag.as_deref()) {
        if want != got {
            return Err(RangeMiss::Changed.into());
        }
    }
    let asked = match range {
        Range::Suffix(n) => (ranged.total.saturating_sub(n), ranged.total),
        Range::Bounded(a, b) => (a, b.min(ranged.total)),
    };
    anyhow::ensure!(
        (ranged.start, ranged.start + ranged.len) == asked,
        "{url}: asked for {}, got bytes {}-{} of {}",
        range.header(),
        ranged.start,
        ranged.start + ranged.len,
        ranged.total
    );
    Ok(ranged)
}

/// Parses a `Content-Range: bytes A-B/TOTAL` value into (start, len,
/// total).
pub(crate) fn content_range(value: &str) -> Option<(u64, u64, u64)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    let (a, b, total): (u64, u64, u64) = (a.parse().ok()?, b.parse().ok()?, total.parse().ok()?);
    (a <= b && b < total).then(|| (a, b - a + 1, total))
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
    #[test]
    fn content_ranges_parse_and_range_headers_render() {
        assert_eq!(
            super::content_range("bytes 0-99/1000"),
            Some((0, 100, 1000))
        );
        assert_eq!(super::content_range("bytes 5-4/10"), None);
        assert_eq!(super::content_range("bytes 0-10/10"), None);
        assert_eq!(super::content_range("bytes */10"), None);
        assert_eq!(super::Range::Suffix(82).header(), "bytes=-82");
        assert_eq!(super::Range::Bounded(10, 20).header(), "bytes=10-19");
    }

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
