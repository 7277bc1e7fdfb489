//! A tar stream, member by member, as GNU tar reads it: ustar, GNU and PAX
//! headers (`x` records, `g` global records, GNU long names), old GNU sparse
//! members (type `S`) and PAX sparse members (GNU formats 0.0, 0.1 and 1.0,
//! which bsdtar writes too). The `tar` crate decodes single header fields;
//! the stream structure is read here, because the crate neither restores PAX
//! sparse files nor reads a PAX record whose value holds a newline.
//!
//! Each [`Member`] comes out checked: its path relative to the extraction
//! dir (a leading `/` stripped, `..` refused), the same for a hard link's
//! target. Its data is then read with [`TarStream::copy_data`] before asking
//! for the next member.

use std::ffi::OsStr;
use std::io::{self, BufRead};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

const BLOCK: usize = 512;

/// Largest extended header (PAX records, GNU long name) held in memory; a
/// PAX sparse map of a few million regions fits.
const MAX_EXTENDED: u64 = 64 << 20;

/// Most regions in a sparse map held in memory (16 bytes each).
const MAX_REGIONS: usize = 4 << 20;

/// What a member creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A regular file (also GNU contiguous files and unknown types, as GNU
    /// tar extracts them).
    File,
    /// A directory.
    Dir,
    /// A symbolic link to [`Member::link`].
    Symlink,
    /// A hard link to the earlier member [`Member::target`].
    HardLink,
    /// A named pipe.
    Fifo,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
}

impl Kind {
    /// What a member that is not extracted is, for the log: `None` for
    /// the kinds that are.
    pub fn skipped(self) -> Option<&'static str> {
        match self {
            Kind::Fifo => Some("fifo"),
            Kind::CharDevice => Some("character device"),
            Kind::BlockDevice => Some("block device"),
            _ => None,
        }
    }
}

/// The data regions of a sparse file; everything else is a hole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sparse {
    /// The file's length.
    pub size: u64,
    /// `(offset, length)` of each data region, in the order its bytes are
    /// stored in the archive.
    pub regions: Vec<(u64, u64)>,
}

/// One archive member, decoded from its headers.
#[derive(Debug)]
pub(crate) struct Member {
    /// The name as stored, for messages.
    pub name: String,
    /// Where it goes, relative to the extraction dir (empty: the dir itself).
    pub path: PathBuf,
    /// What it creates.
    pub kind: Kind,
    /// A symlink's target, as stored.
    pub link: PathBuf,
    /// A hard link's target, relative to the extraction dir.
    pub target: PathBuf,
    /// Permission bits as stored (setuid, setgid and sticky included).
    pub mode: u32,
    /// Owner as stored.
    pub uid: u64,
    /// Group as stored.
    pub gid: u64,
    /// The user name to give the owner by, when it exists on this host:
    /// the header's, as GNU tar reads it (empty for a V7 header, and when a
    /// PAX `uid` record, which wins over the name, is present).
    pub uname: Vec<u8>,
    /// The group name to give the group by, as [`Member::uname`].
    pub gname: Vec<u8>,
    /// Modification time: seconds since the epoch and nanoseconds.
    pub mtime: (i64, u32),
    /// The map of a sparse file.
    pub sparse: Option<Sparse>,
    /// Bytes of data that follow in the stream (for a sparse file, the
    /// regions' bytes, one after the other).
    pub size: u64,
}

/// Why the input is not a tar stream at all.
#[derive(Debug)]
pub(super) struct NotTar(pub String);

impl std::fmt::Display for NotTar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not a tar archive ({})", self.0)
    }
}

impl std::error::Error for NotTar {}

/// PAX records as `(keyword, value)`, in the order stored.
type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// Reads members from a decompressed tar stream.
pub(super) struct TarStream<R> {
    inner: R,
    /// Bytes consumed so far, for messages.
    pos: u64,
    /// Unread data of the current member, then its padding.
    left: u64,
    pad: u64,
    /// Records of `g` headers, applied under each member's own.
    global: Records,
    /// Whether a header has been read (the first decides "not a tar").
    started: bool,
    /// Whether the input ran out.
    input_ended: bool,
}

