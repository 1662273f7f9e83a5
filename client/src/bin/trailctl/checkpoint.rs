//! `trailctl checkpoint`: fetch a stream's signed checkpoint, verify it, print or keep it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use trail_client::checkpoint::Checkpoint;
use trail_client::note::VerifierKey;
use trail_client::Client;

use crate::key::KeyArgs;
use crate::output::write_atomically;

#[derive(Debug, Args)]
pub struct CheckpointArgs {
    /// The tenant whose stream's checkpoint to fetch.
    #[arg(long)]
    tenant: String,

    /// Stream index within the tenant (0 is the first stream).
    #[arg(long, default_value_t = 0)]
    stream_index: u32,

    /// The checkpoint of exactly N blocks; by default the latest.
    #[arg(long, value_name = "N", conflicts_with = "seal_now",
          value_parser = clap::value_parser!(u64).range(1..))]
    size: Option<u64>,

    /// Have the node seal its open block and sign a checkpoint covering every event
    /// recorded so far, instead of returning the latest existing one.
    #[arg(long)]
    seal_now: bool,

    /// Save the note to FILE instead of printing it (the file is the note, verbatim; keep
    /// it and check it later with `trailctl verify --checkpoint FILE`).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,

    #[command(flatten)]
    key: KeyArgs,
}

pub async fn run(client: &Client, args: CheckpointArgs) -> anyhow::Result<ExitCode> {
    let (key, _origin) = args.key.resolve(client).await?;
    let response = client
        .get_checkpoint(
            &args.tenant,
            args.stream_index,
            args.size.unwrap_or(0),
            args.seal_now,
        )
        .await?;
    let note = response
        .checkpoint
        .as_ref()
        .map(|checkpoint| checkpoint.note.clone())
        .unwrap_or_default();
    let expected_stream = format!("{}/{}", args.tenant, args.stream_index);
    let checkpoint = match check(&note, &key, &expected_stream, args.size) {
        Ok(checkpoint) => checkpoint,
        Err(problem) => {
            eprintln!("error: {problem}");
            if !response.verifier_key.is_empty() && response.verifier_key != key.to_string() {
                eprintln!(
                    "note: the node says it signs with {}, not the key used here",
                    response.verifier_key
                );
            }
            return Ok(ExitCode::from(1));
        }
    };
    match &args.out {
        Some(path) => {
            write_atomically(path, note.as_bytes()).with_context(|| {
                format!("--out {}: cannot write the checkpoint", path.display())
            })?;
            eprintln!(
                "checkpoint of stream {} saved to {}: tree size {}, seq {}, root {}",
                checkpoint.stream,
                path.display(),
                checkpoint.tree_size,
                checkpoint.last_seq,
                hex::encode(checkpoint.root_hash)
            );
        }
        None => {
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            // The note ends in its own newline; print it byte for byte. A closed stdout
            // (`| head`) is not an error.
            let _ = stdout
                .write_all(note.as_bytes())
                .and_then(|()| stdout.flush());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Verifies the note and that it is the checkpoint asked for.
fn check(
    note: &str,
    key: &VerifierKey,
    expected_stream: &str,
    size: Option<u64>,
) -> Result<Checkpoint, String> {
    let checkpoint = Checkpoint::from_note(note, key).map_err(|error| error.to_string())?;
    if checkpoint.stream != expected_stream {
        return Err(format!(
            "asked for stream {expected_stream}, the node's checkpoint is for {} (origin {})",
            checkpoint.stream, checkpoint.origin
        ));
    }
    if let Some(size) = size {
        if checkpoint.tree_size != size {
            return Err(format!(
                "asked for the checkpoint of {size} blocks, the node's has {}",
                checkpoint.tree_size
            ));
        }
    }
    Ok(checkpoint)
}
