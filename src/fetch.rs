//! Streams `src` into a temp file while hashing it, under the bandwidth limit,
//! the download timeout and the retry policy. With a packed archive kept
//! for the dest, a packed `src` is first assembled from it and ranged
//! requests (`delta`); any miss falls back to the whole download.

mod delta;

use std::future::Future;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use tempfile::NamedTempFile;
use tokio::io::AsyncReadExt;

use crate::archive::Archive;
use crate::digest::Verifier;
use crate::pack::Kept;
use crate::progress::Progress;
use crate::source;
use crate::units::{comma, format_bytes, format_duration};

/// How the download behaves; from the command line.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Bytes per second; `None` is unlimited.
    pub max_bandwidth: Option<u64>,
    /// Bound on the whole download, retries included.
    pub timeout: Option<Duration>,
    /// Extra attempts after the first.
    pub retry: u32,
    /// Pause between attempts.
    pub retry_wait: Duration,
    /// Where the dest's last packed archive is kept (`--state-dir`): a
    /// packed `src` is then fetched as a delta from it.
    pub kept: Option<Kept>,
}

const CHUNK: usize = 256 << 10;

/// Downloads `url`, verifies it against `checksum` and returns it in its
/// temp file (removed when dropped). After a delta fetch, the members
/// reused from the kept archive are copied into the temp file only when
/// the archive is asked for whole ([`Archive::whole`]).
pub async fn fetch(url: &str, checksum: &str, opts: &Options) -> Result<Archive> {
    if let Some(bw) = opts.max_bandwidth {
        log::info!("Set max bandwidth {}/sec", format_bytes(bw));
    }
    let attempts = async {
        if let Some(kept) = opts.kept.as_ref().filter(|_| delta::applies(url)) {
            match delta::fetch(url, checksum, kept, opts).await {
                Ok(done) => return Ok(done),
                Err(e) => log::info!("No delta fetch ({e:#}): downloading the whole archive"),
            }
        }
        let (file, verifier) = with_retries(url, checksum, opts).await?;
        let sum = verifier.finish()?;
        // A delta fetch checks each member it fetches, and reuses only
        // members of an archive checked here before it was kept.
        let reopened = file.reopen().context("reopening the temp file")?;
        let checked = tokio::task::spawn_blocking(move || crate::pack::check_members(&reopened));
        checked
            .await
            .map_err(|e| anyhow!("checking thread failed: {e}"))?
            .with_context(|| url.to_string())?;
        anyhow::Ok((Archive::new(file)?, sum))
    };
    let (file, checksum) = match opts.timeout {
        Some(limit) => {
            log::info!("Set timeout {}", format_duration(limit));
            tokio::time::timeout(limit, attempts).await.map_err(|_| {
                anyhow!(
                    "timeout {} reached while fetching src {url}",
                    format_duration(limit)
                )
            })??
        }
        None => attempts.await?,
    };
    log::info!("Checksum ok: {checksum}");
    Ok(file)
}

/// Keeps the verified `archive` for the next delta fetch, when the dest
/// has a place for it and it is a packed archive (made whole first). A
/// failure is logged: the deploy itself went through.
pub fn keep(kept: Option<&Kept>, archive: &Archive) {
    let Some(kept) = kept else { return };
    match archive.whole().and_then(|path| kept.keep(path)) {
        Ok(true) => log::info!("Kept the packed archive for the next delta fetch"),
        Ok(false) => {}
        Err(e) => log::info!("could not keep the packed archive: {e:#}"),
    }
}

/// How long an attempt may receive nothing (no response, no byte) before it
/// is abandoned as stalled, so that a retry can still finish within
/// `--timeout`, which bounds the whole download: the timeout shared by the
/// attempts. Without retries or without a timeout there is none (the
/// timeout alone stops a single attempt).
pub fn stall_limit(opts: &Options) -> Option<Duration> {
    let timeout = opts.timeout.filter(|_| opts.retry > 0)?;
    Some(timeout / opts.retry.saturating_add(1))
}

async fn with_retries(
    url: &str,
    checksum: &str,
    opts: &Options,
) -> Result<(NamedTempFile, Verifier)> {
    let stall = stall_limit(opts);
    source::with_retries("src", opts.retry, opts.retry_wait, || {
        download_once(url, checksum, opts.max_bandwidth, stall)
    })
    .await
    .map_err(|e| anyhow!("get src failed: {e:#}"))
}

