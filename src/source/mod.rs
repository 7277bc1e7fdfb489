//! Where manifests and archives come from: one module per URL scheme, each
//! returning an async byte stream. A source knows nothing of manifests.

mod file;
mod http;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt};
use url::Url;

pub use http::HttpStatusError;

/// An open byte stream from a source.
pub type Body = Box<dyn AsyncRead + Send + Unpin>;

/// Opens `url` for reading. Scheme errors use upstream's wording.
pub async fn open(url: &str) -> Result<Body> {
    log::info!("Loading URL {url}");
    let parsed = Url::parse(url).with_context(|| format!("invalid URL: {url}"))?;
    match parsed.scheme() {
        "file" => file::open(&parsed).await,
        "http" | "https" => http::open(&parsed).await,
        _ => bail!("manifest URL scheme must be s3, gs, http(s) or file: {url}"),
    }
}

/// Reads a whole (small) object, such as a manifest, into a string.
pub async fn read_to_string(url: &str) -> Result<String> {
    let mut body = open(url).await?;
    let mut text = String::new();
    body.read_to_string(&mut text)
        .await
        .with_context(|| format!("reading {url}"))?;
    Ok(text)
}

/// Whether a failed attempt may succeed when tried again: everything but a
/// definite client error (HTTP 4xx other than 408 and 429).
pub fn is_retryable(err: &anyhow::Error) -> bool {
    err.chain()
        .find_map(|e| e.downcast_ref::<HttpStatusError>())
        .is_none_or(HttpStatusError::is_retryable)
}
