//! The index of a packed archive: each gzip member's place, length and
//! digest, and each tar entry's path, type, size, mode, mtime, owner and
//! the member holding its header. The packer builds it ([`Builder`]); the
//! delta fetch reads the members, `native`/`release` read the entries.
//!
//! Encoded (before deflate) as: `SPIX`, a version byte, the member count,
//! each member's compressed length (varint), each member's digest (16
//! bytes), the entry count, then one record per entry in archive order:
//! the path as the bytes it shares with the previous path and the rest,
//! the type, size, mode, the mtime as a change from the previous one, uid,
//! gid, the user and group names as indices into a table that grows as
//! names first appear, the member as a change from the previous entry's,
//! then a link target (symlinks, hard links) or device numbers (devices).
//! The index stays deflated in memory, as the archive carries it, and
//! entries are inflated and decoded as they are read: the index of a
//! large tree costs a few bytes per entry.

use std::io::{BufRead, Read};

use anyhow::{anyhow, bail, ensure, Context, Result};
use sha2::{Digest as _, Sha256};

const MAGIC: &[u8; 4] = b"SPIX";
const VERSION: u8 = 1;

/// Bytes of a member digest: the first half of the SHA-256 of the member's
/// compressed bytes. It picks members to reuse and checks fetched ones;
/// the manifest's checksum over the whole archive stays the root of trust.
pub const DIGEST_LEN: usize = 16;

/// A member digest (see [`DIGEST_LEN`]).
pub type Digest = [u8; DIGEST_LEN];

/// The most an encoded index may inflate to (about 10 million entries).
const MAX_ENCODED: u64 = 1 << 30;

/// The longest member an index may list: the packer writes members of at
/// most 64 MiB of tar plus one entry of up to the split size, and a reader
/// holds one in memory.
const MAX_MEMBER_LEN: u32 = 256 << 20;

/// The digest of a member's compressed bytes.
pub fn digest(bytes: &[u8]) -> Digest {
    let full = Sha256::digest(bytes);
    let mut d = [0u8; DIGEST_LEN];
    d.copy_from_slice(&full[..DIGEST_LEN]);
    d
}

/// One gzip member of the archive's data (tar entries or the end blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberRef {
    /// Where it starts in the archive.
    pub offset: u64,
    /// Its compressed length.
    pub len: u32,
    /// [`digest`] of its bytes.
    pub digest: Digest,
}

impl MemberRef {
    /// The byte after its last.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

/// What a tar entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EntryType {
    /// A regular file.
    #[default]
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A hard link to an earlier entry.
    HardLink,
    /// A named pipe.
    Fifo,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
}

impl EntryType {
    fn code(self) -> u8 {
        match self {
            EntryType::File => b'0',
            EntryType::HardLink => b'1',
            EntryType::Symlink => b'2',
            EntryType::CharDevice => b'3',
            EntryType::BlockDevice => b'4',
            EntryType::Dir => b'5',
            EntryType::Fifo => b'6',
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            b'0' => EntryType::File,
            b'1' => EntryType::HardLink,
            b'2' => EntryType::Symlink,
            b'3' => EntryType::CharDevice,
            b'4' => EntryType::BlockDevice,
            b'5' => EntryType::Dir,
            b'6' => EntryType::Fifo,
            _ => return None,
        })
    }
}

/// One tar entry as the index lists it (the default: an empty file at
/// the epoch, of root, in member 0).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    /// The path relative to the packed directory, without `./` (empty for
    /// the directory itself).
    pub path: Vec<u8>,
    /// What it is.
    pub kind: EntryType,
    /// Bytes of data (regular files; 0 otherwise).
    pub size: u64,
    /// Permission bits (setuid, setgid and sticky included).
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Owner's id.
    pub uid: u64,
    /// Group's id.
    pub gid: u64,
    /// Owner's name, as stored in the tar header (may be empty).
    pub user: String,
    /// Group's name, as stored in the tar header (may be empty).
    pub group: String,
    /// A symlink's target, or a hard link's target path (relative, no
    /// `./`); empty otherwise.
    pub link: Vec<u8>,
    /// A device's major and minor numbers.
    pub device: (u32, u32),
    /// The member holding the entry's header (and its data, or its first
    /// part when a large file is split over the members that follow).
    pub member: u32,
}

