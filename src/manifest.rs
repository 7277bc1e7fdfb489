//! The deploy manifest: template rendering, YAML as Go's yaml.v2 (YAML 1.1)
//! reads it, octal `dest_mode`, and warnings for keys we do not know.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Deserializer};
use yaml_serde::Value;

use crate::template;

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
    /// `rsync` (default, also when empty) or `mv`.
    #[serde(deserialize_with = "scalar")]
    pub sync_strategy: String,
    /// rsync `--exclude` patterns, in order.
    #[serde(deserialize_with = "scalars")]
    pub excludes: Vec<String>,
    /// rsync `--exclude-from` file, a path inside the archive.
    #[serde(deserialize_with = "scalar")]
    pub exclude_from: String,
    /// Hook command lines.
    #[serde(deserialize_with = "commands")]
    pub commands: Commands,
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
}

impl Manifest {
    /// Renders the template, parses the YAML, warns about unknown keys and
    /// checks `dest` is set when `src` is.
    pub fn parse(text: &str) -> Result<Self> {
        let rendered = template::render(text, &|k| std::env::var(k).ok())?;
        let manifest: Manifest = if rendered.trim().is_empty() {
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

/// Any YAML scalar as its text (`checksum: 123` is "123"; `~` is empty).
fn scalar_text(v: Value) -> Result<String, String> {
    match v {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Tagged(t) => scalar_text(t.value),
        Value::Sequence(_) | Value::Mapping(_) => {
            Err("expected a string, got a list or map".into())
        }
    }
}

fn scalar<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    scalar_text(Value::deserialize(d)?).map_err(serde::de::Error::custom)
}

fn scalars<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(Vec::new()),
        Value::Sequence(items) => items
            .into_iter()
            .map(scalar_text)
            .collect::<Result<_, _>>()
            .map_err(serde::de::Error::custom),
        v => Ok(vec![scalar_text(v).map_err(serde::de::Error::custom)?]),
    }
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
    }

    #[test]
    fn command_with_colon_space_must_be_quoted() {
        assert!(Manifest::parse("commands:\n  pre:\n    - echo a: b\n").is_err());
        let m = Manifest::parse("commands:\n  pre:\n    - 'echo a: b'\n").unwrap();
        assert_eq!(m.commands.pre, ["echo a: b"]);
    }

    #[test]
    fn dest_is_required_with_src() {
        let err = Manifest::parse("src: file:///a.tar\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("dest is required"), "{err}");
    }
}
