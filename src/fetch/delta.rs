//! Delta fetch of a packed archive (SPEC 8.9): the footer by a suffix
//! range, then the index, then each member either copied from the
//! archive kept for this dest (same digest and length) or fetched by a
//! single-range request (adjacent members merged, a few requests at a
//! time, each member checked against the index). The archive is assembled
//! in order in its temp file, hashed on the way, and must match the
//! manifest's checksum. Any miss is an error here: the caller falls back
//! to the whole download.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use futures_util::{StreamExt, TryStreamExt};
use tokio::io::AsyncReadExt;

use super::{unless_stalled, Chunk, Options, Sink};
use crate::archive::{Archive, Borrowed, Span};
use crate::digest::Verifier;
use crate::pack::{digest, Footer, Kept, MemberRef};
use crate::source::{self, Range};
use crate::units::comma;

/// Ranged requests in flight at once.
const PARALLEL: usize = 8;

/// Most bytes one request carries, unless a single member is larger:
/// bounds the memory in flight (a few pieces on their way to the temp
/// file), as the whole download's chunk. Bytes reused from the kept
/// archive are read where they are hashed, a chunk at a time.
const MAX_SEGMENT: u64 = 256 << 10;

/// Whether a delta fetch can be tried for `url`: the schemes with ranged
/// reads.
pub fn applies(url: &str) -> bool {
    ["http://", "https://", "s3://", "gs://"]
        .iter()
        .any(|scheme| url.starts_with(scheme))
}

/// A piece of the new archive, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Bytes `at..at + len` of the kept archive, which go at `to` in the
    /// new one.
    Reuse { at: u64, len: u64, to: u64 },
    /// Members `first..last` of the new archive (`len` bytes), fetched in
    /// one request.
    Fetch { first: usize, last: usize, len: u64 },
}

/// The assembled, verified archive and the lowercase hex checksum. The
/// temp file holds the members fetched, the index and the footer; the
/// members reused stay borrowed from the kept archive (hashed here all
/// the same) until the archive is asked for whole.
pub(super) async fn fetch(
    url: &str,
    checksum: &str,
    kept: &Kept,
    opts: &Options,
) -> Result<(Archive, String)> {
    let begin = Instant::now();
    let verifier = Verifier::new(checksum)?;
    let (old_file, old) = kept
        .open()?
        .ok_or_else(|| anyhow!("no packed archive kept for {}", kept.dest()))?;
    let wire = Wire::new(opts.max_bandwidth, super::stall_limit(opts));
    let tail = wire
        .read(url, Range::Suffix(Footer::LEN as u64), None)
        .await?;
    let footer = Footer::parse(&tail.bytes, tail.total)?;
    let etag = tail.etag.as_deref();
    let end = footer.index_offset + footer.index_len;
    let index_bytes = wire
        .read(url, Range::Bounded(footer.index_offset, end), etag)
        .await?
        .bytes;
    let new = footer.members(&index_bytes)?;
    let segments = plan(&new, &old);
    drop(old); // planned: only the kept file is read from now on
    let borrowed = Borrowed {
        kept: old_file.try_clone().context("reading the kept archive")?,
        spans: borrowed_spans(&segments),
    };

    let Sink {
        file,
        path,
        tx,
        sink,
    } = Sink::start(verifier)?;
    let old_file = Arc::new(old_file);
    let reused = AtomicU64::new(0);
    let assembled: Result<()> = async {
        // Each request goes with the reused pieces before it, so that the
        // requests in flight are PARALLEL however the pieces alternate.
        let mut pieces = futures_util::stream::iter(with_requests(segments))
            .map(|run| {
                let old_file = Arc::clone(&old_file);
                let (wire, new, reused) = (&wire, &new, &reused);
                async move {
                    let mut chunks = Vec::with_capacity(run.len());
                    for segment in run {
                        chunks.push(match segment {
                            Segment::Reuse { at, len, .. } => {
                                reused.fetch_add(len, Ordering::Relaxed);
                                Chunk::Kept {
                                    file: Arc::clone(&old_file),
                                    at,
                                    len,
                                }
                            }
                            Segment::Fetch { first, last, .. } => {
                                let members = &new[first..last];
                                Chunk::Write(wire.members(url, members, etag).await?)
                            }
                        });
                    }
                    anyhow::Ok(chunks)
                }
            })
            .buffered(PARALLEL);
        'sending: while let Some(chunks) = pieces.try_next().await? {
            for chunk in chunks {
                if tx.send(chunk).await.is_err() {
                    break 'sending; // the sink failed; its error is reported below
                }
            }
        }
        for part in [index_bytes, tail.bytes] {
            if tx.send(Chunk::Write(part)).await.is_err() {
                break;
            }
        }
        Ok(())
    }
    .await;
    drop(tx);
    let verifier = Sink::finished(sink, &path).await?;
    assembled?;
    let sum = verifier.finish()?;
    let total = footer.index_offset + footer.index_len + Footer::LEN as u64;
    let reused = reused.load(Ordering::Relaxed);
    log::info!(
        "Delta fetch: {} bytes over the wire in {} requests, {} bytes reused from the kept archive",
        comma(wire.bytes()),
        wire.requests(),
        comma(reused)
    );
    Sink::log_written(&path, total - reused, begin);
    Ok((Archive::borrowing(file, Some(borrowed))?, sum))
}