/// A packed archive's index: the members in archive order, and the
/// entries, kept deflated as the archive carries them and inflated as
/// they are read (a few bytes per entry in memory).
#[derive(Debug, Clone)]
pub struct Index {
    members: Vec<MemberRef>,
    entry_count: u64,
    /// The encoded index, deflated (see the module docs).
    deflated: Vec<u8>,
    /// Where the entry records start in the inflated bytes.
    entries_at: u64,
}

impl Index {
    /// The data members, in archive order: the first starts at 0, each
    /// next one where the previous ends.
    pub fn members(&self) -> &[MemberRef] {
        &self.members
    }

    /// Where the data members end: the index members start there.
    pub fn data_end(&self) -> u64 {
        self.members.last().map_or(0, MemberRef::end)
    }

    /// How many entries the archive holds.
    pub fn entry_count(&self) -> u64 {
        self.entry_count
    }

    /// The entries, in archive order.
    pub fn entries(&self) -> Entries<'_> {
        let mut r = Reader::inflating(&self.deflated);
        // Read once by `decode` already: skipping cannot fail.
        let _ = r.skip(self.entries_at);
        Entries::new(r, self.entry_count)
    }

    /// The encoded index, deflated: what the index members carry.
    pub fn deflated(&self) -> &[u8] {
        &self.deflated
    }

    /// Decodes what [`Index::deflated`] gives, checking every entry once.
    pub fn decode(deflated: Vec<u8>) -> Result<Index> {
        let mut r = Reader::inflating(&deflated);
        let members = decode_members_from(&mut r)?;
        let entry_count = r.varint()?;
        let entries_at = r.read;
        let mut entries = Entries::new(r, entry_count);
        let mut seen = 0u64;
        while let Some(entry) = entries.decode_next()? {
            ensure!(
                (entry.member as usize) < members.len(),
                "entry {} names member {} of {}",
                String::from_utf8_lossy(&entry.path),
                entry.member,
                members.len()
            );
            seen += 1;
        }
        ensure!(
            entries.r.at_end()? && seen == entry_count,
            "the index has trailing bytes"
        );
        drop(entries);
        Ok(Index {
            members,
            entry_count,
            deflated,
            entries_at,
        })
    }
}

/// The data members an encoded index lists, its entries left unread
/// (what a delta fetch needs of an index).
pub fn decode_members(deflated: &[u8]) -> Result<Vec<MemberRef>> {
    decode_members_from(&mut Reader::inflating(deflated))
}

fn decode_members_from(r: &mut Reader<Inflating<'_>>) -> Result<Vec<MemberRef>> {
    ensure!(
        r.bytes(MAGIC.len())? == MAGIC,
        "not a packed archive index (bad magic)"
    );
    let version = r.byte()?;
    ensure!(
        version == VERSION,
        "index version {version} is not supported"
    );
    let count = r.varint()?;
    // Each member takes a length and a digest.
    ensure!(
        count <= MAX_ENCODED / (DIGEST_LEN as u64 + 1),
        "member count {count} is too large"
    );
    let mut members = Vec::with_capacity(count.min(1 << 16) as usize);
    let mut offset = 0u64;
    for _ in 0..count {
        let len = u32::try_from(r.varint()?)
            .ok()
            .filter(|len| *len <= MAX_MEMBER_LEN)
            .ok_or_else(|| anyhow!("a member of the index is too long"))?;
        members.push(MemberRef {
            offset,
            len,
            digest: [0; DIGEST_LEN],
        });
        offset += u64::from(len);
    }
    for m in &mut members {
        m.digest.copy_from_slice(&r.bytes(DIGEST_LEN)?);
    }
    Ok(members)
}

