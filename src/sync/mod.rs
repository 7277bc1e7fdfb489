//! Moving the extracted tree into `dest`: one strategy per file behind one
//! trait, chosen by the manifest's `sync_strategy`.

mod mv;
mod rsync;

use std::path::Path;

use anyhow::{bail, Result};
use tokio_util::sync::CancellationToken;

pub use mv::Mv;
pub use rsync::Rsync;

/// Makes `to` hold exactly the tree at `from`.
pub trait SyncStrategy: Send + Sync {
    /// Syncs the extracted tree `from` into `to`. Blocking; stops early
    /// (with an error) when `cancel` fires.
    fn sync(&self, from: &Path, to: &Path, cancel: &CancellationToken) -> Result<()>;
}

/// Manifest settings a strategy needs.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// rsync `--exclude` patterns, in order.
    pub excludes: Vec<String>,
    /// rsync `--exclude-from` file, relative to the extracted tree.
    pub exclude_from: String,
    /// rsync verbosity argument; empty adds none.
    pub rsync_verbose: String,
}

/// Picks the strategy named in the manifest (`""` is rsync).
pub fn from_name(name: &str, settings: Settings) -> Result<Box<dyn SyncStrategy>> {
    match name {
        "" | "rsync" => Ok(Box::new(Rsync(settings))),
        "mv" => Ok(Box::new(Mv)),
        _ => bail!("invalid strategy name: {name}"),
    }
}
