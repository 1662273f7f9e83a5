//! `trailctl proof`, `checkpoint` and `verify` against a fake node that serves a ledger
//! built here from docs/PROOFS.md with the client's public encoders.
//!
//! Steps: build a signed ledger of a few blocks and serve it over gRPC; check that the
//! commands verify it (status shows the key, a proof verifies online and offline, a kept
//! checkpoint is consistent with a grown tree, the full audit passes); then damage the
//! served ledger (an altered event, a rolled-back store, a rewritten history, a wrong
//! key) and check each command fails with exit code 1 and names the fault; an
//! unreachable node gives exit code 2.
//!
//! The fake node is not the real server (which `tests/` exercises end to end); it pins
//! the client's side of the protocol.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::process::Command;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use futures::Stream;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};
use trail_client::block::{block_hash, BlockHeader};
use trail_client::checkpoint::format_time;
use trail_client::event::{event_leaf_hash, ActorType, CanonicalEvent, EventResult};
use trail_client::note::VerifierKey;
use trail_client::verify::merkle_root;
use trail_proto::v1::trail_server::{Trail, TrailServer};
use trail_proto::v1::{
    Block, Checkpoint, GetBlockRequest, GetBlockResponse, GetCheckpointRequest,
    GetCheckpointResponse, GetConsistencyProofRequest, GetConsistencyProofResponse,
    GetEventRequest, GetEventResponse, GetProofRequest, GetProofResponse, ListBlocksRequest,
    ListStreamsRequest, ListStreamsResponse, RecordBatchRequest, RecordBatchResponse,
    RecordRequest, RecordResponse, StatusRequest, StatusResponse, TailRequest, TailResponse,
};

const TENANT: &str = "ten_a";
const STREAM: &str = "ten_a/0";

/// A stream's blocks and the key that signs its checkpoints.
#[derive(Clone)]
struct Ledger {
    headers: Vec<Vec<u8>>,
    events: Vec<Vec<Vec<u8>>>,
    signing: SigningKey,
    key_name: String,
}

fn event(seq: u64) -> CanonicalEvent {
    CanonicalEvent {
        stream: STREAM.to_string(),
        seq,
        ingested_at: 1_735_689_603_000_000_000 + seq as i64,
        tenant_id: TENANT.to_string(),
        event_id: format!("evt_{seq}"),
        occurred_at: 1_735_689_602_000_000_000,
        actor_type: ActorType::User,
        actor_id: "usr_1".to_string(),
        actor_email: "ada@example.com".to_string(),
        actor_name: "Ada".to_string(),
        action: "auth.login".to_string(),
        resource_type: "session".to_string(),
        resource_id: "ses_1".to_string(),
        result: EventResult::Success,
        request_id: String::new(),
        session_id: String::new(),
        ip_address: String::new(),
        user_agent: String::new(),
        metadata: "{}".to_string(),
        subject_id: "usr_1".to_string(),
    }
}

fn split(count: usize) -> usize {
    let mut split = 1;
    while split * 2 < count {
        split *= 2;
    }
    split
}

/// RFC 9162 PATH(m, D[n]).
fn path(leaves: &[[u8; 32]], index: usize) -> Vec<Vec<u8>> {
    if leaves.len() <= 1 {
        return Vec::new();
    }
    let middle = split(leaves.len());
    let (mut proof, other) = if index < middle {
        (
            path(&leaves[..middle], index),
            merkle_root(&leaves[middle..]),
        )
    } else {
        (
            path(&leaves[middle..], index - middle),
            merkle_root(&leaves[..middle]),
        )
    };
    proof.push(other.to_vec());
    proof
}

/// RFC 9162 SUBPROOF(m, D[n], b).
fn subproof(old_size: usize, leaves: &[[u8; 32]], whole: bool) -> Vec<Vec<u8>> {
    if old_size == leaves.len() {
        return if whole {
            Vec::new()
        } else {
            vec![merkle_root(leaves).to_vec()]
        };
    }
    let middle = split(leaves.len());
    let (mut proof, other) = if old_size <= middle {
        (
            subproof(old_size, &leaves[..middle], whole),
            merkle_root(&leaves[middle..]),
        )
    } else {
        (
            subproof(old_size - middle, &leaves[middle..], false),
            merkle_root(&leaves[..middle]),
        )
    };
    proof.push(other.to_vec());
    proof
}