impl<R: BufRead> TarStream<R> {
    /// Reads tar from `inner`.
    pub fn new(inner: R) -> Self {
        TarStream {
            inner,
            pos: 0,
            left: 0,
            pad: 0,
            global: Vec::new(),
            started: false,
            input_ended: false,
        }
    }

    /// Whether reading met the end of the input (rather than stopping at
    /// the end-of-archive block or on an error before it).
    pub fn input_ended(&self) -> bool {
        self.input_ended
    }

    /// The next member, after skipping what is left of the current one.
    /// `Ok(None)` at the end of the archive.
    pub fn next_member(&mut self) -> Result<Option<Member>> {
        self.skip_member()?;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut local: Records = Vec::new();
        let mut extended = false;
        loop {
            let at = self.pos;
            let Some(block) = self.read_header()? else {
                if extended {
                    bail!("the archive ends after an extended header, at byte {at}");
                }
                return Ok(None);
            };
            let header = tar::Header::from_byte_slice(&block);
            let typeflag = block[156];
            let stored = header
                .entry_size()
                .with_context(|| format!("bad header at byte {at}"))?;
            match typeflag {
                b'L' | b'K' | b'x' | b'X' | b'g' => {
                    let data = self.read_extended(stored, at)?;
                    match typeflag {
                        b'L' => long_name = Some(trim_nul(data)),
                        b'K' => long_link = Some(trim_nul(data)),
                        b'g' => self.global.extend(parse_pax(&data, at)?),
                        _ => local.extend(parse_pax(&data, at)?),
                    }
                    extended = typeflag != b'g';
                    continue;
                }
                _ => {}
            }
            let pax = Pax {
                local: &local,
                global: &self.global,
            };
            let raw_name = pax
                .get(b"GNU.sparse.name")
                .or_else(|| pax.get(b"path"))
                .map(<[u8]>::to_vec)
                .or(long_name.take())
                .unwrap_or_else(|| header.path_bytes().into_owned());
            let name = String::from_utf8_lossy(&raw_name).into_owned();
            let raw_link = pax
                .get(b"linkpath")
                .map(<[u8]>::to_vec)
                .or(long_link.take())
                .or_else(|| header.link_name_bytes().map(|l| l.into_owned()))
                .unwrap_or_default();
            let size = match pax.get(b"size") {
                Some(v) => decimal(v).with_context(|| format!("{name}: bad PAX size"))?,
                None => stored,
            };
            self.left = size;
            self.pad = pad(size);

            let mut kind = match typeflag {
                b'1' => Kind::HardLink,
                b'2' => Kind::Symlink,
                b'3' => Kind::CharDevice,
                b'4' => Kind::BlockDevice,
                b'5' | b'D' => Kind::Dir,
                b'6' => Kind::Fifo,
                // A volume label and the obsolete GNU rename list: nothing
                // to extract, as GNU tar.
                b'V' | b'N' => {
                    local.clear();
                    extended = false;
                    self.skip_member()?;
                    continue;
                }
                b'M' => bail!("{name}: a multi-volume continuation member is not supported"),
                _ => Kind::File,
            };
            let mtime = match pax.get(b"mtime") {
                Some(v) => pax_time(v).with_context(|| format!("{name}: bad PAX mtime"))?,
                None => (header.mtime().unwrap_or(0) as i64, 0),
            };
            let id = |key: &[u8], field: io::Result<u64>| -> Result<u64> {
                match pax.get(key) {
                    Some(v) => decimal(v).with_context(|| format!("{name}: bad PAX id")),
                    None => Ok(field.unwrap_or(0)),
                }
            };
            let uid = id(b"uid", header.uid())?;
            let gid = id(b"gid", header.gid())?;
            // GNU tar looks up the header's names, then lets PAX `uid`/`gid`
            // records override; PAX `uname`/`gname` records are not looked up.
            let name_of = |key: &[u8], field: Option<&[u8]>| match pax.get(key) {
                Some(_) => Vec::new(),
                None => field.unwrap_or_default().to_vec(),
            };
            let uname = name_of(b"uid", header.username_bytes());
            let gname = name_of(b"gid", header.groupname_bytes());
            let mut sparse = None;
            if typeflag == b'S' {
                sparse = Some(self.old_gnu_sparse(header, &name)?);
            } else if kind == Kind::File {
                sparse = self.pax_sparse(&local, &name)?;
            }
            // BSD tar's convention, which GNU tar follows: a regular file
            // whose name ends with a slash is a directory.
            if kind == Kind::File && sparse.is_none() && raw_name.ends_with(b"/") {
                kind = Kind::Dir;
            }
            let path = sanitize(&raw_name)?;
            if path.as_os_str().is_empty() && kind != Kind::Dir {
                bail!("archive member {name:?} has an empty name");
            }
            let target = if kind == Kind::HardLink {
                let target = sanitize(&raw_link)?;
                if target.as_os_str().is_empty() {
                    bail!("hard link {name:?} has no target");
                }
                target
            } else {
                PathBuf::new()
            };
            return Ok(Some(Member {
                path,
                kind,
                link: PathBuf::from(OsStr::from_bytes(&raw_link)),
                target,
                mode: header
                    .mode()
                    .unwrap_or(if kind == Kind::Dir { 0o755 } else { 0o644 }),
                uid,
                gid,
                uname,
                gname,
                mtime,
                sparse,
                size: self.left,
                name,
            }));
        }
    }

