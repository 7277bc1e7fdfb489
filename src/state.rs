//! The replay guard (`--state-dir`): remembers which events were deployed,
//! per event source and name, and what each dest last received. `consul
//! watch` hands its handler the whole recent event list on start, reload and
//! restart; with this, an event already deployed is skipped.
//!
//! "Already deployed" (SPEC 8.4): a Consul event whose ID is among the IDs
//! recently deployed under its name (a rebuilt cluster makes new IDs with
//! low LTimes, and those deploy); a Serf user event or query whose LTime is
//! not above the recorded one for its name, unless it is so far below that
//! Serf could not be replaying it (the cluster's clock was reset). User
//! events and queries have separate clocks and are recorded apart.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::event::{Source, System};
use crate::lock::{resolve, resolve_link};

const FILE: &str = "state.json";
const LOCK: &str = "state.lock";

/// Deployed Consul event IDs kept per event name: more than the 256 events
/// Consul's event buffer can hand back on a replay.
const RECENT_IDS: usize = 300;

/// Serf's event and query buffers hold this many LTimes: Serf never
/// replays an event further back than that, so an LTime lower than the
/// recorded one by more than this comes from a reset clock.
const SERF_BUFFER: u64 = 512;

/// What the guard remembers of one event source and name.
///
/// State files written before `recent_ids` existed hold only `id` and
/// `ltime`; on reading, a Consul record's `id` becomes its one recent ID.
/// `id` and `ltime` are still written, so older versions keep reading them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Deployed {
    /// The last deployed event's Consul ID (empty for Serf).
    #[serde(default)]
    pub id: String,
    /// Consul: the last deployed event's LTime. Serf: the highest LTime
    /// deployed on the current clock, which later events are compared with.
    #[serde(default)]
    pub ltime: Option<u64>,
    /// Consul: the IDs of recently deployed events, oldest first, at most
    /// [`RECENT_IDS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_ids: Vec<String>,
}

/// What the replay guard makes of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not deployed before: deploy it.
    New,
    /// Already deployed: skip it.
    Replay,
    /// A Serf LTime too far below the `recorded` one to be a replay: the
    /// cluster's clock was reset, so deploy it.
    ClockReset {
        /// The LTime recorded for the event's name.
        recorded: u64,
    },
}

impl Deployed {
    /// Decides whether `source` was already deployed, given this record of
    /// its source and name.
    pub fn judge(&self, source: &Source) -> Verdict {
        match source.system {
            System::Consul => {
                if !source.id.is_empty() && self.recent_ids.contains(&source.id) {
                    Verdict::Replay
                } else {
                    Verdict::New
                }
            }
            System::SerfEvent | System::SerfQuery => match (source.ltime, self.ltime) {
                (Some(now), Some(then)) if now > then => Verdict::New,
                (Some(now), Some(then)) if then - now > SERF_BUFFER => {
                    Verdict::ClockReset { recorded: then }
                }
                (Some(_), Some(_)) => Verdict::Replay,
                _ => Verdict::New,
            },
        }
    }

    /// Notes that `source` deployed.
    pub fn note(&mut self, source: &Source) {
        match source.system {
            System::Consul => {
                if source.id.is_empty() {
                    return;
                }
                self.recent_ids.retain(|id| *id != source.id);
                self.recent_ids.push(source.id.clone());
                let excess = self.recent_ids.len().saturating_sub(RECENT_IDS);
                self.recent_ids.drain(..excess);
                self.id = source.id.clone();
                self.ltime = source.ltime;
            }
            System::SerfEvent | System::SerfQuery => {
                let Some(now) = source.ltime else { return };
                // A forced redeploy of an older event keeps the newer
                // reading; an event from a reset clock starts over.
                if self.judge(source) != Verdict::Replay {
                    self.ltime = Some(now);
                }
            }
        }
    }

    /// Upgrades a record read from an older state file.
    fn migrate(&mut self) {
        if self.recent_ids.is_empty() && !self.id.is_empty() {
            self.recent_ids.push(self.id.clone());
        }
    }
}