/// The entries of an [`Index`], inflated and decoded one at a time.
pub struct Entries<'a> {
    r: Reader<Inflating<'a>>,
    left: u64,
    /// The previous entry's path, mtime and member (entries are stored
    /// as changes from it).
    path: Vec<u8>,
    mtime: i64,
    member: u32,
    names: Vec<String>,
}

impl<'a> Entries<'a> {
    fn new(r: Reader<Inflating<'a>>, count: u64) -> Self {
        Entries {
            r,
            left: count,
            path: Vec::new(),
            mtime: 0,
            member: 0,
            names: Vec::new(),
        }
    }

    fn decode_next(&mut self) -> Result<Option<Entry>> {
        if self.left == 0 {
            return Ok(None);
        }
        let r = &mut self.r;
        let shared = r.varint()? as usize;
        ensure!(shared <= self.path.len(), "bad path prefix in the index");
        let suffix_len = r.varint()? as usize;
        self.path.truncate(shared);
        r.append(suffix_len, &mut self.path)?;
        let kind = EntryType::from_code(r.byte()?).ok_or_else(|| anyhow!("bad entry type"))?;
        let size = r.varint()?;
        let mode = u32::try_from(r.varint()?).map_err(|_| anyhow!("bad mode"))?;
        self.mtime = self.mtime.wrapping_add(unzigzag(r.varint()?));
        let uid = r.varint()?;
        let gid = r.varint()?;
        let user = self.name()?;
        let group = self.name()?;
        let r = &mut self.r;
        self.member = u32::try_from(u64::from(self.member) + r.varint()?)
            .map_err(|_| anyhow!("bad member number"))?;
        let mut link = Vec::new();
        let mut device = (0, 0);
        match kind {
            EntryType::Symlink | EntryType::HardLink => {
                let len = r.varint()? as usize;
                r.append(len, &mut link)?;
            }
            EntryType::CharDevice | EntryType::BlockDevice => {
                let major = u32::try_from(r.varint()?).map_err(|_| anyhow!("bad device"))?;
                let minor = u32::try_from(r.varint()?).map_err(|_| anyhow!("bad device"))?;
                device = (major, minor);
            }
            _ => {}
        }
        self.left -= 1;
        Ok(Some(Entry {
            path: self.path.clone(),
            kind,
            size,
            mode,
            mtime: self.mtime,
            uid,
            gid,
            user,
            group,
            link,
            device,
            member: self.member,
        }))
    }

    fn name(&mut self) -> Result<String> {
        let i = self.r.varint()? as usize;
        if i < self.names.len() {
            return Ok(self.names[i].clone());
        }
        ensure!(i == self.names.len(), "bad name number in the index");
        let len = self.r.varint()? as usize;
        let mut name = Vec::new();
        self.r.append(len, &mut name)?;
        let name = String::from_utf8_lossy(&name).into_owned();
        self.names.push(name.clone());
        Ok(name)
    }
}

impl Iterator for Entries<'_> {
    type Item = Entry;

    /// The next entry. [`Index::decode`] checked every record, so this
    /// only ends at the last.
    fn next(&mut self) -> Option<Entry> {
        self.decode_next().ok().flatten()
    }
}

impl MemberRef {
    /// The member `bytes`, written right after `prev` (first when `None`).
    pub fn after(prev: Option<&MemberRef>, bytes: &[u8]) -> Result<MemberRef> {
        Ok(MemberRef {
            offset: prev.map_or(0, MemberRef::end),
            len: u32::try_from(bytes.len()).map_err(|_| anyhow!("gzip member over 4 GiB"))?,
            digest: digest(bytes),
        })
    }
}

/// Builds an [`Index`] as the packer walks the tree; the members, written
/// on another thread, are handed over at the end.
#[derive(Debug, Default)]
pub struct Builder {
    entry_count: u64,
    entries: Vec<u8>,
    prev_path: Vec<u8>,
    prev_mtime: i64,
    prev_member: u32,
    names: Vec<String>,
}

