//! `trailctl bench query`: latency of the queries tenant admins run, at the client, one
//! at a time, beside the round trip of a `Status` call measured in the same run (the
//! floor of any request to the node).
//!
//! The queries, on the tenant with the most events (the whale) unless `--tenant`:
//! newest 50 of the tenant; of an actor; of a resource; of an action within 7 days;
//! a keyset page of 200 deep in the tenant's history (the second page of a query that
//! ends at some point of it); and the 7-day count of failed logins. The actors,
//! resources, actions and deep points come from `--distinct` events spread evenly over
//! the tenant's history, and the timed requests cycle through them, so the figures are
//! not those of one query answered from warm caches over and over.

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

    /// Distinct actors, resources, actions and deep points to cycle through, taken
    /// from events spread evenly over the tenant's history.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    distinct: u32,

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
    /// Distinct requests cycled through.
    distinct: usize,
}

pub async fn run(client: &Client, args: BenchQueryArgs) -> anyhow::Result<ExitCode> {
    let tenant = match args.tenant {
        Some(tenant) => tenant,
        None => largest_tenant(client).await?,
    };
    let events_total = client.status().await?.events;
    let tail = client.tail(&tenant, 0, 1).await?;
    let last_seq = tail.last_seq;
    anyhow::ensure!(last_seq > 0, "tenant {tenant} has no events");
    // Events spread evenly over the history name the actors, resources, actions and
    // deep points the requests cycle through.
    let distinct = u64::from(args.distinct).min(last_seq);
    let mut samples = Vec::with_capacity(distinct as usize);
    for index in 0..distinct {
        let after_seq = last_seq * (2 * index + 1) / (2 * distinct);
        let event = client
            .tail(&tenant, after_seq, 1)
            .await?
            .events
            .into_iter()
            .next()
            .and_then(|stored| stored.event)
            .ok_or_else(|| anyhow::anyhow!("tenant {tenant}: no event at seq {}", after_seq + 1))?;
        samples.push(event);
    }

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
    let each = |make: &dyn Fn(&trail_proto::v1::Event) -> QueryRequest| -> Vec<Probe> {
        samples
            .iter()
            .map(|event| Probe::Query(make(event)))
            .collect()
    };
    // The deep pages: the second page of "everything before this sample".
    let mut deep = Vec::with_capacity(samples.len());
    for event in &samples {
        let mut request = query(
            QueryFilter {
                end_time: event.occurred_at,
                ..QueryFilter::default()
            },
            200,
        );
        request.cursor = client.query(request.clone()).await?.next_cursor;
        deep.push(Probe::Query(request));
    }

    let probes: Vec<(&'static str, Vec<Probe>)> = vec![
        ("status round trip (reference)", vec![Probe::Status]),
        (
            "newest 50 of the tenant",
            vec![Probe::Query(query(QueryFilter::default(), 50))],
        ),
        (
            "newest 50 of an actor",
            each(&|event| {
                query(
                    QueryFilter {
                        actor_id: event
                            .actor
                            .clone()
                            .map(|actor| actor.id)
                            .unwrap_or_default(),
                        ..QueryFilter::default()
                    },
                    50,
                )
            }),
        ),
        (
            "newest 50 of a resource",
            each(&|event| {
                let (resource_type, resource_id) = event
                    .resource
                    .clone()
                    .map(|resource| (resource.r#type, resource.id))
                    .unwrap_or_default();
                query(
                    QueryFilter {
                        resource_type,
                        resource_id,
                        ..QueryFilter::default()
                    },
                    50,
                )
            }),
        ),
        (
            "newest 50 of an action, 7 days",
            each(&|event| {
                query(
                    QueryFilter {
                        action: event.action.clone(),
                        start_time: Some(week_start),
                        end_time: Some(week_end),
                        ..QueryFilter::default()
                    },
                    50,
                )
            }),
        ),
        ("keyset page of 200, deep", deep),
        (
            "count failed logins, 7 days",
            vec![Probe::Count(CountRequest {
                tenant_id: tenant.clone(),
                filter: Some(QueryFilter {
                    action: "auth.login".into(),
                    result: EventResult::Failure as i32,
                    start_time: Some(week_start),
                    end_time: Some(week_end),
                    ..QueryFilter::default()
                }),
                ..CountRequest::default()
            })],
        ),
    ];

    let mut measured = Vec::new();
    for (name, probes) in probes {
        let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let mut result = 0;
        let mut paths = std::collections::BTreeMap::<String, u32>::new();
        for round in 0..10 + args.requests {
            let probe = &probes[round as usize % probes.len()];
            let started = Instant::now();
            let path = match probe {
                Probe::Status => {
                    client.status().await?;
                    String::new()
                }
                Probe::Query(request) => {
                    let page = client.query(request.clone()).await?;
                    result = page.events.len() as u64;
                    page.access_path
                }
                Probe::Count(request) => {
                    result = client.count(request.clone()).await?;
                    "count".into()
                }
            };
            if round >= 10 {
                latency_us.saturating_record(started.elapsed().as_micros() as u64);
                *paths.entry(path).or_default() += 1;
            }
        }
        // The paths taken, with how many requests took each when they differ.
        let path = if paths.len() == 1 {
            paths.into_keys().next().unwrap_or_default()
        } else {
            paths
                .iter()
                .map(|(path, times)| format!("{path} x{times}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        measured.push(Measured {
            name,
            latency_us,
            result,
            path,
            distinct: probes.len(),
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
                    "distinct": m.distinct,
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
        "{:<32} {:>9} {:>9} {:>9} {:>9} {:>8}  {}",
        "query", "p50 ms", "p99 ms", "max ms", "result", "distinct", "path"
    ))?;
    for m in &measured {
        print_line(&format!(
            "{:<32} {:>9.2} {:>9.2} {:>9.2} {:>9} {:>8}  {}",
            m.name,
            ms(m.latency_us.value_at_quantile(0.5)),
            ms(m.latency_us.value_at_quantile(0.99)),
            ms(m.latency_us.max()),
            group_thousands(m.result),
            m.distinct,
            m.path
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}
