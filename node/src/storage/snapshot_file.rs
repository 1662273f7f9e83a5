//! The snapshot file format: one definition for the files a shard's snapshots are
//! written to, sent as, received into and installed from.
//!
//! A file holds the snapshot's metadata and either every record of the shard's state
//! (events, event ids, tenant states, chain) or none (a single-replica group's,
//! never installed), then the SHA-256 of all of it: a torn or damaged file is refused
//! before anything is replaced. Files are written under a temporary name, synced and
//! renamed, and their directory synced, so a name that survives a crash names a whole
//! file.

use std::io::{BufReader, BufWriter, Read, Write};

use fjall::{Keyspace, Readable};
use openraft::{ErrorSubject, ErrorVerb};
use sha2::{Digest, Sha256};

use super::log_store::storage_io_error;
use super::ShardKeyspaces;
use crate::consensus::{SnapshotMeta, StorageError};

pub(super) const SNAPSHOT_MAGIC: &[u8; 8] = b"TRAILSNP";
const SNAPSHOT_VERSION: u32 = 2;
pub(super) const TAG_EVENTS: u8 = 1;
pub(super) const TAG_DEDUP: u8 = 2;
pub(super) const TAG_TENANTS: u8 = 3;
pub(super) const TAG_CHAIN: u8 = 4;
/// The snapshot of a single-replica group: its metadata only, no records (see
/// [`write_snapshot_file`]). Never installed.
const TAG_NO_RECORDS: u8 = 0xFE;
pub(super) const TAG_END: u8 = 0xFF;

/// What a snapshot file holds besides its metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Records {
    /// The whole state: what a replica that installs it needs.
    All,
    /// Nothing: the group has one replica, so no other replica will ever install it,
    /// and a snapshot is only what lets the Raft log be purged. The state it stands
    /// for is the store itself (applied up to at least its last log id). Writing the
    /// whole state instead costs a full copy of the shard per snapshot, which is why
    /// single nodes used to keep their whole Raft log (191 bytes/event at 10 M).
    None,
}

/// Snapshot file, version 2: magic, version, bincode meta, then tagged records
/// (`tag u8, key len u32 BE, key, value len u32 BE, value`) or the no-records tag, an
/// end tag, and the SHA-256 of everything before it, so a torn or damaged snapshot is
/// never installed.
pub(super) fn write_snapshot_file(
    path: &std::path::Path,
    meta: &SnapshotMeta,
    (view, dedup_view, dedup_overlay, dedup_keyspace): (
        &fjall::Snapshot,
        &fjall::Snapshot,
        &super::dedup::OverlayView,
        &Keyspace,
    ),
    keyspaces: &ShardKeyspaces,
    records: Records,
) -> Result<(), StorageError> {
    let temporary = path.with_extension("snap.tmp");
    let file = std::fs::File::create(&temporary).map_err(write_snapshot)?;
    let mut writer = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
    };
    writer.write_all(SNAPSHOT_MAGIC).map_err(write_snapshot)?;
    writer
        .write_all(&SNAPSHOT_VERSION.to_be_bytes())
        .map_err(write_snapshot)?;
    let meta_bytes = bincode::serialize(meta).expect("meta serializes");
    write_chunk(&mut writer, &meta_bytes)?;
    let keyspaces_written = match records {
        Records::All => vec![
            (TAG_EVENTS, view, &keyspaces.events),
            (TAG_DEDUP, dedup_view, dedup_keyspace),
            (TAG_TENANTS, view, &keyspaces.tenants),
            (TAG_CHAIN, view, &keyspaces.chain),
        ],
        Records::None => {
            writer
                .write_all(&[TAG_NO_RECORDS])
                .map_err(write_snapshot)?;
            Vec::new()
        }
    };
    if records == Records::All {
        for (key, position) in dedup_overlay.entries() {
            writer.write_all(&[TAG_DEDUP]).map_err(write_snapshot)?;
            write_chunk(&mut writer, key)?;
            write_chunk(&mut writer, position)?;
        }
    }
    for (tag, view, keyspace) in keyspaces_written {
        for guard in view.iter(keyspace) {
            let (key, value) = guard.into_inner().map_err(write_snapshot_fjall)?;
            // Events travel as their canonical encoding: the dictionary that may
            // compress one here is this replica's own.
            let value = match tag {
                TAG_EVENTS => keyspaces
                    .codec
                    .canonical(value)
                    .map_err(|error| write_snapshot_fjall(error.into()))?,
                _ => super::event_codec::Canonical::Stored(value.into()),
            };
            writer.write_all(&[tag]).map_err(write_snapshot)?;
            write_chunk(&mut writer, &key)?;
            write_chunk(&mut writer, &value)?;
        }
    }
    writer.write_all(&[TAG_END]).map_err(write_snapshot)?;
    let digest = writer.hasher.clone().finalize();
    let mut inner = writer.inner;
    inner.write_all(&digest).map_err(write_snapshot)?;
    let file = inner
        .into_inner()
        .map_err(|error| write_snapshot(error.into_error()))?;
    file.sync_all().map_err(write_snapshot)?;
    std::fs::rename(&temporary, path).map_err(write_snapshot)?;
    // The name must be durable before the pointer to it (`set_current_snapshot`) is.
    sync_parent_dir(path)
}

