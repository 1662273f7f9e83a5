//! Query cursors: an opaque, authenticated token that says where the next page of a
//! query starts (docs/QUERY.md).
//!
//! A cursor names a position in a query's order and the query it belongs to, and is
//! authenticated with HMAC-SHA-256 under the node's cursor key (`<data dir>/cursor.key`),
//! so a client can neither edit the position nor move the cursor to another tenant,
//! filter or order: each is refused, naming `cursor`.
//!
//! Layout, version 2 (70 bytes, then base64url without padding, 94 characters):
//!
//! | bytes | field |
//! |---|---|
//! | 1 | version = 2 (version 1, before the time order, is refused) |
//! | 1 | order: 1 newest first, 2 oldest first |
//! | 16 | tenant digest: SHA-256("trail.cursor.tenant.v1" \|\| tenant_id), first 16 bytes |
//! | 16 | query digest: [`super::filter::Filters::digest`] of the filter and order |
//! | 4 | stream index (u32 BE) |
//! | 8 | occurred_at (i64 BE, ns) and |
//! | 8 | seq (u64 BE): the last position the query has considered |
//! | 16 | HMAC-SHA-256 of the 54 bytes above, first 16 bytes |
//!
//! Pure: no I/O and no clock. The key is loaded by `query::cursor_key`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::filter::Order;
use crate::ledger::FieldError;

pub const CURSOR_VERSION: u8 = 2;
/// Truncated digests and tag: 128 bits each, beyond any guessing or collision search.
pub const DIGEST_BYTES: usize = 16;
const TAG_BYTES: usize = 16;
const BODY_BYTES: usize = 1 + 1 + DIGEST_BYTES + DIGEST_BYTES + 4 + 8 + 8;
const CURSOR_BYTES: usize = BODY_BYTES + TAG_BYTES;
/// Longest text a cursor parameter may be before it is refused unread.
const CURSOR_TEXT_BYTES_MAX: usize = 256;

pub type Digest16 = [u8; DIGEST_BYTES];

/// The node's secret for authenticating cursors. Every node has its own, so a cursor
/// is good on the node that made it (the cluster work moves the key to the metadata
/// group so any replica can continue a page).
pub struct CursorKey {
    key: [u8; 32],
}

impl std::fmt::Debug for CursorKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        formatter.write_str("CursorKey(..)")
    }
}

/// What a cursor says, once its tag verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub order: Order,
    pub tenant_digest: Digest16,
    pub query_digest: Digest16,
    pub stream_index: u32,
    pub occurred_at_ns: i64,
    pub seq: u64,
}

/// The digest of a tenant id that a cursor carries.
pub fn tenant_digest(tenant_id: &str) -> Digest16 {
    let mut hasher = Sha256::new();
    hasher.update(b"trail.cursor.tenant.v1");
    hasher.update(tenant_id.as_bytes());
    truncate(hasher.finalize().into())
}

pub fn truncate(digest: [u8; 32]) -> Digest16 {
    let mut short = [0u8; DIGEST_BYTES];
    short.copy_from_slice(&digest[..DIGEST_BYTES]);
    short
}

impl CursorKey {
    pub fn from_bytes(key: [u8; 32]) -> CursorKey {
        CursorKey { key }
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes a key of any length")
    }

    /// The cursor as the text clients pass back.
    pub fn seal(&self, cursor: &Cursor) -> String {
        let mut bytes = Vec::with_capacity(CURSOR_BYTES);
        bytes.push(CURSOR_VERSION);
        bytes.push(order_byte(cursor.order));
        bytes.extend_from_slice(&cursor.tenant_digest);
        bytes.extend_from_slice(&cursor.query_digest);
        bytes.extend_from_slice(&cursor.stream_index.to_be_bytes());
        bytes.extend_from_slice(&cursor.occurred_at_ns.to_be_bytes());
        bytes.extend_from_slice(&cursor.seq.to_be_bytes());
        debug_assert_eq!(bytes.len(), BODY_BYTES);
        let mut mac = self.mac();
        mac.update(&bytes);
        let tag = mac.finalize().into_bytes();
        bytes.extend_from_slice(&tag[..TAG_BYTES]);
        BASE64URL.encode(bytes)
    }