/// What a dest last received. Kept under the dest's resolved path (see
/// [`DestId`]); files written before that keep it under the manifest's
/// spelling, which is still read, and moved on the next write.
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
    /// The `timestamp:` (Unix seconds) of the signature of the newest
    /// manifest that changed this dest, whether or not its deploy then
    /// succeeded (SPEC 8.5): a manifest signed earlier is a downgrade. Only
    /// `--allow-downgrade` lowers it; a deploy without a signature time
    /// leaves it. Absent from files written before signatures were checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_at: Option<u64>,
    /// Rollbacks by `stretcher rollback` since this deploy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rolled_back: Vec<RolledBack>,
}

/// A rollback of a release-managed dest (SPEC 8.2).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RolledBack {
    /// The release rolled back from (its name holds the first 8 of its
    /// archive's checksum).
    pub from: String,
    /// The release now live.
    pub to: String,
    /// RFC 3339 time of the rollback.
    pub at: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    #[serde(default)]
    events: BTreeMap<String, Deployed>,
    #[serde(default)]
    dests: BTreeMap<String, DestRecord>,
}

impl State {
    /// Every record of `dest`, under any spelling of it, as one.
    fn dest(&self, dest: &DestId) -> Option<DestRecord> {
        let ours = self.dests.iter().filter(|(key, _)| dest.names(key));
        ours.map(|(_, record)| record.clone()).reduce(merge)
    }

    /// Removes every record of `dest` and returns them as one (an empty
    /// record when there is none), to be put back under `dest`'s key.
    fn take_dest(&mut self, dest: &DestId) -> DestRecord {
        let (ours, others) = std::mem::take(&mut self.dests)
            .into_iter()
            .partition::<BTreeMap<_, _>, _>(|(key, _)| dest.names(key));
        self.dests = others;
        ours.into_values().reduce(merge).unwrap_or_default()
    }
}

/// Two records of one dest (kept under two spellings of it by an earlier
/// version) as one: the later deploy's, with the higher signature time and
/// the rollbacks of both.
fn merge(a: DestRecord, b: DestRecord) -> DestRecord {
    let when = |r: &DestRecord| chrono::DateTime::parse_from_rfc3339(&r.deployed_at).ok();
    let (mut later, earlier) = if when(&b) > when(&a) { (b, a) } else { (a, b) };
    later.signed_at = later.signed_at.max(earlier.signed_at);
    later.rolled_back.extend(earlier.rolled_back);
    later.rolled_back.sort_by(|x, y| x.at.cmp(&y.at));
    later
}

/// A dest however a manifest or a command line writes it (`dest/`,
/// `x/../dest`, relative, through a symlinked parent): resolved as the
/// dest lock resolves it.
struct DestId {
    /// Parents resolved, dest itself not followed: the key of its record.
    link: PathBuf,
    /// Every existing part resolved, dest itself followed.
    real: PathBuf,
}

impl DestId {
    fn of(dest: &Path) -> Self {
        DestId {
            link: resolve_link(dest),
            real: resolve(dest),
        }
    }

    /// The state file key its record is written under.
    fn key(&self) -> String {
        self.link.display().to_string()
    }

    /// Whether the state file key `key` (written by this version, or a
    /// manifest's spelling written by an earlier one) is this dest.
    fn names(&self, key: &str) -> bool {
        let other = DestId::of(Path::new(key));
        other.link == self.link || other.real == self.real
    }
}

/// The state directory.
pub struct StateDir {
    dir: PathBuf,
}

