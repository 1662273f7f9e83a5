//! Access control through a real `traild`: every gRPC call and REST route, as every
//! kind of caller, on its own tenant and on another, answers as the rules say
//! (docs/SECURITY.md): allowed, UNAUTHENTICATED (REST 401) or PERMISSION_DENIED (REST
//! 403).
//!
//! The expected answer of each cell comes from [`expected`], the rules written down
//! here on their own (a role covers the calls that need it or a role below it, a
//! tenant's key covers only its tenant, node-wide calls need a key of every tenant,
//! `Status` takes any key and `/health` none, and a missing, malformed, unknown,
//! expired or revoked key authenticates no one), applied to what each call needs
//! ([`Call::needs`]); a few cells are also written out
//! literally ([`LITERAL_CELLS`]), so that a change of the rules shows up here as well
//! as in the code they check.
//!
//! Steps:
//! 1. start `traild` (its first admin key is the harness's token); record one event
//!    for tenants `acme` and `globex`;
//! 2. with the admin key, create through `CreateApiKey`: ingest, read, audit and admin
//!    keys of `acme`, ingest and audit keys of every tenant, a read key of `acme` that
//!    expires in 2 s (it works at first), and a read key of `acme` that is then revoked
//!    (`RevokeApiKey`); wait until the expiring key has expired;
//! 3. make every call (each per-tenant call for `acme` and for `globex`) as each key,
//!    as no key, with a malformed header and with an unknown token, and sort each
//!    answer into allowed (any answer but UNAUTHENTICATED and PERMISSION_DENIED, 401
//!    and 403: a call may be allowed and still fail on its arguments) or refused;
//! 4. print the matrix (rows: calls, columns: callers); check every cell against the
//!    rules and the literal cells against both, and report all mismatches together;
//!    `Status` shows the node's internals (shards, data directory) to the admin only.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use trail_proto::v1;
use trail_tests::{event, http_get_as, Authorization, GrpcClient, Traild, TEST_ADMIN_TOKEN};

const ACME: &str = "acme";
const GLOBEX: &str = "globex";

/// How long the expiring key lives after its creation.
const EXPIRING_KEY_LIFETIME: Duration = Duration::from_secs(2);

/// A token in Trail's format that no key has.
const UNKNOWN_TOKEN: &str =
    "trail_k00000000000000000000000000_0000000000000000000000000000000000000000000000000000000000000000";

/// A role, as the rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Ingest,
    Read,
    Audit,
    Admin,
}

impl Role {
    /// Whether a key of this role may make a call that needs `needed`: admin may make
    /// every call, audit those of audit and read, read and ingest only their own.
    fn covers(self, needed: Role) -> bool {
        match self {
            Role::Admin => true,
            Role::Audit => matches!(needed, Role::Audit | Role::Read),
            Role::Read => needed == Role::Read,
            Role::Ingest => needed == Role::Ingest,
        }
    }

    fn to_proto(self) -> v1::Role {
        match self {
            Role::Ingest => v1::Role::Ingest,
            Role::Read => v1::Role::Read,
            Role::Audit => v1::Role::Audit,
            Role::Admin => v1::Role::Admin,
        }
    }
}

/// Which tenants a key may act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Tenant(&'static str),
    AllTenants,
}

impl Scope {
    /// Whether the key may act on `tenant` (`None`: a node-wide call, which only a key
    /// of every tenant may make).
    fn covers(self, tenant: Option<&str>) -> bool {
        match (self, tenant) {
            (Scope::AllTenants, _) => true,
            (Scope::Tenant(own), Some(tenant)) => own == tenant,
            (Scope::Tenant(_), None) => false,
        }
    }
}

/// A key's state when the calls are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyState {
    Active,
    Expired,
    Revoked,
}

/// Who calls: a key, or a request that authenticates no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Key(Role, Scope, KeyState),
    NoKey,
    /// An `authorization` value that is not `Bearer <token>` in Trail's format.
    Malformed,
    /// A well-formed token of no key.
    Unknown,
}

/// The class of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Any answer but the two refusals (OK, or an error about the arguments).
    Allowed,
    /// UNAUTHENTICATED, REST 401.
    Unauthenticated,
    /// PERMISSION_DENIED, REST 403.
    Denied,
}

