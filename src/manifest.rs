//! The deploy manifest: template rendering, YAML as Go's yaml.v2 (YAML 1.1)
//! reads it, octal `dest_mode`, and warnings for keys we do not know.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use yaml_serde::Value;

use crate::template;
use crate::units::parse_duration;
use crate::verify::Verify;

/// Default mode of the deployed tree's root, as upstream.
pub const DEFAULT_DEST_MODE: u32 = 0o755;

/// A parsed manifest. Empty strings mean "not set", as upstream.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Manifest {
    /// Archive URL; empty for a commands-only manifest.
    #[serde(deserialize_with = "scalar")]
    pub src: String,
    /// Hex checksum of the archive.
    #[serde(deserialize_with = "scalar")]
    pub checksum: String,
    /// Directory to deploy into.
    #[serde(deserialize_with = "scalar")]
    pub dest: String,
    /// Mode of the deployed tree's root.
    #[serde(deserialize_with = "file_mode")]
    pub dest_mode: Option<u32>,
    /// `rsync` (default, also when empty), `mv`, `native` or `release`.
    #[serde(deserialize_with = "scalar")]
    pub sync_strategy: String,
    /// rsync `--exclude` patterns, in order.
    #[serde(deserialize_with = "scalars")]
    pub excludes: Vec<String>,
    /// rsync `--exclude-from` file, a path inside the archive.
    #[serde(deserialize_with = "scalar")]
    pub exclude_from: String,
    /// `sync_strategy: release`: how many releases to keep (default 5).
    #[serde(deserialize_with = "count")]
    pub keep_releases: Option<u64>,
    /// Hook command lines.
    #[serde(deserialize_with = "commands")]
    pub commands: Commands,
    /// Checks that the new version serves (SPEC 8.7); `None` without a
    /// `verify:` section.
    pub verify: Option<Verify>,
}

/// Hook command lines by phase, each run as `sh -c <line>`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Commands {
    /// Before extraction.
    #[serde(deserialize_with = "scalars")]
    pub pre: Vec<String>,
    /// After sync.
    #[serde(deserialize_with = "scalars")]
    pub post: Vec<String>,
    /// After a successful deploy, with the run log on stdin.
    #[serde(deserialize_with = "scalars")]
    pub success: Vec<String>,
    /// After a failed deploy, with the run log on stdin.
    #[serde(deserialize_with = "scalars")]
    pub failure: Vec<String>,
    /// After an automatic rollback (`sync_strategy: release`, SPEC 8.7).
    #[serde(deserialize_with = "scalars")]
    pub rollback: Vec<String>,
    /// Variables added to every hook's environment, last (they win over
    /// the agent's own), in the order written (a repeated name: the later).
    #[serde(deserialize_with = "env_vars")]
    pub env: Vec<(String, String)>,
    /// Bound on each hook command of this manifest; `Some(ZERO)` is none.
    #[serde(skip)]
    pub timeout: Option<Duration>,
    /// `timeout` as written, parsed by [`Manifest::parse`].
    #[serde(rename = "timeout", deserialize_with = "scalar")]
    timeout_text: String,
}

impl Commands {
    /// The bound on each hook command: the manifest's `commands.timeout`
    /// when it has one, else `default` (`--hook-timeout`); zero is none.
    pub fn timeout_or(&self, default: Option<Duration>) -> Option<Duration> {
        self.timeout.or(default).filter(|d| !d.is_zero())
    }
}

