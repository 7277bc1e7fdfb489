//! Format sniffing and safe extraction, in process: tar, optionally
//! compressed with gzip, bzip2, xz or zstd (chosen by magic bytes, as GNU
//! `tar xf` does; multi-member streams included).
//!
//! One write path, in archive order: a later member replaces an earlier one
//! at the same path, whatever their types (`write.rs`). The decompressor
//! runs on its own thread, handing that single writer chunks through a
//! bounded channel.
//! Input that is not a tar stream is refused before anything is written.
//!
//! Safety, as GNU tar or stricter: a leading `/` is stripped; a member or a
//! hard link target with `..` fails the extraction, and so does a member that
//! would land outside the directory through a symlink. As root, owners and
//! modes are kept, owners by name as GNU tar keeps them (`owner.rs`);
//! otherwise the umask applies. Mtimes of files and
//! directories are kept (PAX sub-second times included), since rsync's quick
//! check depends on them.
//!
//! Limits: the member data written stops at `--max-extract-size` (by
//! default the smaller of 50 GiB and the free space where the extraction
//! dir is), and an archive has at most [`MAX_MEMBERS`] members. Fifos and
//! devices are skipped with a line in the log, as root or not.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;

use crate::step::interrupted;
use anyhow::{anyhow, bail, Context, Result};
use tokio_util::sync::CancellationToken;

mod file;
mod owner;
mod packed;
mod stream;
mod write;

pub use file::{Archive, Borrowed, Span};
pub(crate) use stream::{Kind, Member};
use stream::{NotTar, TarStream};
pub(crate) use write::set_mtime;
use write::Writer;

/// The default for `--max-extract-size`, when the extraction filesystem
/// has more free space than this.
pub const DEFAULT_MAX_SIZE: u64 = 50 << 30;

/// The most members an archive may have.
pub const MAX_MEMBERS: u64 = 10_000_000;

/// `--max-extract-size`: how much member data an extraction may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MaxSize {
    /// The smaller of [`DEFAULT_MAX_SIZE`] and the free space on the
    /// extraction dir's filesystem.
    #[default]
    Default,
    /// No limit (`--max-extract-size 0`).
    Unlimited,
    /// At most this many bytes.
    Bytes(u64),
}

impl MaxSize {
    /// The flag's value: `0` is no limit.
    pub fn from_flag(bytes: u64) -> Self {
        if bytes == 0 {
            Self::Unlimited
        } else {
            Self::Bytes(bytes)
        }
    }

    /// The limit for writing on `dir`'s filesystem (its free space bounds
    /// the default, and the message names `dir`).
    fn resolve(self, dir: &Path) -> Result<Option<SizeLimit>> {
        let bytes = match self {
            Self::Unlimited => return Ok(None),
            Self::Bytes(n) => n,
            Self::Default => {
                let free = free_space(dir)?;
                if free < DEFAULT_MAX_SIZE {
                    return Ok(Some(SizeLimit {
                        bytes: free,
                        label: format!("the {} free on {}", size_label(free), dir.display()),
                    }));
                }
                DEFAULT_MAX_SIZE
            }
        };
        Ok(Some(SizeLimit {
            bytes,
            label: size_label(bytes),
        }))
    }
}

/// A size for a message: `50 GiB`, `1 MiB` when exact in binary units,
/// else `1.5 GB (1,500,000,000 bytes)`.
fn size_label(n: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{} {unit}", n >> shift);
        }
    }
    if n < 1000 {
        return format!("{n} bytes");
    }
    format!(
        "{} ({} bytes)",
        crate::units::format_bytes(n),
        crate::units::comma(n)
    )
}