impl Class {
    fn cell(self) -> &'static str {
        match self {
            Class::Allowed => "ok",
            Class::Unauthenticated => "unauth",
            Class::Denied => "denied",
        }
    }

    fn of_grpc(code: tonic::Code) -> Class {
        match code {
            tonic::Code::Unauthenticated => Class::Unauthenticated,
            tonic::Code::PermissionDenied => Class::Denied,
            _ => Class::Allowed,
        }
    }

    fn of_http(status: u16) -> Class {
        match status {
            401 => Class::Unauthenticated,
            403 => Class::Denied,
            _ => Class::Allowed,
        }
    }
}

/// What a call needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Nothing: open to anyone, with or without a key.
    Nothing,
    /// Any valid key, whatever its role and scope.
    AnyKey,
    /// A key of this role (or one that covers it) whose scope covers the call.
    Role(Role),
}

/// The rules: what `caller` gets for a call that needs `need` on `tenant` (`None`:
/// node-wide).
fn expected(caller: Caller, need: Need, tenant: Option<&str>) -> Class {
    let needed = match need {
        Need::Nothing => return Class::Allowed,
        Need::AnyKey => None,
        Need::Role(role) => Some(role),
    };
    match caller {
        Caller::Key(role, scope, KeyState::Active) => match needed {
            None => Class::Allowed,
            Some(needed) if role.covers(needed) && scope.covers(tenant) => Class::Allowed,
            Some(_) => Class::Denied,
        },
        Caller::Key(_, _, KeyState::Expired | KeyState::Revoked)
        | Caller::NoKey
        | Caller::Malformed
        | Caller::Unknown => Class::Unauthenticated,
    }
}

/// Every call: the gRPC RPCs, then the REST routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Record,
    RecordBatch,
    RecordStream,
    GetEvent,
    Tail,
    Query,
    Count,
    RecordExport,
    GetCheckpoint,
    GetBlock,
    ListBlocks,
    GetProof,
    GetConsistencyProof,
    Status,
    Reindex,
    ListStreams,
    CreateApiKey,
    ListApiKeys,
    RevokeApiKey,
    ClusterInit,
    RestAuditLogs,
    RestCount,
    RestEvent,
    RestMetrics,
    RestHealth,
}

impl Call {
    const ALL: [Call; 25] = [
        Call::Record,
        Call::RecordBatch,
        Call::RecordStream,
        Call::GetEvent,
        Call::Tail,
        Call::Query,
        Call::Count,
        Call::RecordExport,
        Call::GetCheckpoint,
        Call::GetBlock,
        Call::ListBlocks,
        Call::GetProof,
        Call::GetConsistencyProof,
        Call::Status,
        Call::Reindex,
        Call::ListStreams,
        Call::CreateApiKey,
        Call::ListApiKeys,
        Call::RevokeApiKey,
        Call::ClusterInit,
        Call::RestAuditLogs,
        Call::RestCount,
        Call::RestEvent,
        Call::RestMetrics,
        Call::RestHealth,
    ];

    /// What the call needs of its caller.
    fn needs(self) -> Need {
        match self {
            Call::Record | Call::RecordBatch | Call::RecordStream => Need::Role(Role::Ingest),
            Call::GetEvent
            | Call::Tail
            | Call::Query
            | Call::Count
            | Call::RestAuditLogs
            | Call::RestCount
            | Call::RestEvent => Need::Role(Role::Read),
            Call::RecordExport
            | Call::GetCheckpoint
            | Call::GetBlock
            | Call::ListBlocks
            | Call::GetProof
            | Call::GetConsistencyProof
            | Call::ListStreams => Need::Role(Role::Audit),
            // Any key learns where the node is, the cluster map and the checkpoint
            // key; only the admin gets the node's internals (checked apart).
            Call::Status => Need::AnyKey,
            Call::Reindex
            | Call::CreateApiKey
            | Call::ListApiKeys
            | Call::RevokeApiKey
            | Call::ClusterInit
            | Call::RestMetrics => Need::Role(Role::Admin),
            Call::RestHealth => Need::Nothing,
        }
    }

    /// Whether the call is about one tenant (else node-wide).
    fn per_tenant(self) -> bool {
        !matches!(
            self,
            Call::Status
                | Call::Reindex
                | Call::ListStreams
                | Call::CreateApiKey
                | Call::ListApiKeys
                | Call::RevokeApiKey
                | Call::ClusterInit
                | Call::RestMetrics
                | Call::RestHealth
        )
    }

