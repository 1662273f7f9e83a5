//! `get`, `tail` and `status`: reading from a node.

use std::io;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::json;
use trail_client::json::stored_event_to_string;
use trail_client::Client;
use trail_proto::v1::{StatusResponse, TailRequest};

use crate::output::{group_thousands, human_bytes, human_duration, mebibytes, print_line};

/// How long `tail --follow` waits before asking again once it has caught up. Half a
/// second feels live to a person and costs the node two small reads a second.
const FOLLOW_POLL_INTERVAL_MS: u64 = 500;

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The tenant the event belongs to.
    #[arg(long)]
    tenant: String,
    /// The event's event_id (the producer's idempotency key).
    event_id: String,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// The tenant whose events to print.
    #[arg(long)]
    tenant: String,
    /// Start after this sequence number; 0 starts at the stream's beginning.
    #[arg(long, default_value_t = 0)]
    after_seq: u64,
    /// Events per request (without --follow: the number printed).
    #[arg(long, default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
    /// Stream name; by default the tenant's first stream.
    #[arg(long, default_value = "")]
    stream: String,
    /// Keep polling for new events (every 500 ms once caught up) until interrupted.
    #[arg(long, short)]
    follow: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the status as one JSON object.
    #[arg(long)]
    json: bool,
}

pub async fn get(client: &Client, args: GetArgs) -> anyhow::Result<ExitCode> {
    let stored = client.get_event(&args.tenant, &args.event_id).await?;
    if let Err(error) = print_line(&stored_event_to_string(&stored, true)) {
        return closed_stdout(error);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn tail(client: &Client, args: TailArgs) -> anyhow::Result<ExitCode> {
    let mut after_seq = args.after_seq;
    loop {
        let page = client
            .tail_request(TailRequest {
                tenant_id: args.tenant.clone(),
                after_seq,
                limit: args.limit,
                stream: args.stream.clone(),
                ..TailRequest::default()
            })
            .await?;
        let events_count = page.events.len();
        for stored in &page.events {
            if let Err(error) = print_line(&stored_event_to_string(stored, false)) {
                return closed_stdout(error);
            }
            after_seq = after_seq.max(stored.seq);
        }
        if !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
        // A full page means more may be waiting: ask again at once.
        if events_count < args.limit as usize {
            tokio::time::sleep(Duration::from_millis(FOLLOW_POLL_INTERVAL_MS)).await;
        }
    }
}

pub async fn status(client: &Client, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let status = client.status().await?;
    let text = if args.json {
        serde_json::to_string_pretty(&status_json(&status)).expect("status JSON serializes")
    } else {
        status_table(&status)
    };
    if let Err(error) = print_line(&text) {
        return closed_stdout(error);
    }
    Ok(ExitCode::SUCCESS)
}

/// A reader that went away (`| head`) is a normal end; other write errors are not.
pub(crate) fn closed_stdout(error: io::Error) -> anyhow::Result<ExitCode> {
    if error.kind() == io::ErrorKind::BrokenPipe {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(anyhow::Error::new(error).context("cannot write to stdout"))
    }
}

fn status_json(status: &StatusResponse) -> serde_json::Value {
    let shards: Vec<serde_json::Value> = status
        .shards
        .iter()
        .map(|shard| {
            json!({
                "shard_id": shard.shard_id,
                "role": shard.role,
                "leader_node_id": shard.leader_node_id,
                "term": shard.term,
                "last_log_index": shard.last_log_index,
                "last_applied_index": shard.last_applied_index,
                "events": shard.events,
                "streams": shard.streams,
                "queue_bytes": shard.queue_bytes,
                "indexed_index": shard.indexed_index,
                "index_lag_ms": shard.index_lag_ms,
                "index_rebuild_remaining": shard.index_rebuild_remaining,
                "dedup_rebuilt_ids": shard.dedup_rebuilt_ids,
                "replicas": shard.replicas.iter().map(|replica| json!({
                    "node_id": replica.node_id,
                    "matched_index": replica.matched_index,
                    "lag_entries": replica.lag_entries,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "node_id": status.node_id,
        "version": status.version,
        "data_dir": status.data_dir,
        "grpc_addr": status.grpc_addr,
        "http_addr": status.http_addr,
        "verifier_key": status.verifier_key,
        "uptime_ms": status.uptime_ms,
        "events": status.events,
        "rss_bytes": status.rss_bytes,
        "peak_rss_bytes": status.peak_rss_bytes,
        "shards": shards,
        "cluster": status.cluster.as_ref().map(|map| json!({
            "cluster_id": map.cluster_id,
            "epoch": map.epoch,
            "shards": map.shards,
            "replicas": map.replicas,
            "nodes": map.nodes.iter().map(|node| json!({
                "node_id": node.node_id,
                "grpc_addr": node.grpc_addr,
            })).collect::<Vec<_>>(),
            "placement": map.placement.iter().map(|shard| json!({
                "shard_id": shard.shard_id,
                "replicas": shard.replicas,
            })).collect::<Vec<_>>(),
        })),
    })
}

fn status_table(status: &StatusResponse) -> String {
    let mut lines = vec![
        format!("node        {}", status.node_id),
        format!("version     {}", status.version),
        format!("data dir    {}", status.data_dir),
    ];
    if !status.grpc_addr.is_empty() || !status.http_addr.is_empty() {
        lines.push(format!(
            "addresses   grpc {}  http {}",
            status.grpc_addr, status.http_addr
        ));
    }
    if !status.verifier_key.is_empty() {
        // The one line an auditor copies: the key to pin (see `trailctl verify --help`).
        lines.push(format!("verifier    {}", status.verifier_key));
    }
    lines.push(format!(
        "uptime      {}",
        human_duration(Duration::from_millis(status.uptime_ms))
    ));
    lines.push(format!("events      {}", group_thousands(status.events)));
    lines.push(format!(
        "memory      RSS {} MiB, peak {} MiB",
        mebibytes(status.rss_bytes),
        mebibytes(status.peak_rss_bytes)
    ));
    if let Some(map) = &status.cluster {
        let nodes: Vec<String> = map
            .nodes
            .iter()
            .map(|node| format!("{}={}", node.node_id, node.grpc_addr))
            .collect();
        lines.push(format!(
            "cluster     {} (map epoch {}): {} data shards x {} replicas on nodes {}",
            map.cluster_id,
            map.epoch,
            map.shards,
            map.replicas,
            nodes.join(",")
        ));
    }
    lines.push(String::new());

    let header = [
        "shard",
        "role",
        "leader",
        "term",
        "last log",
        "applied",
        "events",
        "streams",
        "queued",
        "index lag",
        "replicas (node:lag)",
    ];
    let mut rows: Vec<Vec<String>> = Vec::with_capacity(status.shards.len());
    for shard in &status.shards {
        rows.push(vec![
            shard.shard_id.to_string(),
            shard.role.clone(),
            shard.leader_node_id.to_string(),
            shard.term.to_string(),
            group_thousands(shard.last_log_index),
            group_thousands(shard.last_applied_index),
            group_thousands(shard.events),
            group_thousands(u64::from(shard.streams)),
            human_bytes(shard.queue_bytes),
            index_lag(shard),
            shard
                .replicas
                .iter()
                .map(|replica| format!("{}:{}", replica.node_id, replica.lag_entries))
                .collect::<Vec<_>>()
                .join(" "),
        ]);
    }
    let mut widths: Vec<usize> = header.iter().map(|title| title.len()).collect();
    for row in &rows {
        for (column, cell) in row.iter().enumerate() {
            widths[column] = widths[column].max(cell.len());
        }
    }
    // The role column is text and reads best left-aligned; numbers align right.
    let format_row = |cells: &[String]| -> String {
        let mut line = String::new();
        for (column, cell) in cells.iter().enumerate() {
            if column > 0 {
                line.push_str("  ");
            }
            if column == 1 || column == cells.len() - 1 {
                line.push_str(&format!("{cell:<width$}", width = widths[column]));
            } else {
                line.push_str(&format!("{cell:>width$}", width = widths[column]));
            }
        }
        line.trim_end().to_string()
    };
    let header_cells: Vec<String> = header.iter().map(|title| title.to_string()).collect();
    lines.push(format_row(&header_cells));
    if rows.is_empty() {
        lines.push("(no shards)".to_string());
    }
    for row in &rows {
        lines.push(format_row(row));
    }
    // A repair at open is rare and worth an operator's attention (a storage fault, or
    // a data directory written by a version that lost ids after snapshot installs).
    for shard in &status.shards {
        if shard.dedup_rebuilt_ids > 0 {
            lines.push(format!(
                "shard {}: its event-id index was missing ids at open and was rebuilt from \
                 the events ({} ids); see the node's log",
                shard.shard_id,
                group_thousands(shard.dedup_rebuilt_ids)
            ));
        }
    }
    lines.join("\n")
}

#[derive(Debug, clap::Args)]
pub struct ReindexArgs {
    /// Ask for the rebuild and return without waiting for it.
    #[arg(long)]
    no_wait: bool,

    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

/// `trailctl reindex`: starts the rebuild, then follows `index_rebuild_remaining`.
pub async fn reindex(client: &Client, args: ReindexArgs) -> anyhow::Result<ExitCode> {
    let events = client.reindex().await?;
    if args.no_wait {
        print_line(&format!(
            "rebuilding the query indexes of {} events; `trailctl status` shows the progress",
            group_thousands(events)
        ))?;
        return Ok(ExitCode::SUCCESS);
    }
    let bar = crate::output::progress_bar(
        Some(events.max(1)),
        "{spinner} {elapsed_precise} [{wide_bar}] {human_pos}/{human_len} events indexed",
        args.quiet,
    );
    let started = std::time::Instant::now();
    // The node picks the request up within a few ms; until a shard reports its
    // backlog, it may still read 0.
    tokio::time::sleep(Duration::from_millis(200)).await;
    loop {
        let status = client.status().await?;
        let remaining: u64 = status
            .shards
            .iter()
            .map(|shard| shard.index_rebuild_remaining)
            .sum();
        bar.set_position(events.saturating_sub(remaining));
        if remaining == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bar.finish_and_clear();
    print_line(&format!(
        "rebuilt the query indexes of {} events in {}",
        group_thousands(events),
        human_duration(started.elapsed())
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// How far the query indexes trail the log: a duration, or a rebuild's remaining work.
fn index_lag(shard: &trail_proto::v1::ShardStatus) -> String {
    if shard.index_rebuild_remaining > 0 {
        format!(
            "rebuilding, {} left",
            group_thousands(shard.index_rebuild_remaining)
        )
    } else {
        format!("{} ms", group_thousands(shard.index_lag_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trail_proto::v1::{ClusterMap, ClusterNode, ReplicaStatus, ShardStatus};

    #[test]
    fn status_table_aligns_columns() {
        let status = StatusResponse {
            node_id: 1,
            version: "0.1.0".to_string(),
            data_dir: "/var/lib/trail".to_string(),
            shards: vec![ShardStatus {
                shard_id: 0,
                leader_node_id: 1,
                term: 3,
                last_log_index: 12_345,
                last_applied_index: 12_345,
                events: 1_000_000,
                streams: 1_000,
                queue_bytes: 1536,
                role: "leader".to_string(),
                indexed_index: 12_340,
                index_lag_ms: 420,
                index_rebuild_remaining: 0,
                dedup_rebuilt_ids: 0,
                replicas: vec![
                    ReplicaStatus {
                        node_id: 1,
                        matched_index: 12_345,
                        lag_entries: 0,
                    },
                    ReplicaStatus {
                        node_id: 2,
                        matched_index: 12_300,
                        lag_entries: 45,
                    },
                ],
            }],
            events: 1_000_000,
            uptime_ms: 3_725_000,
            rss_bytes: 200 << 20,
            peak_rss_bytes: 312 << 20,
            grpc_addr: "127.0.0.1:7400".to_string(),
            http_addr: "127.0.0.1:7401".to_string(),
            verifier_key: "trail.local+1a2b3c4d+AQ".to_string(),
            cluster: Some(ClusterMap {
                cluster_id: "trail".to_string(),
                nodes: vec![
                    ClusterNode {
                        node_id: 1,
                        grpc_addr: "10.0.0.7:7400".to_string(),
                        peer_addr: "10.0.0.7:7402".to_string(),
                    },
                    ClusterNode {
                        node_id: 2,
                        grpc_addr: "10.0.0.8:7400".to_string(),
                        peer_addr: "10.0.0.8:7402".to_string(),
                    },
                ],
                shards: 16,
                replicas: 1,
                placement: Vec::new(),
                verifier_key: "trail.local+1a2b3c4d+AQ".to_string(),
                epoch: 1,
            }),
        };
        let table = status_table(&status);
        assert!(table.contains("uptime      1h 02m 05s"), "{table}");
        assert!(
            table.contains("memory      RSS 200 MiB, peak 312 MiB"),
            "{table}"
        );
        assert!(
            table.contains(
                "shard  role    leader  term  last log  applied     events  streams   queued  index lag  replicas (node:lag)"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "    0  leader       1     3    12,345   12,345  1,000,000    1,000  1.5 KiB     420 ms  1:0 2:45"
            ),
            "{table}"
        );
        assert!(
            table.contains("verifier    trail.local+1a2b3c4d+AQ"),
            "{table}"
        );
        assert!(
            table.contains(
                "cluster     trail (map epoch 1): 16 data shards x 1 replicas on nodes 1=10.0.0.7:7400,2=10.0.0.8:7400"
            ),
            "{table}"
        );
        assert_eq!(status_json(&status)["shards"][0]["role"], "leader");
        assert_eq!(
            status_json(&status)["shards"][0]["replicas"][1]["lag_entries"],
            45
        );
        assert_eq!(status_json(&status)["cluster"]["shards"], 16);
        assert_eq!(
            status_json(&status)["verifier_key"],
            "trail.local+1a2b3c4d+AQ"
        );
    }
}
