//! rsync's exclude rules, for `sync_strategy: native` and `release`: which archive paths
//! are not placed, and which dest paths `--delete` leaves alone.
//!
//! Matching follows rsync 3 (`exclude.c`, `wildmatch.c`): `*` matches
//! within a path component, `**` across them, `?` one character other than
//! `/`, `[...]` a class (`!` or `^` negates, `a-z` ranges), `\` quotes the
//! next character. A leading `/` anchors the pattern at dest's root; a
//! trailing `/` matches directories only. A pattern without `/` or `**`
//! matches the last component; one with an inner `/` and no `**` matches
//! the path's last components; one with `**` is tried after every `/`
//! unless it starts with `**` (which may then match nothing). No crate
//! implements these semantics; the differential tests against real rsync
//! pin them.
//!
//! Anything else rsync would read as a filter rule (`+ ` includes, `!`,
//! `***`, `[:class:]`) is refused with the pattern named, so the result
//! never silently differs from rsync's.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{bail, Result};

/// A list of exclude patterns, from `excludes` and `exclude_from`.
#[derive(Debug, Clone)]
pub struct Excludes {
    rules: Vec<Rule>,
    /// The `sync_strategy` that follows them, for messages.
    strategy: &'static str,
}

/// One parsed pattern.
#[derive(Debug, Clone)]
struct Rule {
    /// The pattern without its anchoring `/` and trailing `/`.
    pattern: Vec<u8>,
    anchored: bool,
    dir_only: bool,
    /// Slashes in the pattern, the anchoring one included (as rsync counts).
    slashes: usize,
    /// Has `*`, `?` or `[`.
    wild: bool,
    /// Has `**`.
    wild2: bool,
    /// Starts with `**`.
    wild2_prefix: bool,
}

impl Excludes {
    /// Parses the manifest's `excludes`, one pattern each, as rsync's
    /// `--exclude` does (a `- ` prefix is allowed), for the
    /// `sync_strategy` named `strategy` (or `pack`, for `stretcher pack`).
    pub fn new(patterns: &[String], strategy: &'static str) -> Result<Self> {
        let mut excludes = Excludes {
            rules: Vec::new(),
            strategy,
        };
        for p in patterns {
            excludes.add(p, "excludes")?;
        }
        Ok(excludes)
    }

    /// Adds the patterns of an `exclude_from` file (`name`, for messages):
    /// a pattern per line (a `\r` ends a line too, as rsync reads it);
    /// blank lines and lines starting with `#` or `;` are skipped.
    pub fn add_file(&mut self, name: &str, text: &str) -> Result<()> {
        for line in text.split(['\n', '\r']) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            self.add(line, name)?;
        }
        Ok(())
    }

    /// Whether there are no patterns.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether `rel` (relative to dest, no leading `/`) is excluded; a
    /// directory's contents are then out of reach too, which callers
    /// check by asking for each ancestor.
    pub fn excludes(&self, rel: &Path, is_dir: bool) -> bool {
        let name = rel.as_os_str().as_bytes();
        !name.is_empty() && self.rules.iter().any(|r| r.matches(name, is_dir))
    }

    /// Whether `rel` or a directory above it is excluded.
    pub fn excludes_here_or_above(&self, rel: &Path, is_dir: bool) -> bool {
        if self.rules.is_empty() {
            return false;
        }
        rel.ancestors().skip(1).any(|a| self.excludes(a, true)) || self.excludes(rel, is_dir)
    }

    fn add(&mut self, raw: &str, origin: &str) -> Result<()> {
        let unsupported = |why: &str| -> Result<()> {
            let by = match self.strategy {
                "pack" => "stretcher pack".to_string(),
                strategy => format!("sync_strategy {strategy}"),
            };
            bail!("{origin}: pattern {raw:?} is not supported by {by} ({why})")
        };
        let p = raw.strip_prefix("- ").unwrap_or(raw);
        if raw.starts_with("+ ") || raw == "!" {
            return unsupported("filter rules other than excludes");
        }
        if p.contains("***") {
            return unsupported("`***`");
        }
        if p.contains("[:") {
            return unsupported("character class names");
        }
        let mut pattern = p.as_bytes().to_vec();
        let dir_only = pattern.len() > 1 && pattern.ends_with(b"/");
        if dir_only {
            pattern.pop();
        }
        if pattern.is_empty() || pattern == b"/" || pattern.ends_with(b"/") {
            return unsupported("an empty name");
        }
        let slashes = pattern.iter().filter(|&&c| c == b'/').count();
        let wild = pattern.iter().any(|c| b"*?[".contains(c));
        let star2 = pattern.windows(2).position(|w| w == b"**");
        let anchored = pattern.first() == Some(&b'/');
        let rule = Rule {
            wild,
            wild2: wild && star2.is_some(),
            wild2_prefix: wild && star2 == Some(0),
            pattern: if anchored {
                pattern[1..].to_vec()
            } else {
                pattern
            },
            anchored,
            dir_only,
            slashes,
        };
        if rule.wild && !class_syntax_ok(&rule.pattern) {
            return unsupported("an unclosed `[`");
        }
        self.rules.push(rule);
        Ok(())
    }
}

