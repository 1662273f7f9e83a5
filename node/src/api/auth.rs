//! Every request is authenticated and authorized here (docs/SECURITY.md): the caller's
//! `authorization: Bearer <token>` (REST: `Authorization: Bearer`) against the node's
//! key directory (`access/`), then the role and tenant the call needs against the
//! key's. A missing, unknown, expired or revoked key answers UNAUTHENTICATED (REST
//! 401); a key that does not cover the call PERMISSION_DENIED (REST 403), naming the
//! role needed and the tenant. No answer repeats the token.
//!
//! A request forwarded to a shard's leader carries the caller's token on, and the
//! leader checks it again: keys are cluster-wide, and the forwarding header proves
//! nothing on the client port.

use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::access::{AuthError, Denied, Principal, Role};
use crate::node::Node;

/// The gRPC metadata key (and REST header) of the caller's token.
pub const AUTHORIZATION: &str = "authorization";

pub fn unauthenticated(error: AuthError) -> Status {
    Status::unauthenticated(error.to_string())
}

pub fn permission_denied(denied: Denied) -> Status {
    Status::permission_denied(denied.to_string())
}

/// The caller of a gRPC request.
pub fn caller(node: &Node, metadata: &MetadataMap) -> Result<Principal, Status> {
    let header = match metadata.get(AUTHORIZATION) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| unauthenticated(AuthError::Malformed("the header is not ASCII")))?,
        ),
    };
    authenticate(node, header)
}

/// Authenticates against the directory; a key it does not know yet (created through
/// another node a moment ago) makes it read shard 0 once more, at most every 50 ms.
fn authenticate(node: &Node, header: Option<&str>) -> Result<Principal, Status> {
    let now_ns = node.clock.now_ns();
    match node.keys.authenticate(header, now_ns) {
        Err(AuthError::Unknown) if node.keys.claim_eager_refresh(now_ns) => {
            if let Err(error) = crate::node::keys::refresh(node) {
                tracing::warn!(%error, "reading the key directory");
            }
            node.keys
                .authenticate(header, now_ns)
                .map_err(unauthenticated)
        }
        result => result.map_err(unauthenticated),
    }
}

/// The caller of a gRPC request, if it may do `what`, which needs `needed` on `tenant`
/// (`None`: node-wide).
pub fn authorize(
    node: &Node,
    metadata: &MetadataMap,
    needed: Role,
    tenant: Option<&str>,
    what: &'static str,
) -> Result<Principal, Status> {
    let principal = caller(node, metadata)?;
    principal
        .authorize(needed, tenant, what)
        .map_err(permission_denied)?;
    Ok(principal)
}

/// [`authorize`] for every tenant of a batch: the first one the key does not cover
/// refuses the whole batch.
pub fn authorize_tenants<'a>(
    principal: &Principal,
    tenants: impl IntoIterator<Item = &'a str>,
) -> Result<(), Status> {
    for tenant in tenants {
        principal
            .authorize(Role::Ingest, Some(tenant), "record events")
            .map_err(permission_denied)?;
    }
    Ok(())
}

/// A REST request's caller, or the 401/403 answer to send instead (boxed: an answer
/// is 128 bytes, the caller a few words).
pub fn authorize_http(
    node: &Node,
    request: &actix_web::HttpRequest,
    needed: Role,
    tenant: Option<&str>,
    what: &'static str,
) -> Result<Principal, Box<actix_web::HttpResponse>> {
    use actix_web::http::StatusCode;
    let answer = |status: StatusCode, code: &str, message: String| {
        let mut response = actix_web::HttpResponse::build(status);
        if status == StatusCode::UNAUTHORIZED {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        Box::new(response.json(serde_json::json!({
            "error": { "code": code, "message": message, "parameter": null }
        })))
    };
    let header = match request.headers().get(AUTHORIZATION) {
        None => None,
        Some(value) => match value.to_str() {
            Ok(text) => Some(text),
            Err(_) => {
                return Err(answer(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHENTICATED",
                    AuthError::Malformed("the header is not ASCII").to_string(),
                ))
            }
        },
    };
    let principal = authenticate(node, header).map_err(|status| {
        answer(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            status.message().to_string(),
        )
    })?;
    principal
        .authorize(needed, tenant, what)
        .map_err(|denied| {
            answer(
                StatusCode::FORBIDDEN,
                "PERMISSION_DENIED",
                denied.to_string(),
            )
        })?;
    Ok(principal)
}
