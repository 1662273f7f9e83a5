//! Helpers for tests that run real `traild` processes: free loopback ports, a private
//! data directory, startup and readiness, `kill -9`, and cleanup on drop; and
//! [`Cluster`] (in [`cluster`]), several nodes started the way `trailctl dev-cluster
//! up` does, each logging to `<data dir>/traild.log`, with what the cluster tests
//! share (recording until acknowledged, comparing replicas).
//!
//! Every node the harness starts has [`TEST_ADMIN_TOKEN`] as its first admin key's
//! token, and every client, `trailctl` and raw request it makes sends that token,
//! unless a test asks for another [`Authorization`] (the tests of refusals).

pub mod cluster;

pub use cluster::{Cluster, NodeClient};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use trail_proto::v1;
use trail_proto::v1::trail_client::TrailClient;

/// The token of the first admin key (role admin, every tenant) of every node the
/// harness starts: given to the node in `TRAIL_ADMIN_TOKEN`, so that whichever node of
/// a cluster creates that key, the tests know its token in advance. A fixed, valid
/// token (`trail_k<26 of [0-9a-z]>_<64 hex>`) of no use outside the tests.
pub const TEST_ADMIN_TOKEN: &str =
    "trail_kjpgavf5h7y0o9hdey7zj6qx7iu_745c417977d4346e750560365d0ac64d668f96cc8975cedaefb56eb76c5bbcbf";

/// The key id a token names (`trail_<key id>_<secret>`): what audit records and
/// `ListApiKeys` show of the key.
pub fn key_id_of(token: &str) -> &str {
    token
        .strip_prefix("trail_")
        .and_then(|rest| rest.split('_').next())
        .expect("a token is trail_<key id>_<secret>")
}

/// The environment variable whose token a node uses for its first admin key.
pub const ADMIN_TOKEN_ENV: &str = trail_node::node::keys::ADMIN_TOKEN_ENV;

/// The environment variable `trailctl` reads its token from.
pub const TOKEN_ENV: &str = "TRAIL_TOKEN";

/// The gRPC metadata key (and REST header, case aside) of the caller's token.
pub const AUTHORIZATION: &str = "authorization";

/// The `authorization` value that carries `token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// What a client sends as `authorization` with every request that does not carry one
/// already: a gRPC interceptor ([`TrailClient::with_interceptor`]).
#[derive(Debug, Clone)]
pub struct Authorization {
    /// `None`: no header at all.
    value: Option<MetadataValue<Ascii>>,
}

impl Authorization {
    /// `Bearer` [`TEST_ADMIN_TOKEN`]: what the harness's clients send.
    pub fn admin() -> Authorization {
        Authorization::bearer(TEST_ADMIN_TOKEN)
    }

    /// `Bearer <token>`.
    pub fn bearer(token: &str) -> Authorization {
        Authorization::header(&bearer(token))
    }

    /// `value` as it is (a malformed header, another scheme).
    pub fn header(value: &str) -> Authorization {
        Authorization {
            value: Some(value.parse().expect("an ASCII authorization value")),
        }
    }

    /// No `authorization` header.
    pub fn none() -> Authorization {
        Authorization { value: None }
    }

    /// The header's value, if any.
    pub fn value(&self) -> Option<&str> {
        self.value
            .as_ref()
            .map(|value| value.to_str().expect("ASCII by construction"))
    }
}

impl tonic::service::Interceptor for Authorization {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.value {
            if !request.metadata().contains_key(AUTHORIZATION) {
                request.metadata_mut().insert(AUTHORIZATION, value.clone());
            }
        }
        Ok(request)
    }
}

/// A gRPC client of a node that sends an [`Authorization`] with every call.
pub type GrpcClient = TrailClient<InterceptedService<Channel, Authorization>>;

/// How long a node may take to start and elect its shards.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The directory holding the workspace's built binaries (`target/debug` or the like).
pub fn binaries_dir() -> PathBuf {
    let test_exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>
    test_exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps")
        .to_path_buf()
}

/// Path of a workspace binary, building it once if this test run has not (in the
/// profile the tests run in: `cargo test --release` runs release binaries).
pub fn binary(name: &str) -> PathBuf {
    let dir = binaries_dir();
    let path = dir.join(name);
    if !path.exists() {
        let package = if name == "traild" {
            "trail-node"
        } else {
            "trail-client"
        };
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "-p", package, "--bin", name]);
        if dir.file_name().is_some_and(|profile| profile == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo build of {name} failed");
    }
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// The SDK's default options with the admin token.
pub fn sdk_options() -> trail_client::ClientOptions {
    let token = trail_client::Token::parse(TEST_ADMIN_TOKEN).expect("a valid test token");
    trail_client::ClientOptions::default().with_token(token)
}