/// The plan cut after each request: runs of reused pieces, each ending
/// with the request after them (the last run may have none).
fn with_requests(segments: Vec<Segment>) -> Vec<Vec<Segment>> {
    let mut runs = vec![Vec::new()];
    for segment in segments {
        let request = matches!(segment, Segment::Fetch { .. });
        if let Some(run) = runs.last_mut() {
            run.push(segment);
        }
        if request {
            runs.push(Vec::new());
        }
    }
    runs.retain(|run| !run.is_empty());
    runs
}

/// The bytes the plan reuses, as spans of the new archive borrowed from
/// the kept one (pieces next to each other in both joined).
fn borrowed_spans(segments: &[Segment]) -> Vec<Span> {
    let mut spans: Vec<Span> = Vec::new();
    for segment in segments {
        let Segment::Reuse { at, len, to } = *segment else {
            continue;
        };
        match spans.last_mut() {
            Some(last) if last.at + last.len == to && last.from + last.len == at => {
                last.len += len;
            }
            _ => spans.push(Span {
                at: to,
                len,
                from: at,
            }),
        }
    }
    spans
}

/// Which members come from the kept archive (`old`) and which over the
/// wire: runs of members next to each other in the kept archive are
/// one piece, and adjacent fetched members one request, as far as
/// [`MAX_SEGMENT`] allows.
fn plan(new: &[MemberRef], old: &[MemberRef]) -> Vec<Segment> {
    // Sorted by digest and length (a third of a hash map's memory).
    let mut have: Vec<(crate::pack::Digest, u32, u64)> =
        old.iter().map(|m| (m.digest, m.len, m.offset)).collect();
    have.sort_unstable();
    let held = |m: &MemberRef| {
        have.binary_search_by(|(d, l, _)| (d, l).cmp(&(&m.digest, &m.len)))
            .ok()
            .map(|i| have[i].2)
    };
    let mut out: Vec<Segment> = Vec::new();
    for (i, m) in new.iter().enumerate() {
        let len = u64::from(m.len);
        match (held(m).as_ref(), out.last_mut()) {
            (Some(&at), Some(Segment::Reuse { at: a, len: l, .. })) if *a + *l == at => {
                *l += len;
            }
            (Some(&at), _) => out.push(Segment::Reuse {
                at,
                len,
                to: m.offset,
            }),
            (None, Some(Segment::Fetch { last, len: l, .. })) if *l + len <= MAX_SEGMENT => {
                *last = i + 1;
                *l += len;
            }
            (None, _) => out.push(Segment::Fetch {
                first: i,
                last: i + 1,
                len,
            }),
        }
    }
    out
}

/// A ranged read's bytes.
struct Got {
    bytes: Vec<u8>,
    total: u64,
    etag: Option<String>,
}

/// The requests of one delta fetch: what they brought in, under the
/// bandwidth limit shared by all of them.
struct Wire {
    max_bandwidth: Option<u64>,
    stall: Option<Duration>,
    begin: Instant,
    bytes: AtomicU64,
    requests: AtomicU64,
    /// The object's size, from the first answer.
    total: AtomicU64,
}