async fn download_once(
    url: &str,
    checksum: &str,
    max_bandwidth: Option<u64>,
    stall: Option<Duration>,
) -> Result<(NamedTempFile, Verifier)> {
    let verifier = Verifier::new(checksum)?;
    let begin = Instant::now();
    let object = unless_stalled(stall, url, source::open(url)).await?;
    let (mut body, bar) = (object.body, Progress::download(object.size));
    // Three stages that overlap: reading here, hashing and writing on their
    // own threads. Bounded channels keep a few chunks in flight at most.
    let Sink {
        file,
        path,
        tx,
        sink,
    } = Sink::start(verifier)?;
    // Small reads at low rates keep the pacing smooth.
    let chunk = max_bandwidth.map_or(CHUNK, |bw| (bw as usize / 10).clamp(1024, CHUNK));
    let mut written = 0u64;
    let read_result: Result<()> = async {
        loop {
            let mut buf = Vec::with_capacity(chunk);
            while buf.len() < chunk {
                let read = async {
                    (body.read_buf(&mut buf).await).with_context(|| format!("reading {url}"))
                };
                let n = unless_stalled(stall, url, read).await?;
                if n == 0 {
                    break;
                }
            }
            if buf.is_empty() {
                return Ok(());
            }
            written += buf.len() as u64;
            bar.add(buf.len() as u64);
            if tx.send(Chunk::Write(buf)).await.is_err() {
                return Ok(()); // the sink failed; its error is reported below
            }
            pace(begin, written, max_bandwidth).await;
        }
    }
    .await;
    drop(tx);
    let verifier = Sink::finished(sink, &path).await?;
    read_result?;
    drop(bar);
    Sink::log_written(&path, written, begin);
    Ok((file, verifier))
}

/// Waits as `--max-band-width` asks, `total` bytes having come in since
/// `begin`.
async fn pace(begin: Instant, total: u64, max_bandwidth: Option<u64>) {
    if let Some(bw) = max_bandwidth.filter(|bw| *bw > 0) {
        let due = Duration::from_secs_f64(total as f64 / bw as f64);
        if let Some(ahead) = due.checked_sub(begin.elapsed()) {
            tokio::time::sleep(ahead).await;
        }
    }
}

/// Runs one step of an attempt (the request, one read), failing it as
/// `stalled` when `stall` passes first.
async fn unless_stalled<T>(
    stall: Option<Duration>,
    url: &str,
    step: impl Future<Output = Result<T>>,
) -> Result<T> {
    let Some(limit) = stall else {
        return step.await;
    };
    tokio::time::timeout(limit, step)
        .await
        .map_err(|_| anyhow!("stalled: no data from {url} for {}", format_duration(limit)))?
}

/// Bytes of src, in order, on their way to the temp file.
pub(crate) enum Chunk {
    /// Bytes to hash and write.
    Write(Vec<u8>),
    /// `len` bytes at `at` of the kept archive, which a delta fetch
    /// reuses: hashed (read there), and a hole in the temp file until the
    /// archive is made whole.
    Kept {
        file: Arc<std::fs::File>,
        at: u64,
        len: u64,
    },
}

/// The temp file src is written to, and the thread pair that hashes and
/// writes the chunks sent on `tx` (both the whole and the delta download).
pub(crate) struct Sink {
    pub file: NamedTempFile,
    /// `file`'s path, for the log.
    pub path: String,
    pub tx: tokio::sync::mpsc::Sender<Chunk>,
    /// The verifier with every chunk hashed, once `tx` is dropped.
    pub sink: tokio::task::JoinHandle<std::io::Result<Verifier>>,
}

impl Sink {
    pub(crate) fn start(verifier: Verifier) -> Result<Self> {
        let file = tempfile::Builder::new()
            .prefix("stretcher")
            .tempfile()
            .context("creating a temp file for src")?;
        let path = file.path().display().to_string();
        let out = file.reopen().context("reopening the temp file")?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(2);
        let sink = tokio::task::spawn_blocking(move || hash_and_write(rx, verifier, out));
        Ok(Sink {
            file,
            path,
            tx,
            sink,
        })
    }
}

impl Sink {
    /// The verifier once every chunk sent has been hashed and written
    /// (the sender dropped first): the sink's error, if it failed.
    pub(crate) async fn finished(
        sink: tokio::task::JoinHandle<std::io::Result<Verifier>>,
        path: &str,
    ) -> Result<Verifier> {
        sink.await
            .map_err(|e| anyhow!("hashing thread failed: {e}"))?
            .with_context(|| format!("writing {path}"))
    }