impl Ledger {
    fn new(block_sizes: &[u32]) -> Ledger {
        let mut ledger = Ledger {
            headers: Vec::new(),
            events: Vec::new(),
            signing: SigningKey::from_bytes(&[42; 32]),
            key_name: "trail.test".to_string(),
        };
        for &count in block_sizes {
            ledger.append_block(count);
        }
        ledger
    }

    fn append_block(&mut self, count: u32) {
        let first_seq = self
            .headers
            .last()
            .map(|bytes| BlockHeader::decode(bytes).unwrap().last_seq() + 1)
            .unwrap_or(1);
        let events: Vec<Vec<u8>> = (first_seq..first_seq + u64::from(count))
            .map(|seq| event(seq).encode())
            .collect();
        self.seal(first_seq, events);
    }

    /// Seals `events` as the next block, whatever they hold.
    fn seal(&mut self, first_seq: u64, events: Vec<Vec<u8>>) {
        let leaves: Vec<[u8; 32]> = events.iter().map(|bytes| event_leaf_hash(bytes)).collect();
        let header = BlockHeader {
            stream: STREAM.to_string(),
            block_index: self.headers.len() as u64,
            prev_block_hash: self
                .headers
                .last()
                .map(|bytes| block_hash(bytes))
                .unwrap_or([0; 32]),
            merkle_root: merkle_root(&leaves),
            first_seq,
            count: events.len() as u32,
            sealed_at: 1_735_689_700_000_000_000 + self.headers.len() as i64,
        };
        self.headers.push(header.encode());
        self.events.push(events);
    }

    fn key(&self) -> VerifierKey {
        VerifierKey::from_public_key(&self.key_name, self.signing.verifying_key().as_bytes())
            .unwrap()
    }

    fn block_hashes(&self, tree_size: usize) -> Vec<[u8; 32]> {
        self.headers[..tree_size]
            .iter()
            .map(|bytes| block_hash(bytes))
            .collect()
    }

    fn checkpoint(&self, tree_size: usize) -> Checkpoint {
        let (last_seq, time_ns) = match self.headers[..tree_size].last() {
            Some(bytes) => {
                let header = BlockHeader::decode(bytes).unwrap();
                (header.last_seq(), header.sealed_at)
            }
            None => (0, 0),
        };
        let root = merkle_root(&self.block_hashes(tree_size));
        let text = format!(
            "trail.local/{STREAM}\n{tree_size}\n{}\nseq {last_seq}\ntime {}\n",
            BASE64.encode(root),
            format_time(time_ns)
        );
        let key = self.key();
        let mut payload = key.key_id().to_be_bytes().to_vec();
        payload.extend_from_slice(&self.signing.sign(text.as_bytes()).to_bytes());
        Checkpoint {
            note: format!(
                "{text}\n\u{2014} {} {}\n",
                self.key_name,
                BASE64.encode(payload)
            ),
            stream: STREAM.to_string(),
            tree_size: tree_size as u64,
            root_hash: root.to_vec(),
            last_seq,
        }
    }

    fn block(&self, index: usize, with_events: bool) -> Block {
        let header = BlockHeader::decode(&self.headers[index]).unwrap();
        Block {
            header: self.headers[index].clone(),
            block_index: index as u64,
            first_seq: header.first_seq,
            count: header.count,
            block_hash: block_hash(&self.headers[index]).to_vec(),
            events: if with_events {
                self.events[index].clone()
            } else {
                Vec::new()
            },
        }
    }

    fn locate(&self, event_id: &str) -> Option<(usize, usize)> {
        let mut found = HashMap::new();
        for (block, events) in self.events.iter().enumerate() {
            for (position, bytes) in events.iter().enumerate() {
                if let Ok(decoded) = CanonicalEvent::decode(bytes) {
                    found.insert(decoded.event_id, (block, position));
                }
            }
        }
        found.get(event_id).copied()
    }
}

