//! A real HTTP/1.1 server on 127.0.0.1 for tests, with scripted misbehaviour:
//! statuses, failures before success, truncated, stalled and slow bodies,
//! redirects and wrong `Content-Length` headers.

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
        }
    }
}

#[derive(Default)]
struct State {
    routes: HashMap<String, Route>,
    hits: HashMap<String, usize>,
    user_agents: Vec<String>,
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

    fn serve(&self, stream: TcpStream) {
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
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                break;
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
            (st.routes.get(&path).cloned(), hit)
        };
        let mut out = stream;
        let Some(route) = route else {
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
        let _ = write!(
            out,
            "HTTP/1.1 {} OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
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
