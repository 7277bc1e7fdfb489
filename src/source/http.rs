//! `http://` and `https://`: `User-Agent: Stretcher/<version>`, proxies from
//! the environment, redirects followed, and any non-2xx status an error
//! (worth another attempt, whatever the status: a mirror may lag an upload).

use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use url::Url;

use super::{content_range, stream_body, Object, Range, RangeMiss, Ranged};

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
    Ok(Object {
        body: stream_body(response.bytes_stream()),
        size,
    })
}

/// Sends a GET for `range` (with `If-Match` when `etag` is given). A `200`
/// (the whole object) or a `412` (the object changed) is a [`RangeMiss`].
pub async fn open_range(url: &Url, range: Range, etag: Option<&str>) -> Result<Ranged> {
    let mut request = client()?
        .get(url.clone())
        .header(reqwest::header::RANGE, range.header());
    if let Some(etag) = etag {
        request = request.header(reqwest::header::IF_MATCH, etag);
    }
    let response = request.send().await.with_context(|| format!("GET {url}"))?;
    match response.status().as_u16() {
        206 => {}
        200 => return Err(RangeMiss::NoRanges.into()),
        412 => return Err(RangeMiss::Changed.into()),
        status => bail!("HTTP status {status} from {url} for {}", range.header()),
    }
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let etag = header(reqwest::header::ETAG);
    let Some((start, len, total)) =
        header(reqwest::header::CONTENT_RANGE).and_then(|v| content_range(&v))
    else {
        bail!("no usable Content-Range from {url}");
    };
    Ok(Ranged {
        body: stream_body(response.bytes_stream()),
        start,
        len,
        total,
        etag,
    })
}
