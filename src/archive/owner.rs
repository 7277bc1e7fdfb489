//! Who owns an extracted member as root, as GNU `tar xf` decides it: by the
//! header's user and group **names** when they exist on this host, else by
//! the numeric ids (an archive built where `deploy` is uid 1001 gives
//! `deploy`'s files to `deploy` on a host where it is 1002). Every strategy
//! asks [`Member::owner`], so the extraction dir and `native`/`release`
//! agree. Lookups are cached per name: an archive has many members and few
//! owners.

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::{LazyLock, Mutex};

use anyhow::{anyhow, Result};

use super::Member;

impl Member {
    /// The owner and group to give this member as root: each name's id on
    /// this host, or the stored id when the name is empty or unknown here.
    pub fn owner(&self) -> Result<(u32, u32)> {
        let id = |n: u64| {
            u32::try_from(n).map_err(|_| anyhow!("{}: owner id {n} out of range", self.name))
        };
        let uid = match lookup(&USERS, &self.uname, user_id) {
            Some(uid) => uid,
            None => id(self.uid)?,
        };
        let gid = match lookup(&GROUPS, &self.gname, group_id) {
            Some(gid) => gid,
            None => id(self.gid)?,
        };
        Ok((uid, gid))
    }
}

/// Names looked up so far, and what they gave (`None`: unknown here).
type Cache = LazyLock<Mutex<HashMap<Vec<u8>, Option<u32>>>>;

static USERS: Cache = LazyLock::new(Mutex::default);
static GROUPS: Cache = LazyLock::new(Mutex::default);

/// `name`'s id by `find`, once per name; `None` for an empty name.
fn lookup(cache: &Cache, name: &[u8], find: fn(&CString) -> Option<u32>) -> Option<u32> {
    if name.is_empty() {
        return None;
    }
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&id) = cache.get(name) {
        return id;
    }
    // A name read up to its NUL holds none.
    let id = CString::new(name).ok().as_ref().and_then(find);
    cache.insert(name.to_vec(), id);
    id
}

/// The uid of user `name` on this host (getpwnam_r).
fn user_id(name: &CString) -> Option<u32> {
    with_buffer(libc::_SC_GETPW_R_SIZE_MAX, |buf| {
        // SAFETY: passwd is plain old data; zeroed is a valid value.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: `name` is NUL-terminated, `buf` is writable for its whole
        // length, and `entry`/`found` are valid out-pointers.
        let rc = unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                &mut entry,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        (rc, (!found.is_null()).then_some(entry.pw_uid))
    })
}

/// The gid of group `name` on this host (getgrnam_r).
fn group_id(name: &CString) -> Option<u32> {
    with_buffer(libc::_SC_GETGR_R_SIZE_MAX, |buf| {
        // SAFETY: group is plain old data; zeroed is a valid value.
        let mut entry: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: as in `user_id`.
        let rc = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut entry,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        (rc, (!found.is_null()).then_some(entry.gr_gid))
    })
}

/// Runs a `get*nam_r` call with a scratch buffer of the size sysconf
/// suggests, doubling it while the call answers ERANGE. Any other error is
/// "not found", as GNU tar takes it.
fn with_buffer(
    size_hint: libc::c_int,
    mut call: impl FnMut(&mut [libc::c_char]) -> (libc::c_int, Option<u32>),
) -> Option<u32> {
    // SAFETY: sysconf has no preconditions.
    let hint = unsafe { libc::sysconf(size_hint) };
    let mut len = usize::try_from(hint).unwrap_or(1024).max(1024);
    loop {
        let mut buf = vec![0 as libc::c_char; len];
        match call(&mut buf) {
            (libc::ERANGE, _) if len < 1 << 20 => len *= 2,
            (0, id) => return id,
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(find: fn(&CString) -> Option<u32>, name: &str) -> Option<u32> {
        find(&CString::new(name).unwrap())
    }

    #[test]
    fn names_resolve_to_this_hosts_ids() {
        assert_eq!(id(user_id, "root"), Some(0));
        assert_eq!(id(group_id, "root"), Some(0));
        assert_eq!(id(user_id, "no-such-user-for-stretcher"), None);
        assert_eq!(id(group_id, "no-such-group-for-stretcher"), None);
    }

    #[test]
    fn an_empty_name_is_not_looked_up() {
        assert_eq!(lookup(&USERS, b"", user_id), None);
        assert_eq!(lookup(&USERS, b"root", user_id), Some(0));
    }
}