#[derive(Clone)]
struct FakeNode {
    ledger: Arc<Mutex<Ledger>>,
    /// When set, the next ListBlocks stream breaks with UNAVAILABLE after this many
    /// blocks (once), as a connection to a restarting node would.
    break_list_after: Arc<Mutex<Option<usize>>>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Trail for FakeNode {
    async fn record(&self, _: Request<RecordRequest>) -> Result<Response<RecordResponse>, Status> {
        Err(Status::unimplemented("fake node"))
    }

    async fn record_batch(
        &self,
        _: Request<RecordBatchRequest>,
    ) -> Result<Response<RecordBatchResponse>, Status> {
        Err(Status::unimplemented("fake node"))
    }

    type RecordStreamStream = BoxStream<RecordBatchResponse>;

    async fn record_stream(
        &self,
        _: Request<tonic::Streaming<RecordBatchRequest>>,
    ) -> Result<Response<Self::RecordStreamStream>, Status> {
        Err(Status::unimplemented("fake node"))
    }

    async fn get_event(
        &self,
        _: Request<GetEventRequest>,
    ) -> Result<Response<GetEventResponse>, Status> {
        Err(Status::unimplemented("fake node"))
    }

    async fn tail(&self, _: Request<TailRequest>) -> Result<Response<TailResponse>, Status> {
        Err(Status::unimplemented("fake node"))
    }

    async fn query(
        &self,
        _: Request<trail_proto::v1::QueryRequest>,
    ) -> Result<Response<trail_proto::v1::QueryResponse>, Status> {
        Err(Status::unimplemented("fake node"))
    }

    async fn count(
        &self,
        _: Request<trail_proto::v1::CountRequest>,
    ) -> Result<Response<trail_proto::v1::CountResponse>, Status> {
        Err(Status::unimplemented("fake node"))
    }

    async fn record_export(
        &self,
        _: Request<trail_proto::v1::RecordExportRequest>,
    ) -> Result<Response<trail_proto::v1::RecordExportResponse>, Status> {
        Err(Status::unimplemented("fake node"))
    }

    async fn reindex(
        &self,
        _: Request<trail_proto::v1::ReindexRequest>,
    ) -> Result<Response<trail_proto::v1::ReindexResponse>, Status> {
        Err(Status::unimplemented("fake node"))
    }

    async fn list_streams(
        &self,
        _: Request<ListStreamsRequest>,
    ) -> Result<Response<ListStreamsResponse>, Status> {
        Err(Status::unimplemented("fake node"))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let ledger = self.ledger.lock().unwrap();
        Ok(Response::new(StatusResponse {
            node_id: 1,
            verifier_key: ledger.key().to_string(),
            ..StatusResponse::default()
        }))
    }

    async fn get_checkpoint(
        &self,
        request: Request<GetCheckpointRequest>,
    ) -> Result<Response<GetCheckpointResponse>, Status> {
        let request = request.into_inner();
        let ledger = self.ledger.lock().unwrap();
        if request.tenant_id != TENANT || request.stream_index != 0 {
            return Err(Status::not_found("no such stream"));
        }
        let size = if request.tree_size == 0 {
            ledger.headers.len()
        } else {
            request.tree_size as usize
        };
        if size > ledger.headers.len() {
            return Err(Status::not_found("no checkpoint of that size"));
        }
        Ok(Response::new(GetCheckpointResponse {
            checkpoint: Some(ledger.checkpoint(size)),
            verifier_key: ledger.key().to_string(),
        }))
    }

    async fn get_block(
        &self,
        request: Request<GetBlockRequest>,
    ) -> Result<Response<GetBlockResponse>, Status> {
        let request = request.into_inner();
        let ledger = self.ledger.lock().unwrap();
        let index = request.block_index as usize;
        if index >= ledger.headers.len() {
            return Err(Status::not_found("no such block"));
        }
        Ok(Response::new(GetBlockResponse {
            block: Some(ledger.block(index, request.with_events)),
        }))
    }

    type ListBlocksStream = BoxStream<Block>;

    async fn list_blocks(
        &self,
        request: Request<ListBlocksRequest>,
    ) -> Result<Response<Self::ListBlocksStream>, Status> {
        let request = request.into_inner();
        let ledger = self.ledger.lock().unwrap();
        let end = if request.to_block == 0 {
            ledger.headers.len()
        } else {
            (request.to_block as usize).min(ledger.headers.len())
        };
        let mut blocks: Vec<Result<Block, Status>> = (request.from_block as usize..end)
            .map(|index| Ok(ledger.block(index, request.with_events)))
            .collect();
        if let Some(after) = self.break_list_after.lock().unwrap().take() {
            blocks.truncate(after);
            blocks.push(Err(Status::unavailable("fake node restarting")));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(blocks))))
    }

    async fn get_proof(
        &self,
        request: Request<GetProofRequest>,
    ) -> Result<Response<GetProofResponse>, Status> {
        let request = request.into_inner();
        let ledger = self.ledger.lock().unwrap();
        let Some((block, position)) = ledger.locate(&request.event_id) else {
            return Err(Status::not_found("no such event"));
        };
        let tree_size = if request.tree_size == 0 {
            ledger.headers.len()
        } else {
            request.tree_size as usize
        };
        let leaves: Vec<[u8; 32]> = ledger.events[block]
            .iter()
            .map(|bytes| event_leaf_hash(bytes))
            .collect();
        let header = BlockHeader::decode(&ledger.headers[block]).unwrap();
        Ok(Response::new(GetProofResponse {
            event: ledger.events[block][position].clone(),
            stream: STREAM.to_string(),
            seq: header.first_seq + position as u64,
            leaf_index: position as u32,
            block: Some(ledger.block(block, false)),
            block_path: path(&leaves, position),
            tree_path: path(&ledger.block_hashes(tree_size), block),
            checkpoint: Some(ledger.checkpoint(tree_size)),
        }))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<GetConsistencyProofRequest>,
    ) -> Result<Response<GetConsistencyProofResponse>, Status> {
        let request = request.into_inner();
        let ledger = self.ledger.lock().unwrap();
        let to_size = if request.to_size == 0 {
            ledger.headers.len()
        } else {
            request.to_size as usize
        };
        let from_size = request.from_size as usize;
        if from_size > to_size || to_size > ledger.headers.len() {
            return Err(Status::invalid_argument("bad sizes"));
        }
        let hashes = ledger.block_hashes(to_size);
        let proof = if from_size == 0 || from_size == to_size {
            Vec::new()
        } else {
            subproof(from_size, &hashes, true)
        };
        Ok(Response::new(GetConsistencyProofResponse {
            proof,
            to: Some(ledger.checkpoint(to_size)),
        }))
    }

    async fn cluster_init(
        &self,
        _: Request<trail_proto::v1::ClusterInitRequest>,
    ) -> Result<Response<trail_proto::v1::ClusterInitResponse>, Status> {
        Err(Status::unimplemented("fake node"))
    }

    async fn create_api_key(
        &self,
        _: Request<trail_proto::v1::CreateApiKeyRequest>,
    ) -> Result<Response<trail_proto::v1::CreateApiKeyResponse>, Status> {
        Err(Status::unimplemented("fake node"))
    }

    async fn list_api_keys(
        &self,
        _: Request<trail_proto::v1::ListApiKeysRequest>,
    ) -> Result<Response<trail_proto::v1::ListApiKeysResponse>, Status> {
        Err(Status::unimplemented("fake node"))
    }

    async fn revoke_api_key(
        &self,
        _: Request<trail_proto::v1::RevokeApiKeyRequest>,
    ) -> Result<Response<trail_proto::v1::RevokeApiKeyResponse>, Status> {
        Err(Status::unimplemented("fake node"))
    }
}