/// Checks magic, version, record framing and the trailing checksum; returns the meta
/// and whether the file holds records.
fn verify_snapshot_file(file: &mut std::fs::File) -> Result<(SnapshotMeta, Records), StorageError> {
    let mut reader = HashingReader {
        inner: BufReader::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
    };
    let meta = read_header(&mut reader)?;
    let mut records = Records::All;
    loop {
        let tag = read_u8(&mut reader)?;
        match tag {
            TAG_END => break,
            TAG_NO_RECORDS => records = Records::None,
            TAG_EVENTS | TAG_DEDUP | TAG_TENANTS | TAG_CHAIN if records == Records::All => {
                read_chunk(&mut reader)?;
                read_chunk(&mut reader)?;
            }
            _ => return Err(format_error("unknown record tag")),
        }
    }
    let computed = reader.hasher.clone().finalize();
    let mut stored = [0u8; 32];
    reader
        .inner
        .read_exact(&mut stored)
        .map_err(read_snapshot)?;
    if computed.as_slice() != stored {
        return Err(format_error("snapshot checksum mismatch"));
    }
    Ok((meta, records))
}

/// Verifies a snapshot file and that it is the one `meta` describes.
pub(super) fn check_snapshot_file(
    file: &mut std::fs::File,
    meta: &SnapshotMeta,
) -> Result<(), StorageError> {
    let (bytes_meta, records) = verify_snapshot_file(file)?;
    if bytes_meta.last_log_id != meta.last_log_id || bytes_meta.snapshot_id != meta.snapshot_id {
        return Err(format_error("snapshot file does not match its metadata"));
    }
    if records == Records::None {
        return Err(format_error(format!(
            "snapshot {} was built by a single-replica group and holds no records; \
             refusing to install it",
            meta.snapshot_id
        )));
    }
    Ok(())
}

/// Copies a received snapshot to `path`, durably: written to a temporary name, synced,
/// renamed, and the directory synced so that the name survives a crash too.
pub(super) fn keep_snapshot_file(
    source: &mut std::fs::File,
    path: &std::path::Path,
) -> Result<(), StorageError> {
    use std::io::Seek;
    source
        .seek(std::io::SeekFrom::Start(0))
        .map_err(read_snapshot)?;
    let temporary = path.with_extension("snap.tmp");
    let mut target = std::fs::File::create(&temporary).map_err(write_snapshot)?;
    std::io::copy(source, &mut target).map_err(write_snapshot)?;
    target.sync_all().map_err(write_snapshot)?;
    std::fs::rename(&temporary, path).map_err(write_snapshot)?;
    sync_parent_dir(path)
}

/// Makes a file's creation or rename in its directory durable.
fn sync_parent_dir(path: &std::path::Path) -> Result<(), StorageError> {
    let dir = path.parent().expect("snapshot files live in a directory");
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(write_snapshot)
}

pub(super) fn read_header(reader: &mut impl Read) -> Result<SnapshotMeta, StorageError> {
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic).map_err(read_snapshot)?;
    if &magic != SNAPSHOT_MAGIC {
        return Err(format_error("not a Trail snapshot"));
    }
    let mut version = [0u8; 4];
    reader.read_exact(&mut version).map_err(read_snapshot)?;
    if u32::from_be_bytes(version) != SNAPSHOT_VERSION {
        return Err(format_error("unknown snapshot version"));
    }
    let meta_bytes = read_chunk(reader)?;
    bincode::deserialize(&meta_bytes).map_err(|_| format_error("bad snapshot metadata"))
}

