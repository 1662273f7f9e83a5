//! `trailctl api-key create|list|revoke`: the node's API keys (docs/SECURITY.md).
//!
//! Every call needs an admin key. A created key's token is printed once: the node keeps
//! only its secret's hash and cannot show it again.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use trail_client::{ApiKey, Client, CreateApiKeyRequest, Role};

#[derive(Debug, clap::Subcommand)]
pub enum ApiKeyCommand {
    /// Create a key of one role, for one tenant or for every tenant; print its token once.
    ///
    /// Roles: ingest (record events), read (query, count, get, tail), audit (read, plus
    /// exports, proofs, blocks, checkpoints), admin (everything, every tenant: status,
    /// reindex, cluster and key management). A tenant's portal holds a read key of its
    /// tenant; a producing service one ingest key of all tenants.
    ///
    /// The token is shown only once (the node keeps only its hash): store it now, and
    /// pass it with --token-file, --token or TRAIL_TOKEN.
    ///
    /// Examples:
    ///   trailctl api-key create --tenant acme --role read --name acme-portal
    ///   trailctl api-key create --all-tenants --role ingest --name billing --expires 90d
    ///   trailctl api-key create --tenant acme --role audit --expires 2027-01-01T00:00:00Z --json
    #[command(verbatim_doc_comment)]
    Create(CreateArgs),

    /// List the keys: id, name, role, scope, created, expires, revoked.
    ///
    /// Revoked and expired keys only with --all. Tokens are never shown.
    List(ListArgs),

    /// Revoke a key by its id (as `api-key list` shows it); every node refuses it within
    /// a second. The revocation is recorded in the ledger.
    Revoke(RevokeArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    Ingest,
    Read,
    Audit,
    Admin,
}

impl RoleArg {
    fn to_proto(self) -> Role {
        match self {
            RoleArg::Ingest => Role::Ingest,
            RoleArg::Read => Role::Read,
            RoleArg::Audit => Role::Audit,
            RoleArg::Admin => Role::Admin,
        }
    }
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("scope").required(true).args(["tenant", "all_tenants"])))]
pub struct CreateArgs {
    /// The one tenant the key may act on.
    #[arg(long, value_name = "TENANT")]
    pub tenant: Option<String>,

    /// The key may act on every tenant (a platform's key).
    #[arg(long)]
    pub all_tenants: bool,

    /// What the key may do.
    #[arg(long, value_enum)]
    pub role: RoleArg,

    /// A name shown beside the key's id in `api-key list` and in audit records.
    #[arg(long, default_value = "")]
    pub name: String,

    /// When the key stops working: a duration from now (90m, 12h, 30d, 8w) or an RFC
    /// 3339 time (2027-01-01T00:00:00Z). Default: never.
    #[arg(long, value_name = "DURATION|TIME", value_parser = parse_expiry)]
    pub expires: Option<Expiry>,

    /// Print the key and its token as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Revoked and expired keys too.
    #[arg(long)]
    pub all: bool,

    /// One JSON object per key, one per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    /// The key's id: `k` and 26 characters, as `api-key list` shows it.
    #[arg(value_name = "ID")]
    pub key_id: String,

    /// Print the revoked key as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `--expires`: after a while, or at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    After(Duration),
    At(i64),
}

impl Expiry {
    /// The expiry as Unix nanoseconds, given the time now.
    fn at_ns(self, now_ns: i64) -> i64 {
        match self {
            Expiry::After(duration) => {
                now_ns.saturating_add(i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX))
            }
            Expiry::At(at_ns) => at_ns,
        }
    }
}

/// Longest `--expires` duration: 100 years, far beyond any sane key life but well
/// inside i64 nanoseconds.
const EXPIRY_DAYS_MAX: u64 = 36_500;

fn parse_expiry(text: &str) -> Result<Expiry, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        let at_ns = time
            .timestamp_nanos_opt()
            .ok_or_else(|| format!("{text:?} is out of range"))?;
        return Ok(Expiry::At(at_ns));
    }
    let invalid = || {
        format!(
            "{text:?} is neither a duration (90m, 12h, 30d, 8w) nor an RFC 3339 time \
             (2027-01-01T00:00:00Z)"
        )
    };
    let split = text.len().checked_sub(1).ok_or_else(invalid)?;
    let (count, unit) = text.split_at(split);
    let count: u64 = count.parse().map_err(|_| invalid())?;
    let unit_seconds: u64 = match unit {
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(invalid()),
    };
    if count == 0 {
        return Err(format!(
            "{text:?} is no time at all; give a duration above 0"
        ));
    }
    let seconds = count.saturating_mul(unit_seconds);
    if seconds > EXPIRY_DAYS_MAX * 86_400 {
        return Err(format!("{text:?} is more than {EXPIRY_DAYS_MAX} days"));
    }
    Ok(Expiry::After(Duration::from_secs(seconds)))
}

fn now_ns() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_nanos()).unwrap_or(i64::MAX)
}

pub async fn run(client: &Client, command: ApiKeyCommand) -> anyhow::Result<ExitCode> {
    match command {
        ApiKeyCommand::Create(args) => create(client, args).await,
        ApiKeyCommand::List(args) => list(client, args).await,
        ApiKeyCommand::Revoke(args) => revoke(client, args).await,
    }
}

