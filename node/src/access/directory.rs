//! The key directory: every API key as the `_access` stream of shard 0 records it,
//! folded into memory, and what a request's token is allowed.
//!
//! Every node keeps its own directory from its local replica of shard 0, refreshed
//! every [`REFRESH_INTERVAL`] (and at once after a key change made through this node),
//! so a revocation applies on every node within about that long after it commits. The
//! directory holds hashes only; a lookup is one map read and one SHA-256.

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::Duration;

use super::key::{
    hashes_equal, KeyCreated, KeyRevoked, Role, Scope, Token, ACTION_CREATE, ACTION_REVOKE,
    NODE_KEY_ID,
};
use crate::ledger::routing::ACCESS_TENANT;
use crate::query::ReadError;
use crate::shard::reader;
use crate::storage::ShardKeyspaces;

/// How often a node reads new key events from its replica of shard 0.
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(200);

/// One key as the directory knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub key_id: String,
    pub name: String,
    pub role: Role,
    pub scope: Scope,
    pub created_at_ns: i64,
    pub created_by: String,
    /// 0: never.
    pub expires_at_ns: i64,
    pub revoked_at_ns: Option<i64>,
    secret_sha256: [u8; 32],
}

impl KeyRecord {
    pub fn active(&self, now_ns: i64) -> bool {
        self.revoked_at_ns.is_none() && (self.expires_at_ns == 0 || now_ns < self.expires_at_ns)
    }
}

/// The caller of a request, once its token checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: String,
    pub name: String,
    pub role: Role,
    pub scope: Scope,
}

/// Why a request is not authenticated (UNAUTHENTICATED, REST 401). No case repeats the
/// token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no API key: send `authorization: Bearer <token>` (trailctl: --token, TRAIL_TOKEN or --token-file)")]
    Missing,
    #[error("the authorization header is malformed: {0}")]
    Malformed(&'static str),
    #[error("unknown API key")]
    Unknown,
    #[error("API key {key_id} has expired")]
    Expired { key_id: String },
    #[error("API key {key_id} was revoked")]
    Revoked { key_id: String },
}

/// Why an authenticated caller may not make a call (PERMISSION_DENIED, REST 403): the
/// message names the key, what it is, and what the call needs (the role, the tenant).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct Denied {
    pub key_id: String,
    pub role: Role,
    pub scope: Scope,
    pub needed: Role,
    pub tenant: Option<String>,
    pub what: &'static str,
}

impl Denied {
    fn message(&self) -> String {
        let key = format!(
            "API key {} (role {}, {})",
            self.key_id, self.role, self.scope
        );
        let on = self
            .tenant
            .as_ref()
            .map(|tenant| format!(" of tenant {tenant}"))
            .unwrap_or_default();
        if !self.role.covers(self.needed) {
            return format!(
                "{key} may not {}{on}: it needs role {}",
                self.what, self.needed
            );
        }
        match &self.tenant {
            Some(_) => format!(
                "{key} may not {}{on}: the key is for its own tenant only",
                self.what
            ),
            None => format!(
                "{key} may not {}: it needs a key of every tenant",
                self.what
            ),
        }
    }
}

impl Principal {
    /// Whether this caller may do `what`, which needs `needed` on `tenant` (`None`:
    /// a node-wide call, which only keys of every tenant may make).
    pub fn authorize(
        &self,
        needed: Role,
        tenant: Option<&str>,
        what: &'static str,
    ) -> Result<(), Denied> {
        let scope_ok = match tenant {
            Some(tenant) => self.scope.covers(tenant),
            None => self.scope == Scope::AllTenants,
        };
        if self.role.covers(needed) && scope_ok {
            return Ok(());
        }
        Err(Denied {
            key_id: self.key_id.clone(),
            role: self.role,
            scope: self.scope.clone(),
            needed,
            tenant: tenant.map(str::to_string),
            what,
        })
    }
}

#[derive(Default)]
struct DirectoryState {
    keys: BTreeMap<String, KeyRecord>,
    /// The hash of the cluster nodes' own credential (`Token::node_credential`).
    node_secret_sha256: Option<[u8; 32]>,
    /// The last seq of the `_access` stream folded in.
    read_up_to: u64,
}

