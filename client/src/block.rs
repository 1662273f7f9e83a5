//! Block header, version 1 (docs/PROOFS.md), and the block hash. Pure: no I/O.
//!
//! Written from the document, sharing no code with the server.

use sha2::{Digest, Sha256};

use crate::event::Reader;

/// The only header version this client knows.
pub const BLOCK_HEADER_VERSION_1: u8 = 1;

/// The hash-domain byte of a block header (0x00 is an event leaf, 0x01 an interior node).
const BLOCK_HASH_PREFIX: u8 = 0x02;

/// Why header bytes were refused. Messages name the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockHeaderError {
    #[error("empty header bytes")]
    Empty,
    #[error("unknown block header version {version} (this client knows version 1)")]
    UnknownVersion { version: u8 },
    #[error("truncated at field {field}: needs {needed} more bytes, {left} left")]
    Truncated {
        field: &'static str,
        needed: u64,
        left: usize,
    },
    #[error("field stream is not valid UTF-8")]
    BadUtf8,
    #[error("field count is 0; a block holds at least one event")]
    ZeroCount,
    #[error("field first_seq is 0; seqs start at 1")]
    ZeroFirstSeq,
    #[error("first_seq {first_seq} + count {count} overflows a u64")]
    SeqOverflow { first_seq: u64, count: u32 },
    #[error("{bytes} trailing bytes after the last field")]
    TrailingBytes { bytes: usize },
}

/// A decoded version 1 block header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockHeader {
    /// `{tenant_id}/{index}`.
    pub stream: String,
    /// 0-based, dense per stream.
    pub block_index: u64,
    /// 32 zero bytes for block 0.
    pub prev_block_hash: [u8; 32],
    /// RFC 9162 root of the block's event leaf hashes.
    pub merkle_root: [u8; 32],
    pub first_seq: u64,
    /// Events in the block, at least 1.
    pub count: u32,
    /// ns since the Unix epoch.
    pub sealed_at: i64,
}

fn truncated((field, needed, left): (&'static str, u64, usize)) -> BlockHeaderError {
    BlockHeaderError::Truncated {
        field,
        needed,
        left,
    }
}

impl BlockHeader {
    /// Decodes version 1 header bytes. Refuses other versions, bad UTF-8, truncation,
    /// trailing bytes, a count of 0, a first seq of 0 and a seq range past `u64::MAX`.
    pub fn decode(bytes: &[u8]) -> Result<BlockHeader, BlockHeaderError> {
        if bytes.is_empty() {
            return Err(BlockHeaderError::Empty);
        }
        let mut reader = Reader::new(bytes);
        let version = reader.array::<1>("version").map_err(truncated)?[0];
        if version != BLOCK_HEADER_VERSION_1 {
            return Err(BlockHeaderError::UnknownVersion { version });
        }
        let stream_length = u32::from_be_bytes(reader.array("stream").map_err(truncated)?);
        let stream_bytes = reader
            .take("stream", u64::from(stream_length))
            .map_err(truncated)?;
        let stream = std::str::from_utf8(stream_bytes)
            .map_err(|_| BlockHeaderError::BadUtf8)?
            .to_string();
        let block_index = u64::from_be_bytes(reader.array("block_index").map_err(truncated)?);
        let prev_block_hash = reader.array("prev_block_hash").map_err(truncated)?;
        let merkle_root = reader.array("merkle_root").map_err(truncated)?;
        let first_seq = u64::from_be_bytes(reader.array("first_seq").map_err(truncated)?);
        let count = u32::from_be_bytes(reader.array("count").map_err(truncated)?);
        let sealed_at = i64::from_be_bytes(reader.array("sealed_at").map_err(truncated)?);
        if reader.remaining() != 0 {
            return Err(BlockHeaderError::TrailingBytes {
                bytes: reader.remaining(),
            });
        }
        if count == 0 {
            return Err(BlockHeaderError::ZeroCount);
        }
        if first_seq == 0 {
            return Err(BlockHeaderError::ZeroFirstSeq);
        }
        // The last seq, first_seq + count - 1, must fit.
        if first_seq.checked_add(u64::from(count) - 1).is_none() {
            return Err(BlockHeaderError::SeqOverflow { first_seq, count });
        }
        Ok(BlockHeader {
            stream,
            block_index,
            prev_block_hash,
            merkle_root,
            first_seq,
            count,
            sealed_at,
        })
    }

    /// The version 1 header bytes; `decode(encode(h)) == h`.
    pub fn encode(&self) -> Vec<u8> {
        let stream_length = u32::try_from(self.stream.len()).expect("stream names are under 4 GiB");
        let mut out = Vec::with_capacity(1 + 4 + self.stream.len() + 8 + 32 + 32 + 8 + 4 + 8);
        out.push(BLOCK_HEADER_VERSION_1);
        out.extend_from_slice(&stream_length.to_be_bytes());
        out.extend_from_slice(self.stream.as_bytes());
        out.extend_from_slice(&self.block_index.to_be_bytes());
        out.extend_from_slice(&self.prev_block_hash);
        out.extend_from_slice(&self.merkle_root);
        out.extend_from_slice(&self.first_seq.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.sealed_at.to_be_bytes());
        out
    }

    /// The seq of the block's last event.
    pub fn last_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count) - 1
    }
}

