//! A real HTTP/1.1 server on 127.0.0.1 for tests, with scripted misbehaviour:
//! statuses, failures before success, truncated, stalled and slow bodies,
//! redirects and wrong `Content-Length` headers. It serves single byte
//! ranges (`Range: bytes=A-B`, `bytes=-N`) with an `ETag` and honours
//! `If-Match`, unless a route refuses ranges; it counts the bytes it sends
//! per path.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the server answers for one path.
#[derive(Clone)]
pub struct Route {
    pub body: Vec<u8>,
    pub status: u16,
    /// Answer this many requests with `fail_status` first.
    pub fail_first: usize,
    pub fail_status: u16,
    /// Send only this many bytes of the body on the first N requests, then close.
    pub truncate_first: usize,
    /// Pause between body chunks of 16 KiB.
    pub chunk_delay: Duration,
    /// Answer `302 Found` with this `Location` instead.
    pub location: Option<String>,
    /// Accept the request and never answer.
    pub hang: bool,
    /// Advertise this `Content-Length` instead of the body's length (the
    /// whole body is sent either way, then the connection is closed).
    pub content_length: Option<usize>,
    /// On the first N requests (after `fail_first`), send half the body and
    /// then nothing more, holding the connection open.
    pub stall_first: usize,
    /// Answer `Range` requests with the whole body (`200`), as a server
    /// without range support does.
    pub refuse_ranges: bool,
    /// From this request on (counting from 1), serve this body instead
    /// (with its own ETag): the object replaced on the server.
    pub replaced: Option<(usize, Vec<u8>)>,
}

impl Route {
    pub fn ok(body: impl Into<Vec<u8>>) -> Self {
        Route {
            body: body.into(),
            status: 200,
            fail_first: 0,
            fail_status: 503,
            truncate_first: 0,
            chunk_delay: Duration::ZERO,
            location: None,
            hang: false,
            content_length: None,
            stall_first: 0,
            refuse_ranges: false,
            replaced: None,
        }
    }
}

/// The ETag the server gives a body.
pub fn etag_of(body: &[u8]) -> String {
    format!("\"{}\"", &super::sha256(body)[..16])
}

/// `bytes=A-B`, `bytes=A-` or `bytes=-N` as an inclusive span of a body of
/// `len` bytes.
fn parse_range(value: &str, len: usize) -> Option<(usize, usize)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let (start, end) = if a.is_empty() {
        let n: usize = b.parse().ok()?;
        (len.checked_sub(n.min(len))?, len.checked_sub(1)?)
    } else {
        let start: usize = a.parse().ok()?;
        let end = if b.is_empty() {
            len - 1
        } else {
            b.parse::<usize>().ok()?.min(len - 1)
        };
        (start, end)
    };
    (start <= end && end < len).then_some((start, end))
}

#[derive(Default)]
struct State {
    routes: HashMap<String, Route>,
    hits: HashMap<String, usize>,
    user_agents: Vec<String>,
    /// Bytes written per path: status line, headers and body.
    sent: HashMap<String, u64>,
    /// `Range` headers received per path, in order.
    ranges: HashMap<String, Vec<String>>,
}

