//! `http://` and `https://`: `User-Agent: Stretcher/<version>`, proxies from
//! the environment, redirects followed, and any non-2xx status an error.

use std::sync::OnceLock;

use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use tokio_util::io::StreamReader;
use url::Url;

use super::Body;

/// A non-2xx HTTP response.
#[derive(Debug)]
pub struct HttpStatusError {
    /// The response status code.
    pub status: u16,
    /// The URL that answered it.
    pub url: String,
}

impl std::fmt::Display for HttpStatusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP status {} from {}", self.status, self.url)
    }
}

impl std::error::Error for HttpStatusError {}

impl HttpStatusError {
    /// 5xx, 408 and 429 are worth another attempt; other 4xx are not.
    pub fn is_retryable(&self) -> bool {
        self.status >= 500 || self.status == 408 || self.status == 429
    }
}

fn client() -> Result<&'static reqwest::Client> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(c);
    }
    let built = reqwest::Client::builder()
        .user_agent(concat!("Stretcher/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client")?;
    Ok(CLIENT.get_or_init(|| built))
}

/// Sends a GET and returns the body as a stream.
pub async fn open(url: &Url) -> Result<Body> {
    let response = client()?
        .get(url.clone())
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(HttpStatusError {
            status: status.as_u16(),
            url: url.to_string(),
        }
        .into());
    }
    let stream = response.bytes_stream().map_err(std::io::Error::other);
    Ok(Box::new(StreamReader::new(stream)))
}