    /// Reads the next `n` bytes of the current member's data, handing them
    /// to `f` in pieces as they sit in the read buffer.
    pub fn copy_data(&mut self, n: u64, f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        if n > self.left {
            bail!("read past the member's data");
        }
        self.left -= n;
        self.raw(n, f)
    }

    /// Reads `n` bytes of the stream, whatever they belong to.
    fn raw(&mut self, mut n: u64, mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        while n > 0 {
            let buf = match self.inner.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if buf.is_empty() {
                self.input_ended = true;
                bail!("the archive is truncated (at byte {})", self.pos);
            }
            let take = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            f(&buf[..take])?;
            self.inner.consume(take);
            self.pos += take as u64;
            n -= take as u64;
        }
        Ok(())
    }

    /// Skips the rest of the current member and its padding.
    fn skip_member(&mut self) -> Result<()> {
        self.raw(self.left.saturating_add(self.pad), |_| Ok(()))?;
        self.left = 0;
        self.pad = 0;
        Ok(())
    }

    /// Fills `buf` completely; `Ok(false)` at the end of the input before
    /// the first byte.
    fn read_block(&mut self, buf: &mut [u8]) -> Result<bool> {
        let mut got = 0;
        while got < buf.len() {
            let chunk = match self.inner.fill_buf() {
                Ok(chunk) => chunk,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if chunk.is_empty() {
                self.input_ended = true;
                if got == 0 {
                    return Ok(false);
                }
                if !self.started {
                    let head = &buf[..got.min(24)];
                    let what = format!("{got} bytes, starting \"{}\"", head.escape_ascii());
                    return Err(NotTar(what).into());
                }
                bail!(
                    "the archive is truncated (at byte {})",
                    self.pos + got as u64
                );
            }
            let take = chunk.len().min(buf.len() - got);
            buf[got..got + take].copy_from_slice(&chunk[..take]);
            self.inner.consume(take);
            got += take;
        }
        self.pos += buf.len() as u64;
        Ok(true)
    }

    /// The next header block, checked; `None` at the end of the archive.
    fn read_header(&mut self) -> Result<Option<[u8; BLOCK]>> {
        let at = self.pos;
        let mut block = [0u8; BLOCK];
        if !self.read_block(&mut block)? {
            if !self.started {
                return Err(NotTar("empty".into()).into());
            }
            return Ok(None);
        }
        let first = !self.started;
        self.started = true;
        if block.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        if !checksum_ok(&block) {
            if first {
                let head = &block[..block.len().min(24)];
                let what = format!("no tar header; starts with \"{}\"", head.escape_ascii());
                return Err(NotTar(what).into());
            }
            bail!("corrupt archive: bad header checksum at byte {at}");
        }
        Ok(Some(block))
    }

    fn read_extended(&mut self, size: u64, at: u64) -> Result<Vec<u8>> {
        if size > MAX_EXTENDED {
            bail!("extended header of {size} bytes at byte {at} is too large");
        }
        let mut data = Vec::with_capacity(size as usize);
        self.raw(size + pad(size), |chunk| {
            let room = (size as usize).saturating_sub(data.len());
            data.extend_from_slice(&chunk[..chunk.len().min(room)]);
            Ok(())
        })?;
        Ok(data)
    }

    /// The map of an old GNU sparse member (type `S`): up to four regions
    /// in the header, more in extension blocks after it.
    fn old_gnu_sparse(&mut self, header: &tar::Header, name: &str) -> Result<Sparse> {
        let bad = || format!("{name}: bad GNU sparse header");
        let gnu = header
            .as_gnu()
            .ok_or_else(|| anyhow!("{name}: sparse member without a GNU header"))?;
        let mut regions = Vec::new();
        let add = |regions: &mut Vec<(u64, u64)>, entry: &tar::GnuSparseHeader| -> Result<()> {
            if !entry.is_empty() {
                regions.push((entry.offset()?, entry.length()?));
            }
            Ok(())
        };
        for entry in &gnu.sparse {
            add(&mut regions, entry).with_context(bad)?;
        }
        let mut extended = gnu.is_extended();
        // Extension blocks come before the data; they are not counted in it.
        while extended {
            let mut ext = tar::GnuExtSparseHeader::new();
            if !self.read_block(ext.as_mut_bytes())? {
                bail!("{name}: the archive ends in a sparse header");
            }
            for entry in &ext.sparse {
                add(&mut regions, entry).with_context(bad)?;
            }
            if regions.len() > MAX_REGIONS {
                bail!("{name}: too many sparse regions");
            }
            extended = ext.is_extended();
        }
        let sparse = Sparse {
            size: gnu.real_size().with_context(bad)?,
            regions,
        };
        check_map(&sparse, self.left, name)?;
        Ok(sparse)
    }

    /// The map of a PAX sparse member, if it is one: formats 0.0 (offset
    /// and numbytes records), 0.1 (a map record) and 1.0 (the map at the
    /// start of the data).
    fn pax_sparse(&mut self, local: &Records, name: &str) -> Result<Option<Sparse>> {
        let pax = Pax { local, global: &[] };
        let number = |key: &[u8]| -> Result<Option<u64>> {
            pax.get(key)
                .map(|v| {
                    decimal(v)
                        .with_context(|| format!("{name}: bad {}", String::from_utf8_lossy(key)))
                })
                .transpose()
        };
        let major = number(b"GNU.sparse.major")?;
        let minor = number(b"GNU.sparse.minor")?;
        let sparse = match (major, minor) {
            (Some(1), Some(0)) => {
                let size = number(b"GNU.sparse.realsize")?
                    .or(number(b"GNU.sparse.size")?)
                    .ok_or_else(|| anyhow!("{name}: sparse member without a real size"))?;
                let regions = self.map_in_data(name)?;
                Sparse { size, regions }
            }
            (Some(major), minor) if major != 0 => bail!(
                "{name}: unsupported PAX sparse format {major}.{}",
                minor.map_or("?".into(), |m| m.to_string())
            ),
            _ => {
                let Some(size) = number(b"GNU.sparse.size")? else {
                    return Ok(None);
                };
                let mut regions = Vec::new();
                if let Some(map) = pax.get(b"GNU.sparse.map") {
                    let numbers = map
                        .split(|&b| b == b',')
                        .map(decimal)
                        .collect::<Result<Vec<u64>>>()
                        .with_context(|| format!("{name}: bad GNU.sparse.map"))?;
                    if numbers.len() % 2 != 0 {
                        bail!("{name}: GNU.sparse.map has an odd count of numbers");
                    }
                    regions.extend(numbers.chunks(2).map(|c| (c[0], c[1])));
                } else {
                    let (mut offsets, mut lengths) = (Vec::new(), Vec::new());
                    for (key, value) in local {
                        let list = match key.as_slice() {
                            b"GNU.sparse.offset" => &mut offsets,
                            b"GNU.sparse.numbytes" => &mut lengths,
                            _ => continue,
                        };
                        list.push(
                            decimal(value).with_context(|| format!("{name}: bad sparse map"))?,
                        );
                    }
                    if offsets.len() != lengths.len() {
                        bail!("{name}: sparse map has unpaired offsets and lengths");
                    }
                    regions.extend(offsets.into_iter().zip(lengths));
                }
                if let Some(n) = number(b"GNU.sparse.numblocks")? {
                    if n != regions.len() as u64 {
                        bail!(
                            "{name}: sparse map lists {} regions, not {n}",
                            regions.len()
                        );
                    }
                }
                Sparse { size, regions }
            }
        };
        check_map(&sparse, self.left, name)?;
        Ok(Some(sparse))
    }

    /// Reads a format 1.0 map from the start of the member's data: decimal
    /// numbers, one a line (the count, then offset and length pairs),
    /// padded to a block.
    fn map_in_data(&mut self, name: &str) -> Result<Vec<(u64, u64)>> {
        let mut numbers: Vec<u64> = Vec::new();
        let mut want: Option<u64> = None;
        let mut digits: Vec<u8> = Vec::new();
        let mut block = [0u8; BLOCK];
        loop {
            if self.left < BLOCK as u64 {
                bail!("{name}: sparse map runs past the member's data");
            }
            self.left -= BLOCK as u64;
            if !self.read_block(&mut block)? {
                bail!("{name}: the archive ends in a sparse map");
            }
            for &b in &block {
                if want.is_some_and(|n| numbers.len() as u64 == 2 * n) {
                    break;
                }
                if b != b'\n' {
                    digits.push(b);
                    if digits.len() > 20 {
                        bail!("{name}: bad sparse map");
                    }
                    continue;
                }
                let n = decimal(&digits).with_context(|| format!("{name}: bad sparse map"))?;
                digits.clear();
                match want {
                    None if n > MAX_REGIONS as u64 => bail!("{name}: too many sparse regions"),
                    None => want = Some(n),
                    Some(_) => numbers.push(n),
                }
            }
            if want.is_some_and(|n| numbers.len() as u64 == 2 * n) {
                return Ok(numbers.chunks(2).map(|c| (c[0], c[1])).collect());
            }
        }
    }
}

/// Checks that a sparse map fits its file and accounts for exactly `data`
/// stored bytes.
fn check_map(sparse: &Sparse, data: u64, name: &str) -> Result<()> {
    let mut total: u64 = 0;
    for &(offset, len) in &sparse.regions {
        let end = offset.checked_add(len);
        if end.is_none_or(|end| end > sparse.size) {
            bail!("{name}: sparse region beyond the file's size");
        }
        total = total.saturating_add(len);
    }
    if total != data {
        bail!("{name}: sparse map lists {total} bytes of data, the member holds {data}");
    }
    Ok(())
}

/// A member's PAX records over the global ones; an empty value unsets.
struct Pax<'a> {
    local: &'a [(Vec<u8>, Vec<u8>)],
    global: &'a [(Vec<u8>, Vec<u8>)],
}

