//! `verify:` as the manifest writes it, read into [`Verify`] and its
//! [`Check`]s: every error names the field (`verify.timeout`,
//! `verify.checks[1]: http: invalid URL …`).

use std::fmt;
use std::path::PathBuf;

use anyhow::{anyhow, Result};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use url::Url;

use super::{Check, Verify, DEFAULT_INTERVAL, DEFAULT_TIMEOUT, KINDS};
use crate::manifest::Text;

/// `verify:` as written; [`Verify::try_from`] checks it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVerify {
    #[serde(default)]
    timeout: Option<Text>,
    #[serde(default)]
    interval: Option<Text>,
    #[serde(default)]
    checks: Option<Vec<Check>>,
}

impl TryFrom<RawVerify> for Verify {
    type Error = String;

    fn try_from(raw: RawVerify) -> Result<Self, String> {
        let duration = |field: &str, given: Option<Text>, default| match given {
            None => Ok(default),
            Some(Text(text)) if text.trim().is_empty() => Ok(default),
            Some(Text(text)) => match crate::units::parse_duration(&text) {
                Ok(d) if d.is_zero() => Err(format!("verify.{field}: must be more than 0")),
                Ok(d) => Ok(d),
                Err(e) => Err(format!("verify.{field}: {e}")),
            },
        };
        let checks = raw.checks.unwrap_or_default();
        if checks.is_empty() {
            return Err("verify.checks: no checks listed".to_string());
        }
        Ok(Verify {
            timeout: duration("timeout", raw.timeout, DEFAULT_TIMEOUT)?,
            interval: duration("interval", raw.interval, DEFAULT_INTERVAL)?,
            checks,
        })
    }
}

impl<'de> Deserialize<'de> for Check {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(CheckVisitor)
    }
}

struct CheckVisitor;

impl<'de> Visitor<'de> for CheckVisitor {
    type Value = Check;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a check: one of {}, with its value", KINDS.join(", "))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Check, A::Error> {
        let mut kind: Option<(String, String)> = None;
        let mut unknown: Option<String> = None;
        let mut status = None;
        let mut contains = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "status" => status = Some(map.next_value::<Statuses>()?.0),
                "contains" => {
                    contains = map.next_value::<Option<Text>>()?.map(|t| t.0);
                }
                k if KINDS.contains(&k) => {
                    let value = map.next_value::<Option<Text>>()?.map(|t| t.0);
                    if let Some((first, _)) = &kind {
                        return Err(de::Error::custom(format!(
                            "one check per list item, found {first} and {key}"
                        )));
                    }
                    kind = Some((key, value.unwrap_or_default()));
                }
                _ => {
                    // Read, not skipped: the manifest's warning for an
                    // ignored key would follow the error.
                    map.next_value::<yaml_serde::Value>()?;
                    unknown.get_or_insert(key);
                }
            }
        }
        let Some((kind, value)) = kind else {
            let found = unknown.map(|k| format!("unknown check kind {k:?}: "));
            return Err(de::Error::custom(format!(
                "{}a check is one of {}",
                found.unwrap_or_default(),
                KINDS.join(", ")
            )));
        };
        if let Some(key) = unknown {
            let takes = if kind == "http" {
                "it takes status and contains"
            } else {
                "it takes no options"
            };
            return Err(de::Error::custom(format!(
                "unknown key {key:?} in a {kind} check ({takes})"
            )));
        }
        if kind != "http" && (status.is_some() || contains.is_some()) {
            return Err(de::Error::custom(format!(
                "{kind}: status and contains are for http checks"
            )));
        }
        Check::new(&kind, value.trim(), status.unwrap_or_default(), contains)
            .map_err(|e| de::Error::custom(format!("{kind}: {e}")))
    }
}

impl Check {
    /// A check of `kind` on `value` (URL, address, line or path).
    fn new(kind: &str, value: &str, status: Vec<u16>, contains: Option<String>) -> Result<Check> {
        if value.is_empty() {
            return Err(anyhow!("empty"));
        }
        Ok(match kind {
            "http" => {
                let url = Url::parse(value).map_err(|e| anyhow!("invalid URL {value:?}: {e}"))?;
                if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                    return Err(anyhow!("invalid URL {value:?}: not http(s)://host/…"));
                }
                Check::Http {
                    url,
                    status,
                    contains: contains.filter(|c| !c.is_empty()),
                }
            }
            "tcp" => {
                let (host, port) = value
                    .rsplit_once(':')
                    .ok_or_else(|| anyhow!("{value:?} is not HOST:PORT"))?;
                match port.parse::<u16>() {
                    Ok(p) if p > 0 && !host.is_empty() => Check::Tcp(value.to_string()),
                    _ => return Err(anyhow!("{value:?} is not HOST:PORT")),
                }
            }
            "command" => Check::Command(value.to_string()),
            "server_starter" => Check::ServerStarter(PathBuf::from(value)),
            _ => Check::Pidfile(PathBuf::from(value)),
        })
    }
}

/// `status: 200` or `status: [200, 204]`.
struct Statuses(Vec<u16>);

impl<'de> Deserialize<'de> for Statuses {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StatusVisitor)
    }
}

struct StatusVisitor;

fn status_code<E: de::Error>(v: u64) -> Result<u16, E> {
    match u16::try_from(v) {
        Ok(code) if (100..=599).contains(&code) => Ok(code),
        _ => Err(E::custom(format!("status {v} is not an HTTP status"))),
    }
}

