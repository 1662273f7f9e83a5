//! `trailctl bench verify`: how fast a full audit runs, split into its two costs, each
//! beside a floor measured in the same run.
//!
//! 1. Fetch: every block of the stream with its events over `ListBlocks`, into memory.
//! 2. Audit: the `Auditor` over the fetched bytes (decode every event, hash every leaf,
//!    rebuild every block root, the chain and the stream tree, compare with the signed
//!    checkpoint), on one core.
//! 3. Floor: plain SHA-256 leaf hashes over the same event bytes, on one core: no
//!    verifier can be faster than hashing what it checks.

use std::process::ExitCode;
use std::time::Instant;

use futures::StreamExt;
use trail_client::audit::Auditor;
use trail_client::checkpoint::Checkpoint;
use trail_client::event::event_leaf_hash;
use trail_client::Client;

use crate::key::KeyArgs;
use crate::output::{group_thousands, print_line};

#[derive(Debug, clap::Args)]
pub struct BenchVerifyArgs {
    /// Tenant whose stream to audit [default: the tenant with the most events].
    #[arg(long)]
    tenant: Option<String>,

    /// Audit passes over the fetched blocks (the best one is reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    passes: u32,

    #[command(flatten)]
    key: KeyArgs,
}

pub async fn run(client: &Client, args: BenchVerifyArgs) -> anyhow::Result<ExitCode> {
    let (key, _) = args.key.resolve(client).await?;
    let tenant = match args.tenant {
        Some(tenant) => tenant,
        None => largest_tenant(client).await?,
    };
    let response = client.get_checkpoint(&tenant, 0, 0, true).await?;
    let note = response
        .checkpoint
        .map(|checkpoint| checkpoint.note)
        .unwrap_or_default();
    let checkpoint = Checkpoint::from_note(&note, &key)?;

    let started = Instant::now();
    let mut blocks = Vec::new();
    let mut stream = client
        .list_blocks(&tenant, 0, 0, checkpoint.tree_size, true)
        .await?;
    while let Some(block) = stream.next().await {
        let block = block?;
        blocks.push((block.header, block.events));
    }
    let fetch_seconds = started.elapsed().as_secs_f64();
    let events: u64 = blocks.iter().map(|(_, events)| events.len() as u64).sum();
    let bytes: u64 = blocks
        .iter()
        .flat_map(|(_, events)| events.iter().map(|event| event.len() as u64))
        .sum();
    if events == 0 {
        anyhow::bail!("tenant {tenant} has no sealed events to audit");
    }

    let mut audit_best = f64::MAX;
    let mut floor_best = f64::MAX;
    for _ in 0..args.passes {
        let started = Instant::now();
        let mut auditor = Auditor::new(&checkpoint.stream);
        for (header, events) in &blocks {
            auditor.feed_block(header, events)?;
        }
        auditor.finish(&checkpoint)?;
        audit_best = audit_best.min(started.elapsed().as_secs_f64());

        let started = Instant::now();
        let mut folded = 0u8;
        for (_, events) in &blocks {
            for event in events {
                folded ^= event_leaf_hash(event)[0];
            }
        }
        std::hint::black_box(folded);
        floor_best = floor_best.min(started.elapsed().as_secs_f64());
    }

    let rate = |seconds: f64| group_thousands((events as f64 / seconds.max(1e-9)) as u64);
    let _ = print_line(&format!(
        "stream {}: {} events in {} blocks ({:.0} MiB), checkpoint tree size {}",
        checkpoint.stream,
        group_thousands(events),
        blocks.len(),
        bytes as f64 / (1 << 20) as f64,
        checkpoint.tree_size
    ));
    let _ = print_line(&format!(
        "fetch   {:>12} events/s  ({:.2} s, ListBlocks from the node)",
        rate(fetch_seconds),
        fetch_seconds
    ));
    let _ = print_line(&format!(
        "audit   {:>12} events/s  ({:.3} s, one core: decode, leaf hashes, block roots, chain, tree, checkpoint)",
        rate(audit_best),
        audit_best
    ));
    let _ = print_line(&format!(
        "floor   {:>12} events/s  ({:.3} s, one core: SHA-256 leaf hashes only, same bytes, same run)",
        rate(floor_best),
        floor_best
    ));
    let _ = print_line(&format!(
        "end to end (fetch + audit, sequential): {} events/s",
        rate(fetch_seconds + audit_best)
    ));
    Ok(ExitCode::SUCCESS)
}

pub async fn largest_tenant(client: &Client) -> anyhow::Result<String> {
    let mut best: Option<(u64, String)> = None;
    let mut after = String::new();
    loop {
        let page = client.list_streams(&after, 0).await?;
        for stream in page.streams {
            if best.as_ref().is_none_or(|(seq, _)| stream.last_seq > *seq) {
                best = Some((stream.last_seq, stream.tenant_id));
            }
        }
        if page.next_after_tenant_id.is_empty() {
            break;
        }
        after = page.next_after_tenant_id;
    }
    best.map(|(_, tenant)| tenant)
        .ok_or_else(|| anyhow::anyhow!("the node has no tenants yet"))
}
