//! Files only the node's owner may read (the checkpoint key, the cursor key, the first
//! admin token): written with mode 0600, synced, and their directory synced, so a crash
//! never leaves a secret half written or a name that points at nothing.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Creates `path` with `contents` (a line); fails if it exists. `what` names the file
/// in errors.
pub fn create_new(path: &Path, contents: &str, what: &str) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|error| anyhow::anyhow!("creating {what} {}: {error}", path.display()))?;
    writeln!(file, "{contents}")?;
    file.sync_all()?;
    sync_parent(path)
}

/// Writes `contents` (a line) to `path` in place of what it held, atomically: a
/// temporary file beside it, synced, then renamed over it.
pub fn replace(path: &Path, contents: &str, what: &str) -> anyhow::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(|error| anyhow::anyhow!("writing {what} {}: {error}", temporary.display()))?;
    writeln!(file, "{contents}")?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
        .map_err(|error| anyhow::anyhow!("writing {what} {}: {error}", path.display()))?;
    sync_parent(path)
}

fn sync_parent(path: &Path) -> anyhow::Result<()> {
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secrets_are_private_and_create_new_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        create_new(&path, "one", "a secret").unwrap();
        assert!(create_new(&path, "two", "a secret").is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\n");
        replace(&path, "three", "a secret").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
