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
//! Entries stay encoded in memory and are decoded as they are read, so the
//! index of a large tree costs a few bytes per entry.

use std::io::Read;

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
/// entries, encoded, decoded on reading.
#[derive(Debug, Clone)]
pub struct Index {
    members: Vec<MemberRef>,
    entry_count: u64,
    /// The entry records (see the module docs).
    entries: Vec<u8>,
}

impl Index {
    /// The data members, in archive order: the first starts at 0, each
    /// next one where the previous ends.
    pub fn members(&self) -> &[MemberRef] {
        &self.members
    }

    /// The data members alone, the entries dropped (what a delta fetch
    /// needs of an index).
    pub fn into_members(self) -> Vec<MemberRef> {
        self.members
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
        Entries {
            rest: &self.entries,
            left: self.entry_count,
            prev: Entry::default(),
            names: Vec::new(),
        }
    }

    /// The encoded index, deflated: what the index members carry.
    pub fn encode(&self) -> Vec<u8> {
        let mut raw = Vec::with_capacity(self.entries.len() + self.members.len() * 20 + 16);
        raw.extend_from_slice(MAGIC);
        raw.push(VERSION);
        put_varint(&mut raw, self.members.len() as u64);
        for m in &self.members {
            put_varint(&mut raw, u64::from(m.len));
        }
        for m in &self.members {
            raw.extend_from_slice(&m.digest);
        }
        put_varint(&mut raw, self.entry_count);
        raw.extend_from_slice(&self.entries);
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        // Writing into a Vec cannot fail.
        let _ = std::io::Write::write_all(&mut z, &raw);
        z.finish().unwrap_or_default()
    }

    /// Decodes what [`Index::encode`] made, checking every entry once.
    pub fn decode(deflated: &[u8]) -> Result<Index> {
        let mut raw = Vec::new();
        flate2::read::DeflateDecoder::new(deflated)
            .take(MAX_ENCODED + 1)
            .read_to_end(&mut raw)
            .context("inflating the index")?;
        ensure!(raw.len() as u64 <= MAX_ENCODED, "the index is too large");
        let mut r = Reader(&raw);
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
        ensure!(
            count <= r.0.len() as u64,
            "member count {count} is too large"
        );
        let mut members = Vec::with_capacity(count as usize);
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
            m.digest.copy_from_slice(r.bytes(DIGEST_LEN)?);
        }
        let entry_count = r.varint()?;
        // The entry records stay where they were inflated, without a copy.
        let head = raw.len() - r.0.len();
        raw.drain(..head);
        raw.shrink_to_fit();
        let index = Index {
            members,
            entry_count,
            entries: raw,
        };
        let mut entries = index.entries();
        let mut seen = 0u64;
        while let Some(entry) = entries.decode_next()? {
            ensure!(
                (entry.member as usize) < index.members.len(),
                "entry {} names member {} of {}",
                String::from_utf8_lossy(&entry.path),
                entry.member,
                index.members.len()
            );
            seen += 1;
        }
        ensure!(
            entries.rest.is_empty() && seen == entry_count,
            "the index has trailing bytes"
        );
        Ok(index)
    }
}

/// The entries of an [`Index`], decoded one at a time.
pub struct Entries<'a> {
    rest: &'a [u8],
    left: u64,
    prev: Entry,
    names: Vec<String>,
}

impl Entries<'_> {
    fn decode_next(&mut self) -> Result<Option<Entry>> {
        if self.left == 0 {
            return Ok(None);
        }
        let mut r = Reader(self.rest);
        let shared = r.varint()? as usize;
        ensure!(
            shared <= self.prev.path.len(),
            "bad path prefix in the index"
        );
        let suffix_len = r.varint()? as usize;
        let mut path = self.prev.path[..shared].to_vec();
        path.extend_from_slice(r.bytes(suffix_len)?);
        let kind = EntryType::from_code(r.byte()?).ok_or_else(|| anyhow!("bad entry type"))?;
        let size = r.varint()?;
        let mode = u32::try_from(r.varint()?).map_err(|_| anyhow!("bad mode"))?;
        let mtime = self.prev.mtime.wrapping_add(unzigzag(r.varint()?));
        let uid = r.varint()?;
        let gid = r.varint()?;
        let user = self.name(&mut r)?;
        let group = self.name(&mut r)?;
        let member = u32::try_from(u64::from(self.prev.member) + r.varint()?)
            .map_err(|_| anyhow!("bad member number"))?;
        let mut link = Vec::new();
        let mut device = (0, 0);
        match kind {
            EntryType::Symlink | EntryType::HardLink => {
                let len = r.varint()? as usize;
                link = r.bytes(len)?.to_vec();
            }
            EntryType::CharDevice | EntryType::BlockDevice => {
                let major = u32::try_from(r.varint()?).map_err(|_| anyhow!("bad device"))?;
                let minor = u32::try_from(r.varint()?).map_err(|_| anyhow!("bad device"))?;
                device = (major, minor);
            }
            _ => {}
        }
        self.rest = r.0;
        self.left -= 1;
        let entry = Entry {
            path,
            kind,
            size,
            mode,
            mtime,
            uid,
            gid,
            user,
            group,
            link,
            device,
            member,
        };
        self.prev = entry.clone();
        Ok(Some(entry))
    }

    fn name(&mut self, r: &mut Reader<'_>) -> Result<String> {
        let i = r.varint()? as usize;
        if i < self.names.len() {
            return Ok(self.names[i].clone());
        }
        ensure!(i == self.names.len(), "bad name number in the index");
        let len = r.varint()? as usize;
        let name = String::from_utf8_lossy(r.bytes(len)?).into_owned();
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
        Ok(Index {
            members,
            entry_count: self.entry_count,
            entries: self.entries,
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

/// A cursor over encoded bytes; every read is checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8> {
        let (&b, rest) = self
            .0
            .split_first()
            .ok_or_else(|| anyhow!("the index ends early"))?;
        self.0 = rest;
        Ok(b)
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.0.len() {
            bail!("the index ends early");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
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
        let back = Index::decode(&index.encode()).unwrap();
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
            .encode();
        let mut raw = Vec::new();
        flate2::read::DeflateDecoder::new(&good[..])
            .read_to_end(&mut raw)
            .unwrap();
        for cut in 0..raw.len() {
            let mut z = flate2::write::DeflateEncoder::new(Vec::new(), Default::default());
            std::io::Write::write_all(&mut z, &raw[..cut]).unwrap();
            assert!(Index::decode(&z.finish().unwrap()).is_err(), "cut at {cut}");
        }
        assert!(Index::decode(b"not deflate at all").is_err());
    }

    #[test]
    fn varints_and_zigzag_round_trip() {
        for v in [0, 1, 127, 128, 300, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(Reader(&out).varint().unwrap(), v);
        }
        for v in [0, 1, -1, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }
}