impl Builder {
    /// Appends the next entry (in archive order; its member never before
    /// the previous entry's).
    pub fn entry(&mut self, e: &Entry) -> Result<()> {
        ensure!(e.member >= self.prev_member, "entries out of member order");
        let out = &mut self.entries;
        let shared = self
            .prev_path
            .iter()
            .zip(&e.path)
            .take_while(|(a, b)| a == b)
            .count();
        put_varint(out, shared as u64);
        put_varint(out, (e.path.len() - shared) as u64);
        out.extend_from_slice(&e.path[shared..]);
        out.push(e.kind.code());
        put_varint(out, e.size);
        put_varint(out, u64::from(e.mode));
        put_varint(out, zigzag(e.mtime.wrapping_sub(self.prev_mtime)));
        put_varint(out, e.uid);
        put_varint(out, e.gid);
        for name in [&e.user, &e.group] {
            match self.names.iter().position(|n| n == name) {
                Some(i) => put_varint(&mut self.entries, i as u64),
                None => {
                    put_varint(&mut self.entries, self.names.len() as u64);
                    put_varint(&mut self.entries, name.len() as u64);
                    self.entries.extend_from_slice(name.as_bytes());
                    self.names.push(name.clone());
                }
            }
        }
        let out = &mut self.entries;
        put_varint(out, u64::from(e.member - self.prev_member));
        match e.kind {
            EntryType::Symlink | EntryType::HardLink => {
                put_varint(out, e.link.len() as u64);
                out.extend_from_slice(&e.link);
            }
            EntryType::CharDevice | EntryType::BlockDevice => {
                put_varint(out, u64::from(e.device.0));
                put_varint(out, u64::from(e.device.1));
            }
            _ => {}
        }
        self.prev_path.clone_from(&e.path);
        self.prev_mtime = e.mtime;
        self.prev_member = e.member;
        self.entry_count += 1;
        Ok(())
    }

    /// The index of these entries held in `members`.
    pub fn finish(self, members: Vec<MemberRef>) -> Result<Index> {
        ensure!(
            self.entry_count == 0 || (self.prev_member as usize) < members.len(),
            "an entry names a member that was not written"
        );
        let mut raw = Vec::with_capacity(self.entries.len() + members.len() * 20 + 16);
        raw.extend_from_slice(MAGIC);
        raw.push(VERSION);
        put_varint(&mut raw, members.len() as u64);
        for m in &members {
            put_varint(&mut raw, u64::from(m.len));
        }
        for m in &members {
            raw.extend_from_slice(&m.digest);
        }
        put_varint(&mut raw, self.entry_count);
        let entries_at = raw.len() as u64;
        raw.extend_from_slice(&self.entries);
        drop(self.entries);
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut z, &raw).context("deflating the index")?;
        Ok(Index {
            members,
            entry_count: self.entry_count,
            deflated: z.finish().context("deflating the index")?,
            entries_at,
        })
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// The inflated index, read as it inflates, at most [`MAX_ENCODED`]
/// bytes of it.
type Inflating<'a> = std::io::BufReader<std::io::Take<flate2::read::DeflateDecoder<&'a [u8]>>>;

/// A reader of encoded bytes, counting them; every read is checked.
struct Reader<R> {
    input: R,
    /// Bytes read so far.
    read: u64,
}

impl<'a> Reader<Inflating<'a>> {
    /// Reads `deflated` as it inflates.
    fn inflating(deflated: &'a [u8]) -> Self {
        let inflate = flate2::read::DeflateDecoder::new(deflated).take(MAX_ENCODED + 1);
        Reader {
            input: std::io::BufReader::with_capacity(16 << 10, inflate),
            read: 0,
        }
    }
}

impl<R: BufRead> Reader<R> {
    fn buffered(&mut self) -> Result<&[u8]> {
        let buf = self.input.fill_buf().context("inflating the index")?;
        ensure!(!buf.is_empty(), "the index ends early");
        Ok(buf)
    }

    fn consume(&mut self, n: usize) {
        self.input.consume(n);
        self.read += n as u64;
        // Past MAX_ENCODED, the input ends early.
    }

    fn byte(&mut self) -> Result<u8> {
        let b = self.buffered()?[0];
        self.consume(1);
        Ok(b)
    }

