//! stdin → manifest URL: a `consul watch -type event` JSON array, or one line
//! (a Serf user event payload, or a URL typed by hand).

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde::Deserialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// The deploy request read from stdin.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// The manifest URL.
    pub url: String,
    /// Where the event came from and which one it is, when known.
    pub source: Option<Source>,
}

/// Which kind of event a [`Source`] is. Each keeps its own Lamport clock,
/// so the replay guard records them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// A `consul watch -type event` event: it has an ID.
    Consul,
    /// A Serf user event (`serf event`).
    SerfEvent,
    /// A Serf query (`serf query`).
    SerfQuery,
}

impl System {
    /// The name the replay guard records events under: `consul`, `serf`
    /// (the name state files have always used for user events) or
    /// `serf-query`.
    pub fn key(self) -> &'static str {
        match self {
            System::Consul => "consul",
            System::SerfEvent => "serf",
            System::SerfQuery => "serf-query",
        }
    }

    /// The name used in log lines: `consul`, `serf` or `serf query`.
    pub fn label(self) -> &'static str {
        match self {
            System::Consul => "consul",
            System::SerfEvent => "serf",
            System::SerfQuery => "serf query",
        }
    }
}

/// Identity of an event from Consul or Serf, for the replay guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Consul event, Serf user event or Serf query.
    pub system: System,
    /// The event name (`deploy`).
    pub name: String,
    /// Consul's event ID; empty for Serf.
    pub id: String,
    /// The Lamport time, when given.
    pub ltime: Option<u64>,
}

impl Source {
    /// A short label for log lines: the Consul ID, `serf deploy@LTime` or
    /// `serf query deploy@LTime`.
    pub fn label(&self) -> String {
        let system = self.system.label();
        match (&self.id, self.ltime) {
            (id, _) if !id.is_empty() => id.clone(),
            (_, Some(l)) => format!("{system} {}@{l}", self.name),
            _ => format!("{system} {}", self.name),
        }
    }
}

/// What the environment says about how we were invoked.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    /// `CONSUL_INDEX` is set: a `consul watch` handler.
    pub consul: bool,
    /// `SERF_EVENT` (`user`, `query`, …).
    pub serf_event: Option<String>,
    /// `SERF_QUERY_NAME` for a query, else `SERF_USER_EVENT`.
    pub serf_name: Option<String>,
    /// `SERF_QUERY_LTIME` for a query, else `SERF_USER_LTIME`: the two
    /// come from separate clocks.
    pub serf_ltime: Option<u64>,
}

impl Invocation {
    /// Reads the variables `consul watch` and `serf agent` set for handlers.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let serf_event = var("SERF_EVENT");
        let (name, ltime) = if serf_event.as_deref() == Some("query") {
            ("SERF_QUERY_NAME", "SERF_QUERY_LTIME")
        } else {
            ("SERF_USER_EVENT", "SERF_USER_LTIME")
        };
        Invocation {
            consul: std::env::var_os("CONSUL_INDEX").is_some(),
            serf_event,
            serf_name: var(name),
            serf_ltime: var(ltime).and_then(|v| v.parse().ok()),
        }
    }

    /// True for a `serf query` handler, whose stdout is the query response.
    pub fn is_serf_query(&self) -> bool {
        self.serf_event.as_deref() == Some("query")
    }

    /// The kind of Serf event this handler was given: a query or a user event.
    fn serf_system(&self) -> System {
        if self.is_serf_query() {
            System::SerfQuery
        } else {
            System::SerfEvent
        }
    }
}

/// One element of the array `consul watch -type event` writes to its handler.
#[derive(Deserialize)]
struct ConsulEvent {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Payload", default)]
    payload: Option<String>,
    #[serde(rename = "LTime", default)]
    ltime: Option<u64>,
}

/// Reads the manifest URL from `input`: a Consul event list when
/// `CONSUL_INDEX` is set or the input starts with `[`, else one line.
pub async fn read_event<R: AsyncBufRead + Unpin>(mut input: R, how: &Invocation) -> Result<Event> {
    log::info!("Waiting for events from STDIN...");
    let first = input
        .fill_buf()
        .await
        .context("reading stdin")?
        .first()
        .copied();
    let Some(first) = first else {
        bail!("no input on stdin: expected a manifest URL or a Consul event list");
    };
    if how.consul || first == b'[' {
        log::info!("Reading Consul event");
        let mut json = Vec::new();
        input
            .read_to_end(&mut json)
            .await
            .context("reading stdin")?;
        return parse_consul(&json);
    }
    match (how.serf_event.as_deref(), &how.serf_name) {
        (Some("query"), Some(name)) => log::info!("Reading Serf query: {name}"),
        (_, Some(name)) => log::info!("Reading Serf user event: {name}"),
        _ => {}
    }
    let mut line = String::new();
    input.read_line(&mut line).await.context("reading stdin")?;
    let url = line.trim();
    if url.is_empty() {
        bail!("empty manifest URL on stdin");
    }
    check_url(url)?;
    let source = how.serf_name.as_ref().map(|name| Source {
        system: how.serf_system(),
        name: name.clone(),
        id: String::new(),
        ltime: how.serf_ltime,
    });
    Ok(Event {
        url: url.to_string(),
        source,
    })
}