async fn serve(ledger: Ledger) -> (SocketAddr, FakeNode) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let node = FakeNode {
        ledger: Arc::new(Mutex::new(ledger)),
        break_list_after: Arc::new(Mutex::new(None)),
    };
    let served = node.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TrailServer::new(served))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (address, node)
}

/// Runs trailctl against `address` (blocking: the server runs on other worker threads).
fn trailctl(address: &str, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_trailctl"))
        .args(["--endpoint", address, "--rpc-timeout-s", "5"])
        .args(args)
        .env_remove("TRAIL_VERIFIER_KEY")
        .output()
        .expect("run trailctl");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn path_text(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_checkpoints_and_audits_verify_and_damage_is_named() {
    let ledger = Ledger::new(&[4, 3, 5, 1]);
    let key = ledger.key().to_string();
    let (address, node) = serve(ledger).await;
    let shared = Arc::clone(&node.ledger);
    let endpoint = format!("http://{address}");
    let endpoint = endpoint.as_str();
    let directory = tempfile::tempdir().unwrap();

    // Status shows the key to pin.
    let (code, stdout, _) = trailctl(endpoint, &["status"]);
    assert_eq!(code, 0);
    assert!(stdout.contains(&key), "{stdout}");
    let (_, stdout, _) = trailctl(endpoint, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["verifier_key"], key.as_str());

    // Unpinned: trust on first use, with a warning.
    let (code, stdout, stderr) = trailctl(endpoint, &["proof", "--tenant", TENANT, "evt_6"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stderr.contains("warning: no verifier key pinned"),
        "{stderr}"
    );
    assert!(stdout.contains("seq 6"), "{stdout}");
    assert!(stdout.contains("leaf 1 of 3"), "{stdout}");

    // Pinned: no warning; the bundle is saved and verifies offline, with no node.
    let bundle_path = directory.path().join("evt_6.proof.json");
    let (code, stdout, stderr) = trailctl(
        endpoint,
        &[
            "proof",
            "--tenant",
            TENANT,
            "evt_6",
            "--key",
            &key,
            "--json",
            "--out",
            path_text(&bundle_path),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    let bundle: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(bundle["format"], "trail-proof-v1");
    assert_eq!(bundle["seq"], 6);
    let dead_endpoint = "http://127.0.0.1:1";
    let (code, stdout, stderr) = trailctl(
        dead_endpoint,
        &["proof", "--verify", path_text(&bundle_path), "--key", &key],
    );
    assert_eq!(code, 0, "offline verification contacts no node: {stderr}");
    assert!(stdout.contains("evt_6"), "{stdout}");
    // Offline needs a pinned key.
    let (code, _, stderr) = trailctl(
        dead_endpoint,
        &["proof", "--verify", path_text(&bundle_path)],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("needs a pinned key"), "{stderr}");
    // A key in a file works too.
    let key_path = directory.path().join("node.pub");
    std::fs::write(&key_path, format!("{key}\n")).unwrap();
    let (code, _, stderr) = trailctl(
        dead_endpoint,
        &[
            "proof",
            "--verify",
            path_text(&bundle_path),
            "--key-file",
            path_text(&key_path),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    // A tampered bundle is rejected, naming the step.
    let tampered_path = directory.path().join("tampered.json");
    let mut tampered = bundle.clone();
    tampered["tenant_id"] = "ten_b".into();
    std::fs::write(&tampered_path, tampered.to_string()).unwrap();
    let (code, _, stderr) = trailctl(
        dead_endpoint,
        &[
            "proof",
            "--verify",
            path_text(&tampered_path),
            "--key",
            &key,
        ],
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("is not \"ten_b/<stream index>\""),
        "{stderr}"
    );
    // Another key is refused.
    let other_key = VerifierKey::from_public_key(
        "trail.test",
        SigningKey::from_bytes(&[7; 32]).verifying_key().as_bytes(),
    )
    .unwrap()
    .to_string();
    let (code, _, stderr) = trailctl(
        dead_endpoint,
        &[
            "proof",
            "--verify",
            path_text(&bundle_path),
            "--key",
            &other_key,
        ],
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("has no signature by key trail.test+"),
        "{stderr}"
    );
    // A bad key string names the flag.
    let (code, _, stderr) = trailctl(
        dead_endpoint,
        &[
            "proof",
            "--verify",
            path_text(&bundle_path),
            "--key",
            "nonsense",
        ],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("--key"), "{stderr}");

    // Keep a checkpoint; it is the note verbatim.
    let kept_path = directory.path().join("kept.checkpoint");
    let (code, _, stderr) = trailctl(
        endpoint,
        &[
            "checkpoint",
            "--tenant",
            TENANT,
            "--seal-now",
            "--key",
            &key,
            "--out",
            path_text(&kept_path),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let kept = std::fs::read_to_string(&kept_path).unwrap();
    assert!(kept.starts_with("trail.local/ten_a/0\n4\n"), "{kept}");
    let (code, stdout, _) = trailctl(endpoint, &["checkpoint", "--tenant", TENANT, "--key", &key]);
    assert_eq!(code, 0);
    assert_eq!(stdout, kept);

    // The full audit passes.
    let (code, stdout, stderr) = trailctl(
        endpoint,
        &["verify", "--tenant", TENANT, "--key", &key, "--quiet"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("stream ten_a/0: verified 13 events in 4 blocks, tree size 4, root "),
        "{stdout}"
    );

    // A stream that breaks mid-way is resumed after the last block received.
    *node.break_list_after.lock().unwrap() = Some(2);
    let (code, stdout, stderr) = trailctl(
        endpoint,
        &["verify", "--tenant", TENANT, "--key", &key, "--quiet"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("verified 13 events in 4 blocks"),
        "{stdout}"
    );
    assert!(node.break_list_after.lock().unwrap().is_none());

    // The tree grows; the kept checkpoint is a prefix of it.
    shared.lock().unwrap().append_block(2);
    shared.lock().unwrap().append_block(7);
    let (code, stdout, stderr) = trailctl(
        endpoint,
        &[
            "verify",
            "--checkpoint",
            path_text(&kept_path),
            "--key",
            &key,
            "--full",
            "--quiet",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("consistent"), "{stdout}");
    assert!(
        stdout.contains("verified 22 events in 6 blocks"),
        "{stdout}"
    );
    let (code, _, stderr) = trailctl(
        endpoint,
        &[
            "verify",
            "--checkpoint",
            path_text(&kept_path),
            "--tenant",
            "ten_b",
            "--key",
            &key,
        ],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("--tenant ten_b does not match"), "{stderr}");

    // An altered event: the audit names the block and seqs.
    let genuine = shared.lock().unwrap().clone();
    {
        let mut ledger = shared.lock().unwrap();
        let mut altered = event(9);
        altered.action = "auth.logout".to_string();
        ledger.events[2][1] = altered.encode();
    }
    let (code, _, stderr) = trailctl(
        endpoint,
        &["verify", "--tenant", TENANT, "--key", &key, "--quiet"],
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains(
            "stream ten_a/0 block 2 (seqs 8\u{2013}12): merkle root of the 5 stored events does \
             not match the header: an event in this block (or the header's root) was altered"
        ),
        "{stderr}"
    );
    // Its proof fails too.
    let (code, _, stderr) = trailctl(
        endpoint,
        &["proof", "--tenant", TENANT, "evt_9", "--key", &key],
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("block path does not lead to the block's merkle root"),
        "{stderr}"
    );

    // A rolled-back store.
    {
        let mut ledger = shared.lock().unwrap();
        *ledger = genuine.clone();
        ledger.headers.truncate(2);
        ledger.events.truncate(2);
    }
    let (code, _, stderr) = trailctl(
        endpoint,
        &[
            "verify",
            "--checkpoint",
            path_text(&kept_path),
            "--key",
            &key,
        ],
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("the node's tree has 2 blocks, fewer than the 4 of the kept checkpoint: the store was rolled back"),
        "{stderr}"
    );

    // A rewritten history, regrown past the kept size: block 1 re-sealed without seq 6.
    {
        let mut ledger = shared.lock().unwrap();
        *ledger = Ledger::new(&[4]);
        let events = vec![event(5).encode(), event(7).encode()];
        ledger.seal(5, events);
        for count in [5, 1, 2, 7] {
            ledger.append_block(count);
        }
    }
    let (code, _, stderr) = trailctl(
        endpoint,
        &[
            "verify",
            "--checkpoint",
            path_text(&kept_path),
            "--key",
            &key,
        ],
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("does not extend the kept checkpoint"),
        "{stderr}"
    );
    let (code, _, stderr) = trailctl(
        endpoint,
        &["verify", "--tenant", TENANT, "--key", &key, "--quiet"],
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("block 1 (seqs 5\u{2013}6): seq 6 is missing"),
        "{stderr}"
    );

    // A node signing with another key.
    {
        let mut ledger = shared.lock().unwrap();
        *ledger = genuine;
        ledger.signing = SigningKey::from_bytes(&[7; 32]);
    }
    let (code, _, stderr) = trailctl(endpoint, &["checkpoint", "--tenant", TENANT, "--key", &key]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("checkpoint has no signature by key"),
        "{stderr}"
    );
    let (code, _, stderr) = trailctl(endpoint, &["verify", "--tenant", TENANT, "--key", &key]);
    assert_eq!(code, 1, "{stderr}");

    // Nobody listening: exit code 2.
    let (code, _, stderr) = trailctl(
        dead_endpoint,
        &["verify", "--tenant", TENANT, "--key", &key],
    );
    assert_eq!(code, 2, "{stderr}");
}
