//! The archive a deploy places: its verified temp file. After a delta
//! fetch (SPEC 8.9) the gzip members reused from the archive kept for
//! the dest are not in the temp file yet (holes there): a read by offset
//! takes them from the kept archive, and [`Archive::whole`] copies them
//! in for the readers that stream the whole file and for keeping it. A
//! redeploy that changed little then writes little before its hooks.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result};
use tempfile::NamedTempFile;

/// A verified archive in its temp file (removed when dropped).
pub struct Archive {
    temp: NamedTempFile,
    layout: Mutex<Layout>,
}

/// Bytes of the archive that are still only in the kept archive.
#[derive(Debug)]
pub struct Borrowed {
    /// The kept archive, open (it may be replaced meanwhile).
    pub kept: File,
    /// In archive order, not overlapping.
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

/// Where each byte of the archive is read from: the temp file, or the
/// kept archive for the spans borrowed from it.
#[derive(Clone)]
pub(super) struct Layout {
    temp: Arc<File>,
    borrowed: Option<Arc<(File, Vec<Span>)>>,
}

impl Archive {
    /// The archive held whole in `temp`.
    pub fn new(temp: NamedTempFile) -> Result<Self> {
        Self::borrowing(temp, None)
    }

    /// The archive in `temp`, but for the spans of `borrowed`.
    pub fn borrowing(temp: NamedTempFile, borrowed: Option<Borrowed>) -> Result<Self> {
        let file = temp.reopen().context("reopening the temp file")?;
        let borrowed = borrowed
            .filter(|b| !b.spans.is_empty())
            .map(|b| Arc::new((b.kept, b.spans)));
        Ok(Archive {
            temp,
            layout: Mutex::new(Layout {
                temp: Arc::new(file),
                borrowed,
            }),
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

    /// The temp file holding every byte of the archive: the borrowed
    /// spans are copied in first (once).
    pub fn whole(&self) -> Result<&Path> {
        let mut layout = self.layout.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(borrowed) = &layout.borrowed {
            let (kept, spans) = &**borrowed;
            let mut buf = vec![0u8; COPY_CHUNK];
            for span in spans {
                copy_span(kept, &layout.temp, span, &mut buf)
                    .with_context(|| format!("filling in {}", self.path().display()))?;
            }
            layout.borrowed = None;
        }
        Ok(self.path())
    }

    /// Where each byte is read from, as of now.
    pub(super) fn layout(&self) -> Layout {
        self.layout
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Bytes copied at a time when the borrowed spans are filled in.
const COPY_CHUNK: usize = 256 << 10;

fn copy_span(kept: &File, temp: &File, span: &Span, buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < span.len {
        let n = buf.len().min((span.len - done) as usize);
        kept.read_exact_at(&mut buf[..n], span.from + done)?;
        temp.write_all_at(&buf[..n], span.at + done)?;
        done += n as u64;
    }
    Ok(())
}

impl Layout {
    /// The temp file (the index and the footer are always there).
    pub fn temp(&self) -> &File {
        &self.temp
    }

    /// A reader of bytes `start..end` of the archive.
    pub fn range(&self, start: u64, end: u64) -> RangeReader {
        let mut pieces = Vec::new();
        let mut at = start;
        if let Some(borrowed) = &self.borrowed {
            let spans = &borrowed.1;
            let first = spans.partition_point(|s| s.end() <= start);
            for s in spans[first..].iter().take_while(|s| s.at < end) {
                if at < s.at {
                    pieces.push(Piece::temp(&self.temp, at, s.at));
                }
                let (from, to) = (at.max(s.at), end.min(s.end()));
                pieces.push(Piece {
                    file: Source::Kept(Arc::clone(borrowed)),
                    at: s.from + (from - s.at),
                    left: to - from,
                });
                at = to;
            }
        }
        if at < end {
            pieces.push(Piece::temp(&self.temp, at, end));
        }
        pieces.reverse();
        RangeReader { pieces }
    }
}

/// Reads a range of the archive, piece by piece, by offset.
pub(super) struct RangeReader {
    /// Still to read, the next one last.
    pieces: Vec<Piece>,
}

struct Piece {
    file: Source,
    at: u64,
    left: u64,
}

enum Source {
    Temp(Arc<File>),
    Kept(Arc<(File, Vec<Span>)>),
}

impl Piece {
    fn temp(file: &Arc<File>, start: u64, end: u64) -> Piece {
        Piece {
            file: Source::Temp(Arc::clone(file)),
            at: start,
            left: end - start,
        }
    }
}

impl Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while let Some(piece) = self.pieces.last_mut() {
            if piece.left == 0 {
                self.pieces.pop();
                continue;
            }
            let want = buf.len().min(piece.left as usize);
            let file = match &piece.file {
                Source::Temp(f) => &**f,
                Source::Kept(b) => &b.0,
            };
            let n = file.read_at(&mut buf[..want], piece.at)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            piece.at += n as u64;
            piece.left -= n as u64;
            return Ok(n);
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// An archive of `0..=99` whose bytes 10..30 and 50..60 are borrowed
    /// from a kept file holding them at 100 and 0.
    fn borrowing() -> (Archive, NamedTempFile) {
        let all: Vec<u8> = (0..100).collect();
        let mut temp = NamedTempFile::new().unwrap();
        let mut with_holes = all.clone();
        with_holes[10..30].fill(0xee);
        with_holes[50..60].fill(0xee);
        temp.write_all(&with_holes).unwrap();
        let mut kept = NamedTempFile::new().unwrap();
        let mut k = vec![0u8; 120];
        k[..10].copy_from_slice(&all[50..60]);
        k[100..120].copy_from_slice(&all[10..30]);
        kept.write_all(&k).unwrap();
        let borrowed = Borrowed {
            kept: kept.reopen().unwrap(),
            spans: vec![
                Span {
                    at: 10,
                    len: 20,
                    from: 100,
                },
                Span {
                    at: 50,
                    len: 10,
                    from: 0,
                },
            ],
        };
        (Archive::borrowing(temp, Some(borrowed)).unwrap(), kept)
    }

    fn read(a: &Archive, start: u64, end: u64) -> Vec<u8> {
        let mut out = Vec::new();
        a.layout().range(start, end).read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn a_range_reads_borrowed_spans_from_the_kept_archive() {
        let (a, _kept) = borrowing();
        let all: Vec<u8> = (0..100).collect();
        for (s, e) in [
            (0, 100),
            (5, 15),
            (12, 28),
            (29, 51),
            (55, 100),
            (60, 61),
            (0, 0),
        ] {
            assert_eq!(read(&a, s, e), &all[s as usize..e as usize], "{s}..{e}");
        }
    }

    #[test]
    fn whole_fills_the_temp_file_in() {
        let (a, _kept) = borrowing();
        let path = a.whole().unwrap().to_path_buf();
        assert_eq!(std::fs::read(path).unwrap(), (0..100).collect::<Vec<u8>>());
        assert_eq!(read(&a, 0, 100), (0..100).collect::<Vec<u8>>());
        a.whole().unwrap();
    }
}
