//! `trailctl verify`: the full audit of tenants' streams, and the consistency of a kept
//! checkpoint with the node's current tree.
//!
//! A verification failure is reported and the run goes on to the next tenant (exit 1 at
//! the end); a node that cannot be reached stops the run (exit 2).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use futures::StreamExt;
use trail_client::audit::Auditor;
use trail_client::checkpoint::Checkpoint;
use trail_client::note::VerifierKey;
use trail_client::verify::verify_consistency;
use trail_client::Client;

use crate::key::{read_note_file, KeyArgs};
use crate::output::{group_thousands, print_line, progress_bar};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Tenant whose stream to audit in full; repeat the flag for several tenants.
    #[arg(long = "tenant", value_name = "TENANT")]
    tenants: Vec<String>,

    /// Stream index within each tenant (0 is the first stream). With --checkpoint, the
    /// kept checkpoint names its stream; this flag, if given, must agree.
    #[arg(long, value_name = "INDEX")]
    stream_index: Option<u32>,

    /// A checkpoint kept from earlier (`trailctl checkpoint --out FILE`): check its
    /// signature, then that the node's current tree extends it (RFC 9162 consistency
    /// proof). Fails when the node's store was rolled back or its history rewritten.
    /// The tenant is the checkpoint's; --tenant, if given, must agree.
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,

    /// With --checkpoint: after the consistency check, also audit the stream in full.
    #[arg(long, requires = "checkpoint")]
    full: bool,

    /// Audit every tenant's stream on the node (listed with ListStreams), one after
    /// the other; the exit code is 1 if any fails.
    #[arg(long, conflicts_with_all = ["tenants", "checkpoint"])]
    all_tenants: bool,

    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,

    #[command(flatten)]
    key: KeyArgs,
}

/// The result of one check that reached the node: a line for stdout, or the failure.
type Checked<T> = Result<T, String>;

impl VerifyArgs {
    /// Checks the flags before any connection, so a bad command line is exit code 1
    /// whether or not the node is up.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.checkpoint.is_none() && self.tenants.is_empty() && !self.all_tenants {
            anyhow::bail!(
                "verify needs --tenant TENANT (repeatable) or --all-tenants for a full audit, \
                 or --checkpoint FILE to check a kept checkpoint"
            );
        }
        if self.checkpoint.is_some() && self.tenants.len() > 1 {
            anyhow::bail!(
                "--checkpoint checks one stream: pass at most one --tenant (the checkpoint's)"
            );
        }
        Ok(())
    }
}

