//! The node's checkpoint signing key: an Ed25519 key in `<data dir>/node.key`, created on
//! first start with mode 0600 and refused if anyone but the owner can read it.
//!
//! File format: one line, `ed25519 <base64 of the 32-byte secret seed>`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ed25519_dalek::SigningKey;

use crate::ledger::NoteSigner;

pub const KEY_FILE: &str = "node.key";
const KEY_PREFIX: &str = "ed25519 ";

/// Loads the key, or creates it if the file does not exist.
pub fn load_or_create(data_dir: &Path, name: &str) -> anyhow::Result<NoteSigner> {
    let path = data_dir.join(KEY_FILE);
    let key = match std::fs::metadata(&path) {
        Ok(metadata) => {
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                anyhow::bail!(
                    "node key {}: mode {mode:04o} lets others read the signing key; \
                     run `chmod 600 {}`",
                    path.display(),
                    path.display()
                );
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|error| anyhow::anyhow!("node key {}: {error}", path.display()))?;
            parse(&text).ok_or_else(|| {
                anyhow::anyhow!(
                    "node key {}: not a Trail key file (expected `ed25519 <base64 seed>`)",
                    path.display()
                )
            })?
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => create(&path)?,
        Err(error) => anyhow::bail!("node key {}: {error}", path.display()),
    };
    NoteSigner::new(name, key).map_err(|error| anyhow::anyhow!("{error}"))
}

fn parse(text: &str) -> Option<SigningKey> {
    let encoded = text.trim_end().strip_prefix(KEY_PREFIX)?;
    let seed: [u8; 32] = BASE64.decode(encoded).ok()?.try_into().ok()?;
    Some(SigningKey::from_bytes(&seed))
}

fn create(path: &Path) -> anyhow::Result<SigningKey> {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    crate::secret_file::create_new(
        path,
        &format!("{KEY_PREFIX}{}", BASE64.encode(key.to_bytes())),
        "node key",
    )?;
    tracing::info!(path = %path.display(), "created the node's checkpoint signing key");
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), "trail.local").unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create(dir.path(), "trail.local").unwrap();
        assert_eq!(first.verifier_key(), again.verifier_key());

        std::fs::set_permissions(
            dir.path().join(KEY_FILE),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let error = load_or_create(dir.path(), "trail.local").unwrap_err();
        assert!(error.to_string().contains("chmod 600"), "{error}");
    }
}
