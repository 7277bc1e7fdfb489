//! The replay guard (`--state-dir`): remembers the last deployed event per
//! event source and name, and what each dest last received. `consul watch`
//! hands its handler the whole recent event list on start, reload and
//! restart; with this, only a newer event deploys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::event::Source;

const FILE: &str = "state.json";

/// The last deployed event of one source and name.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Deployed {
    /// Consul event ID (empty for Serf).
    #[serde(default)]
    pub id: String,
    /// Lamport time, when the source gave one.
    #[serde(default)]
    pub ltime: Option<u64>,
}

/// What a dest last received.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DestRecord {
    /// Manifest URL.
    pub manifest: String,
    /// Archive checksum (empty for a commands-only manifest).
    pub checksum: String,
    /// The event label, when the deploy came from an event.
    #[serde(default)]
    pub event: Option<String>,
    /// RFC 3339 time of the deploy.
    pub deployed_at: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    #[serde(default)]
    events: BTreeMap<String, Deployed>,
    #[serde(default)]
    dests: BTreeMap<String, DestRecord>,
}

/// The state directory.
pub struct StateDir {
    dir: PathBuf,
}

fn key(source: &Source) -> String {
    format!("{}:{}", source.system, source.name)
}

impl StateDir {
    /// Uses `dir`, creating it when missing.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating state dir {}", dir.display()))?;
        Ok(StateDir {
            dir: dir.to_path_buf(),
        })
    }

    fn load(&self) -> Result<State> {
        let path = self.dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading state file {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e).with_context(|| format!("reading state file {}", path.display())),
        }
    }

    /// True when `source` is the same event as, or older than, the last one
    /// deployed from the same system and event name.
    pub fn already_deployed(&self, source: &Source) -> Result<bool> {
        let state = self.load()?;
        let Some(last) = state.events.get(&key(source)) else {
            return Ok(false);
        };
        Ok(match (source.ltime, last.ltime) {
            (Some(now), Some(then)) => now <= then,
            _ => !source.id.is_empty() && source.id == last.id,
        })
    }

    /// Records a successful deploy, atomically (write to a temp file, rename).
    pub fn record(&self, source: Option<&Source>, dest: &str, record: DestRecord) -> Result<()> {
        let mut state = self.load()?;
        if let Some(source) = source {
            state.events.insert(
                key(source),
                Deployed {
                    id: source.id.clone(),
                    ltime: source.ltime,
                },
            );
        }
        if !dest.is_empty() {
            state.dests.insert(dest.to_string(), record);
        }
        write_atomic(&self.dir.join(FILE), &serde_json::to_vec_pretty(&state)?)
    }
}

/// Writes `data` to `path` through a temp file in the same directory, so a
/// reader sees the old or the new content, never half of it.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".stretcher")
        .tempfile_in(dir)
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consul(id: &str, ltime: u64) -> Source {
        Source {
            system: "consul",
            name: "deploy".into(),
            id: id.into(),
            ltime: Some(ltime),
        }
    }

    #[test]
    fn only_newer_events_deploy() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        assert!(!state.already_deployed(&consul("a", 5)).unwrap());
        state
            .record(Some(&consul("a", 5)), "/srv/app", DestRecord::default())
            .unwrap();
        assert!(state.already_deployed(&consul("a", 5)).unwrap());
        assert!(state.already_deployed(&consul("old", 4)).unwrap());
        assert!(!state.already_deployed(&consul("b", 6)).unwrap());
        let other = Source {
            name: "other".into(),
            ..consul("c", 1)
        };
        assert!(!state.already_deployed(&other).unwrap());
    }
}
