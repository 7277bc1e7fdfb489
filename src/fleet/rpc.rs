//! A client for the Serf agent's RPC protocol: msgpack over TCP, as
//! `serf members` and `serf query` speak it. Each request is a header
//! `{Command, Seq}` and maybe a body; each response a header `{Seq,
//! Error}` and maybe a body. A query's first response only says it
//! started; the records that follow under its Seq are `{Type: "ack" |
//! "response" | "done", From, Payload}`.
//!
//! One connection carries several requests at once: a reader task decodes
//! each frame and hands it to whoever sent that Seq. A query keeps sending
//! records until Serf's own deadline, even after its caller stopped
//! listening (Serf cannot cancel a query); the reader keeps reading and
//! drops them, so later requests on the connection still work.
//!
//! Written here rather than taken from the `serf-rpc` crate: its last
//! release (0.2.0, February 2021) has no `query` (its source says `TODO:
//! query`) and is built on rmp-serde 0.15. Serf's `stop` command only ends
//! `monitor` and `stream` subscriptions, which fleet does not use, so
//! neither is here.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// How long to wait to connect, and for the agent to answer a request
/// (the Go client's default IO timeout).
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A frame larger than this is not from a Serf agent.
const MAX_FRAME: usize = 64 << 20;

/// A connection to a Serf agent, handshaken (and authenticated).
pub struct Client {
    /// The address, for error messages.
    addr: String,
    write: tokio::sync::Mutex<OwnedWriteHalf>,
    shared: Arc<Shared>,
    reader: tokio::task::JoinHandle<()>,
}

/// What the reader task and the requesters share.
#[derive(Default)]
struct Shared {
    seq: AtomicU64,
    pending: Mutex<HashMap<u64, Pending>>,
    /// Why the connection ended, once it has.
    closed: Mutex<Option<String>>,
}

/// A request waiting for its response.
enum Pending {
    /// One response: a header, and a body of this kind unless it is an error.
    Reply(Body, oneshot::Sender<Result<Reply, String>>),
    /// A query: `started` until its first header, then records until "done".
    Query {
        started: Option<oneshot::Sender<Result<(), String>>>,
        records: mpsc::UnboundedSender<Record>,
    },
}

/// The body a successful reply carries.
#[derive(Clone, Copy)]
enum Body {
    None,
    Members,
}

/// A decoded reply.
enum Reply {
    Empty,
    Members(Vec<Member>),
}

/// One member of the cluster, as `serf members` lists it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Member {
    /// The node name.
    #[serde(rename = "Name")]
    pub name: String,
    /// `alive`, `leaving`, `left` or `failed`.
    #[serde(rename = "Status")]
    pub status: String,
    /// The node's tags.
    #[serde(rename = "Tags", default)]
    pub tags: Option<BTreeMap<String, String>>,
}

/// One record of a query's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The node received the query.
    Ack(String),
    /// The node's answer.
    Response {
        /// The node name.
        from: String,
        /// What its handler printed.
        payload: Vec<u8>,
    },
    /// The query's deadline passed: nothing more comes.
    Done,
}

/// What a query asks and of whom.
#[derive(Debug, Clone, Default)]
pub struct QueryParams {
    /// The query name (`deploy`).
    pub name: String,
    /// Its payload (the manifest URL).
    pub payload: Vec<u8>,
    /// Only these nodes answer (all when empty).
    pub nodes: Vec<String>,
    /// Only nodes whose tag matches this regular expression answer.
    pub tags: BTreeMap<String, String>,
    /// Serf's deadline for answers.
    pub timeout: Duration,
}

#[derive(Serialize)]
struct RequestHeader<'a> {
    #[serde(rename = "Command")]
    command: &'a str,
    #[serde(rename = "Seq")]
    seq: u64,
}

#[derive(Deserialize)]
struct ResponseHeader {
    #[serde(rename = "Seq")]
    seq: u64,
    #[serde(rename = "Error", default)]
    error: String,
}

#[derive(Serialize)]
struct Handshake {
    #[serde(rename = "Version")]
    version: i32,
}

#[derive(Serialize)]
struct Auth<'a> {
    #[serde(rename = "AuthKey")]
    auth_key: &'a str,
}

#[derive(Serialize)]
struct MembersFiltered<'a> {
    #[serde(rename = "Tags")]
    tags: &'a BTreeMap<String, String>,
    #[serde(rename = "Status")]
    status: &'a str,
    #[serde(rename = "Name")]
    name: &'a str,
}