/// Bytes an unprivileged user may still write on `dir`'s filesystem.
fn free_space(dir: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_dir = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .with_context(|| format!("statvfs {}", dir.display()))?;
    // SAFETY: statvfs is plain old data; zeroed is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_dir is NUL-terminated and st is a valid out-pointer.
    if unsafe { libc::statvfs(c_dir.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statvfs {}", dir.display()));
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

const READ_BUFFER: usize = 256 << 10;

/// Bytes the decompressor hands over at a time, and how many such chunks
/// may wait for the writer.
const CHUNK: usize = 128 << 10;
const CHUNKS_AHEAD: usize = 4;

/// Compression detected from the first bytes of an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A bare tar stream.
    None,
    /// gzip (`1f 8b`).
    Gzip,
    /// bzip2 (`BZh`).
    Bzip2,
    /// xz (`fd 37 7a 58 5a 00`).
    Xz,
    /// zstd (`28 b5 2f fd`).
    Zstd,
}

impl Compression {
    /// Identifies the compression from an archive's leading bytes.
    pub fn sniff(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if head.starts_with(b"BZh") {
            Self::Bzip2
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Self::Xz
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else {
            Self::None
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::None => "tar",
            Self::Gzip => "gzip",
            Self::Bzip2 => "bzip2",
            Self::Xz => "xz",
            Self::Zstd => "zstd",
        }
    }
}

/// Where checked members go, one at a time in archive order: an extraction
/// dir ([`extract`]) or, for `sync_strategy: native`, dest itself.
pub(crate) trait Sink {
    /// Places `m`, reading its data (if it wants it) from `data`.
    fn member(&mut self, m: &Member, data: &mut Data<'_>) -> Result<()>;

    /// Told first when the archive's entry count is known (a packed
    /// archive's index), to make room at once.
    fn expect(&mut self, _entries: u64) {}
}

/// The decompressed tar stream every [`Sink`] reads from.
type Stream = TarStream<Box<dyn BufRead + Send>>;

/// The data of the member being placed, read at most once.
pub(crate) struct Data<'a> {
    source: Source<'a>,
    cancel: &'a CancellationToken,
}

/// Where a member's data comes from.
enum Source<'a> {
    /// The tar stream, which holds it next.
    Stream(&'a mut Stream),
    /// A packed archive's gzip member holding it, inflated only when the
    /// data is asked for.
    Packed(&'a mut packed::Cursor),
}

impl Data<'_> {
    /// The tar stream, at the start of `m`'s data.
    fn tar(&mut self, m: &Member) -> Result<&mut Stream> {
        match &mut self.source {
            Source::Stream(tar) => Ok(tar),
            Source::Packed(cursor) => cursor.data_of(m),
        }
    }

    /// Writes the member's data into `file`, leaving a sparse member's holes
    /// as holes, and checking for a signal every few MiB.
    pub fn write_to(&mut self, m: &Member, file: &File) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::FileExt;
        let cancel = self.cancel;
        let tar = self.tar(m)?;
        let mut done: u64 = 0;
        let mut check = |n: usize| -> Result<()> {
            let before = done / CANCEL_EVERY;
            done += n as u64;
            if done / CANCEL_EVERY != before {
                interrupted(cancel)?;
            }
            Ok(())
        };
        match &m.sparse {
            None => tar.copy_data(m.size, |chunk| {
                (&*file).write_all(chunk)?;
                check(chunk.len())
            }),
            Some(sparse) => {
                for &(offset, len) in &sparse.regions {
                    let mut at = offset;
                    tar.copy_data(len, |chunk| {
                        file.write_all_at(chunk, at)?;
                        at += chunk.len() as u64;
                        check(chunk.len())
                    })?;
                }
                Ok(file.set_len(sparse.size)?)
            }
        }
    }
}

impl Data<'_> {
    /// The data of a small regular member (at most 1 MiB).
    pub fn read_small(&mut self, m: &Member) -> Result<Vec<u8>> {
        if m.size > 1 << 20 || m.sparse.is_some() {
            bail!("{} is larger than 1 MiB", m.name);
        }
        let mut out = Vec::with_capacity(m.size as usize);
        self.tar(m)?.copy_data(m.size, |chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok(out)
    }
}

/// Check for a signal this often inside a member's data.
const CANCEL_EVERY: u64 = 4 << 20;

/// `--max-extract-size` as it applies to one run: member data bytes are
/// charged before they are written.
pub(crate) struct Budget {
    limit: Option<SizeLimit>,
    spent: u64,
}

impl Budget {
    /// The budget for writing on `dir`'s filesystem (whose free space
    /// bounds the default; the message names `dir`).
    pub fn new(max_size: MaxSize, dir: &Path) -> Result<Self> {
        Ok(Budget {
            limit: max_size.resolve(dir)?,
            spent: 0,
        })
    }

    /// Charges `bytes` for writing member `name`; fails past the limit
    /// (and then charges nothing).
    pub fn charge(&mut self, bytes: u64, name: &str) -> Result<()> {
        let spent = self.spent.saturating_add(bytes);
        match &self.limit {
            Some(limit) if spent > limit.bytes => Err(OutOfRoom(format!(
                "archive expands past {} (--max-extract-size): stopped at {name}",
                limit.label
            ))
            .into()),
            _ => {
                self.spent = spent;
                Ok(())
            }
        }
    }
}

/// The error of a [`Budget`] spent: the archive needs more room than the
/// limit gives.
#[derive(Debug)]
pub(crate) struct OutOfRoom(String);

impl std::fmt::Display for OutOfRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OutOfRoom {}

/// Whether `err` is a lack of room: a [`Budget`] spent, or a full disk.
pub(crate) fn out_of_room(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.is::<OutOfRoom>()
            || e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.raw_os_error() == Some(libc::ENOSPC))
    })
}