/// The record name of an event: `consul:deploy`, `serf:deploy` or
/// `serf-query:deploy`.
fn key(source: &Source) -> String {
    format!("{}:{}", source.system.key(), source.name)
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

    /// Uses `dir` for a run that records in it: fails unless this run can
    /// (a state dir it may not write would turn the replay guard off).
    pub fn open_writable(dir: &Path) -> Result<Self> {
        let state = Self::open(dir)?;
        state
            .check_writable()
            .with_context(|| format!("state dir {} is not writable", dir.display()))?;
        Ok(state)
    }

    fn load(&self) -> Result<State> {
        let path = self.dir.join(FILE);
        let mut state: State = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading state file {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => {
                return Err(e).with_context(|| format!("reading state file {}", path.display()))
            }
        };
        state.events.values_mut().for_each(Deployed::migrate);
        Ok(state)
    }

    /// Takes the state dir's lock, so that one run at a time reads, changes
    /// and writes the state file; released when the file is dropped.
    fn lock(&self) -> Result<File> {
        let path = self.dir.join(LOCK);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        file.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(file)
    }

    /// True when `source` was already deployed (see the module docs). Logs
    /// when a Serf event deploys because the cluster's clock was reset.
    pub fn already_deployed(&self, source: &Source) -> Result<bool> {
        let state = self.load()?;
        let Some(recorded) = state.events.get(&key(source)) else {
            return Ok(false);
        };
        Ok(match recorded.judge(source) {
            Verdict::New => false,
            Verdict::Replay => true,
            Verdict::ClockReset { recorded } => {
                log::info!(
                    "Serf LTime {} is far below the recorded {recorded} for {}: \
                     the cluster's clock was reset; deploying",
                    source.ltime.unwrap_or_default(),
                    source.name
                );
                false
            }
        })
    }

    /// What `dest` last received, under any spelling of it, if a deploy to
    /// it was recorded.
    pub fn dest_record(&self, dest: &str) -> Result<Option<DestRecord>> {
        Ok(self.load()?.dest(&DestId::of(Path::new(dest))))
    }

    /// Records a successful deploy. The dest's signature time stays when
    /// `record` has none or an earlier one (only [`StateDir::note_signed`]
    /// lowers it). Runs take turns on the state dir's lock to read, change
    /// and write the state file, so none loses another's record; the write
    /// is atomic (a temp file renamed over the old one).
    pub fn record(
        &self,
        source: Option<&Source>,
        dest: &str,
        mut record: DestRecord,
    ) -> Result<()> {
        self.update(|state| {
            if let Some(source) = source {
                state.events.entry(key(source)).or_default().note(source);
            }
            if !dest.is_empty() {
                let dest = DestId::of(Path::new(dest));
                record.signed_at = record.signed_at.max(state.take_dest(&dest).signed_at);
                state.dests.insert(dest.key(), record);
            }
        })
    }

    /// Notes that `dest` now holds (some of) a tree from a manifest signed
    /// at `signed_at`, whatever becomes of the deploy: the dest's signature
    /// time is raised to it, or with `lower` (`--allow-downgrade`) set to
    /// it. The rest of the dest's record is left as it was.
    pub fn note_signed(&self, dest: &str, signed_at: u64, lower: bool) -> Result<()> {
        self.update(|state| {
            let dest = DestId::of(Path::new(dest));
            let mut record = state.take_dest(&dest);
            record.signed_at = match lower {
                true => Some(signed_at),
                false => record.signed_at.max(Some(signed_at)),
            };
            state.dests.insert(dest.key(), record);
        })
    }

    /// Reads, changes and writes the state file under the state dir's
    /// lock, so no run loses another's change; the write is atomic.
    fn update(&self, change: impl FnOnce(&mut State)) -> Result<()> {
        let _lock = self.lock()?;
        let mut state = self.load()?;
        change(&mut state);
        let data = serde_json::to_vec_pretty(&state)?;
        write_atomic(&self.dir.join(FILE), &data, 0o600)
    }

    /// The state dir's path.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Fails unless this run may take the state dir's lock, read the state
    /// file and write a new one beside it (what recording needs), changing
    /// nothing.
    pub fn check_writable(&self) -> Result<()> {
        let _lock = self.lock()?;
        self.load()?;
        tempfile::tempfile_in(&self.dir)
            .with_context(|| format!("creating a file in {}", self.dir.display()))?;
        Ok(())
    }

    /// Adds a rollback of `dest` from release `from` to `to` to its record,
    /// however it is spelled (a trailing `/`, a symlinked parent).
    pub fn record_rollback(&self, dest: &Path, from: &str, to: &str) -> Result<()> {
        let rollback = RolledBack {
            from: from.to_string(),
            to: to.to_string(),
            at: chrono::Utc::now().to_rfc3339(),
        };
        self.update(|state| {
            let dest = DestId::of(dest);
            let mut record = state.take_dest(&dest);
            record.rolled_back.push(rollback);
            state.dests.insert(dest.key(), record);
        })
    }

    /// The rollbacks recorded for `dest`, under any spelling of it.
    pub fn rollbacks(&self, dest: &str) -> Result<Vec<RolledBack>> {
        Ok(self
            .dest_record(dest)?
            .map(|record| record.rolled_back)
            .unwrap_or_default())
    }
}

