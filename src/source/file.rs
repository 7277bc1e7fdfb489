//! `file:///abs/path` (percent-decoded).

use anyhow::{anyhow, Context, Result};
use url::Url;

use super::Object;

/// Opens the local file a `file://` URL names.
pub async fn open(url: &Url) -> Result<Object> {
    let path = url
        .to_file_path()
        .map_err(|()| anyhow!("not a local absolute path: {url}"))?;
    let file = tokio::fs::File::open(&path)
        .await
        .with_context(|| format!("open {}", path.display()))?;
    let size = file.metadata().await.ok().map(|m| m.len());
    Ok(Object {
        body: Box::new(file),
        size,
    })
}
