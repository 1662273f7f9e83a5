//! `trailctl bench query`: latency of the queries tenant admins run, at the client, one
//! at a time, beside the round trip of a `Status` call measured in the same run (the
//! floor of any request to the node).
//!
//! The queries, on the tenant with the most events (the whale) unless `--tenant`:
//! newest 50 of the tenant; of an actor; of a resource; of an action within 7 days;
//! a keyset page of 200 deep in the tenant's history (the second page of a query that
//! ends halfway through it); and the 7-day count of failed logins.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use trail_client::Client;
use trail_proto::v1::{CountRequest, QueryFilter, QueryRequest, Result as EventResult};
use trail_proto::Timestamp;

use crate::bench_verify::largest_tenant;
use crate::output::{group_thousands, print_line};

const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, clap::Args)]
pub struct BenchQueryArgs {
    /// Tenant to query [default: the tenant with the most events].
    #[arg(long)]
    tenant: Option<String>,

    /// Timed requests per query kind (after 10 untimed ones).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    requests: u32,

    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// One kind of request to time.
enum Probe {
    Query(QueryRequest),
    Count(CountRequest),
    Status,
}

struct Measured {
    name: &'static str,
    latency_us: Histogram<u64>,
    /// Events returned (or counted) by the last request.
    result: u64,
    path: String,
}

pub async fn run(client: &Client, args: BenchQueryArgs) -> anyhow::Result<ExitCode> {
    let tenant = match args.tenant {
        Some(tenant) => tenant,
        None => largest_tenant(client).await?,
    };
    let status = client.status().await?;
    let events_total = status.events;
    let tail = client.tail(&tenant, 0, 1).await?;
    let last_seq = tail.last_seq;
    anyhow::ensure!(last_seq > 0, "tenant {tenant} has no events");
    // A sample from the middle of the history names an actor, a resource and an action.
    let middle = client
        .tail(&tenant, last_seq / 2, 1)
        .await?
        .events
        .into_iter()
        .next()
        .and_then(|stored| stored.event)
        .ok_or_else(|| anyhow::anyhow!("tenant {tenant}: no event at seq {}", last_seq / 2 + 1))?;
    let actor_id = middle.actor.map(|actor| actor.id).unwrap_or_default();
    let (resource_type, resource_id) = middle
        .resource
        .map(|resource| (resource.r#type, resource.id))
        .unwrap_or_default();
    let middle_time = middle.occurred_at.unwrap_or_default();

    let newest = client
        .query(QueryRequest {
            tenant_id: tenant.clone(),
            limit: 1,
            ..QueryRequest::default()
        })
        .await?;
    let newest_time = newest
        .events
        .first()
        .and_then(|stored| stored.event.as_ref())
        .and_then(|event| event.occurred_at)
        .unwrap_or_default();
    let week_end = Timestamp {
        seconds: newest_time.seconds + 1,
        nanos: 0,
    };
    let week_start = Timestamp {
        seconds: week_end.seconds - WEEK.as_secs() as i64,
        nanos: 0,
    };
    let query = |filter: QueryFilter, limit: u32| QueryRequest {
        tenant_id: tenant.clone(),
        filter: Some(filter),
        limit,
        ..QueryRequest::default()
    };
    // The deep page: the second page of "everything before the middle of the history".
    let mut deep = query(
        QueryFilter {
            end_time: Some(middle_time),
            ..QueryFilter::default()
        },
        200,
    );
    deep.cursor = client.query(deep.clone()).await?.next_cursor;

    let probes: Vec<(&'static str, Probe)> = vec![
        ("status round trip (reference)", Probe::Status),
        (
            "newest 50 of the tenant",
            Probe::Query(query(QueryFilter::default(), 50)),
        ),
        (
            "newest 50 of an actor",
            Probe::Query(query(
                QueryFilter {
                    actor_id,
                    ..QueryFilter::default()
                },
                50,
            )),
        ),
        (
            "newest 50 of a resource",
            Probe::Query(query(
                QueryFilter {
                    resource_type,
                    resource_id,
                    ..QueryFilter::default()
                },
                50,
            )),
        ),
        (
            "newest 50 of an action, 7 days",
            Probe::Query(query(
                QueryFilter {
                    action: middle.action.clone(),
                    start_time: Some(week_start),
                    end_time: Some(week_end),
                    ..QueryFilter::default()
                },
                50,
            )),
        ),
        ("keyset page of 200, deep", Probe::Query(deep)),
        (
            "count failed logins, 7 days",
            Probe::Count(CountRequest {
                tenant_id: tenant.clone(),
                filter: Some(QueryFilter {
                    action: "auth.login".into(),
                    result: EventResult::Failure as i32,
                    start_time: Some(week_start),
                    end_time: Some(week_end),
                    ..QueryFilter::default()
                }),
                ..CountRequest::default()
            }),
        ),
    ];

    let mut measured = Vec::new();
    for (name, probe) in probes {
        let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let mut result = 0;
        let mut path = String::new();
        for round in 0..10 + args.requests {
            let started = Instant::now();
            match &probe {
                Probe::Status => {
                    client.status().await?;
                }
                Probe::Query(request) => {
                    let page = client.query(request.clone()).await?;
                    result = page.events.len() as u64;
                    path = page.access_path;
                }
                Probe::Count(request) => {
                    result = client.count(request.clone()).await?;
                    path = "count".into();
                }
            }
            if round >= 10 {
                latency_us.saturating_record(started.elapsed().as_micros() as u64);
            }
        }
        measured.push(Measured {
            name,
            latency_us,
            result,
            path,
        });
    }

    let ms = |us: u64| us as f64 / 1000.0;
    if args.json {
        let rows: Vec<serde_json::Value> = measured
            .iter()
            .map(|m| {
                serde_json::json!({
                    "query": m.name,
                    "p50_ms": ms(m.latency_us.value_at_quantile(0.5)),
                    "p99_ms": ms(m.latency_us.value_at_quantile(0.99)),
                    "max_ms": ms(m.latency_us.max()),
                    "result": m.result,
                    "path": m.path,
                })
            })
            .collect();
        print_line(
            &serde_json::json!({
                "tenant": tenant,
                "tenant_events": last_seq,
                "node_events": events_total,
                "requests": args.requests,
                "queries": rows,
            })
            .to_string(),
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    print_line(&format!(
        "tenant {tenant}: {} events (node: {}); {} timed requests each, one at a time",
        group_thousands(last_seq),
        group_thousands(events_total),
        args.requests
    ))?;
    print_line(&format!(
        "{:<32} {:>9} {:>9} {:>9} {:>9}  {}",
        "query", "p50 ms", "p99 ms", "max ms", "result", "path"
    ))?;
    for m in &measured {
        print_line(&format!(
            "{:<32} {:>9.2} {:>9.2} {:>9.2} {:>9}  {}",
            m.name,
            ms(m.latency_us.value_at_quantile(0.5)),
            ms(m.latency_us.value_at_quantile(0.99)),
            ms(m.latency_us.max()),
            group_thousands(m.result),
            m.path
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}