/// `trailctl` with the admin token in `TRAIL_TOKEN` (see [`Traild::trailctl`] for one
/// aimed at a node).
pub fn trailctl() -> Command {
    let mut command = Command::new(binary("trailctl"));
    command.env(TOKEN_ENV, TEST_ADMIN_TOKEN);
    command
}

/// Ports handed out from [`PORTS`]: a node's ports are chosen before it binds them, so
/// a port picked at random below the kernel's ephemeral range (32768-60999 by default)
/// is not taken meanwhile by an outgoing connection of another test. (Port 0 gives one
/// from that range: a parallel test's client once took a node's HTTP port between the
/// pick and the node's bind, and the node failed to start.)
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A free TCP port on 127.0.0.1 (bound, then released for the node to take), not one
/// handed out before by this process.
pub fn free_port() -> u16 {
    use rand::Rng;
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().expect("ports lock");
    let mut rng = rand::thread_rng();
    for _ in 0..1_000 {
        let port = rng.gen_range(PORTS);
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// Where and how a node listens and runs.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// The address the node listens on and is reached at.
    pub host: String,
    pub grpc_port: u16,
    pub http_port: u16,
    /// The peer (Raft) listener's port, used when the node is one of a cluster.
    pub peer_port: u16,
    /// A command `traild` is run through (`["ip", "netns", "exec", NS]`); it must exec
    /// `traild`, so that the child's pid is the node's. Empty: `traild` itself.
    pub command_prefix: Vec<String>,
    /// More `traild` flags (after the ones the harness sets).
    pub args: Vec<String>,
}

impl NodeSpec {
    /// 127.0.0.1 on fresh ports, run directly.
    pub fn loopback() -> NodeSpec {
        NodeSpec {
            host: "127.0.0.1".to_string(),
            grpc_port: free_port(),
            http_port: free_port(),
            peer_port: free_port(),
            command_prefix: Vec::new(),
            args: Vec::new(),
        }
    }
}

/// One `traild` process with its own data directory and ports.
pub struct Traild {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub grpc_port: u16,
    pub http_port: u16,
    /// The peer (Raft) port of a cluster node (the cluster harness passes
    /// `--peer-addr`); unused by a single node.
    pub peer_port: u16,
    /// The address it listens on and is reached at.
    pub host: String,
    command_prefix: Vec<String>,
    extra_args: Vec<String>,
    /// Where stdout and stderr go, appended across restarts; `None`: inherited.
    log_file: Option<PathBuf>,
    /// `TRAIL_LOG` of the process.
    log_filter: String,
}

impl Traild {
    /// Starts a node on fresh ports in `data_dir` and waits until it serves.
    pub async fn start(data_dir: &Path, extra_args: &[&str]) -> Traild {
        let spec = NodeSpec::loopback();
        let mut node = Traild {
            child: None,
            data_dir: data_dir.to_path_buf(),
            grpc_port: spec.grpc_port,
            http_port: spec.http_port,
            peer_port: spec.peer_port,
            host: spec.host,
            command_prefix: spec.command_prefix,
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
            log_file: None,
            log_filter: "warn".to_string(),
        };
        node.spawn().await;
        node
    }

    /// A node as `spec` says whose output is appended to `<data_dir>/traild.log`
    /// (kept across restarts: the evidence when a test fails). Not started yet.
    pub fn logged(data_dir: &Path, spec: &NodeSpec, extra_args: &[String]) -> Traild {
        Traild {
            child: None,
            data_dir: data_dir.to_path_buf(),
            grpc_port: spec.grpc_port,
            http_port: spec.http_port,
            peer_port: spec.peer_port,
            host: spec.host.clone(),
            command_prefix: spec.command_prefix.clone(),
            extra_args: extra_args.to_vec(),
            log_file: Some(data_dir.join("traild.log")),
            log_filter: std::env::var("TRAIL_TEST_LOG").unwrap_or_else(|_| "info".to_string()),
        }
    }

    /// Starts the process (not running) and waits until it serves.
    pub async fn spawn(&mut self) {
        self.launch();
        self.wait_ready().await;
    }

    /// Starts the process (not running) without waiting for it: see
    /// [`Traild::wait_ready`].
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "traild is running already");
        let mut command = self.command(&binary("traild"));
        command
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--grpc-addr")
            .arg(format!("{}:{}", self.host, self.grpc_port))
            .arg("--http-addr")
            .arg(format!("{}:{}", self.host, self.http_port))
            .args(&self.extra_args)
            .env("TRAIL_LOG", &self.log_filter)
            .env(ADMIN_TOKEN_ENV, TEST_ADMIN_TOKEN)
            .stdin(Stdio::null());
        match &self.log_file {
            None => {
                command.stdout(Stdio::null()).stderr(Stdio::inherit());
            }
            Some(path) => {
                std::fs::create_dir_all(&self.data_dir).expect("create the data directory");
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .expect("open traild.log");
                let stderr = log.try_clone().expect("clone the log file handle");
                command.stdout(log).stderr(stderr);
            }
        }
        let child = command.spawn().expect("start traild");
        self.child = Some(child);
    }

    /// `program` run where this node runs: through its command prefix (say, in its
    /// network namespace), or directly.
    pub fn command(&self, program: &Path) -> Command {
        match self.command_prefix.split_first() {
            None => Command::new(program),
            Some((prefix_program, prefix_args)) => {
                let mut command = Command::new(prefix_program);
                command.args(prefix_args).arg(program);
                command
            }
        }
    }

    /// `trailctl --endpoint <this node> ARGS` with the admin token in `TRAIL_TOKEN`,
    /// run where this node runs.
    pub fn trailctl<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut command = self.command(&binary("trailctl"));
        command
            .arg("--endpoint")
            .arg(self.endpoint())
            .args(args)
            .env(TOKEN_ENV, TEST_ADMIN_TOKEN);
        command
    }

    /// Whether the process was started and not killed since.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits until the launched process serves (answers `Status`, or refuses it as
    /// UNAUTHENTICATED: a cluster's node knows no key until its metadata group has a
    /// leader, which takes a majority of the nodes, and that leader created the first
    /// admin key; see [`Traild::wait_admin`]); fails when it exits first or after a
    /// minute. A single node creates its first admin key before it serves.
    pub async fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "traild exited during startup: {status} (log: {})",
                        self.log_file
                            .as_ref()
                            .map_or("stderr".to_string(), |path| path.display().to_string())
                    );
                }
            }
            if let Ok(mut client) = self.client().await {
                match client.status(v1::StatusRequest {}).await {
                    Ok(_) => return,
                    Err(status) if status.code() == tonic::Code::Unauthenticated => return,
                    Err(_) => {}
                }
            }
            assert!(
                started.elapsed() < STARTUP_TIMEOUT,
                "traild at {} did not become ready within {STARTUP_TIMEOUT:?}",
                self.endpoint()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the node takes [`TEST_ADMIN_TOKEN`] (answers `Status` with it):
    /// at once on a single node; on a cluster's once the metadata group's leader has
    /// created the first admin key and this node has read it from its replica.
    pub async fn wait_admin(&self, timeout: Duration) {
        let started = Instant::now();
        loop {
            let answer = self.try_status().await;
            if answer.is_ok() {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "traild at {} did not take the admin token within {timeout:?}: {answer:?}",
                self.endpoint()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.host, self.grpc_port)
    }

    /// A client that calls as the admin ([`TEST_ADMIN_TOKEN`]).
    pub async fn client(&self) -> Result<GrpcClient, tonic::transport::Error> {
        self.client_as(Authorization::admin()).await
    }

    /// A client that sends `authorization` with every call.
    pub async fn client_as(
        &self,
        authorization: Authorization,
    ) -> Result<GrpcClient, tonic::transport::Error> {
        let channel = Channel::from_shared(self.endpoint())
            .expect("valid endpoint")
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30))
            .connect()
            .await?;
        Ok(TrailClient::with_interceptor(channel, authorization)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20))
    }

    /// The SDK's client of this node, calling as the admin.
    pub async fn sdk(&self) -> trail_client::Result<trail_client::Client> {
        trail_client::Client::connect_with(&self.endpoint(), sdk_options()).await
    }

    /// The node's `Status`.
    pub async fn status(&self) -> v1::StatusResponse {
        let mut client = self.client().await.expect("connect");
        client
            .status(v1::StatusRequest {})
            .await
            .expect("status")
            .into_inner()
    }

    /// The node's `Status`, or why it did not answer.
    pub async fn try_status(&self) -> Result<v1::StatusResponse, String> {
        let mut client = self
            .client()
            .await
            .map_err(|error| format!("connect: {error}"))?;
        client
            .status(v1::StatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the node again on the same directory and ports.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }
}