pub async fn run(client: &Client, args: VerifyArgs) -> anyhow::Result<ExitCode> {
    args.validate()?;
    let (key, _origin) = args.key.resolve(client).await?;
    let mut failed = false;
    match &args.checkpoint {
        Some(path) => {
            let note = read_note_file(path)?;
            let kept = match Checkpoint::from_note(&note, &key) {
                Ok(kept) => kept,
                Err(error) => {
                    eprintln!("FAILED: kept checkpoint {}: {error}", path.display());
                    return Ok(ExitCode::from(1));
                }
            };
            if let Some(tenant) = args.tenants.first() {
                if *tenant != kept.tenant_id {
                    anyhow::bail!(
                        "--tenant {tenant} does not match the kept checkpoint, which is for \
                         tenant {} (stream {})",
                        kept.tenant_id,
                        kept.stream
                    );
                }
            }
            if let Some(stream_index) = args.stream_index {
                if stream_index != kept.stream_index {
                    anyhow::bail!(
                        "--stream-index {stream_index} does not match the kept checkpoint, \
                         which is for stream {}",
                        kept.stream
                    );
                }
            }
            match check_consistency(client, &key, &kept).await? {
                Ok((latest, line)) => {
                    report_ok(&line);
                    if args.full {
                        let audited = full_audit(
                            client,
                            &key,
                            &kept.tenant_id,
                            kept.stream_index,
                            Some(latest),
                            args.quiet,
                        )
                        .await?;
                        failed |= report(audited);
                    }
                }
                Err(problem) => failed |= report(Err(problem)),
            }
        }
        None => {
            let stream_index = args.stream_index.unwrap_or(0);
            let tenants = if args.all_tenants {
                all_tenants(client).await?
            } else {
                args.tenants.clone()
            };
            let started = std::time::Instant::now();
            let (mut passed, mut events) = (0usize, 0u64);
            for tenant in &tenants {
                let audited =
                    full_audit(client, &key, tenant, stream_index, None, args.quiet).await?;
                if let Ok(line) = &audited {
                    passed += 1;
                    events += events_in_line(line);
                }
                failed |= report(audited);
            }
            if tenants.len() > 1 {
                let seconds = started.elapsed().as_secs_f64();
                report_ok(&format!(
                    "{passed} of {} streams verified, {events} events in {seconds:.1}s ({:.0} events/s)",
                    tenants.len(),
                    events as f64 / seconds.max(1e-9),
                ));
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Every tenant with a stream on the node, page by page.
async fn all_tenants(client: &Client) -> anyhow::Result<Vec<String>> {
    let mut tenants = Vec::new();
    let mut after = String::new();
    loop {
        let page = client
            .list_streams(&after, 0)
            .await
            .map_err(|error| anyhow::anyhow!("ListStreams failed: {error}"))?;
        tenants.extend(page.streams.into_iter().map(|stream| stream.tenant_id));
        if page.next_after_tenant_id.is_empty() {
            return Ok(tenants);
        }
        after = page.next_after_tenant_id;
    }
}

/// The event count in a "verified N events" line (0 when it has none).
fn events_in_line(line: &str) -> u64 {
    line.split_once("verified ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|count| count.replace(',', "").parse().ok())
        .unwrap_or(0)
}

fn report_ok(line: &str) {
    // A closed stdout (`| head`) loses nothing: the exit code carries the verdict.
    let _ = print_line(line);
}

/// Prints the outcome; true when it failed.
fn report(checked: Checked<String>) -> bool {
    match checked {
        Ok(line) => {
            report_ok(&line);
            false
        }
        Err(problem) => {
            eprintln!("FAILED: {problem}");
            true
        }
    }
}

/// Splits a client error into "the node is unreachable" (the run stops: `Err`) and any
/// other failure of this check (`Ok(problem)`).
fn classify(error: trail_client::Error, context: &str) -> anyhow::Result<String> {
    if error.is_connection_failure() {
        return Err(anyhow::Error::new(error).context(context.to_string()));
    }
    Ok(format!("{context}: {error}"))
}

/// Fetches a fresh checkpoint (the node seals first) and verifies its signature and
/// stream.
async fn latest_checkpoint(
    client: &Client,
    key: &VerifierKey,
    tenant: &str,
    stream_index: u32,
) -> anyhow::Result<Checked<Checkpoint>> {
    let stream = format!("{tenant}/{stream_index}");
    let response = match client.get_checkpoint(tenant, stream_index, 0, true).await {
        Ok(response) => response,
        Err(error) => {
            return Ok(Err(classify(
                error,
                &format!("stream {stream}: GetCheckpoint failed"),
            )?))
        }
    };
    let note = response
        .checkpoint
        .map(|checkpoint| checkpoint.note)
        .unwrap_or_default();
    let checkpoint = match Checkpoint::from_note(&note, key) {
        Ok(checkpoint) => checkpoint,
        Err(error) => return Ok(Err(format!("stream {stream}: the node's latest {error}"))),
    };
    if checkpoint.stream != stream {
        return Ok(Err(format!(
            "stream {stream}: the node answered with a checkpoint of stream {}",
            checkpoint.stream
        )));
    }
    Ok(Ok(checkpoint))
}

/// The kept checkpoint against the node's latest: never smaller, same root at the same
/// size, and a verifying consistency proof otherwise. Returns the latest checkpoint.
async fn check_consistency(
    client: &Client,
    key: &VerifierKey,
    kept: &Checkpoint,
) -> anyhow::Result<Checked<(Checkpoint, String)>> {
    let stream = &kept.stream;
    let latest = match latest_checkpoint(client, key, &kept.tenant_id, kept.stream_index).await? {
        Ok(latest) => latest,
        Err(problem) => return Ok(Err(problem)),
    };
    if latest.origin != kept.origin {
        return Ok(Err(format!(
            "stream {stream}: the node now signs checkpoints of origin {:?}, the kept one is \
             of origin {:?}",
            latest.origin, kept.origin
        )));
    }
    if latest.tree_size < kept.tree_size {
        return Ok(Err(format!(
            "stream {stream}: the node's tree has {} blocks, fewer than the {} of the kept \
             checkpoint: the store was rolled back",
            latest.tree_size, kept.tree_size
        )));
    }
    let proof: Vec<[u8; 32]> = if latest.tree_size == kept.tree_size {
        Vec::new()
    } else {
        let response = match client
            .get_consistency_proof(
                &kept.tenant_id,
                kept.stream_index,
                kept.tree_size,
                latest.tree_size,
            )
            .await
        {
            Ok(response) => response,
            Err(error) => {
                return Ok(Err(classify(
                    error,
                    &format!("stream {stream}: GetConsistencyProof failed"),
                )?))
            }
        };
        // The proof is checked against the checkpoint verified above; the one that
        // comes with the proof must be the same tree head, and signed too.
        let to_note = response.to.map(|to| to.note).unwrap_or_default();
        match Checkpoint::from_note(&to_note, key) {
            Ok(to) if to.tree_size == latest.tree_size && to.root_hash == latest.root_hash => {}
            Ok(to) => {
                return Ok(Err(format!(
                    "stream {stream}: asked for the consistency proof to tree size {}, the \
                     node answered with the checkpoint of tree size {} (root {})",
                    latest.tree_size,
                    to.tree_size,
                    hex::encode(to.root_hash)
                )))
            }
            Err(error) => {
                return Ok(Err(format!(
                    "stream {stream}: the consistency proof's {error}"
                )))
            }
        }
        let mut hashes = Vec::with_capacity(response.proof.len());
        for (position, bytes) in response.proof.iter().enumerate() {
            match <[u8; 32]>::try_from(bytes.as_slice()) {
                Ok(hash) => hashes.push(hash),
                Err(_) => {
                    return Ok(Err(format!(
                        "stream {stream}: consistency proof hash {position} has {} bytes, not 32",
                        bytes.len()
                    )))
                }
            }
        }
        hashes
    };
    if let Err(error) = verify_consistency(
        kept.tree_size,
        latest.tree_size,
        &kept.root_hash,
        &latest.root_hash,
        &proof,
    ) {
        return Ok(Err(format!(
            "stream {stream}: the node's tree of {} blocks does not extend the kept checkpoint \
             of {} blocks ({error}): its history was rewritten (rolled back and regrown, or \
             forked)",
            latest.tree_size, kept.tree_size
        )));
    }
    if latest.last_seq < kept.last_seq {
        return Ok(Err(format!(
            "stream {stream}: the node's checkpoint says seq {}, below the kept checkpoint's \
             {}, over the same blocks",
            latest.last_seq, kept.last_seq
        )));
    }
    let line = format!(
        "stream {stream}: consistent: the kept checkpoint (tree size {}, seq {}) is a prefix \
         of the node's tree (size {}, seq {}, root {})",
        kept.tree_size,
        kept.last_seq,
        latest.tree_size,
        latest.last_seq,
        hex::encode(latest.root_hash)
    );
    Ok(Ok((latest, line)))
}

/// Reads every block of the stream with its events and recomputes everything up to the
/// checkpoint (a fresh one unless given).
async fn full_audit(
    client: &Client,
    key: &VerifierKey,
    tenant: &str,
    stream_index: u32,
    checkpoint_given: Option<Checkpoint>,
    quiet: bool,
) -> anyhow::Result<Checked<String>> {
    let stream = format!("{tenant}/{stream_index}");
    let checkpoint = match checkpoint_given {
        Some(checkpoint) => checkpoint,
        None => match latest_checkpoint(client, key, tenant, stream_index).await? {
            Ok(checkpoint) => checkpoint,
            Err(problem) => return Ok(Err(problem)),
        },
    };
    let started = Instant::now();
    let mut auditor = Auditor::new(&stream);
    let bar = progress_bar(
        Some(checkpoint.last_seq),
        "{spinner} {elapsed_precise} [{wide_bar}] {human_pos}/{human_len} events ({per_sec}) {msg}",
        quiet,
    );
    bar.set_message(stream.clone());
    // An empty stream has nothing to list (and to_block 0 would mean "all of them").
    if checkpoint.tree_size > 0 {
        let listed = client
            .list_blocks(tenant, stream_index, 0, checkpoint.tree_size, true)
            .await;
        let mut blocks = match listed {
            Ok(blocks) => blocks,
            Err(error) => {
                bar.finish_and_clear();
                return Ok(Err(classify(
                    error,
                    &format!("stream {stream}: ListBlocks failed"),
                )?));
            }
        };
        while auditor.blocks() < checkpoint.tree_size {
            let Some(next) = blocks.next().await else {
                // Fewer blocks than the checkpoint covers: `finish` names the gap.
                break;
            };
            let block = match next {
                Ok(block) => block,
                Err(error) => {
                    bar.finish_and_clear();
                    let context = format!(
                        "stream {stream}: ListBlocks failed after {} blocks",
                        auditor.blocks()
                    );
                    return Ok(Err(classify(error, &context)?));
                }
            };
            if let Err(error) = auditor.feed_block(&block.header, &block.events) {
                bar.finish_and_clear();
                return Ok(Err(error.to_string()));
            }
            bar.inc(block.events.len() as u64);
        }
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let summary = match auditor.finish(&checkpoint) {
        Ok(summary) => summary,
        Err(error) => return Ok(Err(error.to_string())),
    };
    let rate = if elapsed_s > 0.0 {
        (summary.events as f64 / elapsed_s) as u64
    } else {
        0
    };
    Ok(Ok(format!(
        "stream {stream}: verified {} events in {} blocks, tree size {}, root {} ({} events/s)",
        group_thousands(summary.events),
        group_thousands(summary.blocks),
        checkpoint.tree_size,
        hex::encode(summary.root),
        group_thousands(rate)
    )))
}