/// The connection, counting what is written to it.
struct Counted {
    stream: TcpStream,
    sent: u64,
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.stream.write(buf)?;
        self.sent += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

/// A running server; it stops with the test process.
#[derive(Clone)]
pub struct Server {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

impl Server {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = Server {
            port,
            state: Arc::default(),
        };
        let s = server.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || s.serve(stream));
            }
        });
        server
    }

    pub fn route(&self, path: &str, route: Route) -> String {
        self.state
            .lock()
            .unwrap()
            .routes
            .insert(path.to_string(), route);
        self.url(path)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn hits(&self, path: &str) -> usize {
        *self.state.lock().unwrap().hits.get(path).unwrap_or(&0)
    }

    pub fn user_agents(&self) -> Vec<String> {
        self.state.lock().unwrap().user_agents.clone()
    }

    /// Bytes sent for `path` so far (headers included).
    pub fn sent(&self, path: &str) -> u64 {
        *self.state.lock().unwrap().sent.get(path).unwrap_or(&0)
    }

    /// The `Range` headers of the requests for `path`, in order.
    pub fn ranges(&self, path: &str) -> Vec<String> {
        let st = self.state.lock().unwrap();
        st.ranges.get(path).cloned().unwrap_or_default()
    }

    /// Forgets the counts of `path` (bytes sent, ranges; not hits).
    pub fn reset_counts(&self, path: &str) {
        let mut st = self.state.lock().unwrap();
        st.sent.remove(path);
        st.ranges.remove(path);
    }

    fn serve(&self, stream: TcpStream) {
        let path = std::cell::RefCell::new(String::new());
        let mut out = Counted {
            stream: stream.try_clone().unwrap(),
            sent: 0,
        };
        self.answer(stream, &mut out, &path);
        let mut st = self.state.lock().unwrap();
        *st.sent.entry(path.into_inner()).or_default() += out.sent;
    }

    fn answer(&self, stream: TcpStream, out: &mut Counted, path_seen: &std::cell::RefCell<String>) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).is_err() {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_string();
        path_seen.borrow_mut().clone_from(&path);
        let (mut range, mut if_match) = (None, None);
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                match name.trim().to_ascii_lowercase().as_str() {
                    "range" => range = Some(value.trim().to_string()),
                    "if-match" => if_match = Some(value.trim().to_string()),
                    _ => {}
                }
            }
            if let Some(ua) = header
                .strip_prefix("user-agent:")
                .or(header.strip_prefix("User-Agent:"))
            {
                self.state
                    .lock()
                    .unwrap()
                    .user_agents
                    .push(ua.trim().to_string());
            }
        }
        let (route, hit) = {
            let mut st = self.state.lock().unwrap();
            let hit = {
                let h = st.hits.entry(path.clone()).or_default();
                *h += 1;
                *h
            };
            if let Some(r) = &range {
                st.ranges.entry(path.clone()).or_default().push(r.clone());
            }
            (st.routes.get(&path).cloned(), hit)
        };
        drop(stream);
        let Some(mut route) = route else {
            let _ = write!(
                out,
                "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found"
            );
            return;
        };
        if route.hang {
            std::thread::sleep(Duration::from_secs(3600));
            return;
        }
        if let Some(location) = &route.location {
            let _ = write!(out, "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            return;
        }
        if hit <= route.fail_first {
            let _ = write!(
                out,
                "HTTP/1.1 {} Oops\r\nContent-Length: 4\r\nConnection: close\r\n\r\noops",
                route.fail_status
            );
            return;
        }
        if let Some((from, body)) = route.replaced.take() {
            if hit >= from {
                route.body = body;
            }
        }
        let etag = etag_of(&route.body);
        if if_match.as_ref().is_some_and(|m| *m != etag && m != "*") {
            let _ = write!(
                out,
                "HTTP/1.1 412 Precondition Failed\r\nETag: {etag}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            return;
        }
        let span = range
            .filter(|_| !route.refuse_ranges && route.status == 200)
            .map(|r| parse_range(&r, route.body.len()));
        if let Some(span) = span {
            let Some((start, end)) = span else {
                let _ = write!(
                    out,
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    route.body.len()
                );
                return;
            };
            let _ = write!(
                out,
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{end}/{}\r\nETag: {etag}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                route.body.len(),
                end - start + 1
            );
            for chunk in route.body[start..=end].chunks(16 * 1024) {
                if out.write_all(chunk).is_err() {
                    return;
                }
                if !route.chunk_delay.is_zero() {
                    std::thread::sleep(route.chunk_delay);
                }
            }
            let _ = out.flush();
            return;
        }
        let _ = write!(
            out,
            "HTTP/1.1 {} OK\r\nETag: {etag}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            route.status,
            route.content_length.unwrap_or(route.body.len())
        );
        let stall = hit <= route.fail_first + route.stall_first;
        let body = if stall || hit <= route.fail_first + route.truncate_first {
            &route.body[..route.body.len() / 2]
        } else {
            &route.body[..]
        };
        for chunk in body.chunks(16 * 1024) {
            if out.write_all(chunk).is_err() {
                return;
            }
            if !route.chunk_delay.is_zero() {
                std::thread::sleep(route.chunk_delay);
            }
        }
        let _ = out.flush();
        if stall {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}
