//! `stretcher pack`: a directory as a packed archive. The tree is walked
//! in name order and written as GNU tar (what `tar -C DIR -czf - .` holds:
//! `./` names, types, modes, mtimes, owners with names, symlinks, hard
//! links, long names) cut into gzip members, each holding whole entries.
//!
//! A member ends once it holds at least the member size of tar, or after
//! an entry whose path's hash picks it (one in [`CUT_EVERY`]): an entry
//! that grows or shrinks then moves the cuts after it only up to the next
//! picked entry, so a redeploy's other members stay byte for byte the
//! same. A file larger than [`SPLIT`] (or the member size, if larger)
//! starts a member and is cut at every multiple of it in its data, so an
//! unchanged start of a large file is reused too.
//!
//! Members are compressed on every core, and written in order with the
//! running SHA-256; memory is bounded by a few members in flight,
//! whatever the tree's size.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest as _, Sha256};

use super::gzip::{index_members, Footer, MemberWriter};
use super::index::{Builder, Entry, EntryType, MemberRef};
use super::names::Names;
use super::walk::{Node, Walk};
use crate::sync::Excludes;

/// A large file is cut in its data at multiples of this (or of the member
/// size, when larger).
pub const SPLIT: usize = 1 << 20;

/// One entry in this many (by its path's hash) ends a member.
const CUT_EVERY: u32 = 16;

/// The largest member size accepted.
pub const MAX_MEMBER_SIZE: u64 = 64 << 20;

/// What to pack and how.
pub struct Options {
    /// Bytes of tar a member holds at least (except the last of a run).
    pub member_size: usize,
    /// Paths left out (rsync's rules, as the manifest's `excludes`).
    pub excludes: Excludes,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Summary {
    /// SHA-256 of the archive, lowercase hex.
    pub sha256: String,
    /// Its size.
    pub bytes: u64,
    /// Tar entries in it.
    pub entries: u64,
    /// Data members in it.
    pub members: usize,
    /// Bytes of index and footer at its end.
    pub index_bytes: u64,
}

impl Summary {
    /// What `stretcher pack` prints: the archive's sha256 and the lines a
    /// manifest needs.
    pub fn report(&self, out: &Path) -> String {
        let name = out.file_name().unwrap_or_default().to_string_lossy();
        format!(
            "{}: {} bytes, {} entries in {} gzip members, index {} bytes\n\
             sha256: {}\n\
             \n\
             src: https://example.com/{name}   # where you upload it (s3://, gs://, http(s)://)\n\
             checksum: {}\n",
            out.display(),
            crate::units::comma(self.bytes),
            crate::units::comma(self.entries),
            crate::units::comma(self.members as u64),
            crate::units::comma(self.index_bytes),
            self.sha256,
            self.sha256,
        )
    }
}

/// Packs `dir` into `out` (written under a temp name beside it, then
/// renamed: no partial archive is ever left at `out`).
pub fn pack(dir: &Path, out: &Path, opts: &Options) -> Result<Summary> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = out
        .file_name()
        .ok_or_else(|| anyhow!("-o {}: not a file name", out.display()))?;
    let temp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .tempfile_in(parent)
        .with_context(|| format!("creating a temp file in {}", parent.display()))?;
    let mut skip = Vec::new();
    for path in [temp.path(), out] {
        if let Ok(m) = std::fs::metadata(path) {
            skip.push((m.dev(), m.ino()));
        }
    }
    let file = temp
        .reopen()
        .with_context(|| format!("opening {}", temp.path().display()))?;
    let summary = write(dir, file, opts, skip)?;
    // As a file `tar czf` creates: 0666 less the umask.
    let mode = 0o666 & !crate::archive::umask();
    std::fs::set_permissions(
        temp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(mode),
    )
    .with_context(|| format!("chmod {}", temp.path().display()))?;
    temp.persist(out)
        .map_err(|e| anyhow!("renaming to {}: {}", out.display(), e.error))?;
    Ok(summary)
}

/// A raw member on its way to a compressor: its number and its tar bytes.
type Raw = (u32, Vec<u8>);