impl<'a> Pax<'a> {
    fn get(&self, key: &[u8]) -> Option<&'a [u8]> {
        let last = |records: &'a [(Vec<u8>, Vec<u8>)]| {
            records
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_slice())
        };
        last(self.local)
            .or_else(|| last(self.global))
            .filter(|v| !v.is_empty())
    }
}

/// Parses PAX records: `<length> <keyword>=<value>\n`, the length counting
/// the whole record (so a value may hold newlines).
fn parse_pax(mut data: &[u8], at: u64) -> Result<Records> {
    let bad = || anyhow!("malformed PAX header at byte {at}");
    let mut records = Vec::new();
    while !data.is_empty() && data[0] != 0 {
        let space = data.iter().position(|&b| b == b' ').ok_or_else(bad)?;
        let len =
            usize::try_from(decimal(&data[..space]).map_err(|_| bad())?).map_err(|_| bad())?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(bad());
        }
        let record = &data[space + 1..len - 1];
        let eq = record.iter().position(|&b| b == b'=').ok_or_else(bad)?;
        records.push((record[..eq].to_vec(), record[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(records)
}

/// A non-negative decimal number, digits only.
fn decimal(digits: &[u8]) -> Result<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        bail!("not a number: {:?}", String::from_utf8_lossy(digits));
    }
    digits.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .ok_or_else(|| anyhow!("number out of range"))
    })
}

