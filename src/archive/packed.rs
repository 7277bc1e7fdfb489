//! A packed archive (SPEC 8.9) read by its index: each entry is handed to
//! the sink as the index lists it, and the gzip member holding its data
//! is inflated only when the sink reads the data. A redeploy whose quick
//! check leaves most files as they are inflates only the members holding
//! the rest.
//!
//! The index and the tar headers are one archive under one checksum, and
//! the packer writes both from the same entry. Each header inflated on the
//! way to an entry's data is still checked against the index: a mismatch
//! fails the run, naming the entry and the field.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, ensure, Context, Result};
use tokio_util::sync::CancellationToken;

use super::file::Layout;
use super::stream::{sanitize, Kind, Member, TarStream};
use super::{hand_over, interrupted, Sink, Source, Stream, MAX_MEMBERS};
use crate::pack::{Entry, EntryType, Index};

/// Compressed bytes read from the archive at a time: small, since most
/// gzip members are read for one entry's data.
const READ_AHEAD: usize = 32 << 10;

/// A packed archive and its index.
pub(super) struct Packed {
    layout: Layout,
    index: Arc<Index>,
}

impl Packed {
    /// `archive` with its index; `None` when it is not a packed archive
    /// (or its index cannot be read).
    pub fn open(archive: &super::Archive) -> Option<Packed> {
        let layout = archive.layout();
        let index = crate::pack::read_index(layout.temp()).ok()?;
        Some(Packed {
            layout,
            index: Arc::new(index),
        })
    }

    /// Hands every entry of the index to `sink`, in archive order, with
    /// its data read from its gzip member when the sink asks for it.
    pub fn apply(self, sink: &mut dyn Sink, cancel: &CancellationToken) -> Result<()> {
        let mut cursor = Cursor::new(self.layout, Arc::clone(&self.index))?;
        let mut count = 0;
        sink.expect(self.index.entry_count());
        for (n, entry) in self.index.entries().enumerate() {
            let m = member_of(&entry)?;
            cursor.entry = n as u64;
            cursor.member = entry.member;
            hand_over(
                &m,
                &mut count,
                MAX_MEMBERS,
                || Source::Packed(&mut cursor),
                sink,
                cancel,
            )?;
        }
        interrupted(cancel)?;
        let total = self.index.data_end();
        ::log::info!(
            "packed archive: {} entries from its index, {} of {} compressed bytes inflated",
            crate::units::comma(self.index.entry_count()),
            crate::units::comma(cursor.read.load(Ordering::Relaxed).min(total)),
            crate::units::comma(total)
        );
        Ok(())
    }
}

/// The member an index entry stands for, as its tar header gives it.
fn member_of(e: &Entry) -> Result<Member> {
    let kind = match e.kind {
        EntryType::File => Kind::File,
        EntryType::Dir => Kind::Dir,
        EntryType::Symlink => Kind::Symlink,
        EntryType::HardLink => Kind::HardLink,
        EntryType::Fifo => Kind::Fifo,
        EntryType::CharDevice => Kind::CharDevice,
        EntryType::BlockDevice => Kind::BlockDevice,
    };
    let mut raw = b"./".to_vec();
    raw.extend_from_slice(&e.path);
    if kind == Kind::Dir && !e.path.is_empty() {
        raw.push(b'/');
    }
    let name = String::from_utf8_lossy(&raw).into_owned();
    let path = sanitize(&raw)?;
    if path.as_os_str().is_empty() && kind != Kind::Dir {
        bail!("archive member {name:?} has an empty name");
    }
    let (link, target) = match kind {
        Kind::Symlink => (bytes_path(&e.link), PathBuf::new()),
        Kind::HardLink => {
            let target = sanitize(&e.link)?;
            ensure!(
                !target.as_os_str().is_empty(),
                "hard link {name:?} has no target"
            );
            let mut stored = b"./".to_vec();
            stored.extend_from_slice(&e.link);
            (bytes_path(&stored), target)
        }
        _ => (PathBuf::new(), PathBuf::new()),
    };
    Ok(Member {
        name,
        path,
        kind,
        link,
        target,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        uname: e.user.as_bytes().to_vec(),
        gname: e.group.as_bytes().to_vec(),
        mtime: (e.mtime, 0),
        sparse: None,
        size: e.size,
    })
}

fn bytes_path(bytes: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
}