impl Rule {
    /// rsync's `rule_matches` for an exclude rule.
    fn matches(&self, path: &[u8], is_dir: bool) -> bool {
        if self.dir_only && !is_dir {
            return false;
        }
        let mut name = path;
        if self.slashes == 0 && !self.wild2 {
            if let Some(i) = name.iter().rposition(|&c| c == b'/') {
                name = &name[i + 1..];
            }
        }
        let prefixed;
        let text: &[u8] = if self.slashes > 0 && self.wild2_prefix {
            // A leading `**/` may match nothing.
            prefixed = [b"/", name].concat();
            &prefixed
        } else {
            name
        };
        if !self.wild {
            return if self.anchored {
                text == self.pattern.as_slice()
            } else {
                text.ends_with(&self.pattern)
                    && (text.len() == self.pattern.len()
                        || text[text.len() - self.pattern.len() - 1] == b'/')
            };
        }
        if !self.anchored && self.slashes > 0 && !self.wild2 {
            // The last `slashes + 1` components.
            let mut start = 0;
            let mut seen = 0;
            for (i, &c) in text.iter().enumerate().rev() {
                if c == b'/' {
                    seen += 1;
                    if seen == self.slashes + 1 {
                        start = i + 1;
                        break;
                    }
                }
            }
            return wildmatch(&self.pattern, &text[start..]);
        }
        if !self.anchored && self.wild2 && !self.wild2_prefix {
            // At the start, or after any `/`.
            return wildmatch(&self.pattern, text)
                || text
                    .iter()
                    .enumerate()
                    .any(|(i, &c)| c == b'/' && wildmatch(&self.pattern, &text[i + 1..]));
        }
        wildmatch(&self.pattern, text)
    }
}

/// Whether every `[` opens a class that closes.
fn class_syntax_ok(p: &[u8]) -> bool {
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'\\' => i += 2,
            b'[' => match class_end(p, i) {
                Some(end) => i = end + 1,
                None => return false,
            },
            _ => i += 1,
        }
    }
    true
}

