//! The gzip framing of a packed archive: data members (deflate at level 6,
//! as `gzip -6`, with mtime 0), the index carried in the extra field of
//! empty members, and the fixed-size footer member that locates it. Every
//! gzip reader skips extra fields and inflates empty members to nothing,
//! so the file stays a plain `.tar.gz`.
//!
//! Footer payload (subfield `SF`, [`Footer::LEN`] bytes in all): `strpack1`,
//! the index's offset and length (u64, little-endian) and the SHA-256 of
//! the index members' bytes. Index members carry subfield `SI`, up to
//! [`INDEX_CHUNK`] bytes of the deflated index each.

use anyhow::{bail, ensure, Result};
use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use sha2::{Digest as _, Sha256};

use super::index::{Index, MemberRef};

const FOOTER_MAGIC: &[u8; 8] = b"strpack1";
const FOOTER_ID: [u8; 2] = *b"SF";
const INDEX_ID: [u8; 2] = *b"SI";
const FOOTER_PAYLOAD: usize = 8 + 8 + 8 + 32;

/// The largest index a footer may point at.
const MAX_INDEX: u64 = 256 << 20;

/// Most index bytes one member carries (an extra field holds 65,535 bytes,
/// four of them the subfield's id and length).
pub const INDEX_CHUNK: usize = 65_535 - 4;

/// Level 6, as `gzip` and `tar czf` use by default.
const LEVEL: u32 = 6;

/// gzip header without extra field: magic, deflate, no flags, mtime 0,
/// no extra flags, OS 3 (Unix), as `gzip -n` writes.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];

/// Deflate of nothing: one empty final fixed block.
const EMPTY_DEFLATE: [u8; 2] = [3, 0];

/// Compresses data members, reusing one deflate state.
pub struct MemberWriter {
    z: Compress,
}

impl Default for MemberWriter {
    fn default() -> Self {
        MemberWriter {
            z: Compress::new(Compression::new(LEVEL), false),
        }
    }
}

impl MemberWriter {
    /// `raw` as one complete gzip member.
    pub fn member(&mut self, raw: &[u8]) -> Result<Vec<u8>> {
        self.z.reset();
        let mut out = Vec::with_capacity(raw.len() / 2 + 64);
        out.extend_from_slice(&HEADER);
        let mut input = raw;
        loop {
            if out.capacity() - out.len() < 1024 {
                out.reserve(out.capacity().max(4096));
            }
            let before = self.z.total_in();
            let status = self
                .z
                .compress_vec(input, &mut out, FlushCompress::Finish)?;
            input = &input[(self.z.total_in() - before) as usize..];
            if status == Status::StreamEnd {
                break;
            }
        }
        let mut crc = Crc::new();
        crc.update(raw);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        Ok(out)
    }
}

/// An empty gzip member whose extra field holds subfield `id` = `payload`.
fn extra_member(id: [u8; 2], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 26);
    out.extend_from_slice(&HEADER);
    out[3] = 4; // FEXTRA
    out.extend_from_slice(&((payload.len() + 4) as u16).to_le_bytes());
    out.extend_from_slice(&id);
    out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&EMPTY_DEFLATE);
    out.extend_from_slice(&[0; 8]); // CRC-32 and size of nothing
    out
}

/// Reads one [`extra_member`] with subfield `id` at the start of `bytes`:
/// its payload and the bytes after it.
fn read_extra_member(bytes: &[u8], id: [u8; 2]) -> Result<(&[u8], &[u8])> {
    ensure!(
        bytes.len() >= 26 && bytes[..3] == HEADER[..3] && bytes[3] == 4,
        "not a gzip member with an extra field"
    );
    let xlen = usize::from(u16::from_le_bytes([bytes[10], bytes[11]]));
    let len = usize::from(u16::from_le_bytes([bytes[14], bytes[15]]));
    ensure!(
        bytes[12..14] == id && xlen == len + 4 && bytes.len() >= 12 + xlen + 10,
        "unexpected gzip extra field"
    );
    let payload = &bytes[16..16 + len];
    let (tail, rest) = bytes[12 + xlen..].split_at(10);
    ensure!(
        tail[..2] == EMPTY_DEFLATE && tail[2..] == [0; 8],
        "an index member that is not empty"
    );
    Ok((payload, rest))
}

/// The index members for `index`.
pub fn index_members(index: &Index) -> Vec<u8> {
    let deflated = index.deflated();
    let mut out = Vec::with_capacity(deflated.len() + deflated.len() / INDEX_CHUNK * 26 + 26);
    for chunk in deflated.chunks(INDEX_CHUNK) {
        out.extend_from_slice(&extra_member(INDEX_ID, chunk));
    }
    if deflated.is_empty() {
        out.extend_from_slice(&extra_member(INDEX_ID, &[]));
    }
    out
}

/// Where the index is, as the last [`Footer::LEN`] bytes of a packed
/// archive say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    /// Where the index members start (where the data members end).
    pub index_offset: u64,
    /// Bytes of index members (the footer follows them).
    pub index_len: u64,
    /// SHA-256 of the index members' bytes.
    pub index_sha256: [u8; 32],
}

