//! API keys: roles, scopes, tokens, and the events that create and revoke them.
//!
//! A token is `trail_<key id>_<secret>`: the key id (`k` and a lowercase ULID) is not
//! secret and names the key in logs, audit records and `api-key list`; the secret is 32
//! random bytes in hex. The node keeps only the secret's SHA-256: a secret of 256
//! random bits needs no slow hash (nobody can guess it, so nobody can test guesses
//! against a stolen hash), and a lookup costs one SHA-256 (~1 µs).
//!
//! Keys are ledger data: a creation or a revocation is an event of the reserved tenant
//! [`ACCESS_TENANT`] in shard 0, replicated, hash-chained and checkpointed like any
//! stream, so who had access when is itself tamper-evident. The event carries the
//! secret's hash, never the secret.

use std::fmt;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ledger::routing::ACCESS_TENANT;
use crate::ledger::{ActorKind, EventRecord, Outcome};

const TOKEN_PREFIX: &str = "trail_";
const SECRET_BYTES: usize = 32;

/// What a key may do. Each role includes the ones below it in [`Role::covers`]:
/// `admin` covers everything, `audit` covers `read`; `ingest` covers only itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Record events.
    Ingest,
    /// Query, count, get, tail.
    Read,
    /// Read, plus exports, proofs, blocks and checkpoints.
    Audit,
    /// Status, metrics, reindex, cluster and key management, and every other role's
    /// calls for every tenant (the credential a node creates at its first start).
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Ingest, Role::Read, Role::Audit, Role::Admin];

    /// Whether a key of this role may make a call that needs `needed`.
    pub fn covers(self, needed: Role) -> bool {
        match self {
            Role::Admin => true,
            Role::Audit => matches!(needed, Role::Audit | Role::Read),
            Role::Read => needed == Role::Read,
            Role::Ingest => needed == Role::Ingest,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Read => "read",
            Role::Audit => "audit",
            Role::Admin => "admin",
        }
    }

    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.name() == name)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which tenants a key may act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Tenant(String),
    /// A platform's key: every tenant (a producing service's one ingest key).
    AllTenants,
}

impl Scope {
    pub fn covers(&self, tenant_id: &str) -> bool {
        match self {
            Scope::AllTenants => true,
            Scope::Tenant(own) => own == tenant_id,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::AllTenants => f.write_str("all tenants"),
            Scope::Tenant(tenant) => write!(f, "tenant {tenant}"),
        }
    }
}

/// A key's id: `k` and a lowercase ULID.
pub fn new_key_id() -> String {
    format!("k{}", ulid::Ulid::new().to_string().to_lowercase())
}

fn valid_key_id(key_id: &str) -> bool {
    key_id.len() == 27
        && key_id.starts_with('k')
        && key_id[1..]
            .bytes()
            .all(|byte| byte.is_ascii_digit() || byte.is_ascii_lowercase())
}

/// A token's parts. Its `Debug` shows the key id only.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub key_id: String,
    secret: [u8; SECRET_BYTES],
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}, secret hidden)", self.key_id)
    }
}

impl Token {
    /// A new token for a new key.
    pub fn generate() -> Token {
        let mut secret = [0u8; SECRET_BYTES];
        rand::thread_rng().fill_bytes(&mut secret);
        Token {
            key_id: new_key_id(),
            secret,
        }
    }

    /// Parses `trail_<key id>_<64 hex>`; the error says what is wrong without
    /// repeating the token.
    pub fn parse(text: &str) -> Result<Token, &'static str> {
        let rest = text
            .strip_prefix(TOKEN_PREFIX)
            .ok_or("a token starts with trail_")?;
        let (key_id, secret_hex) = rest
            .split_once('_')
            .ok_or("a token is trail_<key id>_<secret>")?;
        if !valid_key_id(key_id) {
            return Err("the token's key id is malformed");
        }
        let bytes = hex::decode(secret_hex).map_err(|_| "the token's secret is not hex")?;
        let secret: [u8; SECRET_BYTES] = bytes
            .try_into()
            .map_err(|_| "the token's secret is not 64 hex digits")?;
        Ok(Token {
            key_id: key_id.to_string(),
            secret,
        })
    }

    /// The token as the caller sends it. Shown once, when the key is created.
    pub fn reveal(&self) -> String {
        format!("{TOKEN_PREFIX}{}_{}", self.key_id, hex::encode(self.secret))
    }

    /// The cluster nodes' own credential, which every node derives from the checkpoint
    /// key they share (`NoteSigner::derive_secret`): what a node authenticates with when
    /// it asks another node (a peer's HTTP address, for forwarding). Never stored, never
    /// a ledger key; its id is [`NODE_KEY_ID`].
    pub fn node_credential(secret: [u8; SECRET_BYTES]) -> Token {
        Token {
            key_id: NODE_KEY_ID.to_string(),
            secret,
        }
    }

    pub fn secret_sha256(&self) -> [u8; 32] {
        Sha256::digest(self.secret).into()
    }
}