/// Every key of the cluster, as this node's replica of shard 0 has them.
#[derive(Default)]
pub struct KeyDirectory {
    state: RwLock<DirectoryState>,
    /// When an unknown key last made the directory read shard 0 at once (ns).
    last_eager_refresh_ns: std::sync::atomic::AtomicI64,
}

/// How often an unknown key may make a node read its shard 0 at once, rather than at
/// the next refresh: a key created through another node works here as soon as its
/// creation is applied here, and unknown keys sent in a flood cost one small read per
/// interval.
pub const EAGER_REFRESH_INTERVAL_NS: i64 = 50_000_000;

impl KeyDirectory {
    /// A directory that also accepts the cluster nodes' own credential.
    pub fn with_node_credential(node: &Token) -> KeyDirectory {
        let directory = KeyDirectory::default();
        directory
            .state
            .write()
            .expect("directory lock")
            .node_secret_sha256 = Some(node.secret_sha256());
        directory
    }

    /// Reads the `_access` events this directory has not folded in yet from `meta`
    /// (this node's replica of shard 0). Returns how many it folded in.
    pub fn refresh(&self, meta: &ShardKeyspaces) -> Result<usize, ReadError> {
        let mut folded = 0;
        loop {
            let after = self.state.read().expect("directory lock").read_up_to;
            let (events, _last) = reader::tail(meta, ACCESS_TENANT, after, reader::TAIL_LIMIT_MAX)?;
            let Some(last) = events.last() else {
                return Ok(folded);
            };
            let last = last.stored.seq;
            let mut state = self.state.write().expect("directory lock");
            if state.read_up_to != after {
                // Another refresh got there first: read again from where it stopped.
                continue;
            }
            for event in &events {
                let event = &event.stored;
                match event.event.action.as_str() {
                    ACTION_CREATE => {
                        let Ok(created) =
                            serde_json::from_str::<KeyCreated>(&event.event.metadata_json)
                        else {
                            tracing::warn!(
                                seq = event.seq,
                                "an api_key.create event does not decode; skipped"
                            );
                            continue;
                        };
                        let Some(hash) = hex::decode(&created.secret_sha256)
                            .ok()
                            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                        else {
                            tracing::warn!(
                                seq = event.seq,
                                "an api_key.create event has a bad hash; skipped"
                            );
                            continue;
                        };
                        state
                            .keys
                            .entry(created.key_id.clone())
                            .or_insert(KeyRecord {
                                key_id: created.key_id,
                                name: created.name,
                                role: created.role,
                                scope: created.scope,
                                created_at_ns: event.ingested_at_ns,
                                created_by: event.event.actor_id.clone(),
                                expires_at_ns: created.expires_at_ns,
                                revoked_at_ns: None,
                                secret_sha256: hash,
                            });
                    }
                    ACTION_REVOKE => {
                        if let Ok(revoked) =
                            serde_json::from_str::<KeyRevoked>(&event.event.metadata_json)
                        {
                            if let Some(key) = state.keys.get_mut(&revoked.key_id) {
                                key.revoked_at_ns.get_or_insert(event.ingested_at_ns);
                            }
                        }
                    }
                    _ => {}
                }
                folded += 1;
            }
            state.read_up_to = last;
        }
    }