async fn create(client: &Client, args: CreateArgs) -> anyhow::Result<ExitCode> {
    let now = now_ns();
    let expires_at_ns = match args.expires {
        None => 0,
        Some(expiry) => {
            let at_ns = expiry.at_ns(now);
            if at_ns <= now {
                anyhow::bail!("--expires: {} is in the past", format_time(at_ns));
            }
            at_ns
        }
    };
    let tenant_id = args.tenant.clone().unwrap_or_default();
    if args.tenant.is_some() && tenant_id.is_empty() {
        anyhow::bail!("--tenant: is empty; give a tenant id, or --all-tenants");
    }
    let response = client
        .create_api_key(CreateApiKeyRequest {
            name: args.name.clone(),
            role: args.role.to_proto() as i32,
            tenant_id,
            all_tenants: args.all_tenants,
            expires_at_ns,
        })
        .await?;
    let key = response.key.unwrap_or_default();
    if args.json {
        let mut object = key_json(&key);
        object["token"] = Value::String(response.token);
        println!("{object}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("created API key {}", key.key_id);
    if !key.name.is_empty() {
        println!("  name     {}", key.name);
    }
    println!("  role     {}", role_name(key.role));
    println!("  scope    {}", scope(&key));
    println!("  expires  {}", optional_time(key.expires_at_ns, "never"));
    println!("token (shown only once; the node keeps only its hash, store it now):");
    println!("{}", response.token);
    Ok(ExitCode::SUCCESS)
}

async fn list(client: &Client, args: ListArgs) -> anyhow::Result<ExitCode> {
    let keys = client.list_api_keys(args.all).await?;
    if args.json {
        for key in &keys {
            println!("{}", key_json(key));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![[
        "ID".to_string(),
        "NAME".to_string(),
        "ROLE".to_string(),
        "SCOPE".to_string(),
        "CREATED".to_string(),
        "EXPIRES".to_string(),
        "REVOKED".to_string(),
    ]];
    for key in &keys {
        rows.push([
            key.key_id.clone(),
            if key.name.is_empty() {
                "-".to_string()
            } else {
                key.name.clone()
            },
            role_name(key.role).to_string(),
            scope(key),
            format_time(key.created_at_ns),
            optional_time(key.expires_at_ns, "never"),
            optional_time(key.revoked_at_ns, "-"),
        ]);
    }
    for line in table(&rows) {
        println!("{line}");
    }
    if keys.is_empty() {
        println!("(no {}keys)", if args.all { "" } else { "active " });
    }
    Ok(ExitCode::SUCCESS)
}

async fn revoke(client: &Client, args: RevokeArgs) -> anyhow::Result<ExitCode> {
    let key = client.revoke_api_key(&args.key_id).await?;
    if args.json {
        println!("{}", key_json(&key));
    } else {
        println!(
            "revoked API key {} ({}, {}) at {}",
            key.key_id,
            role_name(key.role),
            scope(&key),
            optional_time(key.revoked_at_ns, "-")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Columns padded to their widest cell, two spaces apart; the last is not padded.
fn table<const N: usize>(rows: &[[String; N]]) -> Vec<String> {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut lines = Vec::with_capacity(rows.len());
    for row in rows {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            if column + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[column]));
            }
        }
        lines.push(line.trim_end().to_string());
    }
    lines
}

fn role_name(role: i32) -> &'static str {
    match Role::try_from(role) {
        Ok(Role::Ingest) => "ingest",
        Ok(Role::Read) => "read",
        Ok(Role::Audit) => "audit",
        Ok(Role::Admin) => "admin",
        _ => "unknown",
    }
}

fn scope(key: &ApiKey) -> String {
    if key.all_tenants {
        "all tenants".to_string()
    } else {
        format!("tenant {}", key.tenant_id)
    }
}

fn format_time(time_ns: i64) -> String {
    DateTime::<Utc>::from_timestamp_nanos(time_ns).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The time, or `none` for 0 (never set).
fn optional_time(time_ns: i64, none: &str) -> String {
    if time_ns == 0 {
        none.to_string()
    } else {
        format_time(time_ns)
    }
}

/// A key as JSON: its fields, times in RFC 3339 (`null` when never set).
fn key_json(key: &ApiKey) -> Value {
    let time = |time_ns: i64| {
        if time_ns == 0 {
            Value::Null
        } else {
            Value::String(format_time(time_ns))
        }
    };
    json!({
        "key_id": key.key_id,
        "name": key.name,
        "role": role_name(key.role),
        "tenant_id": if key.all_tenants { Value::Null } else { Value::String(key.tenant_id.clone()) },
        "all_tenants": key.all_tenants,
        "created_at": time(key.created_at_ns),
        "expires_at": time(key.expires_at_ns),
        "revoked_at": time(key.revoked_at_ns),
        "created_by": key.created_by,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_are_durations_or_times() {
        assert_eq!(
            parse_expiry("30d").unwrap(),
            Expiry::After(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(
            parse_expiry("90m").unwrap(),
            Expiry::After(Duration::from_secs(5_400))
        );
        assert_eq!(
            parse_expiry("2027-01-01T00:00:00Z").unwrap(),
            Expiry::At(1_798_761_600_000_000_000)
        );
        for bad in ["", "d", "30", "30y", "-1d", "0d", "99999999d", "2027-13-01"] {
            let error = parse_expiry(bad).unwrap_err();
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
        assert_eq!(
            Expiry::After(Duration::from_secs(1)).at_ns(5),
            1_000_000_005
        );
    }

    #[test]
    fn a_table_pads_every_column_but_the_last() {
        let rows = [
            ["ID".to_string(), "NAME".to_string(), "X".to_string()],
            ["k1".to_string(), "n".to_string(), "-".to_string()],
        ];
        assert_eq!(table(&rows), vec!["ID  NAME  X", "k1  n     -"]);
    }
}
