//! Packed archives (SPEC 8.9): a `.tar.gz` that every tool extracts as
//! usual, made of gzip members that each hold whole tar entries, then the
//! tar end blocks, then an index in the extra field of empty members, then
//! a fixed-size footer member that locates the index.
//!
//! One index type ([`Index`]), written by the packer ([`pack`]) and read
//! through the footer ([`Footer`]) by the delta fetch and by the strategies;
//! none of them parses the archive's tail on its own. [`Kept`] is the
//! last verified packed archive of a dest, which a delta fetch reuses.

mod gzip;
mod index;
mod kept;
mod names;
mod walk;
mod writer;

use std::fs::File;
use std::os::unix::fs::FileExt;

use anyhow::{Context, Result};

#[cfg(test)]
pub(crate) use gzip::index_members;
pub use gzip::Footer;
pub use index::{
    digest, Builder as IndexBuilder, Digest, Entries, Entry, EntryType, Index, MemberRef,
    DIGEST_LEN,
};
pub use kept::Kept;
pub use writer::{pack, Options, Summary, MAX_MEMBER_SIZE, SPLIT};

/// Reads the index of the packed archive in `file`: its footer, then the
/// index members it points at. An error when `file` is not one.
pub fn read_index(file: &File) -> Result<Index> {
    let (footer, members) = read_tail(file)?;
    footer.index(&members)
}

/// The data members the index of the packed archive in `file` lists, its
/// entries left unread (what a delta fetch needs of a kept archive).
pub fn read_members(file: &File) -> Result<Vec<MemberRef>> {
    let (footer, members) = read_tail(file)?;
    footer.members(&members)
}

/// The footer of the packed archive in `file` and the index members it
/// points at.
fn read_tail(file: &File) -> Result<(Footer, Vec<u8>)> {
    let total = file.metadata().context("stat")?.len();
    let footer_len = Footer::LEN as u64;
    anyhow::ensure!(total >= footer_len, "no packed-archive footer");
    let mut tail = vec![0u8; Footer::LEN];
    file.read_exact_at(&mut tail, total - footer_len)
        .context("reading the footer")?;
    let footer = Footer::parse(&tail, total)?;
    let len = usize::try_from(footer.index_len).context("index length")?;
    let mut members = vec![0u8; len];
    file.read_exact_at(&mut members, footer.index_offset)
        .context("reading the index")?;
    Ok((footer, members))
}

/// Checks the data members of the packed archive in `file` against its
/// index's digests (so against what the packer wrote: its gzip framing
/// and the tar headers the index was made from). `Ok(false)` when `file`
/// is not a packed archive. `native` and `release` inflate only some
/// members: without this, a damaged member they skip would go unseen.
pub fn check_members(file: &File) -> Result<bool> {
    use sha2::{Digest as _, Sha256};
    use std::io::Read;
    // The member table only, as `Kept::keep` reads it: every archive kept
    // has had each of its members checked.
    let Ok(members) = read_members(file) else {
        return Ok(false);
    };
    let mut reader = std::io::BufReader::with_capacity(256 << 10, file);
    std::io::Seek::rewind(&mut reader).context("reading the archive")?;
    let mut buf = vec![0u8; 64 << 10];
    for (n, m) in members.iter().enumerate() {
        let mut hash = Sha256::new();
        let mut left = m.len as usize;
        while left > 0 {
            let k = left.min(buf.len());
            reader
                .read_exact(&mut buf[..k])
                .context("reading the archive")?;
            hash.update(&buf[..k]);
            left -= k;
        }
        anyhow::ensure!(
            hash.finalize()[..DIGEST_LEN] == m.digest,
            "packed archive: gzip member {n} (at byte {}) does not match its index",
            m.offset
        );
    }
    Ok(true)
}
