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

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, ensure, Context, Result};
use tokio_util::sync::CancellationToken;

use super::stream::{sanitize, Kind, Member, TarStream};
use super::{hand_over, interrupted, Sink, Source, Stream, MAX_MEMBERS};
use crate::pack::{Entry, EntryType, Index, MemberRef};

/// Compressed bytes read from the archive at a time: small, since most
/// gzip members are read for one entry's data.
const READ_AHEAD: usize = 32 << 10;

/// A packed archive and its index.
pub(super) struct Packed {
    file: File,
    index: Index,
}

impl Packed {
    /// The archive at `path` with its index; `None` when it is not a
    /// packed archive (or its index cannot be read).
    pub fn open(path: &Path) -> Option<Packed> {
        let file = File::open(path).ok()?;
        let index = crate::pack::read_index(&file).ok()?;
        Some(Packed { file, index })
    }

    /// Hands every entry of the index to `sink`, in archive order, with
    /// its data read from its gzip member when the sink asks for it.
    pub fn apply(self, sink: &mut dyn Sink, cancel: &CancellationToken) -> Result<()> {
        let mut cursor = Cursor::new(self.file, &self.index)?;
        let mut count = 0;
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
/// same member; one in a later member starts a new stream there.
pub(super) struct Cursor {
    file: File,
    members: Vec<MemberRef>,
    /// The number of the first entry each member holds the header of
    /// (`u64::MAX` for a member holding only the rest of a large file).
    first_entry: Vec<u64>,
    data_end: u64,
    /// The entry being handed over, and the member holding its header.
    entry: u64,
    member: u32,
    /// The inflating stream and the entry whose header it reads next.
    stream: Option<(Stream, u64)>,
    /// Compressed bytes read so far, added to by the streams' readers.
    read: Arc<AtomicU64>,
}

impl Cursor {
    fn new(file: File, index: &Index) -> Result<Self> {
        let len = file.metadata().context("stat")?.len();
        ensure!(
            index.data_end() <= len,
            "the packed archive's index lists more bytes than it has"
        );
        let members = index.members().to_vec();
        let mut first_entry = vec![u64::MAX; members.len()];
        for (n, e) in index.entries().enumerate() {
            let slot = first_entry
                .get_mut(e.member as usize)
                .ok_or_else(|| anyhow!("the index names a member it lacks"))?;
            if *slot == u64::MAX {
                *slot = n as u64;
            }
        }
        Ok(Cursor {
            file,
            members,
            first_entry,
            data_end: index.data_end(),
            entry: 0,
            member: 0,
            stream: None,
            read: Arc::default(),
        })
    }

    /// The tar stream at the start of the data of the entry being handed
    /// over (`m`), its header checked against `m`.
    pub fn data_of(&mut self, m: &Member) -> Result<&mut Stream> {
        let first = self.first_entry[self.member as usize];
        let reuse = matches!(&self.stream, Some((_, next)) if (first..=self.entry).contains(next));
        if !reuse {
            self.stream = Some((self.stream_at(self.member)?, first));
        }
        let Some((stream, next)) = self.stream.as_mut() else {
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

    /// A tar stream inflating from the start of member `n` on.
    fn stream_at(&mut self, n: u32) -> Result<Stream> {
        let start = self
            .members
            .get(n as usize)
            .map(|m| m.offset)
            .ok_or_else(|| anyhow!("the index names a member it lacks"))?;
        let mut file = self.file.try_clone().context("reading the archive")?;
        file.seek(SeekFrom::Start(start))
            .context("reading the archive")?;
        let counted = Counted {
            inner: file.take(self.data_end - start),
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