impl Footer {
    /// The footer member's size: what a suffix range asks for.
    pub const LEN: usize = 26 + FOOTER_PAYLOAD;

    /// The footer for index members `index` written at `offset`.
    pub fn for_index(offset: u64, index: &[u8]) -> Footer {
        Footer {
            index_offset: offset,
            index_len: index.len() as u64,
            index_sha256: Sha256::digest(index).into(),
        }
    }

    /// The footer member.
    pub fn encode(&self) -> Vec<u8> {
        let mut payload = Vec::with_capacity(FOOTER_PAYLOAD);
        payload.extend_from_slice(FOOTER_MAGIC);
        payload.extend_from_slice(&self.index_offset.to_le_bytes());
        payload.extend_from_slice(&self.index_len.to_le_bytes());
        payload.extend_from_slice(&self.index_sha256);
        extra_member(FOOTER_ID, &payload)
    }

    /// Reads the footer from the last [`Footer::LEN`] bytes of an archive
    /// of `total` bytes; an error when it is not a packed archive's.
    pub fn parse(tail: &[u8], total: u64) -> Result<Footer> {
        ensure!(tail.len() == Footer::LEN, "no packed-archive footer");
        let (payload, _) = read_extra_member(tail, FOOTER_ID)
            .map_err(|_| anyhow::anyhow!("no packed-archive footer"))?;
        ensure!(
            payload.len() == FOOTER_PAYLOAD && payload[..8] == FOOTER_MAGIC[..],
            "no packed-archive footer"
        );
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&payload[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let footer = Footer {
            index_offset: u64_at(8),
            index_len: u64_at(16),
            index_sha256: {
                let mut d = [0u8; 32];
                d.copy_from_slice(&payload[24..56]);
                d
            },
        };
        let end = footer
            .index_offset
            .checked_add(footer.index_len)
            .and_then(|n| n.checked_add(Footer::LEN as u64));
        ensure!(footer.index_len <= MAX_INDEX, "the index is too large");
        if end != Some(total) {
            bail!("the packed-archive footer does not fit the archive's {total} bytes");
        }
        Ok(footer)
    }

    /// The index from its members' bytes (`index_len` of them, read at
    /// `index_offset`), checked against this footer.
    pub fn index(&self, members: &[u8]) -> Result<Index> {
        let index = Index::decode(self.deflated(members)?)?;
        self.ends_at_index(index.members())?;
        Ok(index)
    }

    /// The data members the index lists, its entries left unread (what a
    /// delta fetch needs), checked against this footer.
    pub fn members(&self, members: &[u8]) -> Result<Vec<MemberRef>> {
        let listed = super::index::decode_members(&self.deflated(members)?)?;
        self.ends_at_index(&listed)?;
        Ok(listed)
    }

    /// The deflated index the index members carry, checked against this
    /// footer's length and digest.
    fn deflated(&self, members: &[u8]) -> Result<Vec<u8>> {
        ensure!(
            members.len() as u64 == self.index_len,
            "the index is {} bytes, the footer says {}",
            members.len(),
            self.index_len
        );
        ensure!(
            <[u8; 32]>::from(Sha256::digest(members)) == self.index_sha256,
            "the index does not match its footer's digest"
        );
        let mut deflated = Vec::with_capacity(members.len());
        let mut rest = members;
        while !rest.is_empty() {
            let (payload, after) = read_extra_member(rest, INDEX_ID)?;
            deflated.extend_from_slice(payload);
            rest = after;
        }
        Ok(deflated)
    }

    /// Fails unless the data members `listed` end where the index starts.
    fn ends_at_index(&self, listed: &[MemberRef]) -> Result<()> {
        let end = listed.last().map_or(0, MemberRef::end);
        ensure!(
            end == self.index_offset,
            "the index's members end at {end}, its footer says {}",
            self.index_offset
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn members_and_index_members_read_as_one_gzip_stream() {
        let mut w = MemberWriter::default();
        let mut all = w.member(b"hello ").unwrap();
        all.extend(w.member(b"world").unwrap());
        all.extend(extra_member(INDEX_ID, &[7; 100]));
        all.extend(Footer::for_index(0, b"").encode());
        let mut out = String::new();
        flate2::read::MultiGzDecoder::new(&all[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "hello world");
        assert_eq!(Footer::for_index(0, b"").encode().len(), Footer::LEN);
    }

    #[test]
    fn a_footer_round_trips_and_must_fit_the_archive() {
        let f = Footer::for_index(1000, &[1; 50]);
        let bytes = f.encode();
        let total = 1050 + Footer::LEN as u64;
        assert_eq!(Footer::parse(&bytes, total).unwrap(), f);
        assert!(Footer::parse(&bytes, total + 1).is_err());
        let mut bad = bytes.clone();
        bad[20] ^= 1;
        assert!(Footer::parse(&bad, total).is_err());
        assert!(Footer::parse(&[0; Footer::LEN], total).is_err());
    }
}