/// A PAX time, `[-]seconds[.fraction]`, as seconds and nanoseconds
/// (the nanoseconds always count forward: -1.5 is (-2, 500000000)).
fn pax_time(value: &[u8]) -> Result<(i64, u32)> {
    let (negative, value) = match value.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let (whole, fraction) = match value.iter().position(|&b| b == b'.') {
        Some(dot) => (&value[..dot], &value[dot + 1..]),
        None => (value, &b""[..]),
    };
    let secs = i64::try_from(decimal(whole)?)?;
    if !fraction.iter().all(u8::is_ascii_digit) {
        bail!("not a time: {:?}", String::from_utf8_lossy(value));
    }
    let mut nanos: u32 = 0;
    for i in 0..9 {
        nanos = nanos * 10 + fraction.get(i).map_or(0, |&d| u32::from(d - b'0'));
    }
    Ok(match (negative, nanos) {
        (false, _) => (secs, nanos),
        (true, 0) => (-secs, 0),
        (true, _) => (-secs - 1, 1_000_000_000 - nanos),
    })
}

/// Whether a header's checksum matches, summing its bytes unsigned or (as
/// some old tars did) signed.
fn checksum_ok(block: &[u8; BLOCK]) -> bool {
    let Ok(stored) = tar::Header::from_byte_slice(block).cksum() else {
        return false;
    };
    let field = 148..156;
    let (mut unsigned, mut signed) = (0u32, 0i32);
    for (i, &b) in block.iter().enumerate() {
        let b = if field.contains(&i) { b' ' } else { b };
        unsigned += u32::from(b);
        signed += i32::from(b as i8);
    }
    stored == unsigned || i64::from(stored) == i64::from(signed)
}