/// Picks the last event of a Consul event list and decodes its payload.
fn parse_consul(json: &[u8]) -> Result<Event> {
    let events: Vec<ConsulEvent> =
        serde_json::from_slice(json).context("invalid Consul event JSON on stdin")?;
    let Some(last) = events.last() else {
        bail!("no Consul events found");
    };
    log::info!("Consul event ID: {}", last.id);
    let Some(payload) = last.payload.as_deref() else {
        bail!("Consul event {} has no Payload", last.id);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .with_context(|| format!("Consul event {}: Payload is not valid base64", last.id))?;
    let url = String::from_utf8(decoded)
        .with_context(|| format!("Consul event {}: Payload is not UTF-8", last.id))?;
    let url = url.trim();
    if url.is_empty() {
        bail!("Consul event {} has an empty Payload", last.id);
    }
    check_url(url)?;
    Ok(Event {
        url: url.to_string(),
        source: Some(Source {
            system: System::Consul,
            name: last.name.clone(),
            id: last.id.clone(),
            ltime: last.ltime,
        }),
    })
}

/// Refuses a URL holding a control character: no valid URL has one, and
/// a CR or LF in a logged URL would forge log lines.
fn check_url(url: &str) -> Result<()> {
    if url.chars().any(char::is_control) {
        bail!("manifest URL holds a control character: {url:?}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(input: &str, consul: bool) -> Result<Event> {
        let how = Invocation {
            consul,
            ..Invocation::default()
        };
        read_event(input.as_bytes(), &how).await
    }

    #[tokio::test]
    async fn plain_line_without_newline_is_trimmed() {
        let ev = read("  file:///tmp/m.yml  ", false).await.unwrap();
        assert_eq!(ev.url, "file:///tmp/m.yml");
        assert_eq!(ev.source, None);
    }

    #[tokio::test]
    async fn only_the_first_line_counts() {
        let ev = read("http://a/m.yml\nhttp://b/m.yml\n", false)
            .await
            .unwrap();
        assert_eq!(ev.url, "http://a/m.yml");
    }

    #[tokio::test]
    async fn consul_list_uses_the_last_event() {
        let json = r#"[{"ID":"a","Name":"deploy","Payload":"Zmlyc3Q=","LTime":1},
                       {"ID":"b","Name":"deploy","Payload":"c2Vjb25k","LTime":2}]"#;
        let ev = read(json, false).await.unwrap();
        assert_eq!(ev.url, "second");
        let source = ev.source.unwrap();
        assert_eq!((source.id.as_str(), source.ltime), ("b", Some(2)));
    }

    #[tokio::test]
    async fn serf_user_events_and_queries_are_told_apart() {
        for (serf_event, system, label) in [
            (Some("user"), System::SerfEvent, "serf deploy@7"),
            (None, System::SerfEvent, "serf deploy@7"),
            (Some("query"), System::SerfQuery, "serf query deploy@7"),
        ] {
            let how = Invocation {
                serf_event: serf_event.map(str::to_string),
                serf_name: Some("deploy".into()),
                serf_ltime: Some(7),
                ..Invocation::default()
            };
            let source = read_event(&b"file:///m.yml\n"[..], &how)
                .await
                .unwrap()
                .source
                .unwrap();
            assert_eq!(source.system, system, "{serf_event:?}");
            assert_eq!(source.label(), label);
        }
    }

    #[tokio::test]
    async fn bad_inputs_are_errors() {
        for (input, consul, want) in [
            ("", false, "no input"),
            ("\n", false, "empty manifest URL"),
            ("[]", false, "no Consul events found"),
            ("[{\"ID\":\"x\",\"Payload\":null}]", false, "has no Payload"),
            ("[{\"ID\":\"x\"}]", false, "has no Payload"),
            (
                "[{\"ID\":\"x\",\"Payload\":\"!!\"}]",
                false,
                "not valid base64",
            ),
            ("[{", false, "invalid Consul event JSON"),
            ("file:///m.yml#\r1999/01/01 x", false, "control character"),
            ("file:///m.yml\u{0}", false, "control character"),
            (
                "[{\"ID\":\"x\",\"Payload\":\"ZmlsZTovLy9tLnltbCMKeA==\"}]",
                false,
                "manifest URL holds a control character: \"file:///m.yml#\\nx\"",
            ),
            ("file:///x", true, "invalid Consul event JSON"),
        ] {
            let err = format!("{:#}", read(input, consul).await.unwrap_err());
            assert!(err.contains(want), "{input:?}: {err}");
        }
    }
}