/// The index of the `]` closing the class that opens at `p[open]`.
fn class_end(p: &[u8], open: usize) -> Option<usize> {
    let mut i = open + 1;
    if matches!(p.get(i), Some(b'!' | b'^')) {
        i += 1;
    }
    // A `]` first in the class is a member.
    if p.get(i) == Some(&b']') {
        i += 1;
    }
    while i < p.len() {
        match p[i] {
            b']' => return Some(i),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    None
}

/// rsync's `wildmatch`: the whole of `t` against the whole of `p`.
fn wildmatch(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    while pi < p.len() {
        match p[pi] {
            b'*' => {
                let double = p.get(pi + 1) == Some(&b'*');
                while p.get(pi) == Some(&b'*') {
                    pi += 1;
                }
                let rest = &p[pi..];
                if rest.is_empty() {
                    return double || !t[ti..].contains(&b'/');
                }
                for start in ti..=t.len() {
                    if wildmatch(rest, &t[start..]) {
                        return true;
                    }
                    if !double && t.get(start) == Some(&b'/') {
                        return false;
                    }
                }
                return false;
            }
            _ if ti >= t.len() => return false,
            b'?' => {
                if t[ti] == b'/' {
                    return false;
                }
                pi += 1;
                ti += 1;
            }
            b'[' => {
                let Some(end) = class_end(p, pi) else {
                    return false;
                };
                // A class never matches `/`.
                if t[ti] == b'/' || !class_matches(&p[pi + 1..end], t[ti]) {
                    return false;
                }
                pi = end + 1;
                ti += 1;
            }
            // A trailing `\` matches nothing.
            b'\\' if pi + 1 == p.len() => return false,
            b'\\' => {
                if p[pi + 1] != t[ti] {
                    return false;
                }
                pi += 2;
                ti += 1;
            }
            c => {
                if c != t[ti] {
                    return false;
                }
                pi += 1;
                ti += 1;
            }
        }
    }
    ti == t.len()
}

/// Whether `c` is in the class whose inside (between `[` and `]`) is `set`.
fn class_matches(set: &[u8], c: u8) -> bool {
    let (negated, set) = match set.first() {
        Some(b'!' | b'^') => (true, &set[1..]),
        _ => (false, set),
    };
    let mut found = false;
    let mut i = 0;
    while i < set.len() {
        let mut lo = set[i];
        if lo == b'\\' && i + 1 < set.len() {
            i += 1;
            lo = set[i];
        }
        if set.get(i + 1) == Some(&b'-') && i + 2 < set.len() {
            let mut hi = set[i + 2];
            i += 2;
            if hi == b'\\' && i + 1 < set.len() {
                i += 1;
                hi = set[i];
            }
            // The range's first end matches even when the range is
            // reversed (`[b-a]` matches `b`), as in rsync's wildmatch.
            found |= lo == c || (lo..=hi).contains(&c);
        } else {
            found |= lo == c;
        }
        i += 1;
    }
    found != negated
}

#[cfg(test)]
mod tests {
    use super::*;

    fn excluded(pattern: &str, path: &str, is_dir: bool) -> bool {
        Excludes::new(&[pattern.to_string()], "native")
            .unwrap()
            .excludes_here_or_above(Path::new(path), is_dir)
    }

    /// Each case was checked against `rsync -a --exclude PATTERN` (3.2).
    #[test]
    fn matches_as_rsync_does() {
        let cases: &[(&str, &str, bool, bool)] = &[
            ("a/**/b", "a/b", true, false),
            ("a/**/b", "a/m/b", true, true),
            ("**/x", "x", false, true),
            ("**/x", "top/d/x", false, true),
            ("dir/**", "dir", true, false),
            ("dir/**", "dir/sub/f", false, true),
            ("d/x", "top/d/x", false, true),
            ("d/x", "d/x", false, true),
            ("d/x", "ad/x", false, false),
            ("/x", "x", false, true),
            ("/x", "top/x", false, false),
            ("a/**", "a/b/f", false, true),
            ("**", "x", false, true),
            ("di*", "dir/g", false, true),
            ("*/b", "a/m/b", true, true),
            ("*/b", "b", true, false),
            ("a*b", "a/b", true, false),
            ("dir/**/", "dir/sub", true, true),
            ("dir/**/", "dir/g", false, false),
            ("- x", "top/d/x", false, true),
            ("[ad]/*", "top/d/x", false, true),
            ("[ad]/*", "top/d", true, false),
            ("[!a]", "b", false, true),
            ("[!a]", "a", false, false),
            ("f?o", "f/o", false, false),
            ("*.log", "logs/a.log", false, true),
            ("logs/", "logs", false, false),
            ("\\*", "*", false, true),
            ("\\*", "a", false, false),
            ("/a[!x]b", "a/b", false, false),
            ("[b-a]", "b", false, true),
            ("[b-a]", "a", false, false),
            ("?\\", "b\\", false, false),
            ("b\\", "b\\", false, true),
        ];
        for &(pattern, path, is_dir, want) in cases {
            assert_eq!(excluded(pattern, path, is_dir), want, "{pattern} on {path}");
        }
    }

    #[test]
    fn refuses_rules_it_cannot_follow_exactly() {
        for p in ["+ keep", "!", "dir/***", "[[:alpha:]]", "[ab", "", "/"] {
            let e = Excludes::new(&[p.to_string()], "release").unwrap_err();
            assert!(
                e.to_string()
                    .starts_with(&format!("excludes: pattern {p:?}"))
                    && e.to_string()
                        .contains("not supported by sync_strategy release"),
                "{e}"
            );
        }
    }

    #[test]
    fn reads_an_exclude_file() {
        let mut x = Excludes::new(&[], "native").unwrap();
        x.add_file(
            "exclude.txt",
            "# comment\n; comment\n\n*.tmp\r\n/cache/\nc\rd\n",
        )
        .unwrap();
        assert!(x.excludes(Path::new("a/b.tmp"), false));
        assert!(x.excludes(Path::new("cache"), true));
        assert!(!x.excludes(Path::new("a/cache"), true));
        assert!(!x.excludes(Path::new("# comment"), false));
        assert!(x.excludes(Path::new("c"), false) && x.excludes(Path::new("d"), false));
    }
}
