//! Helpers for tests that run real `traild` processes: free loopback ports, a private
//! data directory, startup and readiness, `kill -9`, and cleanup on drop; and
//! [`Cluster`], several nodes started the way `trailctl dev-cluster up` does, each
//! logging to `<data dir>/traild.log`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use trail_proto::v1;
use trail_proto::v1::trail_client::TrailClient;

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

/// A free TCP port on 127.0.0.1 (bound, then released for the node to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// One `traild` process with its own data directory and ports.
pub struct Traild {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub grpc_port: u16,
    pub http_port: u16,
    extra_args: Vec<String>,
    /// Where stdout and stderr go, appended across restarts; `None`: inherited.
    log_file: Option<PathBuf>,
    /// `TRAIL_LOG` of the process.
    log_filter: String,
}

impl Traild {
    /// Starts a node on fresh ports in `data_dir` and waits until it serves.
    pub async fn start(data_dir: &Path, extra_args: &[&str]) -> Traild {
        let mut node = Traild {
            child: None,
            data_dir: data_dir.to_path_buf(),
            grpc_port: free_port(),
            http_port: free_port(),
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
            log_file: None,
            log_filter: "warn".to_string(),
        };
        node.spawn().await;
        node
    }

    /// A node on the given ports whose output is appended to `<data_dir>/traild.log`
    /// (kept across restarts: the evidence when a test fails). Not started yet.
    pub fn logged(
        data_dir: &Path,
        grpc_port: u16,
        http_port: u16,
        extra_args: &[String],
    ) -> Traild {
        Traild {
            child: None,
            data_dir: data_dir.to_path_buf(),
            grpc_port,
            http_port,
            extra_args: extra_args.to_vec(),
            log_file: Some(data_dir.join("traild.log")),
            log_filter: std::env::var("TRAIL_TEST_LOG").unwrap_or_else(|_| "info".to_string()),
        }
    }

    /// Starts the process (not running) and waits until it serves.
    pub async fn spawn(&mut self) {
        assert!(self.child.is_none(), "traild is running already");
        let mut command = Command::new(binary("traild"));
        command
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--grpc-addr")
            .arg(format!("127.0.0.1:{}", self.grpc_port))
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{}", self.http_port))
            .args(&self.extra_args)
            .env("TRAIL_LOG", &self.log_filter)
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
        self.wait_ready().await;
    }

    /// Whether the process was started and not killed since.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    async fn wait_ready(&mut self) {
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
                if client.status(v1::StatusRequest {}).await.is_ok() {
                    return;
                }
            }
            assert!(
                started.elapsed() < STARTUP_TIMEOUT,
                "traild did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    pub async fn client(&self) -> Result<TrailClient<Channel>, tonic::transport::Error> {
        let channel = Channel::from_shared(self.endpoint())
            .expect("valid endpoint")
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30))
            .connect()
            .await?;
        Ok(TrailClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20))
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

/// How long `ClusterInit` is retried while the metadata group elects its leader.
const CLUSTER_INIT_TIMEOUT: Duration = Duration::from_secs(60);

/// `traild` processes forming one cluster on loopback: node `i` (1-based) is
/// `nodes[i - 1]`, with its data directory and `traild.log` under one temporary
/// directory. The nodes share node 1's checkpoint key, as `trailctl dev-cluster up`
/// arranges. When a test panics the directory is kept (and named on stderr) so the
/// logs can be read; `TRAIL_TEST_KEEP=1` keeps it always.
pub struct Cluster {
    /// Dropped (killed) before `dir` is removed.
    pub nodes: Vec<Traild>,
    dir: Option<tempfile::TempDir>,
}