    /// Logs the bytes written to `path` since `begin`, and the rate.
    pub(crate) fn log_written(path: &str, bytes: u64, begin: Instant) {
        let elapsed = begin.elapsed();
        log::info!(
            "Wrote {} bytes to {path} (in {}, {}/s)",
            comma(bytes),
            format_duration(elapsed),
            format_bytes((bytes as f64 / elapsed.as_secs_f64().max(1e-9)) as u64)
        );
    }
}

/// What the writer thread does with a chunk once hashed.
enum Out {
    Bytes(Vec<u8>),
    /// Leave this many bytes unwritten (borrowed from the kept archive).
    Hole(u64),
}

/// Hashes each chunk and hands it to a writer thread, which writes it or
/// leaves a hole for it.
fn hash_and_write(
    mut chunks: tokio::sync::mpsc::Receiver<Chunk>,
    mut verifier: Verifier,
    mut out: std::fs::File,
) -> std::io::Result<Verifier> {
    use std::io::{Seek, SeekFrom};
    let (tx, rx) = std::sync::mpsc::sync_channel::<Out>(2);
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut end = 0u64;
        for out_chunk in rx {
            match out_chunk {
                Out::Bytes(bytes) => {
                    out.write_all(&bytes)?;
                    end += bytes.len() as u64;
                }
                Out::Hole(len) => {
                    out.seek(SeekFrom::Current(len as i64))?;
                    end += len;
                }
            }
        }
        // A hole at the end still counts in the file's length.
        out.set_len(end)
    });
    let mut kept_buf = Vec::new();
    while let Some(chunk) = chunks.blocking_recv() {
        let out = match chunk {
            Chunk::Write(bytes) => {
                verifier.update(&bytes);
                Out::Bytes(bytes)
            }
            Chunk::Kept { file, at, len } => {
                kept_buf.resize(CHUNK, 0);
                let mut done = 0;
                while done < len {
                    let n = kept_buf.len().min((len - done) as usize);
                    file.read_exact_at(&mut kept_buf[..n], at + done)
                        .map_err(|e| std::io::Error::new(e.kind(), "reading the kept archive"))?;
                    verifier.update(&kept_buf[..n]);
                    done += n as u64;
                }
                Out::Hole(len)
            }
        };
        if tx.send(out).is_err() {
            break; // the writer failed: its error follows
        }
    }
    drop(tx);
    writer
        .join()
        .map_err(|_| std::io::Error::other("writer thread panicked"))??;
    Ok(verifier)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(timeout: Option<Duration>, retry: u32) -> Options {
        Options {
            timeout,
            retry,
            ..Options::default()
        }
    }

    /// The pieces of a delta fetch: fetched bytes written, reused ones
    /// hashed from the kept archive and left a hole, one at the end too.
    #[test]
    fn reused_pieces_are_hashed_and_left_holes_even_at_the_end() {
        let mut kept = tempfile::tempfile().unwrap();
        kept.write_all(b"0123456789").unwrap();
        let kept = Arc::new(kept);
        let out = tempfile::NamedTempFile::new().unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        for chunk in [
            Chunk::Kept {
                file: Arc::clone(&kept),
                at: 8,
                len: 2,
            },
            Chunk::Write(b"ab".to_vec()),
            Chunk::Kept {
                file: kept,
                at: 3,
                len: 4,
            },
        ] {
            tx.blocking_send(chunk).unwrap();
        }
        drop(tx);
        let want = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"89ab3456"));
        let verifier = hash_and_write(rx, Verifier::new(&want).unwrap(), out.reopen().unwrap());
        assert_eq!(verifier.unwrap().finish().unwrap(), want);
        assert_eq!(std::fs::read(out.path()).unwrap(), b"\0\0ab\0\0\0\0");
    }

    #[test]
    fn the_stall_limit_shares_the_timeout_among_the_attempts() {
        let t = Some(Duration::from_secs(60));
        assert_eq!(stall_limit(&opts(t, 2)), Some(Duration::from_secs(20)));
        assert_eq!(stall_limit(&opts(t, 0)), None, "the timeout alone");
        assert_eq!(stall_limit(&opts(None, 3)), None, "no timeout, no limit");
        assert!(stall_limit(&opts(t, u32::MAX)).is_some());
    }
}