impl<'de> Visitor<'de> for StatusVisitor {
    type Value = Statuses;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an HTTP status or a list of them")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Statuses, E> {
        Ok(Statuses(vec![status_code(v)?]))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Statuses, E> {
        self.visit_u64(
            u64::try_from(v).map_err(|_| E::custom(format!("status {v} is not an HTTP status")))?,
        )
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Statuses, E> {
        let n = v
            .trim()
            .parse()
            .map_err(|_| E::custom(format!("status {v:?} is not an HTTP status")))?;
        self.visit_u64(n)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Statuses, A::Error> {
        let mut all = Vec::new();
        while let Some(one) = seq.next_element::<Statuses>()? {
            all.extend(one.0);
        }
        Ok(Statuses(all))
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use crate::manifest::Manifest;
    use anyhow::Result;
    use std::time::Duration;

    fn parse(section: &str) -> Result<Option<Verify>> {
        Ok(Manifest::parse(&format!("verify:\n{section}"))?.verify)
    }

    fn error(section: &str) -> String {
        format!("{:#}", parse(section).expect_err(section))
    }

    #[test]
    fn a_section_reads_into_checks_with_defaults() {
        let v = parse(
            "  checks:\n\
             \x20   - http: http://127.0.0.1:8080/up\n\
             \x20     status: [200, 204]\n\
             \x20     contains: 0123\n\
             \x20   - http: https://app.example/\n\
             \x20     status: 503\n\
             \x20   - tcp: '[::1]:80'\n\
             \x20   - command: 'test -f ready: yes'\n\
             \x20   - server_starter: /run/app.status\n\
             \x20   - pidfile: /run/unicorn.pid\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!((v.timeout, v.interval), (DEFAULT_TIMEOUT, DEFAULT_INTERVAL));
        let shown: Vec<String> = v.checks.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "http://127.0.0.1:8080/up",
                "https://app.example/",
                "tcp [::1]:80",
                "command test -f ready: yes",
                "server_starter /run/app.status",
                "pidfile /run/unicorn.pid"
            ]
        );
        let Check::Http {
            status, contains, ..
        } = &v.checks[0]
        else {
            panic!("{:?}", v.checks[0]);
        };
        // YAML 1.1 text, as every manifest string: not the number 123.
        assert_eq!(
            (status.as_slice(), contains.as_deref()),
            (&[200, 204][..], Some("0123"))
        );
        let v = parse("  timeout: 1m30s\n  interval: 0.5\n  checks: [{tcp: 'localhost:1'}]\n")
            .unwrap()
            .unwrap();
        assert_eq!(v.timeout, Duration::from_secs(90));
        assert_eq!(v.interval, Duration::from_millis(500));
        assert!(Manifest::parse("verify:\n").unwrap().verify.is_none());
        assert!(Manifest::parse("dest: /srv\n").unwrap().verify.is_none());
    }

    #[test]
    fn a_check_that_cannot_be_read_is_a_one_line_error_naming_its_field() {
        for (section, want) in [
            (
                "  checks:\n    - htp: http://x/\n",
                "verify.checks[0]: unknown check kind \"htp\"",
            ),
            (
                "  checks:\n    - tcp: a:1\n    - http: 'ht tp://x'\n",
                "verify.checks[1]: http: invalid URL \"ht tp://x\"",
            ),
            (
                "  checks:\n    - http: ftp://x/\n",
                "http: invalid URL \"ftp://x/\"",
            ),
            ("  checks:\n    - http: /up\n", "http: invalid URL \"/up\""),
            (
                "  timeout: 6o\n  checks: [{tcp: a:1}]\n",
                "verify.timeout: unknown unit \"o\" in duration \"6o\"",
            ),
            (
                "  interval: 0s\n  checks: [{tcp: a:1}]\n",
                "verify.interval: must be more than 0",
            ),
            (
                "  timout: 5s\n  checks: [{tcp: a:1}]\n",
                "unknown field `timout`",
            ),
            ("  checks: []\n", "verify.checks: no checks listed"),
            ("  timeout: 5s\n", "verify.checks: no checks listed"),
            (
                "  checks:\n    - tcp: 'a:b'\n",
                "tcp: \"a:b\" is not HOST:PORT",
            ),
            (
                "  checks:\n    - tcp: '8080'\n",
                "tcp: \"8080\" is not HOST:PORT",
            ),
            (
                "  checks:\n    - tcp: a:1\n      status: 200\n",
                "tcp: status and contains are for http checks",
            ),
            (
                "  checks:\n    - http: http://x/\n      status: 700\n",
                "status 700 is not an HTTP status",
            ),
            (
                "  checks:\n    - http: http://x/\n      contain: ok\n",
                "unknown key \"contain\" in a http check",
            ),
            (
                "  checks:\n    - http: http://x/\n      tcp: a:1\n",
                "one check per list item, found http and tcp",
            ),
            ("  checks:\n    - command: ''\n", "command: empty"),
            (
                "  checks:\n    - pidfile\n",
                "verify.checks[0]: invalid type",
            ),
        ] {
            let got = error(section);
            assert!(got.contains(want), "{section}: {got}");
            assert!(!got.contains('\n'), "{got}");
        }
    }
}