fn pad(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn trim_nul(mut data: Vec<u8>) -> Vec<u8> {
    if let Some(end) = data.iter().position(|&b| b == 0) {
        data.truncate(end);
    }
    data
}

/// Strips a leading `/` and `./`; rejects `..` anywhere.
pub(super) fn sanitize(raw: &[u8]) -> Result<PathBuf> {
    let raw = Path::new(OsStr::from_bytes(raw));
    let mut rel = PathBuf::new();
    for comp in raw.components() {
        match comp {
            Component::Normal(c) => rel.push(c),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                bail!("archive member {:?} contains '..'", raw)
            }
            Component::Prefix(_) => bail!("archive member {:?} has a path prefix", raw),
        }
    }
    Ok(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_strips_root_and_rejects_parent() {
        assert_eq!(sanitize(b"/a/./b").unwrap(), PathBuf::from("a/b"));
        assert_eq!(sanitize(b"./").unwrap(), PathBuf::new());
        assert!(sanitize(b"a/../../b").is_err());
    }

    #[test]
    fn pax_records_may_hold_newlines() {
        let records = parse_pax(b"14 path=a\nb/c\n21 mtime=1.000000001\n", 0).unwrap();
        assert_eq!(records[0], (b"path".to_vec(), b"a\nb/c".to_vec()));
        assert_eq!(records[1].1, b"1.000000001");
        assert!(parse_pax(b"99 path=a\n", 0).is_err());
        assert!(parse_pax(b"9 patha\n", 0).is_err());
    }

    #[test]
    fn pax_times_keep_nanoseconds() {
        assert_eq!(
            pax_time(b"1600000000.123456789").unwrap(),
            (1_600_000_000, 123_456_789)
        );
        assert_eq!(pax_time(b"5.5").unwrap(), (5, 500_000_000));
        assert_eq!(pax_time(b"7").unwrap(), (7, 0));
        assert_eq!(pax_time(b"-1.5").unwrap(), (-2, 500_000_000));
        assert_eq!(pax_time(b"1.1234567891").unwrap(), (1, 123_456_789));
        assert!(pax_time(b"x").is_err());
    }

    /// A tar holding one PAX member with `records`, named `name`, with
    /// `data`.
    fn pax_tar(records: &[(&str, &str)], name: &str, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions(records.iter().map(|(k, v)| (*k, v.as_bytes())))
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
        b.into_inner().unwrap()
    }

    fn first(tar: &[u8]) -> Result<Member> {
        let mut stream = TarStream::new(tar);
        stream.next_member()?.ok_or_else(|| anyhow!("no member"))
    }

    #[test]
    fn pax_sparse_1_0_takes_its_name_size_and_map() {
        let mut data = b"2\n0\n3\n10\n2\n".to_vec();
        data.resize(512, 0);
        data.extend_from_slice(b"abcde");
        let records = [
            ("GNU.sparse.major", "1"),
            ("GNU.sparse.minor", "0"),
            ("GNU.sparse.name", "dir/real"),
            ("GNU.sparse.realsize", "20"),
            ("mtime", "1600000000.5"),
        ];
        let tar = pax_tar(&records, "GNUSparseFile.1/real", &data);
        let m = first(&tar).unwrap();
        assert_eq!(m.path, Path::new("dir/real"));
        assert_eq!(m.mtime, (1_600_000_000, 500_000_000));
        let sparse = m.sparse.unwrap();
        assert_eq!((sparse.size, sparse.regions), (20, vec![(0, 3), (10, 2)]));
        assert_eq!(m.size, 5);
    }

    #[test]
    fn unsupported_or_inconsistent_sparse_members_are_refused_by_name() {
        let records = [("GNU.sparse.major", "2"), ("GNU.sparse.minor", "0")];
        let e = first(&pax_tar(&records, "odd", b"")).unwrap_err();
        assert!(format!("{e:#}").contains("odd: unsupported PAX sparse format 2.0"));
        let records = [("GNU.sparse.size", "10"), ("GNU.sparse.map", "0,4")];
        let e = first(&pax_tar(&records, "short", b"abc")).unwrap_err();
        assert!(
            format!("{e:#}").starts_with("short: sparse map lists 4 bytes"),
            "{e:#}"
        );
        let records = [("GNU.sparse.size", "10"), ("GNU.sparse.map", "8,4")];
        let e = first(&pax_tar(&records, "beyond", b"abcd")).unwrap_err();
        assert!(
            format!("{e:#}").contains("beyond: sparse region beyond"),
            "{e:#}"
        );
    }

    #[test]
    fn input_that_is_not_tar_is_told_apart_from_an_empty_archive() {
        let not_tar = |data: &[u8]| {
            let e = TarStream::new(data).next_member().unwrap_err();
            e.downcast::<NotTar>().unwrap().to_string()
        };
        assert_eq!(not_tar(b""), "not a tar archive (empty)");
        assert!(not_tar(b"<html>").contains("6 bytes, starting \"<html>\""));
        assert!(not_tar(&[b'x'; 1024]).contains("no tar header"));
        assert!(TarStream::new(&[0u8; 1024][..])
            .next_member()
            .unwrap()
            .is_none());
    }

    #[test]
    fn sparse_maps_must_fit_and_account_for_the_data() {
        let ok = Sparse {
            size: 10,
            regions: vec![(0, 2), (8, 2), (10, 0)],
        };
        assert!(check_map(&ok, 4, "f").is_ok());
        assert!(check_map(&ok, 5, "f").is_err());
        let beyond = Sparse {
            size: 10,
            regions: vec![(9, 2)],
        };
        assert!(check_map(&beyond, 2, "f").is_err());
    }
}
