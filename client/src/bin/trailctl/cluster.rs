//! `trailctl cluster init` and `trailctl dev-cluster up|down`.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use trail_client::Token;
use trail_proto::v1::trail_client::TrailClient;
use trail_proto::v1::{ClusterInitRequest, ClusterMap, StatusRequest};

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Create the data shards of a cluster whose nodes run with --peers.
    ///
    /// Records the cluster map (shards, and which nodes hold each shard's replicas)
    /// in the metadata group, shard 0, a tamper-evident log like any tenant's; every
    /// node then opens its replicas. Replicas and preferred leaders are spread evenly
    /// over the nodes. Returns once this node's shards have leaders. Running it again
    /// with the same sizes prints the existing map.
    ///
    /// Examples:
    ///   trailctl --endpoint http://10.0.0.7:7400 cluster init --shards 16 --replicas 3
    #[command(verbatim_doc_comment)]
    Init(InitArgs),
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Data shards (tenants are placed on them by a hash of their id; fixed for now).
    #[arg(long, default_value_t = 16)]
    pub shards: u32,
    /// Replicas per shard: 3 survives one node down, 5 survives two.
    #[arg(long, default_value_t = 3)]
    pub replicas: u32,
}

pub async fn init(
    endpoint: &str,
    args: &InitArgs,
    token: Option<&Token>,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let map = init_map(endpoint, args, token, timeout).await?;
    let (map, created) = map;
    println!(
        "cluster {} {}: {} data shards x {} replicas",
        map.cluster_id,
        if created {
            "initialized"
        } else {
            "was initialized already"
        },
        map.shards,
        map.replicas
    );
    for node in &map.nodes {
        let shards: Vec<String> = map
            .placement
            .iter()
            .filter(|shard| shard.replicas.contains(&node.node_id))
            .map(|shard| shard.shard_id.to_string())
            .collect();
        let preferred = map
            .placement
            .iter()
            .filter(|shard| shard.replicas.first() == Some(&node.node_id))
            .count();
        let peer = if node.peer_addr.is_empty() {
            String::new()
        } else {
            format!(", peer {}", node.peer_addr)
        };
        println!(
            "  node {} ({}{peer}): {} replicas, preferred leader of {preferred}: shards {}",
            node.node_id,
            node.grpc_addr,
            shards.len(),
            shards.join(",")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends `ClusterInit` to the first endpoint that takes it, retrying while the
/// metadata group elects its leader.
async fn init_map(
    endpoints: &str,
    args: &InitArgs,
    token: Option<&Token>,
    timeout: Duration,
) -> anyhow::Result<(ClusterMap, bool)> {
    let deadline = Instant::now() + timeout;
    let mut last_error = String::new();
    // A node that timed out waiting for leaders had recorded the map: the retry that
    // finds it is still the first initialization.
    let mut recorded_earlier = false;
    loop {
        for endpoint in endpoints
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let uri = if endpoint.contains("://") {
                endpoint.to_string()
            } else {
                format!("http://{endpoint}")
            };
            let mut client = match TrailClient::connect(uri.clone()).await {
                Ok(client) => client,
                Err(error) => {
                    last_error = format!("{uri}: {error}");
                    continue;
                }
            };
            let mut request = tonic::Request::new(ClusterInitRequest {
                shards: args.shards,
                replicas: args.replicas,
            });
            if let Some(token) = token {
                token.authorize(&mut request);
            }
            match client.cluster_init(request).await {
                Ok(response) => {
                    let response = response.into_inner();
                    let map = response
                        .map
                        .context("the node answered ClusterInit without a map")?;
                    return Ok((map, response.created || recorded_earlier));
                }
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                    ) =>
                {
                    recorded_earlier |= status.code() == tonic::Code::DeadlineExceeded;
                    last_error = format!("{uri}: {}", status.message());
                }
                Err(status) => {
                    return Err(anyhow::Error::new(trail_client::Error::from(status)))
                        .with_context(|| uri.clone())
                }
            }
        }
        if Instant::now() >= deadline {
            anyhow::bail!("cluster init did not succeed within {timeout:?}: {last_error}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum DevClusterCommand {
    /// Start a local cluster: N traild processes on loopback ports, one data
    /// directory each under --dir, then `cluster init`.
    ///
    /// Node i serves gRPC on --base-port + 2(i-1), HTTP on the port after it and Raft
    /// to the other nodes (its peer listener) 50 above its gRPC port; its data and log
    /// (traild.log) are in DIR/node<i>. The nodes share one checkpoint
    /// key (node 1's), as every cluster must. The first admin key's token is written to
    /// DIR/admin.token before the nodes start (they create the key with it); pass it
    /// with --token-file. Running `up` again restarts stopped nodes on the same data.
    /// traild is taken from beside trailctl, else from PATH.
    ///
    /// Examples:
    ///   trailctl dev-cluster up --nodes 3
    ///   trailctl dev-cluster up --nodes 3 -- --index-commit-ms 2000
    ///   trailctl --endpoint http://127.0.0.1:7410,http://127.0.0.1:7412 \
    ///       --token-file trail-dev-cluster/admin.token status
    ///   trailctl dev-cluster down
    #[command(verbatim_doc_comment)]
    Up(UpArgs),
    /// Stop the local cluster's nodes (SIGTERM; they flush first). Data is kept.
    Down(DownArgs),
}

/// The environment variable that gives a node the token of its first admin key
/// (node/src/node/keys.rs).
const ADMIN_TOKEN_ENV: &str = "TRAIL_ADMIN_TOKEN";
/// The dev cluster's admin token, in its directory.
const ADMIN_TOKEN_FILE: &str = "admin.token";

/// A dev-cluster node's peer (Raft) port is this far above its gRPC port: clear of
/// the gRPC and HTTP ports of up to 9 nodes (2 ports each).
const PEER_PORT_ABOVE_GRPC: u32 = 50;

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    #[arg(long, default_value = "trail-dev-cluster")]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 7410)]
    pub base_port: u16,
    #[arg(long, default_value_t = 16)]
    pub shards: u32,
    #[arg(long, default_value_t = 3)]
    pub replicas: u32,
    /// More traild flags for every node, after `--`, e.g. `-- --index-commit-ms 2000`.
    #[arg(last = true)]
    pub traild_args: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct DownArgs {
    #[arg(long, default_value = "trail-dev-cluster")]
    pub dir: PathBuf,
}

fn traild_binary() -> PathBuf {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("traild")));
    match beside {
        Some(path) if path.exists() => path,
        _ => PathBuf::from("traild"),
    }
}

fn pid_file(dir: &Path, node: u32) -> PathBuf {
    dir.join(format!("node{node}")).join("traild.pid")
}

fn running(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn read_pid(dir: &Path, node: u32) -> Option<u32> {
    std::fs::read_to_string(pid_file(dir, node))
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub async fn up(args: &UpArgs) -> anyhow::Result<ExitCode> {
    if !(1..=9).contains(&args.nodes) {
        anyhow::bail!("nodes: {} is out of range; use 1 to 9", args.nodes);
    }
    if u32::from(args.base_port) + 2 * (args.nodes - 1) + PEER_PORT_ABOVE_GRPC > 65_535 {
        anyhow::bail!(
            "base_port: {} leaves no room for {} nodes' ports",
            args.base_port,
            args.nodes
        );
    }
    let grpc_port = |node: u32| args.base_port + 2 * (node as u16 - 1);
    let peer_port = |node: u32| grpc_port(node) + PEER_PORT_ABOVE_GRPC as u16;
    let peers: Vec<String> = (1..=args.nodes)
        .map(|node| {
            format!(
                "{node}=127.0.0.1:{}/127.0.0.1:{}",
                grpc_port(node),
                peer_port(node)
            )
        })
        .collect();
    let peers = peers.join(",");
    let traild = traild_binary();
    let admin_token = dev_cluster_token(&args.dir)?;
    for node in 1..=args.nodes {
        let data_dir = args.dir.join(format!("node{node}"));
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        if read_pid(&args.dir, node).is_some_and(running) {
            println!("node {node}: running already");
            continue;
        }
        if node > 1 {
            // Every node of a cluster signs checkpoints with the same key.
            let key = args.dir.join("node1").join("node.key");
            let wait_until = Instant::now() + Duration::from_secs(20);
            while !key.exists() {
                if Instant::now() >= wait_until {
                    anyhow::bail!("node 1 did not create {} in time", key.display());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let own = data_dir.join("node.key");
            if !own.exists() {
                std::fs::copy(&key, &own).with_context(|| format!("copying {}", key.display()))?;
            }
        }
        let log = std::fs::File::create(data_dir.join("traild.log"))?;
        let mut command = std::process::Command::new(&traild);
        command
            .arg("--node-id")
            .arg(node.to_string())
            .arg("--peers")
            .arg(&peers)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--grpc-addr")
            .arg(format!("127.0.0.1:{}", grpc_port(node)))
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{}", grpc_port(node) + 1))
            .arg("--peer-addr")
            .arg(format!("127.0.0.1:{}", peer_port(node)))
            .args(&args.traild_args)
            // The first admin key is the one in DIR/admin.token, whichever node
            // leads the metadata group when it is created.
            .env(ADMIN_TOKEN_ENV, admin_token.reveal())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Its own process group: a Ctrl-C at this terminal does not stop the cluster.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", traild.display()))?;
        // A node that cannot start (port in use, bad data dir) exits at once.
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Some(exit) = child.try_wait()? {
            let log = std::fs::read_to_string(data_dir.join("traild.log")).unwrap_or_default();
            let last = log.lines().last().unwrap_or("").to_string();
            anyhow::bail!(
                "node {node} exited at start ({exit}): {last}\n(log: {})",
                data_dir.join("traild.log").display()
            );
        }
        std::fs::write(pid_file(&args.dir, node), child.id().to_string())?;
        println!(
            "node {node}: pid {}, grpc 127.0.0.1:{}, http 127.0.0.1:{}, peer 127.0.0.1:{}, data {}",
            child.id(),
            grpc_port(node),
            grpc_port(node) + 1,
            peer_port(node),
            data_dir.display()
        );
    }
    let endpoints: Vec<String> = (1..=args.nodes)
        .map(|node| format!("http://127.0.0.1:{}", grpc_port(node)))
        .collect();
    for endpoint in &endpoints {
        wait_serving(endpoint, &admin_token, Duration::from_secs(30)).await?;
    }
    let sizes = InitArgs {
        shards: args.shards,
        replicas: args.replicas.min(args.nodes),
    };
    init(
        &endpoints.join(","),
        &sizes,
        Some(&admin_token),
        Duration::from_secs(180),
    )
    .await?;
    let token_file = args.dir.join(ADMIN_TOKEN_FILE);
    println!("\nendpoints: {}", endpoints.join(","));
    println!("token:     {} (admin)", token_file.display());
    println!(
        "try:       trailctl --endpoint {} --token-file {} status",
        endpoints.join(","),
        token_file.display()
    );
    println!(
        "stop:      trailctl dev-cluster down --dir {}",
        args.dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The dev cluster's admin token, in DIR/admin.token (mode 0600): the one kept there,
/// else the one a node of an older cluster wrote to its own data directory, else a new
/// one, written there before any node starts.
fn dev_cluster_token(dir: &Path) -> anyhow::Result<Token> {
    let path = dir.join(ADMIN_TOKEN_FILE);
    if path.exists() {
        return Ok(Token::from_file(&path)?);
    }
    for node in 1..=9 {
        let written = dir.join(format!("node{node}")).join(ADMIN_TOKEN_FILE);
        if written.exists() {
            let token = Token::from_file(&written)?;
            write_token_file(&path, &token)?;
            return Ok(token);
        }
    }
    let token = Token::generate();
    write_token_file(&path, &token)?;
    Ok(token)
}

/// Writes a token file readable by its owner only.
fn write_token_file(path: &Path, token: &Token) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{}", token.reveal()).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Waits until the node answers `Status` with the admin token: it serves, and its
/// directory holds the first admin key (created once the metadata group elects).
async fn wait_serving(endpoint: &str, token: &Token, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(mut client) = TrailClient::connect(endpoint.to_string()).await {
            let mut request = tonic::Request::new(StatusRequest {});
            token.authorize(&mut request);
            if client.status(request).await.is_ok() {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            anyhow::bail!("{endpoint} did not answer within {timeout:?}; see its traild.log");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn down(args: &DownArgs) -> anyhow::Result<ExitCode> {
    let mut stopped = 0;
    for node in 1..=9 {
        let Some(pid) = read_pid(&args.dir, node) else {
            continue;
        };
        let _ = std::fs::remove_file(pid_file(&args.dir, node));
        if !running(pid) {
            continue;
        }
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while running(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        println!("node {node}: stopped (pid {pid})");
        stopped += 1;
    }
    if stopped == 0 {
        println!("no running nodes under {}", args.dir.display());
    }
    Ok(ExitCode::SUCCESS)
}
