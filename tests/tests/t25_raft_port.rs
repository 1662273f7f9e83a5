//! The Raft transport (`trail.raft.v1.RaftTransport`) is not reachable where clients
//! are, and takes messages only from members of the group:
//!
//! - a single node serves no Raft transport: a `Vote` of a high term sent to its client
//!   port is answered UNIMPLEMENTED, and its shard keeps its leader and term;
//! - a cluster node serves it on its peer listener only: the same `Vote` to a cluster
//!   node's client port is UNIMPLEMENTED; on its peer port, a message for another
//!   cluster, from a node that is not a member of the group, or from a member but whose
//!   payload names another node, is refused with a text that names none of the
//!   receiver's ids (not the cluster id), and counted in `/metrics`; the shard keeps its
//!   leader and term on every node.

use std::time::Duration;

use tonic::transport::Channel;
use trail_node::consensus::{LogId, NodeId, Vote};
use trail_proto::raft::raft_transport_client::RaftTransportClient;
use trail_proto::raft::RaftRequest;
use trail_proto::v1;
use trail_tests::cluster::Cluster;
use trail_tests::{http_get, Traild};

/// A term far above any the test's groups reach: a vote of it, if taken, makes a
/// leader step down (and the term jump).
const HOSTILE_TERM: u64 = 1_000;
/// A node id that is no member of any group.
const STRANGER: NodeId = 99;
const CLUSTER_ID: &str = "secret-cluster-7f3a";

/// bincode of openraft's `VoteRequest { vote, last_log_id }` (the transport's payload):
/// a struct is its fields in order, so the tuple encodes alike.
fn vote_payload(candidate: NodeId) -> Vec<u8> {
    let request: (Vote, Option<LogId>) = (Vote::new(HOSTILE_TERM, candidate), None);
    bincode::serialize(&request).expect("encodes")
}

fn vote(cluster_id: &str, group_id: u32, target_node: u64, from_node: u64) -> RaftRequest {
    RaftRequest {
        cluster_id: cluster_id.to_string(),
        group_id,
        target_node,
        from_node,
        payload: vote_payload(from_node),
    }
}

async fn raft_client(host: &str, port: u16) -> RaftTransportClient<Channel> {
    let channel = Channel::from_shared(format!("http://{host}:{port}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect");
    RaftTransportClient::new(channel)
}

/// `(leader, term)` of `shard` as `status` reports it.
fn leadership(status: &v1::StatusResponse, shard: u32) -> (u64, u64) {
    let shard = status
        .shards
        .iter()
        .find(|entry| entry.shard_id == shard)
        .expect("the shard is in the status");
    (shard.leader_node_id, shard.term)
}

#[tokio::test]
async fn a_single_node_serves_no_raft_transport() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let node = Traild::start(dir.path(), &["--shards", "2"]).await;
    let before = leadership(&node.status().await, 1);

    let mut client = raft_client(&node.host, node.grpc_port).await;
    // What the service took before: the empty cluster id of a single node.
    for request in [vote("", 1, 1, STRANGER), vote("", 1, 1, 1)] {
        let status = client.vote(request).await.expect_err("no Raft service");
        assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
    }
    let status = client
        .append_entries(vote("", 1, 1, 1))
        .await
        .expect_err("no Raft service");
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = leadership(&node.status().await, 1);
    assert_eq!(after, before, "the shard kept its leader and term");
    assert!(after.1 < HOSTILE_TERM);
}

#[tokio::test]
async fn a_cluster_takes_raft_only_on_its_peer_port_and_only_from_members() {
    let cluster = Cluster::start_with_args(3, &["--cluster-id", CLUSTER_ID]).await;
    let map = cluster.init(2, 3).await;
    cluster.wait_leaders(2, Duration::from_secs(60)).await;
    // Leader balancing moves a leadership to its preferred replica (an election): wait
    // for that first, so the only thing that could change the term is the test's.
    let preferred = map.placement[0].replicas[0];
    let leaderships = || async {
        cluster
            .statuses()
            .await
            .iter()
            .map(|(node_id, status)| (*node_id, leadership(status, 1)))
            .collect::<Vec<(u64, (u64, u64))>>()
    };
    let started = std::time::Instant::now();
    let before = loop {
        let now = leaderships().await;
        if now.iter().all(|(_, (leader, _))| *leader == preferred) {
            break now;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "shard 1 is not led by its preferred replica: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let leader = preferred;
    // A follower: a vote it took would make it call no election, but one the leader
    // took would make it step down; send to both.
    for target in [leader, if leader == 1 { 2 } else { 1 }] {
        let node = cluster.node(target);

        let mut client_port = raft_client(&node.host, node.grpc_port).await;
        let status = client_port
            .vote(vote(CLUSTER_ID, 1, target, STRANGER))
            .await
            .expect_err("no Raft service on the client port");
        assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
        let status = client_port
            .vote(vote(CLUSTER_ID, 1, target, 3))
            .await
            .expect_err("not even from a member");
        assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");

        let mut peer_port = raft_client(&node.host, node.peer_port).await;
        let refusals = [
            (
                vote("another-cluster", 1, target, STRANGER),
                tonic::Code::FailedPrecondition,
                "unknown cluster",
            ),
            (
                vote(CLUSTER_ID, 1, target, STRANGER),
                tonic::Code::PermissionDenied,
                "not a member",
            ),
            (
                vote(CLUSTER_ID, 0, target, STRANGER),
                tonic::Code::PermissionDenied,
                "not a member",
            ),
            (
                // A member's id on a payload that names someone else.
                RaftRequest {
                    payload: vote_payload(STRANGER),
                    ..vote(CLUSTER_ID, 1, target, 3)
                },
                tonic::Code::PermissionDenied,
                "not from the sending node",
            ),
        ];
        for (request, code, text) in refusals {
            let status = peer_port.vote(request).await.expect_err("refused");
            assert_eq!(status.code(), code, "{status:?}");
            let message = status.message();
            assert!(message.contains(text), "{message}");
            assert!(
                !message.contains(CLUSTER_ID),
                "echoes the cluster id: {message}"
            );
            assert!(
                !message.chars().any(|c| c.is_ascii_digit()),
                "names an id: {message}"
            );
        }
        let metrics = http_get(&node.host, node.http_port, "/metrics").body;
        let refused: u64 = metrics
            .lines()
            .find_map(|line| line.strip_prefix("trail_raft_messages_refused_total "))
            .expect("the refusal counter")
            .trim()
            .parse()
            .expect("a number");
        assert!(refused >= 4, "{refused}");
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = leaderships().await;
    assert_eq!(
        after, before,
        "shard 1 kept its leader and term on every node"
    );
}