/// `SHA-256(0x02 || header bytes)`.
pub fn block_hash(header_bytes: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update([BLOCK_HASH_PREFIX]);
    hasher.update(header_bytes);
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::VECTOR_LEAF_HEX;

    /// docs/PROOFS.md, "Test vector".
    const HEADER_HEX: &str = "\
010000000a74656e5f303030312f3000000000000000000000000000000000000000000000000000000000\
000000000000000000000000aac0a5411a911bbc021a4db79273f24b41c6ed12b8386ed922943d2d7931d9\
300000000000000001000000011816687f73275e00";

    const BLOCK_HASH_HEX: &str = "3fe68a12036c2bc5340af00e375265171f518b56cbaa32413a17b7cbe132de7f";

    fn vector_header() -> BlockHeader {
        BlockHeader {
            stream: "ten_0001/0".to_string(),
            block_index: 0,
            prev_block_hash: [0; 32],
            merkle_root: hex::decode(VECTOR_LEAF_HEX).unwrap().try_into().unwrap(),
            first_seq: 1,
            count: 1,
            sealed_at: 1_735_689_603_000_000_000,
        }
    }

    #[test]
    fn the_documented_test_vector_encodes_decodes_and_hashes() {
        let bytes = hex::decode(HEADER_HEX).unwrap();
        assert_eq!(bytes.len(), 107);
        assert_eq!(vector_header().encode(), bytes);
        assert_eq!(BlockHeader::decode(&bytes).unwrap(), vector_header());
        assert_eq!(hex::encode(block_hash(&bytes)), BLOCK_HASH_HEX);
        assert_eq!(vector_header().last_seq(), 1);
    }

    #[test]
    fn damaged_headers_are_refused() {
        let bytes = vector_header().encode();
        assert_eq!(BlockHeader::decode(&[]), Err(BlockHeaderError::Empty));
        for length in 1..bytes.len() {
            assert!(
                matches!(
                    BlockHeader::decode(&bytes[..length]),
                    Err(BlockHeaderError::Truncated { .. })
                ),
                "truncated to {length}"
            );
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(
            BlockHeader::decode(&trailing),
            Err(BlockHeaderError::TrailingBytes { bytes: 1 })
        );
        let mut version = bytes.clone();
        version[0] = 2;
        assert_eq!(
            BlockHeader::decode(&version),
            Err(BlockHeaderError::UnknownVersion { version: 2 })
        );
        let mut utf8 = bytes.clone();
        utf8[5] = 0xc0;
        assert_eq!(BlockHeader::decode(&utf8), Err(BlockHeaderError::BadUtf8));

        let zero_count = BlockHeader {
            count: 0,
            ..vector_header()
        };
        assert_eq!(
            BlockHeader::decode(&zero_count.encode()),
            Err(BlockHeaderError::ZeroCount)
        );
        let zero_first = BlockHeader {
            first_seq: 0,
            ..vector_header()
        };
        assert_eq!(
            BlockHeader::decode(&zero_first.encode()),
            Err(BlockHeaderError::ZeroFirstSeq)
        );
        let overflow = BlockHeader {
            first_seq: u64::MAX,
            count: 2,
            ..vector_header()
        };
        assert!(matches!(
            BlockHeader::decode(&overflow.encode()),
            Err(BlockHeaderError::SeqOverflow { .. })
        ));
    }

    #[test]
    fn every_header_edit_changes_the_hash() {
        let bytes = vector_header().encode();
        let original = block_hash(&bytes);
        for position in 0..bytes.len() {
            let mut edited = bytes.clone();
            edited[position] ^= 0x01;
            assert_ne!(block_hash(&edited), original, "byte {position}");
        }
    }
}