impl Cluster {
    /// Starts `count` nodes with the same `--peers`: node 1 first, then the others
    /// with a copy of its `node.key`. Does not initialize the cluster.
    pub async fn start(count: usize) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("trail-cluster-")
            .tempdir()
            .expect("temporary directory");
        let ports: Vec<(u16, u16)> = (0..count).map(|_| (free_port(), free_port())).collect();
        let peers: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(index, (grpc_port, _))| format!("{}=127.0.0.1:{grpc_port}", index + 1))
            .collect();
        let peers = peers.join(",");
        let mut nodes = Vec::with_capacity(count);
        for (index, (grpc_port, http_port)) in ports.into_iter().enumerate() {
            let node_id = index + 1;
            let data_dir = dir.path().join(format!("node{node_id}"));
            std::fs::create_dir_all(&data_dir).expect("create a node's data directory");
            let args = vec![
                "--node-id".to_string(),
                node_id.to_string(),
                "--peers".to_string(),
                peers.clone(),
            ];
            nodes.push(Traild::logged(&data_dir, grpc_port, http_port, &args));
        }
        let mut cluster = Cluster {
            nodes,
            dir: Some(dir),
        };
        // Node 1 creates the checkpoint key at its first start; every node of a
        // cluster signs with it, so it is copied before the others first start.
        cluster.nodes[0].spawn().await;
        let key = cluster.nodes[0].data_dir.join("node.key");
        assert!(key.exists(), "node 1 serves but has no {}", key.display());
        for node in &cluster.nodes[1..] {
            std::fs::copy(&key, node.data_dir.join("node.key")).expect("copy node.key");
        }
        for node in &mut cluster.nodes[1..] {
            node.spawn().await;
        }
        cluster
    }

    /// Where the nodes' data directories (and logs) are.
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("the directory lives as long as the cluster")
            .path()
    }

    /// Node `node_id` (1-based).
    pub fn node(&self, node_id: u64) -> &Traild {
        &self.nodes[node_id as usize - 1]
    }

    pub fn node_mut(&mut self, node_id: u64) -> &mut Traild {
        &mut self.nodes[node_id as usize - 1]
    }

    /// The ids of the nodes whose process runs.
    pub fn running(&self) -> Vec<u64> {
        (1..=self.nodes.len() as u64)
            .filter(|&node_id| self.node(node_id).is_running())
            .collect()
    }

    /// `ClusterInit` through node 1, retried while the metadata group elects (it
    /// answers UNAVAILABLE meanwhile, or DEADLINE_EXCEEDED while data shards elect).
    pub async fn init(&self, shards: u32, replicas: u32) -> v1::ClusterMap {
        let started = Instant::now();
        let mut last_error = String::new();
        while started.elapsed() < CLUSTER_INIT_TIMEOUT {
            if let Ok(mut client) = self.node(1).client().await {
                let request = v1::ClusterInitRequest { shards, replicas };
                match client.cluster_init(request).await {
                    Ok(response) => {
                        return response
                            .into_inner()
                            .map
                            .expect("ClusterInit answers the map")
                    }
                    Err(status)
                        if matches!(
                            status.code(),
                            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                        ) =>
                    {
                        last_error = format!("{:?}: {}", status.code(), status.message());
                    }
                    Err(status) => panic!("cluster init: {status}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        panic!("cluster init did not succeed within {CLUSTER_INIT_TIMEOUT:?}: {last_error}");
    }

    /// Every running node's `Status`, by node id.
    pub async fn statuses(&self) -> Vec<(u64, v1::StatusResponse)> {
        let mut statuses = Vec::new();
        for node_id in self.running() {
            statuses.push((node_id, self.node(node_id).status().await));
        }
        statuses
    }

    /// Waits until every running node has a replica of every data shard of the map
    /// and knows the shard's leader, which is a running node that says it leads.
    pub async fn wait_leaders(&self, shards: u32, timeout: Duration) {
        let started = Instant::now();
        loop {
            let statuses = self.statuses().await;
            let running = self.running();
            let mut missing = Vec::new();
            for shard in 1..=shards {
                let leaders: Vec<u64> = statuses
                    .iter()
                    .filter(|(_, status)| {
                        status
                            .shards
                            .iter()
                            .any(|s| s.shard_id == shard && s.role == "leader")
                    })
                    .map(|(node_id, _)| *node_id)
                    .collect();
                let agreed = leaders.len() == 1
                    && statuses.iter().all(|(_, status)| {
                        status
                            .shards
                            .iter()
                            .any(|s| s.shard_id == shard && s.leader_node_id == leaders[0])
                    });
                if !agreed || !running.contains(&leaders[0]) {
                    missing.push(shard);
                }
            }
            if missing.is_empty() {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "shards {missing:?} have no leader all running nodes agree on after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill9();
        }
        let keep = std::thread::panicking()
            || std::env::var("TRAIL_TEST_KEEP").is_ok_and(|value| value == "1");
        if keep {
            if let Some(dir) = self.dir.take() {
                let path = dir.keep();
                eprintln!(
                    "cluster data and logs kept in {} (node<i>/traild.log)",
                    path.display()
                );
            }
        }
    }
}
