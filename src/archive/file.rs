//! The archive a deploy places: its verified temp file. After a delta
//! fetch (SPEC 8.9) the gzip members reused from the archive kept for
//! the dest are not in the temp file yet (holes there). A member is
//! copied in from the kept archive when it is first read: `native` and
//! `release` read few of them; rsync, mv and keeping the archive ask for
//! it whole ([`Archive::whole`]). A redeploy that changed little then
//! writes little before its hooks.
//!
//! The kept archive lies outside the temp file: it may have changed since
//! it was hashed. So each member copied in is checked against its digest
//! in the index, which is in the temp file and under the checksum: what
//! is read is what was verified, or the read fails.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{ensure, Context, Result};
use sha2::{Digest as _, Sha256};
use tempfile::NamedTempFile;

use crate::pack::{MemberRef, DIGEST_LEN};

/// A verified archive in its temp file (removed when dropped).
pub struct Archive {
    temp: NamedTempFile,
    layout: Layout,
}

/// Bytes of the archive that are still only in the kept archive.
#[derive(Debug)]
pub struct Borrowed {
    /// The kept archive, open (it may be replaced meanwhile).
    pub kept: File,
    /// In archive order, not overlapping; each a run of whole members.
    pub spans: Vec<Span>,
}

/// `len` bytes of the archive at `at`, which are at `from` in the kept
/// archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Where they go in the archive.
    pub at: u64,
    /// How many.
    pub len: u64,
    /// Where they are in the kept archive.
    pub from: u64,
}

impl Span {
    fn end(&self) -> u64 {
        self.at + self.len
    }
}

/// The temp file, and what of it is still borrowed (shared by the
/// archive and its readers).
#[derive(Clone)]
pub(super) struct Layout {
    temp: Arc<File>,
    borrowed: Arc<Mutex<Option<Borrowed>>>,
}

impl Archive {
    /// The archive held whole in `temp`.
    pub fn new(temp: NamedTempFile) -> Result<Self> {
        Self::borrowing(temp, None)
    }

    /// The archive in `temp`, but for the spans of `borrowed`.
    pub fn borrowing(temp: NamedTempFile, borrowed: Option<Borrowed>) -> Result<Self> {
        let file = temp.reopen().context("reopening the temp file")?;
        let borrowed = borrowed.filter(|b| !b.spans.is_empty());
        Ok(Archive {
            temp,
            layout: Layout {
                temp: Arc::new(file),
                borrowed: Arc::new(Mutex::new(borrowed)),
            },
        })
    }

    /// The temp file's path (for messages, and for reading the index and
    /// footer, which it always holds).
    pub fn path(&self) -> &Path {
        self.temp.path()
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.temp.as_file().metadata().map_or(0, |m| m.len())
    }

    /// The temp file holding every byte of the archive: the members still
    /// borrowed are copied in first, each checked against the index.
    pub fn whole(&self) -> Result<&Path> {
        if self.layout.borrowing() {
            let members = crate::pack::read_members(&self.layout.temp)
                .with_context(|| format!("reading the index of {}", self.path().display()))?;
            self.layout.fill(0, u64::MAX, &members)?;
        }
        Ok(self.path())
    }

    /// The temp file and what of it is borrowed, for readers by offset.
    pub(super) fn layout(&self) -> Layout {
        self.layout.clone()
    }
}

/// Bytes copied at a time when a member is filled in.
const COPY_CHUNK: usize = 256 << 10;

impl Layout {
    /// The temp file. The index and the footer are always there; other
    /// bytes after [`Layout::fill`] for them.
    pub fn temp(&self) -> &File {
        &self.temp
    }

    /// A reader of bytes `start..end` of the temp file, by offset (no
    /// file position shared with other readers). [`Layout::fill`] them
    /// first.
    pub fn range(&self, start: u64, end: u64) -> RangeReader {
        RangeReader {
            file: Arc::clone(&self.temp),
            at: start,
            end,
        }
    }