    fn name(self) -> &'static str {
        match self {
            Call::Record => "Record",
            Call::RecordBatch => "RecordBatch",
            Call::RecordStream => "RecordStream",
            Call::GetEvent => "GetEvent",
            Call::Tail => "Tail",
            Call::Query => "Query",
            Call::Count => "Count",
            Call::RecordExport => "RecordExport",
            Call::GetCheckpoint => "GetCheckpoint",
            Call::GetBlock => "GetBlock",
            Call::ListBlocks => "ListBlocks",
            Call::GetProof => "GetProof",
            Call::GetConsistencyProof => "GetConsistencyProof",
            Call::Status => "Status",
            Call::Reindex => "Reindex",
            Call::ListStreams => "ListStreams",
            Call::CreateApiKey => "CreateApiKey",
            Call::ListApiKeys => "ListApiKeys",
            Call::RevokeApiKey => "RevokeApiKey",
            Call::ClusterInit => "ClusterInit",
            Call::RestAuditLogs => "GET audit-logs",
            Call::RestCount => "GET audit-logs/count",
            Call::RestEvent => "GET audit-logs/{id}",
            Call::RestMetrics => "GET /metrics",
            Call::RestHealth => "GET /health",
        }
    }
}

/// A row of the matrix: a call, for a tenant or node-wide.
#[derive(Debug, Clone, Copy)]
struct Row {
    call: Call,
    tenant: Option<&'static str>,
}

impl Row {
    fn label(&self) -> String {
        match self.tenant {
            Some(tenant) => format!("{} {tenant}", self.call.name()),
            None => self.call.name().to_string(),
        }
    }
}

fn rows() -> Vec<Row> {
    let mut rows = Vec::new();
    for call in Call::ALL {
        if call.per_tenant() {
            for tenant in [ACME, GLOBEX] {
                rows.push(Row {
                    call,
                    tenant: Some(tenant),
                });
            }
        } else {
            rows.push(Row { call, tenant: None });
        }
    }
    rows
}

/// A column of the matrix: a caller, and the header its requests carry.
struct Column {
    label: &'static str,
    caller: Caller,
    authorization: Authorization,
    client: GrpcClient,
}

/// Cells written out literally: (column label, call, tenant, class). Each is checked
/// against the rules and against the node.
const LITERAL_CELLS: [(&str, Call, Option<&str>, Class); 15] = [
    ("read@acme", Call::Query, Some(ACME), Class::Allowed),
    ("read@acme", Call::Query, Some(GLOBEX), Class::Denied),
    ("read@acme", Call::RecordExport, Some(ACME), Class::Denied),
    ("ingest@acme", Call::Query, Some(ACME), Class::Denied),
    ("ingest@acme", Call::Record, Some(ACME), Class::Allowed),
    ("ingest@*", Call::Record, Some(GLOBEX), Class::Allowed),
    ("audit@acme", Call::GetProof, Some(ACME), Class::Allowed),
    ("audit@acme", Call::ListStreams, None, Class::Denied),
    ("admin@acme", Call::Reindex, None, Class::Denied),
    ("ingest@acme", Call::Status, None, Class::Allowed),
    ("no key", Call::Status, None, Class::Unauthenticated),
    ("no key", Call::RestHealth, None, Class::Allowed),
    ("no key", Call::RestMetrics, None, Class::Unauthenticated),
    ("revoked", Call::Query, Some(ACME), Class::Unauthenticated),
    ("expired", Call::Query, Some(ACME), Class::Unauthenticated),
];

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as i64
}

/// Creates a key with the admin client; returns its token and key id.
async fn create_key(
    admin: &mut GrpcClient,
    name: &str,
    role: Role,
    scope: Scope,
    expires_at_ns: i64,
) -> (String, String) {
    let (tenant_id, all_tenants) = match scope {
        Scope::Tenant(tenant) => (tenant.to_string(), false),
        Scope::AllTenants => (String::new(), true),
    };
    let created = admin
        .create_api_key(v1::CreateApiKeyRequest {
            name: name.to_string(),
            role: role.to_proto() as i32,
            tenant_id,
            all_tenants,
            expires_at_ns,
        })
        .await
        .unwrap_or_else(|status| panic!("create the key {name}: {status}"))
        .into_inner();
    let key_id = created.key.expect("the created key").key_id;
    (created.token, key_id)
}

