//! API key management (`CreateApiKey`, `ListApiKeys`, `RevokeApiKey`): a creation or a
//! revocation is an event of the reserved `_access` stream, proposed to the metadata
//! group's leader (shard 0) and acknowledged once committed; this node then reads it
//! into its directory before it answers, so the new key works here at once (and on
//! the other nodes within `access::directory::REFRESH_INTERVAL`).

use tonic::{Request, Response, Status};
use trail_proto::v1;

use super::auth;
use super::{forward, meta};
use crate::access::key::{creation_event, revocation_event};
use crate::access::{directory, KeyRecord, Principal, Role, Scope, Token};
use crate::ledger::{validate_tenant_id, EventRecord};
use crate::node::Node;

/// A key's name: what `api-key list` shows beside its id.
const KEY_NAME_BYTES_MAX: usize = 128;

pub fn to_proto(key: &KeyRecord) -> v1::ApiKey {
    let (tenant_id, all_tenants) = match &key.scope {
        Scope::Tenant(tenant) => (tenant.clone(), false),
        Scope::AllTenants => (String::new(), true),
    };
    v1::ApiKey {
        key_id: key.key_id.clone(),
        name: key.name.clone(),
        role: role_to_proto(key.role) as i32,
        tenant_id,
        all_tenants,
        created_at_ns: key.created_at_ns,
        expires_at_ns: key.expires_at_ns,
        revoked_at_ns: key.revoked_at_ns.unwrap_or(0),
        created_by: key.created_by.clone(),
    }
}

fn role_to_proto(role: Role) -> v1::Role {
    match role {
        Role::Ingest => v1::Role::Ingest,
        Role::Read => v1::Role::Read,
        Role::Audit => v1::Role::Audit,
        Role::Admin => v1::Role::Admin,
    }
}

fn role_from_proto(role: i32) -> Result<Role, Status> {
    match v1::Role::try_from(role) {
        Ok(v1::Role::Ingest) => Ok(Role::Ingest),
        Ok(v1::Role::Read) => Ok(Role::Read),
        Ok(v1::Role::Audit) => Ok(Role::Audit),
        Ok(v1::Role::Admin) => Ok(Role::Admin),
        _ => Err(Status::invalid_argument(
            "role: is required: one of INGEST, READ, AUDIT, ADMIN",
        )),
    }
}

/// Records an `_access` event at the metadata group's leader (this node: the caller
/// forwarded the request otherwise) and reads it into this node's directory before it
/// answers.
async fn record(node: &Node, event: EventRecord) -> Result<(), Status> {
    meta::propose(node, event, "the key change").await?;
    let keys = node.keys.clone();
    let keyspaces = meta::replica(node)?.keyspaces.clone();
    tokio::task::spawn_blocking(move || keys.refresh(&keyspaces))
        .await
        .map_err(|_| Status::internal("directory refresh task failed"))?
        .map_err(|error| Status::internal(format!("reading the key directory: {error}")))?;
    Ok(())
}

pub async fn create(
    node: &Node,
    request: Request<v1::CreateApiKeyRequest>,
) -> Result<Response<v1::CreateApiKeyResponse>, Status> {
    let principal = auth::authorize(
        node,
        request.metadata(),
        Role::Admin,
        None,
        "create API keys",
    )?;
    if let Some(target) = meta::leader_elsewhere(node, &request)? {
        return forward::call(node, target, request, |mut client, request| async move {
            client.create_api_key(request).await
        })
        .await;
    }
    let wanted = request.into_inner();
    let role = role_from_proto(wanted.role)?;
    let scope = match (wanted.all_tenants, wanted.tenant_id.is_empty()) {
        (true, true) => Scope::AllTenants,
        (false, false) => {
            validate_tenant_id(&wanted.tenant_id)
                .map_err(|error| Status::invalid_argument(format!("tenant_id: {error}")))?;
            Scope::Tenant(wanted.tenant_id.clone())
        }
        (true, false) => {
            return Err(Status::invalid_argument(
                "tenant_id: give a tenant or all_tenants, not both",
            ))
        }
        (false, true) => {
            return Err(Status::invalid_argument(
                "tenant_id: is required (or all_tenants for a key of every tenant)",
            ))
        }
    };
    if wanted.name.len() > KEY_NAME_BYTES_MAX || wanted.name.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "name: at most {KEY_NAME_BYTES_MAX} bytes, no control characters"
        )));
    }
    let now = node.clock.now_ns();
    if wanted.expires_at_ns != 0 && wanted.expires_at_ns <= now {
        return Err(Status::invalid_argument("expires_at_ns: is in the past"));
    }
    let token = Token::generate();
    let created = directory::new_key(&token, &wanted.name, role, scope, wanted.expires_at_ns);
    record(node, creation_event(&created, &principal.key_id, now)).await?;
    let key = node
        .keys
        .get(&token.key_id)
        .ok_or_else(|| Status::internal("the created key is not in the directory"))?;
    tracing::info!(key_id = %key.key_id, role = %key.role, scope = %key.scope, by = %principal.key_id, "API key created");
    Ok(Response::new(v1::CreateApiKeyResponse {
        key: Some(to_proto(&key)),
        token: token.reveal(),
    }))
}

pub async fn list(
    node: &Node,
    request: Request<v1::ListApiKeysRequest>,
) -> Result<Response<v1::ListApiKeysResponse>, Status> {
    auth::authorize(node, request.metadata(), Role::Admin, None, "list API keys")?;
    let now = node.clock.now_ns();
    let include_inactive = request.get_ref().include_inactive;
    let keys = node
        .keys
        .list()
        .iter()
        .filter(|key| include_inactive || key.active(now))
        .map(to_proto)
        .collect();
    Ok(Response::new(v1::ListApiKeysResponse { keys }))
}

pub async fn revoke(
    node: &Node,
    request: Request<v1::RevokeApiKeyRequest>,
) -> Result<Response<v1::RevokeApiKeyResponse>, Status> {
    let principal: Principal = auth::authorize(
        node,
        request.metadata(),
        Role::Admin,
        None,
        "revoke API keys",
    )?;
    if let Some(target) = meta::leader_elsewhere(node, &request)? {
        return forward::call(node, target, request, |mut client, request| async move {
            client.revoke_api_key(request).await
        })
        .await;
    }
    let key_id = request.into_inner().key_id;
    if node.keys.get(&key_id).is_none() {
        return Err(Status::not_found(format!("no API key {key_id:?}")));
    }
    record(
        node,
        revocation_event(&key_id, &principal.key_id, node.clock.now_ns()),
    )
    .await?;
    let key = node
        .keys
        .get(&key_id)
        .ok_or_else(|| Status::internal("the revoked key left the directory"))?;
    tracing::info!(key_id = %key.key_id, by = %principal.key_id, "API key revoked");
    Ok(Response::new(v1::RevokeApiKeyResponse {
        key: Some(to_proto(&key)),
    }))
}