    /// Whether an unknown key may trigger a read of shard 0 now (at most once per
    /// [`EAGER_REFRESH_INTERVAL_NS`]); claims the slot when it may.
    pub fn claim_eager_refresh(&self, now_ns: i64) -> bool {
        use std::sync::atomic::Ordering;
        let last = self.last_eager_refresh_ns.load(Ordering::Relaxed);
        now_ns.saturating_sub(last) >= EAGER_REFRESH_INTERVAL_NS
            && self
                .last_eager_refresh_ns
                .compare_exchange(last, now_ns, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// The caller of a request whose `authorization` header is `header`.
    pub fn authenticate(&self, header: Option<&str>, now_ns: i64) -> Result<Principal, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(AuthError::Malformed("expected `Bearer <token>`"))?;
        let token = Token::parse(token.trim()).map_err(AuthError::Malformed)?;
        let state = self.state.read().expect("directory lock");
        if token.key_id == NODE_KEY_ID {
            return match &state.node_secret_sha256 {
                Some(hash) if hashes_equal(hash, &token.secret_sha256()) => Ok(Principal {
                    key_id: NODE_KEY_ID.to_string(),
                    name: "cluster node".to_string(),
                    role: Role::Admin,
                    scope: Scope::AllTenants,
                }),
                _ => Err(AuthError::Unknown),
            };
        }
        let key = state.keys.get(&token.key_id).ok_or(AuthError::Unknown)?;
        if !hashes_equal(&key.secret_sha256, &token.secret_sha256()) {
            return Err(AuthError::Unknown);
        }
        if key.revoked_at_ns.is_some() {
            return Err(AuthError::Revoked {
                key_id: key.key_id.clone(),
            });
        }
        if key.expires_at_ns != 0 && now_ns >= key.expires_at_ns {
            return Err(AuthError::Expired {
                key_id: key.key_id.clone(),
            });
        }
        Ok(Principal {
            key_id: key.key_id.clone(),
            name: key.name.clone(),
            role: key.role,
            scope: key.scope.clone(),
        })
    }

    pub fn get(&self, key_id: &str) -> Option<KeyRecord> {
        self.state
            .read()
            .expect("directory lock")
            .keys
            .get(key_id)
            .cloned()
    }

    /// Every key, in id order (creation order: ids are ULIDs).
    pub fn list(&self) -> Vec<KeyRecord> {
        self.state
            .read()
            .expect("directory lock")
            .keys
            .values()
            .cloned()
            .collect()
    }

    /// Whether no key was ever created (a node then creates the first admin key).
    pub fn is_empty(&self) -> bool {
        self.state.read().expect("directory lock").keys.is_empty()
    }
}

/// The creation record of a new key with `token`.
pub fn new_key(
    token: &Token,
    name: &str,
    role: Role,
    scope: Scope,
    expires_at_ns: i64,
) -> KeyCreated {
    KeyCreated {
        key_id: token.key_id.clone(),
        name: name.to_string(),
        role,
        scope,
        expires_at_ns,
        secret_sha256: hex::encode(token.secret_sha256()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(role: Role, scope: Scope) -> Principal {
        Principal {
            key_id: "k01".into(),
            name: "test".into(),
            role,
            scope,
        }
    }

    #[test]
    fn a_tenant_key_acts_on_its_tenant_only_and_never_node_wide() {
        let reader = principal(Role::Read, Scope::Tenant("acme".into()));
        assert!(reader
            .authorize(Role::Read, Some("acme"), "query events")
            .is_ok());
        let other = reader
            .authorize(Role::Read, Some("globex"), "query events")
            .unwrap_err();
        assert_eq!(
            other.to_string(),
            "API key k01 (role read, tenant acme) may not query events of tenant globex: the key is for its own tenant only"
        );
        assert_eq!(
            reader.authorize(Role::Audit, Some("acme"), "export events").unwrap_err().to_string(),
            "API key k01 (role read, tenant acme) may not export events of tenant acme: it needs role audit"
        );
        assert!(reader
            .authorize(Role::Audit, Some("acme"), "export")
            .is_err());
        assert!(reader.authorize(Role::Read, None, "list tenants").is_err());
        let platform = principal(Role::Ingest, Scope::AllTenants);
        assert!(platform
            .authorize(Role::Ingest, Some("any"), "record")
            .is_ok());
        assert!(platform
            .authorize(Role::Read, Some("any"), "query")
            .is_err());
        let admin = principal(Role::Admin, Scope::AllTenants);
        assert!(admin.authorize(Role::Admin, None, "reindex").is_ok());
        let tenant_admin = principal(Role::Admin, Scope::Tenant("acme".into()));
        assert!(tenant_admin
            .authorize(Role::Admin, None, "reindex")
            .is_err());
    }

    #[test]
    fn headers_that_are_no_bearer_token_are_malformed() {
        let directory = KeyDirectory::default();
        assert_eq!(directory.authenticate(None, 0), Err(AuthError::Missing));
        assert!(matches!(
            directory.authenticate(Some("Basic abc"), 0),
            Err(AuthError::Malformed(_))
        ));
        let token = Token::generate();
        assert_eq!(
            directory.authenticate(Some(&format!("Bearer {}", token.reveal())), 0),
            Err(AuthError::Unknown)
        );
    }
}
