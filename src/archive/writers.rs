//! Parallel file writers for extraction: small members are read from the
//! archive on the extracting thread and written by a few worker threads,
//! since creating thousands of files is bound by filesystem latency rather
//! than by the decompressor. Bytes in flight are bounded.

use std::fs::{File, OpenOptions, Permissions};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use anyhow::{anyhow, Context, Result};

/// Most bytes handed to the writers and not yet written.
const BUDGET: usize = 8 << 20;

/// One regular file, contents in memory.
pub struct FileJob {
    /// Where to write it (its parent exists).
    pub path: PathBuf,
    /// Contents.
    pub data: Vec<u8>,
    /// Permission bits, already masked.
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Owner and group, when running as root.
    pub owner: Option<(u32, u32)>,
}

/// A counting limit on bytes in flight.
#[derive(Default)]
struct Budget {
    used: Mutex<usize>,
    freed: Condvar,
}

impl Budget {
    fn take(&self, n: usize) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        // One job larger than the budget still goes through alone.
        while *used > 0 && *used + n > BUDGET {
            used = self.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += n;
    }

    fn give(&self, n: usize) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        *used -= n;
        self.freed.notify_all();
    }
}

/// A pool of writer threads. The same path always goes to the same thread,
/// so a member repeated in an archive is written in archive order.
pub struct Writers {
    senders: Vec<SyncSender<FileJob>>,
    handles: Vec<JoinHandle<Result<()>>>,
    budget: Arc<Budget>,
    failed: Arc<AtomicBool>,
}

impl Writers {
    /// Starts `threads` writers.
    pub fn new(threads: usize) -> Self {
        let budget = Arc::new(Budget::default());
        let failed = Arc::new(AtomicBool::new(false));
        let (mut senders, mut handles) = (Vec::new(), Vec::new());
        for _ in 0..threads.max(1) {
            let (tx, rx) = sync_channel::<FileJob>(256);
            let (budget, failed) = (budget.clone(), failed.clone());
            handles.push(std::thread::spawn(move || {
                let mut result = Ok(());
                for job in rx {
                    // After a failure keep draining, so the sender never blocks.
                    if result.is_ok() {
                        result = write(&job);
                        if result.is_err() {
                            failed.store(true, Ordering::Relaxed);
                        }
                    }
                    budget.give(job.data.len());
                }
                result
            }));
            senders.push(tx);
        }
        Writers {
            senders,
            handles,
            budget,
            failed,
        }
    }

    /// Queues a file; fails early if a writer has already failed.
    pub fn submit(&self, job: FileJob) -> Result<()> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(anyhow!("a file writer failed"));
        }
        let mut hasher = DefaultHasher::new();
        job.path.hash(&mut hasher);
        let sender = &self.senders[hasher.finish() as usize % self.senders.len()];
        self.budget.take(job.data.len());
        sender
            .send(job)
            .map_err(|_| anyhow!("a file writer stopped"))
    }

    /// Waits for every queued file; returns the first error.
    pub fn finish(self) -> Result<()> {
        drop(self.senders);
        let mut first = Ok(());
        for handle in self.handles {
            let result = handle
                .join()
                .unwrap_or_else(|_| Err(anyhow!("a file writer panicked")));
            if first.is_ok() {
                first = result;
            }
        }
        first
    }
}

fn write(job: &FileJob) -> Result<()> {
    let open = || {
        // create_new never follows a symlink at the final component.
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&job.path)
    };
    let file: File = match open() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(&job.path)
                .with_context(|| format!("replacing {}", job.path.display()))?;
            open()
        }
        other => other,
    }
    .with_context(|| format!("creating {}", job.path.display()))?;
    (&file)
        .write_all(&job.data)
        .with_context(|| format!("writing {}", job.path.display()))?;
    if let Some((uid, gid)) = job.owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", job.path.display()))?;
    }
    file.set_permissions(Permissions::from_mode(job.mode))
        .with_context(|| format!("chmod {}", job.path.display()))?;
    let mtime = filetime::FileTime::from_unix_time(job.mtime, 0);
    filetime::set_file_handle_times(&file, None, Some(mtime))
        .with_context(|| format!("setting mtime of {}", job.path.display()))
}
