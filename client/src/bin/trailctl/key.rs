//! The verifier key that checkpoints must be signed with: pinned by the user, or, when
//! not pinned, the node's own (trust on first use, with a warning).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use trail_client::note::{VerifierKey, NOTE_BYTES_MAX};
use trail_client::Client;

/// Flags shared by every command that verifies a signature.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// Pinned verifier key of the node's checkpoint signer, as `trailctl status` shows it:
    /// `<name>+<key id>+<base64 public key>`. Checkpoints not signed by it are rejected.
    /// Without --key or --key-file, the TRAIL_VERIFIER_KEY environment variable is used;
    /// without any of them, the node's own key (trust on first use, with a warning).
    #[arg(long, value_name = "KEY")]
    key: Option<String>,

    /// Read the pinned verifier key from this file (one line; surrounding whitespace is
    /// ignored).
    #[arg(long, value_name = "PATH", conflicts_with = "key")]
    key_file: Option<PathBuf>,
}

/// The environment variable holding a pinned verifier key.
const KEY_ENV: &str = "TRAIL_VERIFIER_KEY";

/// Where the key came from, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrigin {
    Pinned,
    /// Taken from the node's Status: trust on first use.
    Node,
}

/// A key file holds one line; anything much longer is not a key file.
const KEY_FILE_BYTES_MAX: u64 = 4096;

impl KeyArgs {
    /// The pinned key, if any: `--key`, `--key-file`, else TRAIL_VERIFIER_KEY. The error
    /// names the flag, variable or file that held a bad key.
    pub fn pinned(&self) -> anyhow::Result<Option<VerifierKey>> {
        if let Some(path) = &self.key_file {
            let length = fs::metadata(path)
                .with_context(|| format!("--key-file {}: cannot read", path.display()))?
                .len();
            if length > KEY_FILE_BYTES_MAX {
                anyhow::bail!(
                    "--key-file {}: {length} bytes, too long for a verifier key",
                    path.display()
                );
            }
            let text = fs::read_to_string(path)
                .with_context(|| format!("--key-file {}: cannot read", path.display()))?;
            let key = VerifierKey::parse(text.trim())
                .with_context(|| format!("--key-file {}: not a verifier key", path.display()))?;
            return Ok(Some(key));
        }
        if let Some(text) = &self.key {
            let key = VerifierKey::parse(text.trim()).context("--key: not a verifier key")?;
            return Ok(Some(key));
        }
        match std::env::var(KEY_ENV) {
            Ok(text) if !text.trim().is_empty() => {
                let key = VerifierKey::parse(text.trim())
                    .with_context(|| format!("{KEY_ENV}: not a verifier key"))?;
                Ok(Some(key))
            }
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                anyhow::bail!("{KEY_ENV}: not a verifier key (not valid UTF-8)")
            }
        }
    }

    /// The pinned key, or the node's with a trust-on-first-use warning on stderr.
    pub async fn resolve(&self, client: &Client) -> anyhow::Result<(VerifierKey, KeyOrigin)> {
        if let Some(key) = self.pinned()? {
            return Ok((key, KeyOrigin::Pinned));
        }
        let status = client.status().await?;
        if status.verifier_key.is_empty() {
            anyhow::bail!(
                "the node reports no verifier key (is it older than checkpoints?); \
                 pass --key or --key-file"
            );
        }
        let key = VerifierKey::parse(&status.verifier_key)
            .context("the node's Status.verifier_key is not a verifier key")?;
        eprintln!(
            "warning: no verifier key pinned: trusting the key the node reports, {key} \
             (trust on first use). A node that rewrote its history could sign it with a key \
             of its choosing. Check this key out of band, then pin it with --key KEY, \
             --key-file FILE or TRAIL_VERIFIER_KEY=KEY."
        );
        Ok((key, KeyOrigin::Node))
    }
}

/// Reads a signed note (checkpoint) file, refusing anything larger than a note can be.
pub fn read_note_file(path: &Path) -> anyhow::Result<String> {
    read_text_file(path, NOTE_BYTES_MAX as u64, "a checkpoint")
}

/// Reads a text file of at most `bytes_max` bytes; `what` names it in the error.
pub fn read_text_file(path: &Path, bytes_max: u64, what: &str) -> anyhow::Result<String> {
    let length = fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if length > bytes_max {
        anyhow::bail!(
            "{}: {length} bytes, more than {what} can be ({bytes_max})",
            path.display()
        );
    }
    fs::read_to_string(path)
        .with_context(|| format!("cannot read {} as UTF-8 text", path.display()))
}