/// Makes the call of `row` as `column`; returns the answer's class and a summary of it.
async fn perform(node: &Traild, column: &mut Column, row: Row, serial: usize) -> (Class, String) {
    let tenant = row.tenant.unwrap_or(ACME).to_string();
    let client = &mut column.client;
    let grpc = |answer: Result<(), tonic::Status>| match answer {
        Ok(()) => (Class::Allowed, "OK".to_string()),
        Err(status) => (
            Class::of_grpc(status.code()),
            format!("{:?}: {}", status.code(), status.message()),
        ),
    };
    let event_id = format!("matrix-{serial}");
    match row.call {
        Call::Record => grpc(
            client
                .record(v1::RecordRequest {
                    event: Some(event(&tenant, &event_id)),
                })
                .await
                .map(drop),
        ),
        Call::RecordBatch => grpc(
            client
                .record_batch(v1::RecordBatchRequest {
                    events: vec![event(&tenant, &event_id)],
                })
                .await
                .map(drop),
        ),
        Call::RecordStream => {
            let batch = v1::RecordBatchRequest {
                events: vec![event(&tenant, &event_id)],
            };
            match client.record_stream(tokio_stream::iter(vec![batch])).await {
                Err(status) => grpc(Err(status)),
                // The stream opens for any key; each batch's tenants are checked as
                // it arrives, and a refusal is the stream's first answer.
                Ok(response) => grpc(response.into_inner().message().await.map(drop)),
            }
        }
        Call::GetEvent => grpc(
            client
                .get_event(v1::GetEventRequest {
                    tenant_id: tenant.clone(),
                    event_id: format!("seed-{tenant}"),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        Call::Tail => grpc(
            client
                .tail(v1::TailRequest {
                    tenant_id: tenant.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        Call::Query => grpc(
            client
                .query(v1::QueryRequest {
                    tenant_id: tenant.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        Call::Count => grpc(
            client
                .count(v1::CountRequest {
                    tenant_id: tenant.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        Call::RecordExport => grpc(
            client
                .record_export(v1::RecordExportRequest {
                    tenant_id: tenant.clone(),
                    format: "jsonl".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        Call::GetCheckpoint => grpc(
            client
                .get_checkpoint(v1::GetCheckpointRequest {
                    tenant_id: tenant.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        Call::GetBlock => grpc(
            client
                .get_block(v1::GetBlockRequest {
                    tenant_id: tenant.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        Call::ListBlocks => grpc(
            client
                .list_blocks(v1::ListBlocksRequest {
                    tenant_id: tenant.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        Call::GetProof => grpc(
            client
                .get_proof(v1::GetProofRequest {
                    tenant_id: tenant.clone(),
                    event_id: format!("seed-{tenant}"),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        Call::GetConsistencyProof => grpc(
            client
                .get_consistency_proof(v1::GetConsistencyProofRequest {
                    tenant_id: tenant.clone(),
                    from_size: 1,
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        Call::Status => grpc(client.status(v1::StatusRequest {}).await.map(drop)),
        Call::Reindex => grpc(client.reindex(v1::ReindexRequest {}).await.map(drop)),
        Call::ListStreams => grpc(
            client
                .list_streams(v1::ListStreamsRequest::default())
                .await
                .map(drop),
        ),
        Call::CreateApiKey => grpc(
            client
                .create_api_key(v1::CreateApiKeyRequest {
                    name: format!("made by {}", column.label),
                    role: v1::Role::Read as i32,
                    tenant_id: ACME.into(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        Call::ListApiKeys => grpc(
            client
                .list_api_keys(v1::ListApiKeysRequest::default())
                .await
                .map(drop),
        ),
        // A key id of no key: an allowed caller is answered NOT_FOUND, and no key
        // of the matrix is revoked.
        Call::RevokeApiKey => grpc(
            client
                .revoke_api_key(v1::RevokeApiKeyRequest {
                    key_id: trail_tests::key_id_of(UNKNOWN_TOKEN).to_string(),
                })
                .await
                .map(drop),
        ),
        // A single node: an allowed caller is answered FAILED_PRECONDITION.
        Call::ClusterInit => grpc(
            client
                .cluster_init(v1::ClusterInitRequest {
                    shards: 1,
                    replicas: 1,
                })
                .await
                .map(drop),
        ),
        Call::RestAuditLogs
        | Call::RestCount
        | Call::RestEvent
        | Call::RestMetrics
        | Call::RestHealth => {
            let path = match row.call {
                Call::RestAuditLogs => format!("/api/v1/tenants/{tenant}/audit-logs"),
                Call::RestCount => format!("/api/v1/tenants/{tenant}/audit-logs/count"),
                Call::RestEvent => format!("/api/v1/tenants/{tenant}/audit-logs/seed-{tenant}"),
                Call::RestMetrics => "/metrics".to_string(),
                _ => "/health".to_string(),
            };
            let (host, port) = (node.host.clone(), node.http_port);
            let authorization = column.authorization.clone();
            let response = tokio::task::spawn_blocking(move || {
                http_get_as(&host, port, &path, &authorization)
            })
            .await
            .expect("HTTP task");
            let body: String = response.body.chars().take(120).collect();
            (
                Class::of_http(response.status),
                format!("{} {body}", response.status),
            )
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_as_every_caller_answers_as_the_rules_say() {
    // The literal cells agree with the rules (checked first: no node needed).
    let callers = [
        (
            "admin",
            Caller::Key(Role::Admin, Scope::AllTenants, KeyState::Active),
        ),
        (
            "ingest@acme",
            Caller::Key(Role::Ingest, Scope::Tenant(ACME), KeyState::Active),
        ),
        (
            "read@acme",
            Caller::Key(Role::Read, Scope::Tenant(ACME), KeyState::Active),
        ),
        (
            "audit@acme",
            Caller::Key(Role::Audit, Scope::Tenant(ACME), KeyState::Active),
        ),
        (
            "admin@acme",
            Caller::Key(Role::Admin, Scope::Tenant(ACME), KeyState::Active),
        ),
        (
            "ingest@*",
            Caller::Key(Role::Ingest, Scope::AllTenants, KeyState::Active),
        ),
        (
            "audit@*",
            Caller::Key(Role::Audit, Scope::AllTenants, KeyState::Active),
        ),
        (
            "expired",
            Caller::Key(Role::Read, Scope::Tenant(ACME), KeyState::Expired),
        ),
        (
            "revoked",
            Caller::Key(Role::Read, Scope::Tenant(ACME), KeyState::Revoked),
        ),
        ("no key", Caller::NoKey),
        ("malformed", Caller::Malformed),
        ("unknown", Caller::Unknown),
    ];
    let caller_of = |label: &str| {
        callers
            .iter()
            .find(|(name, _)| *name == label)
            .map(|(_, caller)| *caller)
            .unwrap_or_else(|| panic!("no column {label}"))
    };
    for (label, call, tenant, class) in LITERAL_CELLS {
        assert_eq!(
            expected(caller_of(label), call.needs(), tenant),
            class,
            "the rules and the literal cell {label} × {} {tenant:?} disagree",
            call.name()
        );
    }

    // Step 1: a node, and an event of each tenant.
    let dir = tempfile::tempdir().expect("temporary directory");
    let node = Traild::start(dir.path(), &[]).await;
    let mut admin = node.client().await.expect("connect");
    for tenant in [ACME, GLOBEX] {
        admin
            .record(v1::RecordRequest {
                event: Some(event(tenant, &format!("seed-{tenant}"))),
            })
            .await
            .expect("record a seed event");
    }

    // Step 2: the keys. The expiring one first: it must work, then expire.
    let expires_at_ns = now_ns() + EXPIRING_KEY_LIFETIME.as_nanos() as i64;
    let (expiring_token, _) = create_key(
        &mut admin,
        "expiring",
        Role::Read,
        Scope::Tenant(ACME),
        expires_at_ns,
    )
    .await;
    let mut expiring = node
        .client_as(Authorization::bearer(&expiring_token))
        .await
        .expect("connect");
    expiring
        .query(v1::QueryRequest {
            tenant_id: ACME.into(),
            ..Default::default()
        })
        .await
        .expect("the expiring key works before it expires");
    let (revoked_token, revoked_id) =
        create_key(&mut admin, "revoked", Role::Read, Scope::Tenant(ACME), 0).await;
    admin
        .revoke_api_key(v1::RevokeApiKeyRequest {
            key_id: revoked_id.clone(),
        })
        .await
        .expect("revoke");
    let mut columns = Vec::new();
    for (label, caller) in callers {
        let authorization = match (label, caller) {
            ("admin", _) => Authorization::bearer(TEST_ADMIN_TOKEN),
            ("expired", _) => Authorization::bearer(&expiring_token),
            ("revoked", _) => Authorization::bearer(&revoked_token),
            (_, Caller::Key(role, scope, KeyState::Active)) => {
                let (token, _) = create_key(&mut admin, label, role, scope, 0).await;
                Authorization::bearer(&token)
            }
            (_, Caller::NoKey) => Authorization::none(),
            (_, Caller::Malformed) => Authorization::header("Bearer not-a-token"),
            (_, Caller::Unknown) => Authorization::bearer(UNKNOWN_TOKEN),
            (_, Caller::Key(..)) => unreachable!("every inactive key has its column"),
        };
        let client = node
            .client_as(authorization.clone())
            .await
            .expect("connect");
        columns.push(Column {
            label,
            caller,
            authorization,
            client,
        });
    }
    let wait_ns = expires_at_ns - now_ns();
    if wait_ns > 0 {
        tokio::time::sleep(Duration::from_nanos(wait_ns as u64) + Duration::from_millis(300)).await;
    }

    // Step 3: every call as every caller.
    let rows = rows();
    let mut observed = vec![vec![Class::Allowed; columns.len()]; rows.len()];
    let mut mismatches = Vec::new();
    let mut serial = 0;
    for (row_index, row) in rows.iter().enumerate() {
        for (column_index, column) in columns.iter_mut().enumerate() {
            serial += 1;
            let (class, summary) = perform(&node, column, *row, serial).await;
            observed[row_index][column_index] = class;
            let want = expected(column.caller, row.call.needs(), row.tenant);
            if class != want {
                mismatches.push(format!(
                    "{} as {}: expected {}, got {summary}",
                    row.label(),
                    column.label,
                    want.cell()
                ));
            }
        }
    }

    // Step 4: the matrix, then the checks.
    let row_width = rows.iter().map(|row| row.label().len()).max().unwrap_or(0);
    let mut header = format!("{:row_width$}", "");
    for column in &columns {
        header.push_str(&format!(" {:>12}", column.label));
    }
    println!("{header}");
    for (row_index, row) in rows.iter().enumerate() {
        let mut line = format!("{:row_width$}", row.label());
        for (column_index, column) in columns.iter().enumerate() {
            let class = observed[row_index][column_index];
            let want = expected(column.caller, row.call.needs(), row.tenant);
            let mark = if class == want { "" } else { "!" };
            line.push_str(&format!(" {:>12}", format!("{}{mark}", class.cell())));
        }
        println!("{line}");
    }
    println!(
        "{} cells; ! marks a cell that differs from the rules",
        rows.len() * columns.len()
    );
    for (label, call, tenant, class) in LITERAL_CELLS {
        let row_index = rows
            .iter()
            .position(|row| row.call == call && row.tenant == tenant)
            .expect("the literal cell's row");
        let column_index = columns
            .iter()
            .position(|column| column.label == label)
            .expect("the literal cell's column");
        let got = observed[row_index][column_index];
        if got != class {
            mismatches.push(format!(
                "literal cell {} as {label}: expected {}, got {}",
                rows[row_index].label(),
                class.cell(),
                got.cell()
            ));
        }
    }
    // `Status` as a key that is not the admin's: where the node is, not its insides.
    let read_column = columns
        .iter_mut()
        .find(|column| column.label == "read@acme")
        .expect("the read key's column");
    let limited = read_column
        .client
        .status(v1::StatusRequest {})
        .await
        .expect("Status as a read key")
        .into_inner();
    assert!(
        limited.shards.is_empty() && limited.data_dir.is_empty() && limited.events == 0,
        "a read key sees the node's internals: {limited:?}"
    );
    assert!(
        !limited.verifier_key.is_empty(),
        "the checkpoint key is shown"
    );
    let full = admin
        .status(v1::StatusRequest {})
        .await
        .expect("Status as the admin")
        .into_inner();
    assert!(
        !full.shards.is_empty() && !full.data_dir.is_empty(),
        "the admin sees the node's internals: {full:?}"
    );

    assert!(
        mismatches.is_empty(),
        "{} cells differ from the rules:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}