impl Wire {
    fn new(max_bandwidth: Option<u64>, stall: Option<Duration>) -> Self {
        Wire {
            max_bandwidth,
            stall,
            begin: Instant::now(),
            bytes: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// One ranged request, read whole.
    async fn read(&self, url: &str, range: Range, etag: Option<&str>) -> Result<Got> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let ranged = unless_stalled(self.stall, url, source::open_range(url, range, etag)).await?;
        let expected = self.total.swap(ranged.total, Ordering::Relaxed);
        ensure!(
            expected == 0 || expected == ranged.total,
            "the archive's size changed on the server"
        );
        let mut body = ranged.body;
        let len = usize::try_from(ranged.len)?;
        let mut bytes = Vec::with_capacity(len);
        while bytes.len() < len {
            let before = bytes.len();
            let read = async {
                let mut limited = (&mut body).take((len - before) as u64);
                limited
                    .read_buf(&mut bytes)
                    .await
                    .with_context(|| format!("reading {url}"))
            };
            let n = unless_stalled(self.stall, url, read).await?;
            ensure!(n > 0, "{url}: the range ended early");
            self.pace(n as u64).await;
        }
        Ok(Got {
            bytes,
            total: ranged.total,
            etag: ranged.etag,
        })
    }

    /// `members` (adjacent) in one request, each checked against its
    /// digest.
    async fn members(
        &self,
        url: &str,
        members: &[MemberRef],
        etag: Option<&str>,
    ) -> Result<Vec<u8>> {
        let (Some(first), Some(last)) = (members.first(), members.last()) else {
            return Ok(Vec::new());
        };
        let got = self
            .read(url, Range::Bounded(first.offset, last.end()), etag)
            .await?;
        for m in members {
            let start = (m.offset - first.offset) as usize;
            let bytes = &got.bytes[start..start + m.len as usize];
            ensure!(
                digest(bytes) == m.digest,
                "the member at offset {} does not match the index",
                m.offset
            );
        }
        Ok(got.bytes)
    }

    /// Counts `n` bytes received and waits as the bandwidth limit asks.
    async fn pace(&self, n: u64) {
        let total = self.bytes.fetch_add(n, Ordering::Relaxed) + n;
        super::pace(self.begin, total, self.max_bandwidth).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::{Entry, Index, IndexBuilder as Builder};

    fn index(members: &[&[u8]]) -> Index {
        let mut list: Vec<MemberRef> = Vec::new();
        for m in members {
            list.push(MemberRef::after(list.last(), m).unwrap());
        }
        let mut b = Builder::default();
        b.entry(&Entry {
            path: b"a".to_vec(),
            size: 1,
            mode: 0o644,
            ..Entry::default()
        })
        .unwrap();
        b.finish(list).unwrap()
    }

    #[test]
    fn members_held_are_copied_and_the_others_fetched_in_merged_ranges() {
        let old = index(&[b"aa", b"bbb", b"cccc", b"dd"]);
        let new = index(&[b"aa", b"bbb", b"xx", b"yy", b"dd", b"cccc"]);
        assert_eq!(
            plan(new.members(), old.members()),
            [
                Segment::Reuse {
                    at: 0,
                    len: 5,
                    to: 0
                },
                Segment::Fetch {
                    first: 2,
                    last: 4,
                    len: 4
                },
                Segment::Reuse {
                    at: 9,
                    len: 2,
                    to: 9
                },
                Segment::Reuse {
                    at: 5,
                    len: 4,
                    to: 11
                },
            ]
        );
        // Borrowed: 0..5 from 0, then 9..15 from 9 and 5 (not one span:
        // not next to each other in the kept archive).
        let spans = borrowed_spans(&plan(new.members(), old.members()));
        assert_eq!(
            spans,
            [
                Span {
                    at: 0,
                    len: 5,
                    from: 0
                },
                Span {
                    at: 9,
                    len: 2,
                    from: 9
                },
                Span {
                    at: 11,
                    len: 4,
                    from: 5
                },
            ]
        );
    }

    #[test]
    fn schemes_with_ranges() {
        assert!(applies("https://h/a.tar.gz"));
        assert!(applies("s3://b/k"));
        assert!(!applies("file:///a.tar.gz"));
    }
}