impl Manifest {
    /// Renders the template, parses the YAML, warns about unknown keys and
    /// checks `dest` is set when `src` is.
    pub fn parse(text: &str) -> Result<Self> {
        let rendered = template::render(text, &|k| std::env::var(k).ok())?;
        check_nesting(&rendered)?;
        let mut manifest: Manifest = if rendered.trim().is_empty() {
            Manifest::default()
        } else {
            let yaml = yaml_serde::Deserializer::from_str(&rendered);
            serde_ignored::deserialize(yaml, |path| {
                // `?` marks an Option layer (`commands.?.postt`): not a key.
                let key = path.to_string().replace(".?", "");
                log::warn!("manifest: ignoring unknown key {key}");
            })
            .context("invalid manifest YAML")?
        };
        let timeout = manifest.commands.timeout_text.trim();
        if !timeout.is_empty() {
            // As the duration flags: a Go duration or bare seconds.
            let limit = parse_duration(timeout).map_err(|e| anyhow!("commands.timeout: {e}"))?;
            manifest.commands.timeout = Some(limit);
        }
        if !manifest.src.is_empty() && manifest.dest.is_empty() {
            bail!("dest is required when src is set");
        }
        Ok(manifest)
    }

    /// The mode for the deployed tree's root.
    pub fn dest_mode(&self) -> u32 {
        self.dest_mode.unwrap_or(DEFAULT_DEST_MODE)
    }
}

/// How deep `[`/`{` collections may nest: the YAML deserializer's own
/// recursion limit, past which no field we read can be deserialized anyway.
const MAX_NESTING: usize = 128;

/// Refuses text with more than [`MAX_NESTING`] unclosed `[` or `{` before
/// it reaches the YAML parser, whose scanner takes time quadratic in the
/// nesting depth (500 kB of brackets took over a minute). Brackets
/// inside strings count too: only hundreds of unbalanced ones trip it.
fn check_nesting(text: &str) -> Result<()> {
    let mut depth = 0usize;
    for (at, byte) in text.bytes().enumerate() {
        match byte {
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => continue,
        }
        if depth > MAX_NESTING {
            let line = text[..at].matches('\n').count() + 1;
            bail!("invalid manifest YAML: collections nested deeper than {MAX_NESTING} at line {line}");
        }
    }
    Ok(())
}

/// A YAML scalar as the text the user wrote, as yaml.v2 reads it into a Go
/// string: `checksum: 0123…` stays `0123…`, not a number (a checksum made
/// only of digits is a valid md5 or sha).
pub(crate) struct Text(pub(crate) String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TextVisitor)
    }
}

struct TextVisitor;

impl<'de> serde::de::Visitor<'de> for TextVisitor {
    type Value = Text;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text, E> {
        Ok(Text(v.to_string()))
    }
}

/// Any scalar as its text; `~`, `null` and nothing at all are empty.
fn scalar<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<Text>::deserialize(d)?
        .map(|t| t.0)
        .unwrap_or_default())
}

/// A whole number, written as a number or a quoted one; empty is none.
fn count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let text = scalar(d)?;
    if text.is_empty() {
        return Ok(None);
    }
    text.trim()
        .parse()
        .map(Some)
        .map_err(|_| serde::de::Error::custom(format!("expected a whole number, got {text:?}")))
}

/// A list of scalars, each as its text; one scalar is a list of one.
fn scalars<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct Scalars;
    impl<'de> serde::de::Visitor<'de> for Scalars {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of strings")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element::<Option<Text>>()? {
                out.push(item.map(|t| t.0).unwrap_or_default());
            }
            Ok(out)
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(if v.is_empty() {
                Vec::new()
            } else {
                vec![v.to_string()]
            })
        }

        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(vec![v.to_string()])
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(vec![v.to_string()])
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(vec![v.to_string()])
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(vec![v.to_string()])
        }
    }
    d.deserialize_any(Scalars)
}

/// `commands.env` as yaml.v2 reads a `map[string]string`: names and values
/// are the text written (`PORT: 8080` is `8080`, `~` is empty). A name
/// that cannot be an environment variable (empty, with `=` or NUL) and a
/// value with NUL are errors.
fn env_vars<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    struct EnvVars;
    impl<'de> serde::de::Visitor<'de> for EnvVars {
        type Value = Vec<(String, String)>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of variable names to values")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut vars = Vec::new();
            while let Some((Text(name), value)) = map.next_entry::<Text, Option<Text>>()? {
                if name.is_empty() || name.contains(['=', '\0']) {
                    return Err(A::Error::custom(format!("invalid variable name {name:?}")));
                }
                let value = value.map(|t| t.0).unwrap_or_default();
                if value.contains('\0') {
                    return Err(A::Error::custom(format!(
                        "the value of {name} holds a NUL byte"
                    )));
                }
                vars.push((name, value));
            }
            Ok(vars)
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
    }
    d.deserialize_any(EnvVars)
}

