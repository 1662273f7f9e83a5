//! The node's query-cursor key: 32 random bytes in `<data dir>/cursor.key`, created on
//! first start with mode 0600 and refused if anyone but the owner can read it. Cursors
//! are authenticated with HMAC-SHA-256 under it (`query/cursor.rs`).
//!
//! File format: one line, `hmac-sha256 <base64 of the 32-byte key>`. Losing the file
//! only invalidates the cursors clients hold (they start their query again); it protects
//! no stored data.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use rand::RngCore;

use super::cursor::CursorKey;

pub const KEY_FILE: &str = "cursor.key";
const KEY_PREFIX: &str = "hmac-sha256 ";

/// Loads the key, or creates it if the file does not exist.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<CursorKey> {
    let key = load_or_create_secret(
        &data_dir.join(KEY_FILE),
        "cursor key",
        "delete it to make a new one (clients' open cursors then stop working)",
    )?;
    Ok(CursorKey::from_bytes(key))
}

/// A node secret of 32 random bytes in its own file (`hmac-sha256 <base64>`), created
/// with mode 0600 if missing and refused if anyone but the owner can read it. `what`
/// names it in errors; `if_lost` says what deleting the file does.
pub fn load_or_create_secret(path: &Path, what: &str, if_lost: &str) -> anyhow::Result<[u8; 32]> {
    match std::fs::metadata(path) {
        Ok(metadata) => {
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                anyhow::bail!(
                    "{what} {}: mode {mode:04o} lets others read the key; run `chmod 600 {}`",
                    path.display(),
                    path.display()
                );
            }
            let text = std::fs::read_to_string(path)
                .map_err(|error| anyhow::anyhow!("{what} {}: {error}", path.display()))?;
            parse(&text).ok_or_else(|| {
                anyhow::anyhow!(
                    "{what} {}: not a Trail {what} file (expected `hmac-sha256 <base64 of \
                     32 bytes>`); {if_lost}",
                    path.display()
                )
            })
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => create(path, what),
        Err(error) => anyhow::bail!("{what} {}: {error}", path.display()),
    }
}

fn parse(text: &str) -> Option<[u8; 32]> {
    let encoded = text.trim_end().strip_prefix(KEY_PREFIX)?;
    BASE64.decode(encoded).ok()?.try_into().ok()
}

fn create(path: &Path, what: &str) -> anyhow::Result<[u8; 32]> {
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    crate::secret_file::create_new(path, &format!("{KEY_PREFIX}{}", BASE64.encode(key)), what)?;
    tracing::info!(path = %path.display(), "created the node's {what}");
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::cursor::{tenant_digest, Cursor};
    use crate::query::Order;

    #[test]
    fn created_once_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let cursor = Cursor {
            order: Order::NewestFirst,
            tenant_digest: tenant_digest("t"),
            query_digest: [0; 16],
            stream_index: 0,
            occurred_at_ns: 1,
            seq: 9,
        };
        let text = first.seal(&cursor);
        let again = load_or_create(dir.path()).unwrap();
        assert_eq!(again.open(&text).unwrap(), cursor);

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = load_or_create(dir.path()).unwrap_err();
        assert!(error.to_string().contains("chmod 600"), "{error}");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "garbage\n").unwrap();
        let error = load_or_create(dir.path()).unwrap_err();
        assert!(
            error.to_string().contains("not a Trail cursor key"),
            "{error}"
        );
    }
}