/// A resolved `--max-extract-size`.
struct SizeLimit {
    bytes: u64,
    /// How the error names it: `50 GiB`, or the free space and where.
    label: String,
}

/// Extracts the archive at `archive` into the existing, empty directory
/// `dir`, writing at most `max_size` of member data. `name` (the source
/// URL) leads every error message. A signal (`cancel`) stops the extraction
/// between members and inside large ones.
pub fn extract(
    archive: &Path,
    dir: &Path,
    name: &str,
    max_size: MaxSize,
    cancel: &CancellationToken,
) -> Result<()> {
    let extracted = (|| {
        // The free space is the parent's, which the message names: `dir`
        // was made there just now.
        let room = Budget::new(max_size, dir.parent().unwrap_or(dir))?;
        let mut writer = Writer::new(dir, room)?;
        apply(archive, &mut writer, cancel)?;
        writer.finish()
    })();
    extracted.with_context(|| name.to_string())
}

/// Hands every member of the archive at `archive` to `sink`, in archive
/// order, after the checks every strategy shares: the member limit,
/// devices and fifos skipped with a log line, a signal between members.
/// The archive's own errors (not a tar stream, bad compressed data) are
/// told apart from the sink's.
pub(crate) fn apply(archive: &Path, sink: &mut dyn Sink, cancel: &CancellationToken) -> Result<()> {
    let input = Input::open(archive)?;
    let compression = input.compression;
    let mut tar = TarStream::new(input.reader);
    let result = each_member(&mut tar, sink, cancel, MAX_MEMBERS);
    // Hang up on the decompressor, then hear how it ended.
    let read_to_the_end = tar.input_ended();
    drop(tar);
    let fed = match input.feeder {
        Some(feeder) => feeder
            .join()
            .unwrap_or_else(|_| Fed::Failed(std::io::Error::other("the decompressor panicked"))),
        None => Fed::Done,
    };
    match fed {
        // The archive stopped short because its compressed data is bad.
        // (Data after the end-of-archive block is never read or judged.)
        Fed::Failed(e) if read_to_the_end => {
            Err(anyhow!(e).context(format!("bad {} data", compression.label())))
        }
        _ => result.map_err(|e| match e.downcast::<NotTar>() {
            Ok(not_tar) if compression != Compression::None => anyhow!(
                "not a tar archive ({} after {} decompression)",
                not_tar.0,
                compression.label()
            ),
            Ok(not_tar) => anyhow!(not_tar),
            Err(e) => e,
        }),
    }
}