fn write_chunk(writer: &mut impl Write, bytes: &[u8]) -> Result<(), StorageError> {
    let length = u32::try_from(bytes.len()).expect("keys and values are below 4 GiB");
    writer
        .write_all(&length.to_be_bytes())
        .map_err(write_snapshot)?;
    writer.write_all(bytes).map_err(write_snapshot)
}

/// Largest key or value a snapshot record may claim, so a damaged length can not make
/// the reader allocate gigabytes.
const SNAPSHOT_CHUNK_BYTES_MAX: usize = 64 << 20;

pub(super) fn read_chunk(reader: &mut impl Read) -> Result<Vec<u8>, StorageError> {
    let mut length = [0u8; 4];
    reader.read_exact(&mut length).map_err(read_snapshot)?;
    let length = u32::from_be_bytes(length) as usize;
    if length > SNAPSHOT_CHUNK_BYTES_MAX {
        return Err(format_error("snapshot record too large"));
    }
    let mut bytes = vec![0u8; length];
    reader.read_exact(&mut bytes).map_err(read_snapshot)?;
    Ok(bytes)
}

pub(super) fn read_u8(reader: &mut impl Read) -> Result<u8, StorageError> {
    let mut byte = [0u8; 1];
    reader.read_exact(&mut byte).map_err(read_snapshot)?;
    Ok(byte[0])
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        Ok(written)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.hasher.update(&buffer[..read]);
        Ok(read)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SnapshotFormatError(String);

pub(super) fn format_error(message: impl Into<String>) -> StorageError {
    storage_io_error(
        ErrorSubject::Snapshot(None),
        ErrorVerb::Read,
        &SnapshotFormatError(message.into()),
    )
}

pub(super) fn write_snapshot_fjall(error: fjall::Error) -> StorageError {
    storage_io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, &error)
}

pub(super) fn write_snapshot(error: std::io::Error) -> StorageError {
    storage_io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, &error)
}

pub(super) fn read_snapshot(error: std::io::Error) -> StorageError {
    storage_io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, &error)
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload};
    use tempfile::TempDir;

    use crate::consensus::{Entry, LogId};
    use crate::storage::state_machine::test_support::{
        append, build_snapshot, contents, open, receive,
    };

    /// A single-replica group's snapshot holds no records (nobody will install it; it
    /// lets the log be purged) and an install of one is refused; once the group has a
    /// second member, snapshots hold the whole state again.
    #[tokio::test]
    async fn a_single_replica_snapshot_holds_no_records_and_is_never_installed() {
        let dir = TempDir::new().unwrap();
        let (_store, keyspaces, mut source) = open(&dir);
        let members = |ids: &[u64]| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Membership(openraft::Membership::new(
                vec![ids.iter().copied().collect()],
                None,
            )),
        };
        source.apply([members(&[1])]).await.unwrap();
        let mut events = append(2, "ten_a", 0..500);
        source.apply([events.clone()]).await.unwrap();
        let single = build_snapshot(&mut source).await;
        let single_bytes = std::fs::metadata(
            keyspaces
                .snapshot_dir
                .join(format!("{}.snap", single.meta.snapshot_id)),
        )
        .expect("the snapshot file")
        .len();
        assert!(
            single_bytes < 1_000,
            "a record-less snapshot of {single_bytes} bytes"
        );

        let target_dir = TempDir::new().unwrap();
        let (_target_store, target_keyspaces, mut target) = open(&target_dir);
        let receiving = receive(&mut target, single.snapshot).await;
        let error = target
            .install_snapshot(&single.meta, receiving)
            .await
            .expect_err("a record-less snapshot is never installed");
        assert!(error.to_string().contains("holds no records"), "{error}");
        assert!(contents(&target_keyspaces.events).is_empty());

        let mut three = members(&[1, 2, 3]);
        three.log_id.index = 3;
        events.log_id.index = 4;
        source.apply([three]).await.unwrap();
        let full = build_snapshot(&mut source).await;
        let receiving = receive(&mut target, full.snapshot).await;
        target
            .install_snapshot(&full.meta, receiving)
            .await
            .unwrap();
        assert_eq!(contents(&target_keyspaces.events).len(), 500);
    }
}