fn write(dir: &Path, out: File, opts: &Options, skip: Vec<(u64, u64)>) -> Result<Summary> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(8));
    std::thread::scope(|scope| {
        let (raw_tx, raw_rx) = sync_channel::<Raw>(threads * 2);
        let (done_tx, done_rx) = sync_channel::<(u32, Result<Vec<u8>>)>(threads * 2);
        // One token per member not yet written: the walk waits for one, so
        // members a slow compressor holds up cannot pile up behind it.
        let ahead = threads * 4;
        let (token_tx, token_rx) = sync_channel::<()>(ahead);
        for _ in 0..ahead {
            let _ = token_tx.send(());
        }
        let raw_rx = Arc::new(Mutex::new(raw_rx));
        for _ in 0..threads {
            let (rx, tx) = (Arc::clone(&raw_rx), done_tx.clone());
            scope.spawn(move || compress(&rx, &tx));
        }
        drop(done_tx);
        let writer = scope.spawn(move || write_members(done_rx, out, token_tx));
        let walked = walk(
            dir,
            opts,
            skip,
            Feed {
                tx: raw_tx,
                tokens: token_rx,
            },
        );
        let written = writer
            .join()
            .map_err(|_| anyhow!("the writer thread panicked"))?;
        // A writer's failure stops the walk too: it is the cause.
        let (mut out, mut hash, members) = written?;
        let builder = walked?;
        let data_end = members.last().map_or(0, MemberRef::end);
        let index = builder.finish(members)?;
        let tail = index_members(&index);
        let footer = Footer::for_index(data_end, &tail).encode();
        for part in [&tail, &footer] {
            out.write_all(part)?;
            hash.update(part);
        }
        out.flush().context("writing the archive")?;
        Ok(Summary {
            sha256: hex::encode(hash.finalize()),
            bytes: data_end + tail.len() as u64 + footer.len() as u64,
            entries: index.entry_count(),
            members: index.members().len(),
            index_bytes: (tail.len() + footer.len()) as u64,
        })
    })
}

/// A compressor thread: raw members in, gzip members out.
fn compress(rx: &Mutex<Receiver<Raw>>, tx: &SyncSender<(u32, Result<Vec<u8>>)>) {
    let mut gz = MemberWriter::default();
    loop {
        let next = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((seq, raw)) = next else { return };
        if tx.send((seq, gz.member(&raw))).is_err() {
            return;
        }
    }
}

/// The writer thread: members in order into the archive, hashed, listed.
fn write_members(
    rx: Receiver<(u32, Result<Vec<u8>>)>,
    out: File,
    tokens: SyncSender<()>,
) -> Result<(BufWriter<File>, Sha256, Vec<MemberRef>)> {
    let mut out = BufWriter::with_capacity(1 << 20, out);
    let mut hash = Sha256::new();
    let mut members: Vec<MemberRef> = Vec::new();
    let mut pending = BTreeMap::new();
    for (seq, member) in rx {
        pending.insert(seq, member?);
        while let Some(bytes) = pending.remove(&(members.len() as u32)) {
            members.push(MemberRef::after(members.last(), &bytes)?);
            hash.update(&bytes);
            out.write_all(&bytes).context("writing the archive")?;
            let _ = tokens.try_send(()); // the walk may be over
        }
    }
    if !pending.is_empty() {
        bail!("a member was lost on its way to the archive");
    }
    Ok((out, hash, members))
}

/// Walks the tree into raw members; returns the index's entries.
/// Where the walk sends raw members, one token spent for each.
struct Feed {
    tx: SyncSender<Raw>,
    tokens: Receiver<()>,
}

fn walk(dir: &Path, opts: &Options, skip: Vec<(u64, u64)>, tx: Feed) -> Result<Builder> {
    let split = SPLIT.max(opts.member_size) as u64;
    let mut cut = Cutter {
        buf: Vec::new(),
        seq: 0,
        tx,
    };
    let mut builder = Builder::default();
    let mut names = Names::default();
    let mut walk = Walk::new(&opts.excludes, skip);
    walk.run(dir, &mut |node: Node| {
        let entry = entry_of(&node, &mut names);
        let header = header(&node, &entry)?;
        let padded = entry.size.div_ceil(512) * 512;
        let large = header.len() as u64 + padded > split;
        if large {
            cut.close()?;
        }
        builder.entry(&Entry {
            member: cut.seq,
            ..entry.clone()
        })?;
        cut.buf.extend_from_slice(&header);
        if entry.kind == EntryType::File {
            copy_data(&node, entry.size, split, &mut cut)?;
            cut.buf
                .resize(cut.buf.len() + (padded - entry.size) as usize, 0);
        }
        if large || cut.buf.len() >= opts.member_size || picked(&entry.path) {
            cut.close()?;
        }
        Ok(())
    })?;
    cut.close()?;
    // The end-of-archive blocks, a member of their own.
    cut.buf.resize(1024, 0);
    cut.close()?;
    Ok(builder)
}

/// Whether the entry at `path` ends its member (see the module docs).
fn picked(path: &[u8]) -> bool {
    let mut crc = flate2::Crc::new();
    crc.update(path);
    crc.sum().is_multiple_of(CUT_EVERY)
}

/// The member being filled, and where finished ones go.
struct Cutter {
    buf: Vec<u8>,
    /// The number of the member being filled.
    seq: u32,
    tx: Feed,
}

impl Cutter {
    /// Ends the member being filled, if it holds anything.
    fn close(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let raw = std::mem::take(&mut self.buf);
        self.tx
            .tokens
            .recv()
            .map_err(|_| anyhow!("the writer thread stopped"))?;
        self.tx
            .tx
            .send((self.seq, raw))
            .map_err(|_| anyhow!("the compressor threads stopped"))?;
        self.seq += 1;
        Ok(())
    }
}