/// As [`apply`], but a packed archive (SPEC 8.9) is read by its index:
/// `sink` gets each entry as the index lists it, and the gzip member
/// holding an entry's data is inflated only when the sink reads the data.
/// Any other archive (or one whose index cannot be read) is read as
/// [`apply`] reads it.
pub(crate) fn apply_indexed(
    archive: &Archive,
    sink: &mut dyn Sink,
    cancel: &CancellationToken,
) -> Result<()> {
    match packed::Packed::open(archive) {
        Some(packed) => packed.apply(sink, cancel),
        None => apply(archive.whole()?, sink, cancel),
    }
}

fn each_member(
    tar: &mut Stream,
    sink: &mut dyn Sink,
    cancel: &CancellationToken,
    max_members: u64,
) -> Result<()> {
    let mut members: u64 = 0;
    while let Some(m) = tar.next_member()? {
        hand_over(
            &m,
            &mut members,
            max_members,
            || Source::Stream(tar),
            sink,
            cancel,
        )?;
    }
    interrupted(cancel)
}

/// Hands member `m` (the `count`th, counted here) and its data to `sink`,
/// after the checks every way of reading shares: a signal, the member
/// limit, devices and fifos skipped with a log line.
fn hand_over<'a>(
    m: &Member,
    count: &mut u64,
    max_members: u64,
    source: impl FnOnce() -> Source<'a>,
    sink: &mut dyn Sink,
    cancel: &'a CancellationToken,
) -> Result<()> {
    interrupted(cancel)?;
    *count += 1;
    if *count > max_members {
        bail!(
            "archive has more than {} members (the limit): stopped at {}",
            crate::units::comma(max_members),
            m.name
        );
    }
    if let Some(kind) = m.kind.skipped() {
        ::log::info!(
            "skipping {kind} member {}: devices, fifos and sockets are not extracted",
            m.name
        );
        return Ok(());
    }
    let source = source();
    sink.member(m, &mut Data { source, cancel })?;
    crate::progress::count(1);
    Ok(())
}

/// How the decompressor thread ended.
enum Fed {
    /// All input decompressed and handed over.
    Done,
    /// The reader stopped listening (the extraction ended or failed).
    HungUp,
    /// The compressed data is bad.
    Failed(std::io::Error),
}

/// The decompressed archive: read from the file directly, or handed over
/// in chunks by a decompressor thread.
struct Input {
    reader: Box<dyn BufRead + Send>,
    compression: Compression,
    feeder: Option<JoinHandle<Fed>>,
}

impl Input {
    fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).with_context(|| format!("open {}", path.display()))?;
        let mut head = [0u8; 6];
        let n = read_head(&mut file, &mut head)?;
        file.seek(SeekFrom::Start(0))?;
        let compression = Compression::sniff(&head[..n]);
        let file = BufReader::with_capacity(READ_BUFFER, file);
        let mut decoder: Box<dyn Read + Send> = match compression {
            Compression::None => {
                return Ok(Input {
                    reader: Box::new(file),
                    compression,
                    feeder: None,
                })
            }
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(file)),
            Compression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(file)),
            Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(file)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(file)?),
        };
        let (chunks, sender) = Chunks::new();
        let feeder = std::thread::Builder::new()
            .name("decompress".into())
            .spawn(move || loop {
                let mut buf = sender.spare();
                let n = match decoder.read(&mut buf) {
                    Ok(0) => return Fed::Done,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Fed::Failed(e),
                };
                if sender.full.send((buf, n)).is_err() {
                    return Fed::HungUp;
                }
            })
            .context("starting the decompressor")?;
        Ok(Input {
            reader: Box::new(chunks),
            compression,
            feeder: Some(feeder),
        })
    }
}

/// A chunk of decompressed bytes: a buffer and how much of it is filled.
type Chunk = (Vec<u8>, usize);

/// The reading end of the decompressor's chunks, read in place; used
/// buffers go back to the decompressor.
struct Chunks {
    full: Receiver<Chunk>,
    empty: Sender<Vec<u8>>,
    current: Chunk,
    pos: usize,
}

/// The decompressor's end.
struct ChunkSender {
    full: SyncSender<Chunk>,
    empty: Receiver<Vec<u8>>,
}

