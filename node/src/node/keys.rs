//! The node's side of access control: keeping the key directory current from the local
//! replica of shard 0, and creating the first admin key.
//!
//! Secure by default with nothing to configure (Elasticsearch 8 is the model): when
//! the directory holds no key at all, the node that leads shard 0 creates an admin key
//! and writes its token to `<data dir>/admin.token` (mode 0600), which the banner
//! names and `trailctl --token-file` reads. The token is written (durably) before its
//! key is proposed, and a node that finds the file reuses it: a crash between the two
//! leaves a file whose key is created at the next start, never a key nobody holds.
//! `TRAIL_ADMIN_TOKEN` (a token in Trail's format) makes a node use that token for the
//! first admin key instead, so that a script or a test cluster knows it in advance.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::access::key::{creation_event, BOOTSTRAP_ACTOR};
use crate::access::{directory, KeyDirectory, Role, Scope, Token};
use crate::node::cluster::META_SHARD;
use crate::node::Node;

/// The file of the first admin key's token, in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// The environment variable that gives the first admin key's token.
pub const ADMIN_TOKEN_ENV: &str = "TRAIL_ADMIN_TOKEN";

pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(ADMIN_TOKEN_FILE)
}

/// The token of the first admin key: `TRAIL_ADMIN_TOKEN`, else the one in the data
/// directory's file, else a new one, written there first.
fn bootstrap_token(data_dir: &Path) -> anyhow::Result<Token> {
    if let Ok(text) = std::env::var(ADMIN_TOKEN_ENV) {
        let token = Token::parse(text.trim())
            .map_err(|problem| anyhow::anyhow!("{ADMIN_TOKEN_ENV}: {problem}"))?;
        write_token_file(data_dir, &token)?;
        return Ok(token);
    }
    let path = admin_token_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => Token::parse(text.trim())
            .map_err(|problem| anyhow::anyhow!("{}: {problem}", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let token = Token::generate();
            write_token_file(data_dir, &token)?;
            Ok(token)
        }
        Err(error) => Err(anyhow::anyhow!("{}: {error}", path.display())),
    }
}

/// Writes `token` to `admin.token` durably, readable by the owner only.
fn write_token_file(data_dir: &Path, token: &Token) -> anyhow::Result<()> {
    crate::secret_file::replace(
        &admin_token_path(data_dir),
        &token.reveal(),
        "the admin token",
    )
}

/// Creates the first admin key if the directory holds none and this node leads shard
/// 0. Returns whether it created one.
pub async fn bootstrap_admin_key(node: &Node) -> anyhow::Result<bool> {
    let Some(meta) = node.router.local(META_SHARD) else {
        return Ok(false);
    };
    if !node.keys.is_empty()
        || meta.raft.metrics().borrow().current_leader != Some(node.config.node_id)
    {
        return Ok(false);
    }
    let token = bootstrap_token(&node.config.data_dir)?;
    let created = directory::new_key(
        &token,
        "admin (created at first start)",
        Role::Admin,
        Scope::AllTenants,
        0,
    );
    let event = creation_event(&created, BOOTSTRAP_ACTOR, node.clock.now_ns());
    meta.record_applied(event)
        .await
        .map_err(|error| anyhow::anyhow!("recording the first admin key: {error}"))?;
    refresh(node)?;
    tracing::info!(
        key_id = %token.key_id,
        token_file = %admin_token_path(&node.config.data_dir).display(),
        "created the first admin key"
    );
    Ok(true)
}

/// Reads new key events from the local replica of shard 0 into the directory.
pub fn refresh(node: &Node) -> anyhow::Result<usize> {
    let Some(meta) = node.router.local(META_SHARD) else {
        return Ok(0);
    };
    Ok(node.keys.refresh(&meta.keyspaces)?)
}

/// Keeps the directory current, every `REFRESH_INTERVAL`, and creates the first admin
/// key once this node leads shard 0 of a cluster that has none.
pub async fn keep_current(node: Node) {
    let mut reported = false;
    loop {
        tokio::time::sleep(directory::REFRESH_INTERVAL).await;
        let refreshed = {
            let node = node.clone();
            tokio::task::spawn_blocking(move || refresh(&node)).await
        };
        match refreshed {
            Ok(Ok(_)) => reported = false,
            Ok(Err(error)) if !reported => {
                tracing::warn!(%error, "reading the key directory");
                reported = true;
            }
            _ => {}
        }
        if node.keys.is_empty() {
            if let Err(error) = bootstrap_admin_key(&node).await {
                tracing::warn!(%error, "creating the first admin key; retrying");
            }
        }
    }
}

/// The directory a node starts with: empty but for the cluster nodes' own credential.
pub fn new_directory(node_credential: &Token) -> Arc<KeyDirectory> {
    Arc::new(KeyDirectory::with_node_credential(node_credential))
}