/// Every dest's last recorded deploy in the state dir `dir`, for `stretcher
/// status`: reads without creating or locking anything (the state file is
/// only ever replaced whole). A missing dir or file has none.
pub fn read_dests(dir: &Path) -> Result<BTreeMap<String, DestRecord>> {
    let state = StateDir {
        dir: dir.to_path_buf(),
    };
    Ok(state.load()?.dests)
}

/// Writes `data` to `path` through a temp file in the same directory, so a
/// reader sees the old or the new content, never half of it. The file gets
/// `mode`, less the umask.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".stretcher")
        .permissions(std::fs::Permissions::from_mode(mode))
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
            system: System::Consul,
            name: "deploy".into(),
            id: id.into(),
            ltime: Some(ltime),
        }
    }

    fn serf(system: System, ltime: Option<u64>) -> Source {
        Source {
            system,
            name: "deploy".into(),
            id: String::new(),
            ltime,
        }
    }

    fn consul_record(ids: &[&str]) -> Deployed {
        let mut record = Deployed::default();
        for (ltime, id) in (1..).zip(ids) {
            record.note(&consul(id, ltime));
        }
        record
    }

    fn serf_record(ltime: u64) -> Deployed {
        Deployed {
            ltime: Some(ltime),
            ..Deployed::default()
        }
    }

    #[test]
    fn consul_events_are_replays_when_their_id_was_deployed() {
        use Verdict::*;
        let ids = consul_record(&["a", "b", "c"]);
        for (record, event, want) in [
            (&ids, consul("c", 3), Replay),
            (&ids, consul("a", 1), Replay),
            (&ids, consul("d", 4), New),
            // A rebuilt cluster: new IDs, low LTimes.
            (&ids, consul("z", 1), New),
            (&ids, consul("", 2), New),
            (&Deployed::default(), consul("a", 1), New),
        ] {
            assert_eq!(record.judge(&event), want, "{event:?}");
        }
    }

    #[test]
    fn serf_ltimes_are_replays_unless_newer_or_from_a_reset_clock() {
        use Verdict::*;
        for system in [System::SerfEvent, System::SerfQuery] {
            for (recorded, ltime, want) in [
                (Some(10), Some(11), New),
                (Some(10), Some(10), Replay),
                (Some(10), Some(1), Replay),
                (Some(600), Some(88), Replay),
                (Some(600), Some(87), ClockReset { recorded: 600 }),
                (Some(2000), Some(3), ClockReset { recorded: 2000 }),
                (Some(10), None, New),
                (None, Some(1), New),
            ] {
                let record = Deployed {
                    ltime: recorded,
                    ..Deployed::default()
                };
                let event = serf(system, ltime);
                assert_eq!(record.judge(&event), want, "{recorded:?} {event:?}");
            }
        }
    }

    #[test]
    fn noting_a_deploy_moves_the_record_on() {
        use Verdict::*;
        for (mut record, event, want_ltime, then) in [
            (
                serf_record(10),
                serf(System::SerfEvent, Some(11)),
                Some(11),
                Replay,
            ),
            // --force on an older event keeps the newer reading.
            (
                serf_record(10),
                serf(System::SerfEvent, Some(4)),
                Some(10),
                Replay,
            ),
            // A reset clock starts over.
            (
                serf_record(2000),
                serf(System::SerfQuery, Some(3)),
                Some(3),
                Replay,
            ),
            // Without an LTime, nothing to record or compare.
            (
                serf_record(10),
                serf(System::SerfEvent, None),
                Some(10),
                New,
            ),
            (Deployed::default(), consul("a", 7), Some(7), Replay),
            (consul_record(&["a", "b"]), consul("z", 1), Some(1), Replay),
            (consul_record(&["a", "b"]), consul("", 9), Some(2), New),
        ] {
            record.note(&event);
            assert_eq!(record.ltime, want_ltime, "{event:?}");
            assert_eq!(record.judge(&event), then, "{event:?}");
        }
    }

    #[test]
    fn recent_consul_ids_are_bounded_and_redeploys_move_to_the_end() {
        let names: Vec<String> = (0..RECENT_IDS + 5).map(|i| format!("e{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut record = consul_record(&refs);
        assert_eq!(record.recent_ids.len(), RECENT_IDS);
        assert_eq!(record.judge(&consul("e4", 5)), Verdict::New);
        assert_eq!(record.judge(&consul("e5", 6)), Verdict::Replay);
        record.note(&consul("e5", 6));
        assert_eq!(record.recent_ids.len(), RECENT_IDS);
        assert_eq!(record.recent_ids.last().map(String::as_str), Some("e5"));
        assert_eq!(record.id, "e5");
    }

    #[test]
    fn state_files_of_the_previous_format_are_migrated() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE),
            r#"{"events":{"consul:deploy":{"id":"e1","ltime":7},
                          "serf:deploy":{"id":"","ltime":10}},"dests":{}}"#,
        )
        .unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        assert!(state.already_deployed(&consul("e1", 7)).unwrap());
        assert!(!state.already_deployed(&consul("e0", 3)).unwrap());
        assert!(state
            .already_deployed(&serf(System::SerfEvent, Some(10)))
            .unwrap());
        assert!(!state
            .already_deployed(&serf(System::SerfQuery, Some(10)))
            .unwrap());

        state
            .record(Some(&consul("e2", 8)), "", DestRecord::default())
            .unwrap();
        assert!(state.already_deployed(&consul("e1", 7)).unwrap());
        assert!(state.already_deployed(&consul("e2", 8)).unwrap());
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(FILE)).unwrap()).unwrap();
        let consul = &written["events"]["consul:deploy"];
        assert_eq!(
            consul["id"], "e2",
            "older versions still read id: {written}"
        );
        assert_eq!(consul["recent_ids"], serde_json::json!(["e1", "e2"]));
    }

    #[test]
    fn dest_records_keep_the_signature_time_and_older_files_still_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE),
            r#"{"events":{},"dests":{"/srv/app":{"manifest":"file:///m.yml",
                "checksum":"ab","event":null,"deployed_at":"2024-01-01T00:00:00+00:00"}}}"#,
        )
        .unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let old = state.dest_record("/srv/app").unwrap().unwrap();
        assert_eq!((old.checksum.as_str(), old.signed_at), ("ab", None));
        assert_eq!(state.dest_record("/srv/other").unwrap(), None);

        let signed = DestRecord {
            signed_at: Some(1_700_000_000),
            ..old
        };
        state.record(None, "/srv/app", signed.clone()).unwrap();
        assert_eq!(state.dest_record("/srv/app").unwrap(), Some(signed));
    }

    #[test]
    fn records_under_other_spellings_of_a_dest_are_read_as_one_and_moved_to_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("app")).unwrap();
        std::os::unix::fs::symlink(&root, root.join("link")).unwrap();
        let app = root.join("app").display().to_string();
        let state = StateDir::open(&root.join("state")).unwrap();
        // As earlier versions wrote them: keyed by each manifest's spelling.
        let older = serde_json::json!({"events": {}, "dests": {
            format!("{app}/"): {"manifest": "file:///v2.yml", "checksum": "b",
                "deployed_at": "2024-01-02T00:00:00+00:00", "signed_at": 200,
                "rolled_back": [{"from": "r3", "to": "r2", "at": "2024-01-03T00:00:00+00:00"}]},
            format!("{}/link/./app", root.display()): {"manifest": "file:///v3.yml",
                "checksum": "c", "deployed_at": "2024-01-04T00:00:00+00:00", "signed_at": 100},
            "/elsewhere/app": {"manifest": "file:///x.yml", "checksum": "x",
                "deployed_at": "2024-01-05T00:00:00+00:00", "signed_at": 900},
        }});
        std::fs::write(root.join("state").join(FILE), older.to_string()).unwrap();

        let up_and_back = format!("{}/state/../app", root.display());
        for spelling in [app.clone(), format!("{app}//"), up_and_back] {
            let got = state.dest_record(&spelling).unwrap().unwrap();
            assert_eq!(
                (got.manifest.as_str(), got.signed_at, got.rolled_back.len()),
                ("file:///v3.yml", Some(200), 1),
                "{spelling}"
            );
            assert_eq!(state.rollbacks(&spelling).unwrap()[0].from, "r3");
        }

        let deployed = DestRecord {
            manifest: "file:///v4.yml".into(),
            signed_at: Some(150),
            ..DestRecord::default()
        };
        state.record(None, &format!("{app}/"), deployed).unwrap();
        let dests = read_dests(&root.join("state")).unwrap();
        let keys: Vec<&str> = dests.keys().map(String::as_str).collect();
        assert_eq!(keys, ["/elsewhere/app", app.as_str()]);
        assert_eq!(dests[&app].signed_at, Some(200), "never lowered");
        assert_eq!(dests[&app].manifest, "file:///v4.yml");
        assert_eq!(dests[&app].rolled_back, []);
    }

    #[test]
    fn a_dests_signature_time_is_lowered_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let dest = dir.path().join("app").display().to_string();
        let signed_at = || state.dest_record(&dest).unwrap().unwrap().signed_at;
        let deploy = |signed_at| DestRecord {
            manifest: "file:///m.yml".into(),
            signed_at,
            ..DestRecord::default()
        };

        state.note_signed(&dest, 100, false).unwrap();
        assert_eq!(signed_at(), Some(100));
        state.note_signed(&dest, 50, false).unwrap();
        assert_eq!(signed_at(), Some(100));
        state.record(None, &dest, deploy(None)).unwrap();
        assert_eq!(signed_at(), Some(100), "a deploy without a signature time");
        state.record(None, &dest, deploy(Some(80))).unwrap();
        assert_eq!(signed_at(), Some(100));
        state.note_signed(&dest, 60, true).unwrap();
        assert_eq!(signed_at(), Some(60), "--allow-downgrade");
        let record = state.dest_record(&dest).unwrap().unwrap();
        assert_eq!(record.manifest, "file:///m.yml", "the rest is kept");
        state.record(None, &dest, deploy(Some(70))).unwrap();
        assert_eq!(signed_at(), Some(70));
    }

    #[test]
    fn user_events_and_queries_are_recorded_apart() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let user = serf(System::SerfEvent, Some(10));
        state
            .record(Some(&user), "/srv/app", DestRecord::default())
            .unwrap();
        assert!(state.already_deployed(&user).unwrap());
        assert!(!state
            .already_deployed(&serf(System::SerfQuery, Some(2)))
            .unwrap());
        let other = Source {
            name: "other".into(),
            ..user
        };
        assert!(!state.already_deployed(&other).unwrap());
    }
}