/// Appends `size` bytes of the file at `node` to the member being filled,
/// cutting the member at every multiple of `split` of its data.
fn copy_data(node: &Node, size: u64, split: u64, cut: &mut Cutter) -> Result<()> {
    let mut file =
        File::open(&node.path).with_context(|| format!("opening {}", node.path.display()))?;
    let mut done = 0u64;
    while done < size {
        let want = (split - done % split).min(size - done) as usize;
        let start = cut.buf.len();
        cut.buf.resize(start + want, 0);
        let mut filled = 0;
        while filled < want {
            let n = file
                .read(&mut cut.buf[start + filled..])
                .with_context(|| format!("reading {}", node.path.display()))?;
            if n == 0 {
                bail!(
                    "{}: file shrank while being packed ({} of {size} bytes read)",
                    node.path.display(),
                    done + filled as u64
                );
            }
            filled += n;
        }
        done += want as u64;
        if done < size && done.is_multiple_of(split) {
            cut.close()?;
        }
    }
    Ok(())
}

/// The index entry of `node` (its member is set by the caller).
fn entry_of(node: &Node, names: &mut Names) -> Entry {
    let m = &node.meta;
    let device = match node.kind {
        EntryType::CharDevice | EntryType::BlockDevice => {
            let rdev = m.rdev();
            (libc::major(rdev), libc::minor(rdev))
        }
        _ => (0, 0),
    };
    Entry {
        path: node.rel.clone(),
        kind: node.kind,
        size: if node.kind == EntryType::File {
            m.len()
        } else {
            0
        },
        mode: m.mode() & 0o7777,
        // The header holds no time before the epoch: 0, in both.
        mtime: m.mtime().max(0),
        uid: u64::from(m.uid()),
        gid: u64::from(m.gid()),
        user: fitting(names.user(m.uid())),
        group: fitting(names.group(m.gid())),
        link: node.link.clone(),
        device,
        member: 0,
    }
}

/// A user or group name, empty when it does not fit a tar header (32
/// bytes): the id is there either way.
fn fitting(name: &str) -> String {
    if name.len() <= 32 {
        name.to_string()
    } else {
        String::new()
    }
}

/// The tar name of a path: `./` before it, `/` after a directory's.
fn tar_name(rel: &[u8], dir: bool) -> Vec<u8> {
    let mut name = b"./".to_vec();
    name.extend_from_slice(rel);
    if dir && !rel.is_empty() {
        name.push(b'/');
    }
    name
}

/// The GNU tar header blocks of an entry: a `././@LongLink` record before
/// it for a name or link target over 100 bytes, as GNU tar writes.
fn header(node: &Node, e: &Entry) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(512);
    let name = tar_name(&e.path, e.kind == EntryType::Dir);
    let link = match e.kind {
        EntryType::HardLink => tar_name(&e.link, false),
        _ => e.link.clone(),
    };
    let mut h = tar::Header::new_gnu();
    if link.len() > 100 {
        long_link(&mut out, b'K', &link);
    } else {
        h.as_old_mut().linkname[..link.len()].copy_from_slice(&link);
    }
    if name.len() > 100 {
        long_link(&mut out, b'L', &name);
        h.as_old_mut().name.copy_from_slice(&name[..100]);
    } else {
        h.as_old_mut().name[..name.len()].copy_from_slice(&name);
    }
    h.set_entry_type(match e.kind {
        EntryType::File => tar::EntryType::Regular,
        EntryType::Dir => tar::EntryType::Directory,
        EntryType::Symlink => tar::EntryType::Symlink,
        EntryType::HardLink => tar::EntryType::Link,
        EntryType::Fifo => tar::EntryType::Fifo,
        EntryType::CharDevice => tar::EntryType::Char,
        EntryType::BlockDevice => tar::EntryType::Block,
    });
    h.set_mode(e.mode);
    h.set_uid(e.uid);
    h.set_gid(e.gid);
    h.set_mtime(u64::try_from(e.mtime).unwrap_or(0)); // entry_of: never negative
    h.set_size(e.size);
    // entry_of leaves out names that do not fit.
    h.set_username(&e.user)?;
    h.set_groupname(&e.group)?;
    if matches!(e.kind, EntryType::CharDevice | EntryType::BlockDevice) {
        h.set_device_major(e.device.0)
            .and_then(|()| h.set_device_minor(e.device.1))
            .with_context(|| format!("device numbers of {}", node.path.display()))?;
    }
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    Ok(out)
}

/// A GNU `././@LongLink` record of type `kind` (`L` name, `K` link target).
fn long_link(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    let mut h = tar::Header::new_gnu();
    let tag = b"././@LongLink";
    h.as_old_mut().name[..tag.len()].copy_from_slice(tag);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(value.len() as u64 + 1);
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    let start = out.len();
    out.extend_from_slice(value);
    out.push(0);
    out.resize(start + (value.len() + 1).div_ceil(512) * 512, 0);
}