impl Chunks {
    fn new() -> (Chunks, ChunkSender) {
        let (full_tx, full_rx) = sync_channel(CHUNKS_AHEAD);
        let (empty_tx, empty_rx) = channel();
        let chunks = Chunks {
            full: full_rx,
            empty: empty_tx,
            current: (Vec::new(), 0),
            pos: 0,
        };
        let sender = ChunkSender {
            full: full_tx,
            empty: empty_rx,
        };
        (chunks, sender)
    }
}

impl ChunkSender {
    /// A buffer to fill: a used one, or a new one.
    fn spare(&self) -> Vec<u8> {
        match self.empty.try_recv() {
            Ok(used) if used.len() == CHUNK => used,
            _ => vec![0; CHUNK],
        }
    }
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Chunks {
    /// The rest of the current chunk, or the next one; empty at the end
    /// (the decompressor finished, or failed: it says which).
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.pos == self.current.1 {
            let Ok(next) = self.full.recv() else {
                break;
            };
            let used = std::mem::replace(&mut self.current, next);
            let _ = self.empty.send(used.0);
            self.pos = 0;
        }
        Ok(&self.current.0[self.pos..self.current.1])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.current.1);
    }
}

fn read_head(file: &mut File, head: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Whether we run as root (and so keep owners, as `tar xf` does).
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The process umask, read without changing it (Linux `/proc/self/status`).
pub(crate) fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_named_in_binary_units_when_exact() {
        assert_eq!(size_label(DEFAULT_MAX_SIZE), "50 GiB");
        assert_eq!(size_label(1 << 20), "1 MiB");
        assert_eq!(size_label(1_500_000_000), "1.5 GB (1,500,000,000 bytes)");
        assert_eq!(size_label(999), "999 bytes");
        assert_eq!(MaxSize::from_flag(0), MaxSize::Unlimited);
    }

    #[test]
    fn the_default_limit_is_at_most_the_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let limit = MaxSize::Default.resolve(dir.path()).unwrap().unwrap();
        assert!(limit.bytes <= DEFAULT_MAX_SIZE);
        assert!(limit.bytes <= free_space(dir.path()).unwrap() + (1 << 30));
    }

    #[test]
    fn sniffs_magic_bytes() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(Compression::sniff(b"BZh91AY"), Compression::Bzip2);
        assert_eq!(
            Compression::sniff(&[0xfd, b'7', b'z', b'X', b'Z', 0]),
            Compression::Xz
        );
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"app/"), Compression::None);
    }

    /// A compressed archive spans many chunks from the decompressor thread.
    #[test]
    fn a_compressed_archive_of_many_chunks_extracts_whole() {
        use std::io::Write;
        let scratch = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut seed: u32 = 1;
        for i in 0..40 {
            let data: Vec<u8> = (0..100_000)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (seed >> 16) as u8
                })
                .collect();
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, format!("f{i}"), &data[..]).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let archive = scratch.path().join("a.tar.gz");
        std::fs::write(&archive, gz.finish().unwrap()).unwrap();
        let dir = scratch.path().join("out");
        std::fs::create_dir(&dir).unwrap();
        extract(
            &archive,
            &dir,
            "a",
            MaxSize::Default,
            &CancellationToken::new(),
        )
        .unwrap();
        let mut expected = tar::Archive::new(&tar[..]);
        for entry in expected.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            let path = dir.join(entry.path().unwrap());
            assert!(std::fs::read(&path).unwrap() == data, "{}", path.display());
        }
    }

    #[test]
    fn a_signal_stops_the_extraction() {
        let scratch = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, "a.txt", &b"abc"[..]).unwrap();
        let archive = scratch.path().join("a.tar");
        std::fs::write(&archive, b.into_inner().unwrap()).unwrap();
        let dir = scratch.path().join("out");
        std::fs::create_dir(&dir).unwrap();
        let cancel = CancellationToken::new();
        cancel.cancel();
        let e = extract(&archive, &dir, "file:///a.tar", MaxSize::Default, &cancel).unwrap_err();
        assert_eq!(format!("{e:#}"), "file:///a.tar: interrupted by signal");
    }
}
