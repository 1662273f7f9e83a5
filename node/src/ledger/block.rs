//! Blocks: a run of one stream's events under one Merkle root, chained by hash.
//! Pure: no I/O. The format is in `docs/PROOFS.md` ("Block header, version 1").

use sha2::{Digest, Sha256};

use super::event::{DecodeError, Reader};

/// Hash domain of a block header (events use 0x00, interior nodes 0x01).
pub const BLOCK_HASH_PREFIX: u8 = 0x02;
pub const BLOCK_HEADER_VERSION: u8 = 1;
/// Default number of events that seals a block by size.
pub const BLOCK_EVENTS_DEFAULT: u32 = 1024;
/// The largest block size accepted (a block proof reads the whole block).
pub const BLOCK_EVENTS_MAX: u32 = 65_536;

pub type BlockHash = [u8; 32];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockHeader {
    pub stream: String,
    pub block_index: u64,
    pub prev_block_hash: BlockHash,
    pub merkle_root: [u8; 32],
    pub first_seq: u64,
    pub count: u32,
    pub sealed_at_ns: i64,
}

impl BlockHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 4 + self.stream.len() + 8 + 64 + 8 + 4 + 8);
        out.push(BLOCK_HEADER_VERSION);
        out.extend_from_slice(&(self.stream.len() as u32).to_be_bytes());
        out.extend_from_slice(self.stream.as_bytes());
        out.extend_from_slice(&self.block_index.to_be_bytes());
        out.extend_from_slice(&self.prev_block_hash);
        out.extend_from_slice(&self.merkle_root);
        out.extend_from_slice(&self.first_seq.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.sealed_at_ns.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<BlockHeader, DecodeError> {
        let mut reader = Reader::new(bytes);
        let version = reader.u8()?;
        if version != BLOCK_HEADER_VERSION {
            return Err(DecodeError::Version(version));
        }
        let header = BlockHeader {
            stream: reader.string()?,
            block_index: reader.u64()?,
            prev_block_hash: reader.array()?,
            merkle_root: reader.array()?,
            first_seq: reader.u64()?,
            count: reader.u32()?,
            sealed_at_ns: reader.i64()?,
        };
        reader.finish()?;
        Ok(header)
    }

    /// The last seq the block holds.
    pub fn last_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count) - 1
    }
}

/// `SHA-256(0x02 || header bytes)`.
pub fn block_hash(header_bytes: &[u8]) -> BlockHash {
    let mut hasher = Sha256::new();
    hasher.update([BLOCK_HASH_PREFIX]);
    hasher.update(header_bytes);
    hasher.finalize().into()
}

/// A sealed block as the store keeps it: the header bytes, and what readers need
/// without recomputing: its hash and the stream tree's root after it was appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRecord {
    pub header: Vec<u8>,
    pub block_hash: BlockHash,
    pub tree_root_after: [u8; 32],
}

impl BlockRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.header.len() + 64);
        out.extend_from_slice(&self.block_hash);
        out.extend_from_slice(&self.tree_root_after);
        out.extend_from_slice(&self.header);
        out
    }

    /// Decodes a stored record and checks that its hash is its header's.
    pub fn decode(bytes: &[u8]) -> Result<BlockRecord, DecodeError> {
        if bytes.len() < 64 {
            return Err(DecodeError::Truncated(bytes.len()));
        }
        let (hashes, header) = bytes.split_at(64);
        let block_hash: BlockHash = hashes[..32].try_into().expect("32 bytes");
        let tree_root_after: [u8; 32] = hashes[32..].try_into().expect("32 bytes");
        let header = header.to_vec();
        if self::block_hash(&header) != block_hash {
            return Err(DecodeError::Checksum);
        }
        Ok(BlockRecord {
            header,
            block_hash,
            tree_root_after,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn test_vector_header() -> BlockHeader {
        let mut merkle_root = [0u8; 32];
        hex_decode(
            "aac0a5411a911bbc021a4db79273f24b41c6ed12b8386ed922943d2d7931d930",
            &mut merkle_root,
        );
        BlockHeader {
            stream: "ten_0001/0".into(),
            block_index: 0,
            prev_block_hash: [0; 32],
            merkle_root,
            first_seq: 1,
            count: 1,
            sealed_at_ns: 1_735_689_603_000_000_000,
        }
    }

    fn hex_decode(text: &str, out: &mut [u8]) {
        for (index, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * index..2 * index + 2], 16).unwrap();
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Pins docs/PROOFS.md's test vector.
    #[test]
    fn header_test_vector() {
        let bytes = test_vector_header().encode();
        assert_eq!(bytes.len(), 107);
        assert_eq!(
            hex(&bytes),
            "010000000a74656e5f303030312f3000000000000000000000000000000000000000000000000000000000000000000000000000000000aac0a5411a911bbc021a4db79273f24b41c6ed12b8386ed922943d2d7931d9300000000000000001000000011816687f73275e00"
        );
        assert_eq!(
            hex(&block_hash(&bytes)),
            "3fe68a12036c2bc5340af00e375265171f518b56cbaa32413a17b7cbe132de7f"
        );
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let header = test_vector_header();
        let bytes = header.encode();
        assert_eq!(BlockHeader::decode(&bytes).unwrap(), header);
        assert!(BlockHeader::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(BlockHeader::decode(&longer).is_err());
        let record = BlockRecord {
            block_hash: block_hash(&bytes),
            header: bytes,
            tree_root_after: [7; 32],
        };
        let mut stored = record.encode();
        assert_eq!(BlockRecord::decode(&stored).unwrap(), record);
        let last = stored.len() - 1;
        stored[last] ^= 1;
        assert_eq!(BlockRecord::decode(&stored), Err(DecodeError::Checksum));
    }
}