/// Reads entries' data from their gzip members, on demand. An inflating
/// stream is kept while the next entry asked for is further on in the
/// same member; one in a later member starts a new stream there. A stream
/// reads its member's bytes and no more.
pub(super) struct Cursor {
    layout: Layout,
    index: Arc<Index>,
    /// The number of the first entry each member holds the header of
    /// (`u32::MAX` for a member holding only the rest of a large file).
    first_entry: Vec<u32>,
    /// The entry being handed over, and the member holding its header.
    entry: u64,
    member: u32,
    /// The inflating stream, the member it started at, and the entry
    /// whose header it reads next.
    stream: Option<(Stream, u32, u64)>,
    /// Compressed bytes read so far, added to by the streams' readers.
    read: Arc<AtomicU64>,
}

impl Cursor {
    fn new(layout: Layout, index: Arc<Index>) -> Result<Self> {
        let len = layout.temp().metadata().context("stat")?.len();
        ensure!(
            index.data_end() <= len,
            "the packed archive's index lists more bytes than it has"
        );
        ensure!(
            index.entry_count() <= MAX_MEMBERS,
            "the packed archive's index lists more than {} entries",
            crate::units::comma(MAX_MEMBERS)
        );
        let mut first_entry = vec![u32::MAX; index.members().len()];
        for (n, e) in index.entries().enumerate() {
            let slot = first_entry
                .get_mut(e.member as usize)
                .ok_or_else(|| anyhow!("the index names a member it lacks"))?;
            if *slot == u32::MAX {
                *slot = n as u32;
            }
        }
        Ok(Cursor {
            layout,
            index,
            first_entry,
            entry: 0,
            member: 0,
            stream: None,
            read: Arc::default(),
        })
    }

    /// The tar stream at the start of the data of the entry being handed
    /// over (`m`), its header checked against `m`.
    pub fn data_of(&mut self, m: &Member) -> Result<&mut Stream> {
        let reuse = matches!(&self.stream,
            Some((_, member, next)) if *member == self.member && *next <= self.entry);
        if !reuse {
            let first = u64::from(self.first_entry[self.member as usize]);
            self.stream = Some((self.stream_at(self.member)?, self.member, first));
        }
        let Some((stream, _, next)) = self.stream.as_mut() else {
            bail!("no stream");
        };
        while *next < self.entry {
            stream
                .next_member()?
                .ok_or_else(|| anyhow!("the packed archive's tar ends before its index does"))?;
            *next += 1;
        }
        let header = stream
            .next_member()?
            .ok_or_else(|| anyhow!("the packed archive's tar ends before its index does"))?;
        *next += 1;
        same_as_index(&header, m)?;
        Ok(stream)
    }

    /// A tar stream inflating member `n` and the members after it that
    /// hold only the rest of a large file (no entry starts in them).
    fn stream_at(&mut self, n: u32) -> Result<Stream> {
        let n = n as usize;
        let members = self.index.members();
        let start = members
            .get(n)
            .map(|m| m.offset)
            .ok_or_else(|| anyhow!("the index names a member it lacks"))?;
        let run = self.first_entry[n + 1..]
            .iter()
            .take_while(|first| **first == u32::MAX)
            .count();
        let end = members[n + run].end();
        self.layout.fill(start, end, members)?;
        let counted = Counted {
            inner: self.layout.range(start, end),
            read: Arc::clone(&self.read),
        };
        let gz =
            flate2::bufread::MultiGzDecoder::new(BufReader::with_capacity(READ_AHEAD, counted));
        let reader: Box<dyn BufRead + Send> = Box::new(BufReader::with_capacity(READ_AHEAD, gz));
        Ok(TarStream::new(reader))
    }
}