/// Compares two hashes in time independent of where they differ.
pub fn hashes_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The metadata of an `api_key.create` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCreated {
    pub key_id: String,
    pub name: String,
    pub role: Role,
    pub scope: Scope,
    /// 0: never.
    pub expires_at_ns: i64,
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
}

/// The metadata of an `api_key.revoke` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRevoked {
    pub key_id: String,
}

pub const ACTION_CREATE: &str = "api_key.create";
pub const ACTION_REVOKE: &str = "api_key.revoke";

/// The event that records a key's creation, by `actor` (a key id, or `bootstrap`).
pub fn creation_event(created: &KeyCreated, actor: &str, now_ns: i64) -> EventRecord {
    access_event(
        format!("create-{}", created.key_id),
        ACTION_CREATE,
        &created.key_id,
        serde_json::to_string(created).expect("a key serializes"),
        actor,
        now_ns,
    )
}

/// The event that records a key's revocation, by `actor`.
pub fn revocation_event(key_id: &str, actor: &str, now_ns: i64) -> EventRecord {
    access_event(
        format!("revoke-{key_id}"),
        ACTION_REVOKE,
        key_id,
        serde_json::to_string(&KeyRevoked {
            key_id: key_id.to_string(),
        })
        .expect("a revocation serializes"),
        actor,
        now_ns,
    )
}

fn access_event(
    event_id: String,
    action: &str,
    key_id: &str,
    metadata_json: String,
    actor: &str,
    now_ns: i64,
) -> EventRecord {
    EventRecord {
        event_id,
        tenant_id: ACCESS_TENANT.to_string(),
        actor_kind: if actor == BOOTSTRAP_ACTOR {
            ActorKind::System
        } else {
            ActorKind::Service
        },
        actor_id: actor.to_string(),
        actor_email: String::new(),
        actor_name: String::new(),
        action: action.to_string(),
        resource_type: "api_key".to_string(),
        resource_id: key_id.to_string(),
        outcome: Outcome::Success,
        occurred_at_ns: now_ns,
        request_id: String::new(),
        session_id: String::new(),
        ip_address: String::new(),
        user_agent: String::new(),
        metadata_json,
        subject_id: String::new(),
    }
}

/// The key id of the cluster nodes' own credential ([`Token::node_credential`]): a
/// ULID of zeros, which no generated key has.
pub const NODE_KEY_ID: &str = "k00000000000000000000000000";

/// What a node's credential is derived under.
pub const NODE_CREDENTIAL_LABEL: &[u8] = b"node-credential";

/// The actor of the first admin key, which the node creates itself.
pub const BOOTSTRAP_ACTOR: &str = "bootstrap";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_its_debug_hides_the_secret() {
        let token = Token::generate();
        let text = token.reveal();
        assert!(text.starts_with("trail_k"));
        assert_eq!(Token::parse(&text).unwrap(), token);
        let shown = format!("{token:?}");
        assert!(!shown.contains(&hex::encode(token.secret)), "{shown}");
    }

    #[test]
    fn malformed_tokens_are_refused_without_echoing_them() {
        let good = Token::generate().reveal();
        for bad in [
            "",
            "Bearer x",
            "trail_",
            "trail_kabc_00",
            &good[..good.len() - 1],
            &good.replace("trail_k", "trail_K"),
            &format!("{good}0"),
        ] {
            let error = Token::parse(bad).unwrap_err();
            // A token's secret part never comes back in the message.
            assert!(bad.len() < 20 || !error.contains(&bad[20..]), "{error}");
        }
    }

    #[test]
    fn roles_cover_what_the_issue_gives_them() {
        use Role::*;
        let covers = |role: Role| -> Vec<Role> {
            Role::ALL
                .into_iter()
                .filter(|needed| role.covers(*needed))
                .collect()
        };
        assert_eq!(covers(Ingest), vec![Ingest]);
        assert_eq!(covers(Read), vec![Read]);
        assert_eq!(covers(Audit), vec![Read, Audit]);
        assert_eq!(covers(Admin), vec![Ingest, Read, Audit, Admin]);
    }

    #[test]
    fn hashes_compare_equal_only_when_equal() {
        let token = Token::generate();
        let hash = token.secret_sha256();
        assert!(hashes_equal(&hash, &token.secret_sha256()));
        let mut other = hash;
        other[31] ^= 1;
        assert!(!hashes_equal(&hash, &other));
    }
}