fn commands<'de, D: Deserializer<'de>>(d: D) -> Result<Commands, D::Error> {
    Option::<Commands>::deserialize(d).map(Option::unwrap_or_default)
}

/// `dest_mode` as yaml.v2 reads it: `0751` is octal (YAML 1.1), so are
/// `0o751` and the string `"0751"`; `0x1e9` is hex; `493` is decimal.
fn file_mode<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let value = Value::deserialize(d)?;
    let mode = match &value {
        Value::Null => return Ok(None),
        Value::Number(n) => n.as_u64().ok_or_else(|| anyhow!("{n} is not a file mode")),
        Value::String(s) => parse_mode_text(s),
        _ => Err(anyhow!("expected an octal number")),
    };
    match mode {
        Ok(m) if m <= 0o7777 => Ok(Some(m as u32)),
        Ok(m) => Err(serde::de::Error::custom(format!(
            "dest_mode {m:#o} is larger than 0o7777"
        ))),
        Err(e) => Err(serde::de::Error::custom(format!("dest_mode: {e}"))),
    }
}

fn parse_mode_text(s: &str) -> Result<u64> {
    let t = s
        .trim()
        .strip_prefix('+')
        .unwrap_or(s.trim())
        .replace('_', "");
    let parsed = if let Some(oct) = t.strip_prefix("0o") {
        u64::from_str_radix(oct, 8)
    } else if let Some(hex) = t.strip_prefix("0x") {
        u64::from_str_radix(hex, 16)
    } else if t.len() > 1 && t.starts_with('0') {
        u64::from_str_radix(&t[1..], 8)
    } else {
        t.parse()
    };
    parsed.map_err(|_| anyhow!("{s:?} is not a file mode"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(yaml: &str) -> Result<u32> {
        Ok(Manifest::parse(&format!("dest_mode: {yaml}\n"))?.dest_mode())
    }

    #[test]
    fn dest_mode_is_read_as_yaml_1_1() {
        assert_eq!(mode("0751").unwrap(), 0o751);
        assert_eq!(mode("0o751").unwrap(), 0o751);
        assert_eq!(mode("0x1e9").unwrap(), 0o751);
        assert_eq!(mode("\"0751\"").unwrap(), 0o751);
        assert_eq!(mode("493").unwrap(), 0o755);
        assert_eq!(mode("~").unwrap(), DEFAULT_DEST_MODE);
        assert_eq!(Manifest::parse("src: \"\"").unwrap().dest_mode(), 0o755);
        for bad in ["010000", "-1", "0999", "rwx", "[1]"] {
            assert!(mode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn string_fields_take_any_scalar() {
        let m = Manifest::parse(
            "src: file:///a.tar\ndest: /srv\nchecksum: 123\nexclude_from: ~\ncommands:\n  pre:\n",
        )
        .unwrap();
        assert_eq!(m.checksum, "123");
        assert_eq!(m.exclude_from, "");
        assert!(m.commands.pre.is_empty());
        let m = Manifest::parse("commands:\n").unwrap();
        assert!(m.commands.post.is_empty());
        // All digits, longer than any integer, with leading zeros: the text.
        let md5 = "01234567890123456789012345678901";
        let m = Manifest::parse(&format!(
            "checksum: {md5}\nexcludes: [0123, 1.50]\ncommands:\n  pre: [007, true]\n"
        ))
        .unwrap();
        assert_eq!(m.checksum, md5);
        assert_eq!(m.excludes, ["0123", "1.50"]);
        assert_eq!(m.commands.pre, ["007", "true"]);
        assert_eq!(Manifest::parse("dest: null\n").unwrap().dest, "");
        assert!(Manifest::parse("dest: [a]\n").is_err());
    }

    #[test]
    fn command_with_colon_space_must_be_quoted() {
        assert!(Manifest::parse("commands:\n  pre:\n    - echo a: b\n").is_err());
        let m = Manifest::parse("commands:\n  pre:\n    - 'echo a: b'\n").unwrap();
        assert_eq!(m.commands.pre, ["echo a: b"]);
    }

    /// Found by fuzzing (`make fuzz`, target `manifest`): deeply nested
    /// flow collections took the YAML scanner minutes.
    #[test]
    fn deeply_nested_collections_are_refused_promptly() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let ok = format!(
            "dest: /srv\nunknown: {}\nexcludes: ['[a', 'b]']\n",
            nested(128)
        );
        assert_eq!(Manifest::parse(&ok).unwrap().dest, "/srv");
        let started = std::time::Instant::now();
        for deep in [
            format!("a: 1\nb: {}\n", nested(129)),
            format!("a: 1\nb: {}\n", "{a: ".repeat(1 << 20)),
        ] {
            let err = Manifest::parse(&deep).unwrap_err().to_string();
            assert!(
                err.contains("collections nested deeper than 128 at line 2"),
                "{err}"
            );
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn commands_env_values_are_the_text_yaml_1_1_reads() {
        let m = Manifest::parse(
            "commands:\n  env:\n    PORT: 8080\n    ON: true\n    MODE: 0751\n    HALF: 1.50\n    EMPTY: ''\n    NULL: ~\n    URL: 'a=b: c'\n    PORT: 9090\n",
        )
        .unwrap();
        let got: Vec<(&str, &str)> = m
            .commands
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("PORT", "8080"),
                ("ON", "true"),
                ("MODE", "0751"),
                ("HALF", "1.50"),
                ("EMPTY", ""),
                ("NULL", ""),
                ("URL", "a=b: c"),
                ("PORT", "9090"),
            ]
        );
        assert!(Manifest::parse("commands:\n  env:\n")
            .unwrap()
            .commands
            .env
            .is_empty());
        for bad in ["[A]", "A=B", "{'A=B': x}", "{'': x}", "{A: [x]}"] {
            let err = Manifest::parse(&format!("commands:\n  env: {bad}\n")).unwrap_err();
            assert!(
                format!("{err:#}").contains("commands.env"),
                "{bad}: {err:#}"
            );
        }
    }

    #[test]
    fn commands_timeout_is_a_duration_and_wins_over_the_default() {
        let timeout = |yaml: &str| Manifest::parse(yaml).map(|m| m.commands.timeout);
        let secs = Duration::from_secs;
        assert_eq!(
            timeout("commands:\n  timeout: 1m30s\n").unwrap(),
            Some(secs(90))
        );
        assert_eq!(
            timeout("commands:\n  timeout: 30\n").unwrap(),
            Some(secs(30))
        );
        assert_eq!(timeout("commands:\n  timeout: 0\n").unwrap(), Some(secs(0)));
        assert_eq!(timeout("commands:\n  timeout: ~\n").unwrap(), None);
        let err = timeout("commands:\n  timeout: soon\n").unwrap_err();
        assert!(
            format!("{err:#}").starts_with("commands.timeout: "),
            "{err:#}"
        );

        let commands = |t| Commands {
            timeout: t,
            ..Commands::default()
        };
        let flag = Some(secs(5));
        assert_eq!(commands(None).timeout_or(flag), flag);
        assert_eq!(commands(Some(secs(1))).timeout_or(flag), Some(secs(1)));
        assert_eq!(commands(Some(secs(0))).timeout_or(flag), None);
        assert_eq!(commands(None).timeout_or(None), None);
    }

    #[test]
    fn dest_is_required_with_src() {
        let err = Manifest::parse("src: file:///a.tar\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("dest is required"), "{err}");
    }
}
