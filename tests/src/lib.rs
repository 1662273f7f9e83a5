//! Helpers for tests that run real `traild` processes: free loopback ports, a private
//! data directory, startup and readiness, `kill -9`, and cleanup on drop.

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

/// Path of a workspace binary, building it once if this test run has not.
pub fn binary(name: &str) -> PathBuf {
    let path = binaries_dir().join(name);
    if !path.exists() {
        let package = if name == "traild" {
            "trail-node"
        } else {
            "trail-client"
        };
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", package, "--bin", name])
            .status()
            .expect("run cargo build");
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
        };
        node.spawn().await;
        node
    }

    async fn spawn(&mut self) {
        let child = Command::new(binary("traild"))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--grpc-addr")
            .arg(format!("127.0.0.1:{}", self.grpc_port))
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{}", self.http_port))
            .args(&self.extra_args)
            .env("TRAIL_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start traild");
        self.child = Some(child);
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("traild exited during startup: {status}");
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
