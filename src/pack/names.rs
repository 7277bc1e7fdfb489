//! User and group names for tar headers, looked up once per id as GNU tar
//! does (`getpwuid`, `getgrgid`); an id without a name gets an empty one.

use std::collections::HashMap;
use std::ffi::CStr;

/// Names by id, remembered.
#[derive(Default)]
pub struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    /// The name of user `uid`.
    pub fn user(&mut self, uid: u32) -> &str {
        self.users.entry(uid).or_insert_with(|| lookup_user(uid))
    }

    /// The name of group `gid`.
    pub fn group(&mut self, gid: u32) -> &str {
        self.groups.entry(gid).or_insert_with(|| lookup_group(gid))
    }
}

fn lookup_user(uid: u32) -> String {
    let mut size = 4096;
    while size <= 1 << 20 {
        let mut buf = vec![0 as libc::c_char; size];
        // SAFETY: passwd is plain old data; zeroed is a valid value.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call and buf's length is given.
        let rc =
            unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
        if rc == libc::ERANGE {
            size *= 4;
            continue;
        }
        if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
            break;
        }
        // SAFETY: the lookup succeeded: pw_name is a NUL-terminated string in buf.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) };
        return name.to_string_lossy().into_owned();
    }
    String::new()
}

fn lookup_group(gid: u32) -> String {
    let mut size = 4096;
    while size <= 1 << 20 {
        let mut buf = vec![0 as libc::c_char; size];
        // SAFETY: group is plain old data; zeroed is a valid value.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call and buf's length is given.
        let rc =
            unsafe { libc::getgrgid_r(gid, &mut grp, buf.as_mut_ptr(), buf.len(), &mut found) };
        if rc == libc::ERANGE {
            size *= 4;
            continue;
        }
        if rc != 0 || found.is_null() || grp.gr_name.is_null() {
            break;
        }
        // SAFETY: the lookup succeeded: gr_name is a NUL-terminated string in buf.
        let name = unsafe { CStr::from_ptr(grp.gr_name) };
        return name.to_string_lossy().into_owned();
    }
    String::new()
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_has_a_name() {
        let mut names = super::Names::default();
        assert_eq!(names.user(0), "root");
        assert_eq!(names.group(0), "root");
    }
}