#[derive(Deserialize)]
struct MembersResponse {
    #[serde(rename = "Members", default)]
    members: Option<Vec<Member>>,
}

#[derive(Serialize)]
struct QueryRequest<'a> {
    #[serde(rename = "FilterNodes")]
    filter_nodes: &'a [String],
    #[serde(rename = "FilterTags")]
    filter_tags: &'a BTreeMap<String, String>,
    #[serde(rename = "RequestAck")]
    request_ack: bool,
    #[serde(rename = "RelayFactor")]
    relay_factor: u8,
    /// Go's `time.Duration`: nanoseconds.
    #[serde(rename = "Timeout")]
    timeout: u64,
    #[serde(rename = "Name")]
    name: &'a str,
    #[serde(rename = "Payload", with = "serde_bytes")]
    payload: &'a [u8],
}

#[derive(Deserialize)]
struct QueryRecord {
    #[serde(rename = "Type", default)]
    kind: String,
    #[serde(rename = "From", default)]
    from: String,
    #[serde(rename = "Payload", default)]
    payload: Option<serde_bytes::ByteBuf>,
}

impl Client {
    /// Connects to the agent at `addr`, shakes hands and, with `auth` (a
    /// key, and the flag it came from), authenticates. Errors name the
    /// agent as `shown` (its address, and where it came from).
    pub async fn connect(addr: &str, shown: &str, auth: Option<(&str, &str)>) -> Result<Client> {
        let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("timed out connecting"))
            .and_then(|r| r.map_err(Into::into))
            .with_context(|| format!("cannot reach the Serf agent at {shown}"))?;
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let shared = Arc::new(Shared::default());
        let reader = tokio::spawn(read_loop(Frames::new(read), shared.clone()));
        let client = Client {
            addr: shown.to_string(),
            write: tokio::sync::Mutex::new(write),
            shared,
            reader,
        };
        client
            .call("handshake", Some(&Handshake { version: 1 }), Body::None)
            .await
            .with_context(|| format!("Serf agent at {shown}: handshake failed"))?;
        if let Some((key, from)) = auth {
            client
                .call("auth", Some(&Auth { auth_key: key }), Body::None)
                .await
                .with_context(|| format!("Serf agent at {shown} refused the key in {from}"))?;
        }
        Ok(client)
    }

    /// Members whose tags match `tags` (Serf matches each value as a
    /// regular expression over the whole tag), whatever their status.
    pub async fn members(&self, tags: &BTreeMap<String, String>) -> Result<Vec<Member>> {
        let req = MembersFiltered {
            tags,
            status: "",
            name: "",
        };
        match self
            .call("members-filtered", Some(&req), Body::Members)
            .await
            .with_context(|| format!("Serf agent at {}", self.addr))?
        {
            Reply::Members(members) => Ok(members),
            Reply::Empty => Ok(Vec::new()),
        }
    }

    /// Starts a query; its acks, answers and end arrive on `records`.
    /// Fails when the agent refuses it (too large, auth required).
    pub async fn query(
        &self,
        params: &QueryParams,
        records: mpsc::UnboundedSender<Record>,
    ) -> Result<()> {
        let req = QueryRequest {
            filter_nodes: &params.nodes,
            filter_tags: &params.tags,
            request_ack: true,
            relay_factor: 0,
            timeout: u64::try_from(params.timeout.as_nanos()).unwrap_or(u64::MAX),
            name: &params.name,
            payload: &params.payload,
        };
        let (tx, rx) = oneshot::channel();
        let pending = Pending::Query {
            started: Some(tx),
            records,
        };
        self.send("query", Some(&req), pending).await?;
        self.wait(rx)
            .await
            .with_context(|| format!("Serf agent at {}: query {} failed", self.addr, params.name))
    }

    /// Sends a request whose reply is one frame, and waits for it.
    async fn call<T: Serialize>(
        &self,
        command: &str,
        body: Option<&T>,
        kind: Body,
    ) -> Result<Reply> {
        let (tx, rx) = oneshot::channel();
        self.send(command, body, Pending::Reply(kind, tx)).await?;
        self.wait(rx).await
    }

    /// Registers `pending` under a new Seq and writes the request.
    async fn send<T: Serialize>(
        &self,
        command: &str,
        body: Option<&T>,
        pending: Pending,
    ) -> Result<()> {
        let seq = self.shared.seq.fetch_add(1, Ordering::Relaxed);
        let mut frame = rmp_serde::to_vec_named(&RequestHeader { command, seq })?;
        if let Some(body) = body {
            frame.extend(rmp_serde::to_vec_named(body)?);
        }
        lock(&self.shared.pending).insert(seq, pending);
        let mut write = self.write.lock().await;
        let written = tokio::time::timeout(IO_TIMEOUT, write.write_all(&frame)).await;
        if !matches!(written, Ok(Ok(()))) {
            lock(&self.shared.pending).remove(&seq);
            bail!("Serf agent at {}: {}", self.addr, self.why_closed());
        }
        Ok(())
    }

    /// Waits for a reply, bounded by the IO timeout.
    async fn wait<T>(&self, rx: oneshot::Receiver<Result<T, String>>) -> Result<T> {
        match tokio::time::timeout(IO_TIMEOUT, rx).await {
            Ok(Ok(Ok(reply))) => Ok(reply),
            Ok(Ok(Err(error))) => Err(anyhow!(error)),
            Ok(Err(_)) => Err(anyhow!(self.why_closed())),
            Err(_) => Err(anyhow!("no reply within {}s", IO_TIMEOUT.as_secs())),
        }
    }

    fn why_closed(&self) -> String {
        lock(&self.shared.closed)
            .clone()
            .unwrap_or_else(|| "the connection was closed".to_string())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads frames until the connection ends, handing each to its requester.
async fn read_loop<R: AsyncRead + Unpin>(mut frames: Frames<R>, shared: Arc<Shared>) {
    let why = loop {
        if let Err(e) = read_one(&mut frames, &shared).await {
            break format!("{e:#}");
        }
    };
    *lock(&shared.closed) = Some(format!("the agent closed the connection ({why})"));
    // Dropping the senders wakes every waiter with "closed".
    lock(&shared.pending).clear();
}

async fn read_one<R: AsyncRead + Unpin>(frames: &mut Frames<R>, shared: &Shared) -> Result<()> {
    let header: ResponseHeader = frames.next().await?;
    let entry = lock(&shared.pending).remove(&header.seq);
    match entry {
        Some(Pending::Reply(kind, tx)) => {
            let reply = match (header.error.is_empty(), kind) {
                (false, _) => Err(header.error),
                (true, Body::None) => Ok(Reply::Empty),
                (true, Body::Members) => {
                    let body: MembersResponse = frames.next().await?;
                    Ok(Reply::Members(body.members.unwrap_or_default()))
                }
            };
            let _ = tx.send(reply);
        }
        Some(Pending::Query {
            started: Some(tx),
            records,
        }) => {
            if header.error.is_empty() {
                let query = Pending::Query {
                    started: None,
                    records,
                };
                lock(&shared.pending).insert(header.seq, query);
                let _ = tx.send(Ok(()));
            } else {
                let _ = tx.send(Err(header.error));
            }
        }
        Some(Pending::Query {
            started: None,
            records,
        }) => {
            let rec: QueryRecord = frames.next().await?;
            let record = match rec.kind.as_str() {
                "ack" => Record::Ack(rec.from),
                "response" => Record::Response {
                    from: rec.from,
                    payload: rec.payload.map(|p| p.into_vec()).unwrap_or_default(),
                },
                "done" => Record::Done,
                other => bail!("unknown query record type {other:?}"),
            };
            if record != Record::Done {
                let query = Pending::Query {
                    started: None,
                    records: records.clone(),
                };
                lock(&shared.pending).insert(header.seq, query);
            }
            // The caller may have stopped listening: the record is dropped.
            let _ = records.send(record);
        }
        None => bail!("a response for unknown request {}", header.seq),
    }
    Ok(())
}

/// msgpack values read one at a time off a byte stream.
struct Frames<R> {
    read: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> Frames<R> {
    fn new(read: R) -> Self {
        Frames {
            read,
            buf: Vec::new(),
        }
    }

    /// The next value, reading more bytes until a whole one is there.
    async fn next<T: DeserializeOwned>(&mut self) -> Result<T> {
        loop {
            if !self.buf.is_empty() {
                let mut cursor = std::io::Cursor::new(&self.buf[..]);
                match rmp_serde::from_read::<_, T>(&mut cursor) {
                    Ok(value) => {
                        let used = usize::try_from(cursor.position()).unwrap_or(self.buf.len());
                        self.buf.drain(..used);
                        return Ok(value);
                    }
                    Err(e) if incomplete(&e) => {}
                    Err(e) => bail!("not a Serf RPC message: {e}"),
                }
            }
            if self.buf.len() > MAX_FRAME {
                bail!("not a Serf RPC message: over {MAX_FRAME} bytes");
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.read.read(&mut chunk).await.context("reading")?;
            if n == 0 {
                bail!("end of stream");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Whether decoding stopped only because the value is not all there yet.
fn incomplete(e: &rmp_serde::decode::Error) -> bool {
    use rmp_serde::decode::Error;
    match e {
        Error::InvalidMarkerRead(io) | Error::InvalidDataRead(io) => {
            io.kind() == std::io::ErrorKind::UnexpectedEof
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header, then a query record as the agent writes them: maps
    /// whose payload is msgpack bin (go-msgpack with WriteExt).
    fn response_frames() -> Vec<u8> {
        #[derive(Serialize)]
        struct Header {
            #[serde(rename = "Seq")]
            seq: u64,
            #[serde(rename = "Error")]
            error: &'static str,
        }
        #[derive(Serialize)]
        struct Rec {
            #[serde(rename = "Type")]
            kind: &'static str,
            #[serde(rename = "From")]
            from: &'static str,
            #[serde(rename = "Payload", with = "serde_bytes")]
            payload: &'static [u8],
        }
        let mut out = rmp_serde::to_vec_named(&Header { seq: 7, error: "" }).unwrap();
        out.extend(
            rmp_serde::to_vec_named(&Rec {
                kind: "response",
                from: "node1",
                payload: b"ok /srv/app abc 1.00s\n",
            })
            .unwrap(),
        );
        out
    }

    #[tokio::test]
    async fn frames_split_anywhere_decode_the_same() {
        let whole = response_frames();
        for cut in 0..whole.len() {
            let (a, b) = whole.split_at(cut);
            let (mut tx, rx) = tokio::io::duplex(4096);
            let (a, b) = (a.to_vec(), b.to_vec());
            let writer = tokio::spawn(async move {
                tx.write_all(&a).await.unwrap();
                tokio::task::yield_now().await;
                tx.write_all(&b).await.unwrap();
            });
            let mut frames = Frames::new(rx);
            let header: ResponseHeader = frames.next().await.unwrap();
            assert_eq!((header.seq, header.error.as_str()), (7, ""), "cut {cut}");
            let rec: QueryRecord = frames.next().await.unwrap();
            assert_eq!(rec.kind, "response");
            assert_eq!(rec.from, "node1");
            assert_eq!(rec.payload.unwrap().as_slice(), b"ok /srv/app abc 1.00s\n");
            writer.await.unwrap();
        }
    }

    #[tokio::test]
    async fn garbage_is_an_error_not_a_hang() {
        let (mut tx, rx) = tokio::io::duplex(64);
        tx.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            .await
            .unwrap();
        drop(tx);
        let mut frames = Frames::new(rx);
        assert!(frames.next::<ResponseHeader>().await.is_err());
    }

    #[test]
    fn requests_are_maps_with_go_field_names() {
        let tags = BTreeMap::from([("role".to_string(), "^(?:web)$".to_string())]);
        let req = QueryRequest {
            filter_nodes: &["n1".to_string()],
            filter_tags: &tags,
            request_ack: true,
            relay_factor: 0,
            timeout: 1_000_000_000,
            name: "deploy",
            payload: b"http://x/m.yml",
        };
        let bytes = rmp_serde::to_vec_named(&req).unwrap();
        // A map of 7 (fixmap), Go's field names as keys, the payload as bin.
        assert_eq!(bytes[0], 0x87);
        for key in [
            "FilterNodes",
            "FilterTags",
            "RequestAck",
            "RelayFactor",
            "Timeout",
            "Name",
            "Payload",
        ] {
            assert!(
                bytes.windows(key.len()).any(|w| w == key.as_bytes()),
                "{key}"
            );
        }
        let bin = [&[0xc4, 14][..], b"http://x/m.yml"].concat();
        assert!(bytes.ends_with(&bin));
    }
}