/// Counts the bytes read through it.
struct Counted<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Fails unless the tar header read (`header`) is the entry the index
/// lists (`listed`).
fn same_as_index(header: &Member, listed: &Member) -> Result<()> {
    let differs = if header.path != listed.path {
        "path"
    } else if header.kind != listed.kind {
        "type"
    } else if header.size != listed.size || header.sparse.is_some() {
        "size"
    } else if header.mode != listed.mode {
        "mode"
    } else if header.mtime != listed.mtime {
        "mtime"
    } else if (header.uid, header.gid) != (listed.uid, listed.gid)
        || (header.uname.as_slice(), header.gname.as_slice())
            != (listed.uname.as_slice(), listed.gname.as_slice())
    {
        "owner"
    } else if header.link != listed.link || header.target != listed.target {
        "link"
    } else {
        return Ok(());
    };
    bail!(
        "packed archive: the tar header of {} differs from its index ({differs})",
        listed.name
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::Data;
    use crate::pack::{index_members, Footer, IndexBuilder, MemberRef};
    use std::io::Write;
    use std::path::Path;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }

    fn entry(path: &str, kind: EntryType, size: u64, mode: u32, member: u32) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind,
            size,
            mode,
            mtime: 1_600_000_000,
            member,
            ..Entry::default()
        }
    }

    /// A packed archive of `./`, `./a` (in the first member) and `./x`
    /// holding "hello" with mode 0644 (in the second), whose index lists
    /// `./x` with `listed_mode`.
    fn archive(dir: &Path, listed_mode: u32) -> PathBuf {
        let mut members = Vec::new();
        for (name, kind, data) in [
            ("./", tar::EntryType::Directory, None),
            ("./a", tar::EntryType::Regular, Some(&b"first"[..])),
            ("./x", tar::EntryType::Regular, Some(&b"hello"[..])),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_path(name).unwrap();
            h.set_entry_type(kind);
            h.set_mode(if name == "./" { 0o755 } else { 0o644 });
            h.set_mtime(1_600_000_000);
            let data = data.unwrap_or_default();
            h.set_size(data.len() as u64);
            h.set_cksum();
            let mut raw = h.as_bytes().to_vec();
            raw.extend_from_slice(data);
            raw.resize(raw.len().div_ceil(512) * 512, 0);
            if name == "./a" {
                // `./` and `./a` share the first member.
                let first: &mut Vec<u8> = members.last_mut().unwrap();
                first.extend_from_slice(&raw);
            } else {
                members.push(raw);
            }
        }
        members.push(vec![0; 1024]);
        let members: Vec<Vec<u8>> = members.iter().map(|m| gzip(m)).collect();
        let mut refs: Vec<MemberRef> = Vec::new();
        for m in &members {
            refs.push(MemberRef::after(refs.last(), m).unwrap());
        }
        let mut b = IndexBuilder::default();
        b.entry(&entry("", EntryType::Dir, 0, 0o755, 0)).unwrap();
        b.entry(&entry("a", EntryType::File, 5, 0o644, 0)).unwrap();
        b.entry(&entry("x", EntryType::File, 5, listed_mode, 1))
            .unwrap();
        let data_end = refs.last().unwrap().end();
        let index = b.finish(refs).unwrap();
        let tail = index_members(&index);
        let path = dir.join(format!("a{listed_mode:o}.tar.gz"));
        let mut out = members.concat();
        out.extend_from_slice(&tail);
        out.extend_from_slice(&Footer::for_index(data_end, &tail).encode());
        std::fs::write(&path, out).unwrap();
        path
    }

    /// Reads the data of the entries named in `read`.
    struct Reader<'a> {
        read: &'a [&'a str],
        got: Vec<(String, Vec<u8>)>,
    }

    impl Sink for Reader<'_> {
        fn member(&mut self, m: &Member, data: &mut Data<'_>) -> Result<()> {
            if self.read.contains(&m.name.as_str()) {
                self.got.push((m.name.clone(), data.read_small(m)?));
            } else {
                self.got.push((m.name.clone(), Vec::new()));
            }
            Ok(())
        }
    }

    /// The archive at `path`, as a deploy holds it.
    fn in_temp(path: &Path) -> crate::archive::Archive {
        let mut temp = tempfile::NamedTempFile::new().unwrap();
        temp.write_all(&std::fs::read(path).unwrap()).unwrap();
        crate::archive::Archive::new(temp).unwrap()
    }

    fn apply(path: &Path, read: &[&str]) -> Result<Vec<(String, Vec<u8>)>> {
        let mut sink = Reader {
            read,
            got: Vec::new(),
        };
        let packed = Packed::open(&in_temp(path)).ok_or_else(|| anyhow!("not packed"))?;
        packed.apply(&mut sink, &CancellationToken::new())?;
        Ok(sink.got)
    }

    #[test]
    fn entries_come_from_the_index_and_data_only_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = archive(dir.path(), 0o644);
        assert_eq!(
            apply(&path, &["./x"]).unwrap(),
            [
                ("./".to_string(), vec![]),
                ("./a".to_string(), vec![]),
                ("./x".to_string(), b"hello".to_vec())
            ]
        );
        // Both: the stream at `./a` goes on into the next member.
        let got = apply(&path, &["./a", "./x"]).unwrap();
        assert_eq!(got[1].1, b"first");
        assert_eq!(got[2].1, b"hello");
        // A plain copy of the same bytes is not a packed archive.
        let plain = dir.path().join("plain.tar.gz");
        std::fs::write(&plain, gzip(&[0u8; 1024])).unwrap();
        assert!(Packed::open(&in_temp(&plain)).is_none());
    }

    #[test]
    fn a_header_that_differs_from_the_index_fails_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = archive(dir.path(), 0o600);
        let e = apply(&path, &["./x"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "packed archive: the tar header of ./x differs from its index (mode)"
        );
        // What is not read is not checked: the index is trusted as the
        // headers are (one archive, one checksum).
        assert!(apply(&path, &["./a"]).is_ok());
    }
}
