//! `trailctl proof`: fetch, verify and save an event's inclusion proof bundle, or verify a
//! saved one offline.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use trail_client::bundle::{verify_bundle, BundleParts, ProofBundle, VerifiedEvent};
use trail_client::checkpoint::format_time;
use trail_client::note::VerifierKey;
use trail_client::Client;

use crate::key::{read_text_file, KeyArgs, KeyOrigin};
use crate::output::{print_line, write_atomically};

/// A bundle file is an event (server-bounded, kilobytes), two paths of at most 64 hashes
/// and a checkpoint; 4 MiB is far above any genuine one.
const BUNDLE_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;

#[derive(Debug, Args)]
pub struct ProofArgs {
    /// The tenant the event belongs to.
    #[arg(long, required_unless_present = "verify", conflicts_with = "verify")]
    tenant: Option<String>,

    /// The event's event_id.
    #[arg(required_unless_present = "verify", conflicts_with = "verify")]
    event_id: Option<String>,

    /// Prove against the checkpoint of exactly this many blocks (one you kept, say);
    /// by default the latest, which the node seals and signs first if needed.
    #[arg(long, value_name = "BLOCKS", conflicts_with = "verify",
          value_parser = clap::value_parser!(u64).range(1..))]
    tree_size: Option<u64>,

    /// Also write the bundle (JSON) to FILE, once it verified.
    #[arg(long, value_name = "FILE", conflicts_with = "verify")]
    out: Option<PathBuf>,

    /// Print the bundle JSON instead of the summary.
    #[arg(long, conflicts_with = "verify")]
    json: bool,

    /// Verify a saved bundle offline, without contacting any node. Needs a pinned key
    /// (--key, --key-file or TRAIL_VERIFIER_KEY).
    #[arg(long, value_name = "FILE")]
    verify: Option<PathBuf>,

    #[command(flatten)]
    key: KeyArgs,
}

impl ProofArgs {
    /// `--verify FILE`: nothing talks to a node.
    pub fn is_offline(&self) -> bool {
        self.verify.is_some()
    }
}

/// Fetches the proof, builds the bundle, verifies it locally and prints it.
pub async fn run(client: &Client, args: ProofArgs) -> anyhow::Result<ExitCode> {
    let tenant = args.tenant.as_deref().expect("clap requires --tenant");
    let event_id = args.event_id.as_deref().expect("clap requires EVENT_ID");
    let (key, origin) = args.key.resolve(client).await?;
    let response = match client
        .get_proof(tenant, event_id, args.tree_size.unwrap_or(0))
        .await
    {
        Ok(response) => response,
        // The node found its own store damaged where this proof needs it: say so, and
        // point at the audit that locates every change.
        Err(trail_client::Error::Rpc(status)) if status.code() == tonic::Code::DataLoss => {
            eprintln!(
                "error: the node cannot prove event {event_id:?} of tenant {tenant}: DATA_LOSS: \
                 {}. Run `trailctl verify --tenant {tenant}` to audit the stream",
                status.message()
            );
            return Ok(ExitCode::from(1));
        }
        Err(error) => return Err(error.into()),
    };
    let block = response
        .block
        .as_ref()
        .expect("the client checks for a block");
    let checkpoint = response
        .checkpoint
        .as_ref()
        .expect("the client checks for a checkpoint");
    let bundle = ProofBundle::from_parts(BundleParts {
        tenant_id: tenant,
        stream: &response.stream,
        event_id,
        seq: response.seq,
        event: &response.event,
        leaf_index: u64::from(response.leaf_index),
        block_header: &block.header,
        block_path: &response.block_path,
        tree_path: &response.tree_path,
        checkpoint_note: &checkpoint.note,
    });
    let verified = match verify_bundle(&bundle, &key) {
        Ok(verified) => verified,
        Err(error) => {
            eprintln!("error: the node's proof of event {event_id:?} does not verify: {error}");
            return Ok(ExitCode::from(1));
        }
    };
    if let Some(tree_size) = args.tree_size {
        if verified.checkpoint.tree_size != tree_size {
            eprintln!(
                "error: asked for a proof against the checkpoint of {tree_size} blocks, the \
                 node proved against {}",
                verified.checkpoint.tree_size
            );
            return Ok(ExitCode::from(1));
        }
    }
    let json = bundle.to_json_pretty();
    if let Some(path) = &args.out {
        let mut contents = json.clone();
        contents.push('\n');
        write_atomically(path, contents.as_bytes())
            .with_context(|| format!("--out {}: cannot write the bundle", path.display()))?;
        eprintln!("bundle saved to {}", path.display());
    }
    let text = if args.json {
        json
    } else {
        summary(&verified, &key, origin)
    };
    if print_line(&text).is_err() {
        // A closed stdout (`| head`) loses nothing: the proof verified.
        return Ok(ExitCode::SUCCESS);
    }
    Ok(ExitCode::SUCCESS)
}

/// `proof --verify FILE`: verifies a saved bundle with the pinned key alone.
pub fn verify_offline(args: ProofArgs) -> anyhow::Result<ExitCode> {
    let path = args.verify.as_ref().expect("offline means --verify");
    let Some(key) = args.key.pinned()? else {
        anyhow::bail!(
            "proof --verify works offline and needs a pinned key: pass --key KEY, \
             --key-file FILE or set TRAIL_VERIFIER_KEY (the key `trailctl status` shows)"
        );
    };
    let text = read_text_file(path, BUNDLE_FILE_BYTES_MAX, "a proof bundle")?;
    let bundle = match ProofBundle::from_json(&text) {
        Ok(bundle) => bundle,
        Err(error) => {
            eprintln!("error: {}: {error}", path.display());
            return Ok(ExitCode::from(1));
        }
    };
    match verify_bundle(&bundle, &key) {
        Ok(verified) => {
            // A closed stdout (`| head`) loses nothing: the exit code says it verified.
            let _ = print_line(&summary(&verified, &key, KeyOrigin::Pinned));
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("error: {}: proof rejected: {error}", path.display());
            Ok(ExitCode::from(1))
        }
    }
}

fn summary(verified: &VerifiedEvent, key: &VerifierKey, origin: KeyOrigin) -> String {
    let trust = match origin {
        KeyOrigin::Pinned => "pinned",
        KeyOrigin::Node => "the node's own key, NOT pinned",
    };
    let event = &verified.event;
    let checkpoint = &verified.checkpoint;
    [
        format!(
            "event       {} (tenant {})",
            event.event_id, event.tenant_id
        ),
        format!(
            "stream      {}, seq {}, ingested {}",
            event.stream,
            event.seq,
            format_time(event.ingested_at)
        ),
        format!(
            "block       {}, leaf {} of {}, block hash {}",
            verified.header.block_index,
            verified.leaf_index,
            verified.header.count,
            hex::encode(verified.block_hash)
        ),
        format!(
            "checkpoint  {}, tree size {}, seq {}, root {}",
            checkpoint.origin,
            checkpoint.tree_size,
            checkpoint.last_seq,
            hex::encode(checkpoint.root_hash)
        ),
        format!("verified    signed by {} ({trust})", key.short()),
    ]
    .join("\n")
}