    /// Reads a cursor and checks its tag (in constant time). Whether it belongs to the
    /// query it came with is the caller's check ([`Cursor::check_scope`]).
    pub fn open(&self, text: &str) -> Result<Cursor, FieldError> {
        const NOT_A_CURSOR: &str = "is not a cursor this API returned (garbled or cut \
                                    short); pass next_cursor exactly as it was returned, \
                                    or leave cursor out to start from the first page";
        if text.len() > CURSOR_TEXT_BYTES_MAX {
            return Err(FieldError::new("cursor", NOT_A_CURSOR));
        }
        let bytes = BASE64URL
            .decode(text)
            .map_err(|_| FieldError::new("cursor", NOT_A_CURSOR))?;
        if bytes.len() != CURSOR_BYTES {
            return Err(FieldError::new("cursor", NOT_A_CURSOR));
        }
        if bytes[0] != CURSOR_VERSION {
            return Err(FieldError::new(
                "cursor",
                format!(
                    "has version {}; this node reads version {CURSOR_VERSION} cursors; \
                     start again without a cursor",
                    bytes[0]
                ),
            ));
        }
        let (body, tag) = bytes.split_at(BODY_BYTES);
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_truncated_left(tag).map_err(|_| {
            FieldError::new(
                "cursor",
                "failed its integrity check: it was altered, or another node made it; \
                 pass next_cursor exactly as it was returned, or start again without a cursor",
            )
        })?;
        // The tag verified, so the body is one this node wrote.
        let order = match body[1] {
            1 => Order::NewestFirst,
            2 => Order::OldestFirst,
            other => panic!("an authenticated cursor has order byte {other}"),
        };
        let mut position = 2;
        let mut take = |count: usize| {
            let slice = &body[position..position + count];
            position += count;
            slice
        };
        let tenant_digest: Digest16 = take(DIGEST_BYTES).try_into().expect("16 bytes");
        let query_digest: Digest16 = take(DIGEST_BYTES).try_into().expect("16 bytes");
        let stream_index = u32::from_be_bytes(take(4).try_into().expect("4 bytes"));
        let occurred_at_ns = i64::from_be_bytes(take(8).try_into().expect("8 bytes"));
        let seq = u64::from_be_bytes(take(8).try_into().expect("8 bytes"));
        Ok(Cursor {
            order,
            tenant_digest,
            query_digest,
            stream_index,
            occurred_at_ns,
            seq,
        })
    }
}

impl Cursor {
    /// Refuses a cursor made for another tenant, filter or order.
    pub fn check_scope(
        &self,
        tenant_digest: &Digest16,
        query_digest: &Digest16,
    ) -> Result<(), FieldError> {
        if &self.tenant_digest != tenant_digest {
            return Err(FieldError::new(
                "cursor",
                "belongs to a query of another tenant; a cursor continues only the \
                 query that returned it",
            ));
        }
        if &self.query_digest != query_digest {
            return Err(FieldError::new(
                "cursor",
                "was returned by a query with other filters or another order; send it \
                 with the same filter and order parameters (limit may change), or start \
                 again without a cursor",
            ));
        }
        Ok(())
    }
}

fn order_byte(order: Order) -> u8 {
    match order {
        Order::NewestFirst => 1,
        Order::OldestFirst => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> CursorKey {
        CursorKey::from_bytes([byte; 32])
    }

    fn sample() -> Cursor {
        Cursor {
            order: Order::OldestFirst,
            tenant_digest: tenant_digest("ten_a"),
            query_digest: [7; 16],
            stream_index: 0,
            occurred_at_ns: -7,
            seq: 12_345,
        }
    }

    #[test]
    fn round_trips_and_is_url_safe() {
        let text = key(1).seal(&sample());
        assert_eq!(text.len(), 94);
        assert!(text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'));
        assert_eq!(key(1).open(&text).unwrap(), sample());
    }

    #[test]
    fn every_edited_byte_is_refused() {
        let text = key(1).seal(&sample());
        let bytes = BASE64URL.decode(&text).unwrap();
        for index in 0..bytes.len() {
            let mut edited = bytes.clone();
            edited[index] ^= 0x01;
            let error = key(1).open(&BASE64URL.encode(&edited)).unwrap_err();
            assert_eq!(error.field, "cursor");
        }
    }

    #[test]
    fn another_nodes_key_garbage_and_truncation_are_refused() {
        let text = key(1).seal(&sample());
        let error = key(2).open(&text).unwrap_err();
        assert!(error.message.contains("integrity"), "{error}");
        for garbage in ["", "abc", "!!!!", &text[..text.len() - 1], &"A".repeat(300)] {
            let error = key(1).open(garbage).unwrap_err();
            assert_eq!(error.field, "cursor");
            assert!(error.message.contains("not a cursor"), "{error}");
        }
    }

    #[test]
    fn scope_names_tenant_then_query() {
        let cursor = sample();
        assert!(cursor
            .check_scope(&tenant_digest("ten_a"), &[7; 16])
            .is_ok());
        let other_tenant = cursor
            .check_scope(&tenant_digest("ten_b"), &[7; 16])
            .unwrap_err();
        assert!(other_tenant.message.contains("another tenant"));
        let other_query = cursor
            .check_scope(&tenant_digest("ten_a"), &[8; 16])
            .unwrap_err();
        assert!(other_query.message.contains("other filters"));
    }
}
