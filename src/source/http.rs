//! `http://` and `https://`: `User-Agent: Stretcher/<version>`, proxies from
//! the environment, redirects followed, and any non-2xx status an error
//! (worth another attempt, whatever the status: a mirror may lag an upload).

use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use futures_util::TryStreamExt;
use tokio_util::io::StreamReader;
use url::Url;

use super::Object;

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
pub async fn open(url: &Url) -> Result<Object> {
    let response = client()?
        .get(url.clone())
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        bail!("HTTP status {status} from {url}");
    }
    let size = response.content_length();
    let stream = response.bytes_stream().map_err(std::io::Error::other);
    Ok(Object {
        body: Box::new(StreamReader::new(stream)),
        size,
    })
}