    fn borrowing(&self) -> bool {
        self.lock().is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Borrowed>> {
        self.borrowed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes bytes `start..end` of the archive present in the temp file:
    /// each borrowed member among `members` (the index's, in order) that
    /// they touch is copied in from the kept archive and checked against
    /// its digest. A member that does not match fails the read.
    pub fn fill(&self, start: u64, end: u64, members: &[MemberRef]) -> Result<()> {
        let mut guard = self.lock();
        let Some(borrowed) = guard.as_mut() else {
            return Ok(());
        };
        // The spans the range touches, rebuilt as what is left of them
        // once its members are in: replaced in one go, and only when every
        // copy went through.
        let spans = &borrowed.spans;
        let (i, j) = (
            spans.partition_point(|s| s.end() <= start),
            spans.partition_point(|s| s.at < end),
        );
        let first = members.partition_point(|m| m.end() <= start);
        let mut wanted = members[first..]
            .iter()
            .take_while(|m| m.offset < end)
            .peekable();
        let mut left = Vec::new();
        let mut buf = Vec::new();
        for span in &spans[i..j.max(i)] {
            let mut rest = *span;
            while let Some(m) = wanted.next_if(|m| m.offset < span.end()) {
                if m.offset < span.at {
                    continue; // fetched
                }
                ensure!(
                    m.end() <= span.end(),
                    "a borrowed span ends inside member at byte {}",
                    m.offset
                );
                let from = rest.from + (m.offset - rest.at);
                copy_member(&borrowed.kept, &self.temp, m, from, &mut buf)?;
                left.push(Span {
                    len: m.offset - rest.at,
                    ..rest
                });
                rest = Span {
                    at: m.end(),
                    len: span.end() - m.end(),
                    from: from + u64::from(m.len),
                };
            }
            left.push(rest);
        }
        left.retain(|s| s.len > 0);
        borrowed.spans.splice(i..j.max(i), left);
        if borrowed.spans.is_empty() {
            *guard = None;
        }
        Ok(())
    }
}

/// Bytes of the temp file between two offsets, read by offset.
pub(super) struct RangeReader {
    file: Arc<File>,
    at: u64,
    end: u64,
}

impl std::io::Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = buf.len().min(self.end.saturating_sub(self.at) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// Copies member `m` from `from` in the kept archive to its place in the
/// temp file, checking its digest on the way.
fn copy_member(
    kept: &File,
    temp: &File,
    m: &MemberRef,
    from: u64,
    buf: &mut Vec<u8>,
) -> Result<()> {
    buf.resize(COPY_CHUNK, 0);
    let mut hash = Sha256::new();
    let mut done = 0u64;
    let len = u64::from(m.len);
    while done < len {
        let n = buf.len().min((len - done) as usize);
        kept.read_exact_at(&mut buf[..n], from + done)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => anyhow::anyhow!(
                    "the kept archive changed since it was hashed: it ends before the \
                     member at byte {} does",
                    m.offset
                ),
                _ => anyhow::Error::new(e).context("reading the kept archive"),
            })?;
        hash.update(&buf[..n]);
        temp.write_all_at(&buf[..n], m.offset + done)
            .context("writing the temp file")?;
        done += n as u64;
    }
    ensure!(
        hash.finalize()[..DIGEST_LEN] == m.digest,
        "the kept archive changed since it was hashed: the member at byte {} no longer \
         matches the index",
        m.offset
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// An archive of members "aaaa", "bbbbbb", "cc", "dddd" whose second
    /// and fourth are borrowed from a kept file holding them at 10 and 0,
    /// and the members as its index lists them.
    fn borrowing(kept_bytes: &[u8]) -> (Archive, Vec<MemberRef>, NamedTempFile) {
        let mut members: Vec<MemberRef> = Vec::new();
        for m in [&b"aaaa"[..], b"bbbbbb", b"cc", b"dddd"] {
            members.push(MemberRef::after(members.last(), m).unwrap());
        }
        let mut temp = NamedTempFile::new().unwrap();
        temp.write_all(b"aaaa\0\0\0\0\0\0cc\0\0\0\0").unwrap();
        let mut kept = NamedTempFile::new().unwrap();
        kept.write_all(kept_bytes).unwrap();
        let borrowed = Borrowed {
            kept: kept.reopen().unwrap(),
            spans: vec![
                Span {
                    at: 4,
                    len: 6,
                    from: 10,
                },
                Span {
                    at: 12,
                    len: 4,
                    from: 0,
                },
            ],
        };
        let archive = Archive::borrowing(temp, Some(borrowed)).unwrap();
        (archive, members, kept)
    }

    fn temp_bytes(a: &Archive) -> Vec<u8> {
        std::fs::read(a.path()).unwrap()
    }

    #[test]
    fn a_read_fills_in_only_the_members_it_touches() {
        let (a, members, _kept) = borrowing(b"dddd000000bbbbbb");
        a.layout().fill(12, 16, &members).unwrap();
        assert_eq!(temp_bytes(&a), b"aaaa\0\0\0\0\0\0ccdddd");
        assert!(a.layout().borrowing());
        // As `whole` does, with the members of the archive's index.
        a.layout().fill(0, u64::MAX, &members).unwrap();
        assert_eq!(temp_bytes(&a), b"aaaabbbbbbccdddd");
        assert!(!a.layout().borrowing());
        a.layout().fill(0, u64::MAX, &members).unwrap();
    }

    #[test]
    fn a_kept_archive_changed_since_it_was_hashed_fails_the_read() {
        let (a, members, _kept) = borrowing(b"dddd000000bbbXbb");
        let e = a.layout().fill(0, 16, &members).unwrap_err();
        assert!(
            e.to_string().contains("the member at byte 4 no longer"),
            "{e}"
        );
        let (a, members, _kept) = borrowing(b"dddd");
        let e = a.layout().fill(4, 10, &members).unwrap_err();
        assert!(
            e.to_string()
                .contains("it ends before the member at byte 4"),
            "cut short: {e}"
        );
    }

    /// Random archives (members borrowed or fetched, runs next to each
    /// other in the kept file or not) and random reads: each read leaves
    /// the bytes it touched in place and every hole it did not touch a
    /// hole; filling everything gives the archive back.
    #[test]
    fn random_reads_fill_in_exactly_what_they_touch() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..500 {
            let count = 1 + next(10) as usize;
            let bodies: Vec<Vec<u8>> = (0..count)
                .map(|k| vec![b'a' + k as u8; 1 + next(6) as usize])
                .collect();
            let mut members: Vec<MemberRef> = Vec::new();
            for b in &bodies {
                members.push(MemberRef::after(members.last(), b).unwrap());
            }
            let all: Vec<u8> = bodies.concat();
            let borrowed: Vec<bool> = (0..count).map(|_| next(2) == 0).collect();
            let (mut kept_bytes, mut spans, mut with_holes) =
                (Vec::new(), Vec::<Span>::new(), all.clone());
            for (k, m) in members.iter().enumerate().filter(|(k, _)| borrowed[*k]) {
                if next(3) == 0 {
                    kept_bytes.push(b'#'); // not next to the one before
                }
                let from = kept_bytes.len() as u64;
                kept_bytes.extend_from_slice(&bodies[k]);
                with_holes[m.offset as usize..m.end() as usize].fill(0);
                match spans.last_mut() {
                    Some(s) if s.end() == m.offset && s.from + s.len == from => {
                        s.len += u64::from(m.len)
                    }
                    _ => spans.push(Span {
                        at: m.offset,
                        len: u64::from(m.len),
                        from,
                    }),
                }
            }
            let mut temp = NamedTempFile::new().unwrap();
            temp.write_all(&with_holes).unwrap();
            let mut kept = NamedTempFile::new().unwrap();
            kept.write_all(&kept_bytes).unwrap();
            let a = Archive::borrowing(
                temp,
                Some(Borrowed {
                    kept: kept.reopen().unwrap(),
                    spans,
                }),
            )
            .unwrap();
            let mut expect = with_holes.clone();
            for _ in 0..4 {
                let len = all.len() as u64;
                let start = next(len + 1);
                let end = start + next(len + 2 - start);
                a.layout().fill(start, end, &members).unwrap();
                for (k, m) in members.iter().enumerate() {
                    if borrowed[k] && m.end() > start && m.offset < end {
                        expect[m.offset as usize..m.end() as usize].copy_from_slice(&bodies[k]);
                    }
                }
                assert_eq!(temp_bytes(&a), expect, "{start}..{end}");
            }
            a.layout().fill(0, u64::MAX, &members).unwrap();
            assert_eq!(temp_bytes(&a), all);
            assert!(!a.layout().borrowing());
        }
    }
}