    fn bytes(&mut self, n: usize) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.append(n, &mut out)?;
        Ok(out)
    }

    /// Appends the next `n` bytes to `out`.
    fn append(&mut self, n: usize, out: &mut Vec<u8>) -> Result<()> {
        let mut left = n;
        while left > 0 {
            let buf = self.buffered()?;
            let k = buf.len().min(left);
            out.extend_from_slice(&buf[..k]);
            self.consume(k);
            left -= k;
        }
        Ok(())
    }

    fn skip(&mut self, n: u64) -> Result<()> {
        let mut left = n;
        while left > 0 {
            let k = (self.buffered()?.len() as u64).min(left);
            self.consume(k as usize);
            left -= k;
        }
        Ok(())
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        bail!("bad number in the index")
    }

    /// Whether every byte was read (and no more than [`MAX_ENCODED`]).
    fn at_end(&mut self) -> Result<bool> {
        let empty = self
            .input
            .fill_buf()
            .context("inflating the index")?
            .is_empty();
        ensure!(self.read <= MAX_ENCODED, "the index is too large");
        Ok(empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryType, member: u32) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind,
            size: if kind == EntryType::File { 1234 } else { 0 },
            mode: 0o644,
            mtime: 1_700_000_000 - i64::from(member) * 7,
            uid: 1000,
            gid: if member.is_multiple_of(2) { 1000 } else { 0 },
            user: "app".into(),
            group: if member.is_multiple_of(2) {
                "app".into()
            } else {
                "root".into()
            },
            link: if kind == EntryType::Symlink {
                b"../target".to_vec()
            } else {
                Vec::new()
            },
            device: if kind == EntryType::CharDevice {
                (1, 3)
            } else {
                (0, 0)
            },
            member,
        }
    }

    #[test]
    fn an_index_decodes_to_what_was_built() {
        let mut b = Builder::default();
        let entries = vec![
            entry("", EntryType::Dir, 0),
            entry("bin", EntryType::Dir, 0),
            entry("bin/start", EntryType::File, 0),
            entry("bin/stop", EntryType::Symlink, 1),
            entry("dev/null", EntryType::CharDevice, 1),
            entry("zzz", EntryType::File, 3),
        ];
        for e in &entries {
            b.entry(e).unwrap();
        }
        let mut members: Vec<MemberRef> = Vec::new();
        for m in [&b"one"[..], b"two!", b"three", b"end"] {
            members.push(MemberRef::after(members.last(), m).unwrap());
        }
        let index = b.finish(members).unwrap();
        let back = Index::decode(index.deflated().to_vec()).unwrap();
        assert_eq!(back.entries().collect::<Vec<_>>(), entries);
        assert_eq!(back.members(), index.members());
        assert_eq!(back.members()[2].offset, 7);
        assert_eq!(back.data_end(), 15);
        assert_eq!(back.members()[1].digest, digest(b"two!"));
    }

    #[test]
    fn damaged_indexes_are_errors_not_panics() {
        let mut b = Builder::default();
        b.entry(&entry("a", EntryType::File, 0)).unwrap();
        let good = b
            .finish(vec![MemberRef::after(None, b"x").unwrap()])
            .unwrap()
            .deflated()
            .to_vec();
        let mut raw = Vec::new();
        flate2::read::DeflateDecoder::new(&good[..])
            .read_to_end(&mut raw)
            .unwrap();
        for cut in 0..raw.len() {
            let mut z = flate2::write::DeflateEncoder::new(Vec::new(), Default::default());
            std::io::Write::write_all(&mut z, &raw[..cut]).unwrap();
            assert!(Index::decode(z.finish().unwrap()).is_err(), "cut at {cut}");
        }
        assert!(Index::decode(b"not deflate at all".to_vec()).is_err());
    }

    #[test]
    fn varints_and_zigzag_round_trip() {
        for v in [0, 1, 127, 128, 300, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut r = Reader {
                input: &out[..],
                read: 0,
            };
            assert_eq!(r.varint().unwrap(), v);
        }
        for v in [0, 1, -1, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }
}