impl Drop for Traild {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `command` (stdin closed) with deadline `timeout`; asserts it exits 0 and
/// returns its stdout.
pub async fn run_checked(command: Command, timeout: Duration) -> String {
    let what = format!("{command:?}");
    let mut command = tokio::process::Command::from(command);
    command.stdin(Stdio::null()).kill_on_drop(true);
    let output = tokio::time::timeout(timeout, command.output())
        .await
        .unwrap_or_else(|_| panic!("{what} ran over {timeout:?}"))
        .unwrap_or_else(|error| panic!("{what}: {error}"));
    assert!(
        output.status.success(),
        "{what}: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The events of the tenants' streams a `Status` counts: those of the data shards,
/// not of shard 0, which holds the node's own streams (the API keys, and on a cluster
/// its map), whose events `Status.events` counts too.
pub fn tenant_events(status: &v1::StatusResponse) -> u64 {
    status
        .shards
        .iter()
        .filter(|shard| shard.shard_id != trail_node::node::cluster::META_SHARD)
        .map(|shard| shard.events)
        .sum()
}

/// The data shards (not shard 0, the node's own) a `Status` lists.
pub fn data_shards(status: &v1::StatusResponse) -> Vec<u32> {
    status
        .shards
        .iter()
        .map(|shard| shard.shard_id)
        .filter(|&shard_id| shard_id != trail_node::node::cluster::META_SHARD)
        .collect()
}

/// `count` events of `tenant` with ids `{prefix}-{tenant}-{index}`.
pub fn events_of(tenant: &str, prefix: &str, count: usize) -> Vec<v1::Event> {
    (0..count)
        .map(|index| event(tenant, &format!("{prefix}-{tenant}-{index}")))
        .collect()
}

/// A valid event for `tenant` with a unique id.
pub fn event(tenant: &str, event_id: &str) -> v1::Event {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    v1::Event {
        event_id: event_id.to_string(),
        tenant_id: tenant.to_string(),
        actor: Some(v1::Actor {
            r#type: v1::ActorType::User as i32,
            id: format!("usr_{}", event_id.len() % 7),
            email: "someone@example.com".into(),
            name: String::new(),
        }),
        action: "auth.login".into(),
        resource: Some(v1::Resource {
            r#type: "session".into(),
            id: format!("ses_{event_id}"),
        }),
        result: v1::Result::Success as i32,
        occurred_at: Some(prost_types::Timestamp {
            seconds: now.as_secs() as i64 - 10,
            nanos: 0,
        }),
        ip_address: "203.0.113.7".into(),
        user_agent: "trail-tests".into(),
        metadata_json: r#"{"test":true}"#.into(),
        ..Default::default()
    }
}

/// Request metadata that makes a node answer `GetEvent`, `Tail`, `GetBlock` and
/// `ListBlocks` from its own replica, as it is: no forwarding, no read barrier.
pub const REPLICA_READ_HEADER: &str = "trail-replica-read";

/// `message` as a read of the asked node's own replica.
pub fn replica_read<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        REPLICA_READ_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    request
}

/// An HTTP/1.1 response, as [`http_get`] read it.
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// `GET path` over HTTP/1.1 as the admin (hand-written: the tests need no HTTP client
/// crate), bounded to 30 s.
pub fn http_get(host: &str, port: u16, path: &str) -> HttpResponse {
    http_get_as(host, port, path, &Authorization::admin())
}

/// [`http_get`] sending `authorization` (or no `Authorization` header).
pub fn http_get_as(
    host: &str,
    port: u16,
    path: &str,
    authorization: &Authorization,
) -> HttpResponse {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect((host, port)).expect("connect to HTTP");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let authorization_line = authorization
        .value()
        .map(|value| format!("Authorization: {value}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{authorization_line}Connection: close\r\n\r\n"
    )
    .expect("send request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read response");
    let text = String::from_utf8(response).expect("UTF-8 response");
    assert!(text.contains("\r\n\r\n"), "headers end");
    let response = parse_http_response(&text);
    assert_ne!(response.status, 0, "status line");
    response
}

/// An HTTP/1.x answer: the status (0 when there is no status line), headers in lower
/// case, and the body (de-chunked).
fn parse_http_response(text: &str) -> HttpResponse {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(name, value)| name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked"));
    let body = if chunked && !body.is_empty() {
        dechunk(body)
    } else {
        body.to_string()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

/// A codec of raw bytes both ways: what a hostile client sends (bytes encoded by hand,
/// or not protobuf at all) and what the node answers, undecoded.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = prost::bytes::Bytes;
    type Decode = prost::bytes::Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = prost::bytes::Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: prost::bytes::Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = prost::bytes::Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<prost::bytes::Bytes>, tonic::Status> {
        use prost::bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// A unary gRPC call to `path` (`/trail.v1.Trail/RecordBatch`) as the admin whose
/// request message is `body` as it is, on a connection of its own, bounded to `timeout`.
pub async fn grpc_raw(
    endpoint: &str,
    path: &str,
    body: prost::bytes::Bytes,
    timeout: Duration,
) -> Result<prost::bytes::Bytes, tonic::Status> {
    grpc_raw_as(endpoint, path, body, timeout, &Authorization::admin()).await
}

/// [`grpc_raw`] sending `authorization` (or no `authorization` metadata).
pub async fn grpc_raw_as(
    endpoint: &str,
    path: &str,
    body: prost::bytes::Bytes,
    timeout: Duration,
    authorization: &Authorization,
) -> Result<prost::bytes::Bytes, tonic::Status> {
    let channel = Channel::from_shared(endpoint.to_string())
        .expect("valid endpoint")
        .connect_timeout(Duration::from_secs(2))
        .timeout(timeout)
        .connect()
        .await
        .map_err(|error| tonic::Status::unavailable(format!("connect: {error}")))?;
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(64 << 20);
    grpc.ready()
        .await
        .map_err(|error| tonic::Status::unavailable(format!("not ready: {error}")))?;
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(path.to_string())
        .expect("a valid gRPC path");
    let mut request = tonic::Request::new(body);
    if let Some(value) = &authorization.value {
        request.metadata_mut().insert(AUTHORIZATION, value.clone());
    }
    grpc.unary(request, path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// What [`http_raw`] read back: the status (0 when the node answered nothing before it
/// closed the connection), headers in lower case, and the body (lossy UTF-8).
pub type RawHttpResponse = HttpResponse;

/// Sends `request` (a whole HTTP/1.x request, any bytes) as the admin: an
/// `Authorization` line goes right after the first CRLF (the end of the request line),
/// if there is one. See [`http_raw_as_is`].
pub fn http_raw(host: &str, port: u16, request: &[u8], timeout: Duration) -> RawHttpResponse {
    let authorization = Authorization::admin();
    let line = format!(
        "Authorization: {}\r\n",
        authorization.value().expect("the admin's header")
    );
    let request_line_end = request
        .windows(2)
        .position(|pair| pair == b"\r\n")
        .map(|position| position + 2);
    match request_line_end {
        None => http_raw_as_is(host, port, request, timeout),
        Some(end) => {
            let with_token = [&request[..end], line.as_bytes(), &request[end..]].concat();
            http_raw_as_is(host, port, &with_token, timeout)
        }
    }
}

/// Sends `request` exactly as given (no `Authorization` added) on a fresh connection
/// and reads the answer until the node closes it or `timeout` passes. Send and read
/// errors (a node that answers and resets before the request is all sent) end the
/// exchange, not the test.
pub fn http_raw_as_is(host: &str, port: u16, request: &[u8], timeout: Duration) -> RawHttpResponse {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect((host, port)).expect("connect to HTTP");
    stream.set_read_timeout(Some(timeout)).expect("timeout");
    stream.set_write_timeout(Some(timeout)).expect("timeout");
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    let mut chunk = [0u8; 64 << 10];
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(read) => response.extend_from_slice(&chunk[..read]),
        }
    }
    parse_http_response(&String::from_utf8_lossy(&response))
}

/// The node process's memory and threads from `/proc/<pid>/status`: (VmHWM bytes,
/// VmRSS bytes, threads).
pub fn process_usage(pid: u32) -> (u64, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (
        field("VmHWM:") * 1024,
        field("VmRSS:") * 1024,
        field("Threads:"),
    )
}
