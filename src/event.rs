//! stdin → manifest URL: a `consul watch -type event` JSON array, or one line
//! (a Serf user event payload, or a URL typed by hand).

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde::Deserialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// The deploy request read from stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The manifest URL.
    pub url: String,
    /// The Consul event ID, when the input was a Consul event list.
    pub consul_id: Option<String>,
    /// The Consul event's Lamport time, when the input was a Consul event list.
    pub consul_ltime: Option<u64>,
}

/// One element of the array `consul watch -type event` writes to its handler.
#[derive(Deserialize)]
struct ConsulEvent {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "Payload", default)]
    payload: Option<String>,
    #[serde(rename = "LTime", default)]
    ltime: Option<u64>,
}

/// Reads the manifest URL from `input`. `consul` is true when `CONSUL_INDEX`
/// is set; otherwise a leading `[` selects the Consul format. `serf_user_event`
/// is the value of `SERF_USER_EVENT`, logged when present.
pub async fn read_event<R: AsyncBufRead + Unpin>(
    mut input: R,
    consul: bool,
    serf_user_event: Option<&str>,
) -> Result<Event> {
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
    if consul || first == b'[' {
        log::info!("Reading Consul event");
        let mut json = Vec::new();
        input
            .read_to_end(&mut json)
            .await
            .context("reading stdin")?;
        return parse_consul(&json);
    }
    if let Some(name) = serf_user_event.filter(|n| !n.is_empty()) {
        log::info!("Reading Serf user event: {name}");
    }
    let mut line = String::new();
    input.read_line(&mut line).await.context("reading stdin")?;
    let url = line.trim();
    if url.is_empty() {
        bail!("empty manifest URL on stdin");
    }
    Ok(Event {
        url: url.to_string(),
        consul_id: None,
        consul_ltime: None,
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
    Ok(Event {
        url: url.to_string(),
        consul_id: Some(last.id.clone()),
        consul_ltime: last.ltime,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(input: &str, consul: bool) -> Result<Event> {
        read_event(input.as_bytes(), consul, None).await
    }

    #[tokio::test]
    async fn plain_line_without_newline_is_trimmed() {
        let ev = read("  file:///tmp/m.yml  ", false).await.unwrap();
        assert_eq!(ev.url, "file:///tmp/m.yml");
        assert_eq!(ev.consul_id, None);
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
        assert_eq!(ev.consul_id.as_deref(), Some("b"));
        assert_eq!(ev.consul_ltime, Some(2));
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
            ("file:///x", true, "invalid Consul event JSON"),
        ] {
            let err = format!("{:#}", read(input, consul).await.unwrap_err());
            assert!(err.contains(want), "{input:?}: {err}");
        }
    }
}
