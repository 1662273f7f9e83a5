//! The secondary index's documents: one per event, with no stored fields (events are
//! read from the store by position) and no plaintext PII.
//!
//! Every term is scoped to its tenant, so no term of one tenant can match another's
//! event even before the stream bound is applied:
//! - vocabulary fields (action, resource type) are indexed as `"{tenant}\0{value}"`,
//!   which keeps action prefixes (`auth.*`) a range of terms;
//! - identifiers that may be personal data (actor id, resource id, request id) are
//!   indexed as an HMAC-SHA-256 under the index's own key (`<index dir>/term.key`,
//!   0600) of the tenant and the value, truncated to 64 bits, in u64 fields: the index
//!   never holds them in the clear, and a guessed value cannot be tested against it
//!   without the key. 64 bits rather than text: building the term dictionary (an FST)
//!   of random 32-character hex strings was half of tantivy's indexing time. Two values
//!   of one tenant share a term with odds of about n²/2⁶⁵ (10⁻⁶ at 10 M distinct
//!   values); every event found through a term is read and checked against the filter,
//!   so a shared term is caught, never served.
//! - request ids are unique per event, so a full-width term is a term-dictionary entry
//!   per event: ~20 bytes per event on disk, and most of the FST work of indexing and
//!   merging. They are indexed in [`REQUEST_BUCKET_BITS`]-bit buckets of the keyed
//!   value instead: a segment's dictionary holds at most 2¹⁸ request terms, and a
//!   lookup reads the tenant's events of one bucket (~4 per million events of the
//!   node, all of the tenant's when it is the only one) and keeps the one that matches.
//!
//! Fast fields give each document's position: `occ` (`occurred_at`, ns), `stream`
//! (`shard << 32 | stream_no`) and `seq`; and `attrs`, the actor type and the result
//! ([`attrs_value`]).
//!
//! Terms cost the indexer most of its time (a posting per term per document, written
//! again by every merge), so values a term would not narrow much are columns instead:
//! - a tenant's documents are those of its stream, a value of `stream` (and a shard's
//!   are a range of it, `index::shard_documents`): no tenant or shard term;
//! - actor type and result have three values each, every one of them common: a term
//!   would select a third or more of a tenant's documents, which the time index walks
//!   as cheaply. They are tested per document from `attrs`, next to `occurred_at`.
//!
//! Five terms per document rather than eight take ~10% off tantivy's time per document
//! (docs/bench/history/ingest-with-indexing.md, "where the indexer's CPU goes, five
//! terms, the time index in blocks").

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tantivy::schema::{
    Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::{TantivyDocument, Term};

use super::summary;
use crate::ledger::routing::ShardId;
use crate::ledger::{ActorKind, EventRecord, Outcome};

/// Bumped when the schema or the term derivation changes: an index of another version
/// is rebuilt from the store. 3: time-index keys carry summaries (`summary.rs`); the
/// rebuild writes them for events indexed before. 4: request ids in buckets, no field
/// norms. 5: no `shard` term (a shard's documents are a range of `stream`). 6: no
/// `tenant`, `actor_type` or `result` terms; the `attrs` column. 7: the time index in
/// blocks of entries (`time_blocks.rs`).
pub const INDEX_FORMAT: u32 = 7;

/// Request-id terms are the top this many bits of the keyed value (see the module
/// docs): 2¹⁸ buckets keep a segment's request terms few while a lookup at 10 M events
/// reads ~40 candidates of the node at most.
pub const REQUEST_BUCKET_BITS: u32 = 18;

/// The schema's fields.
#[derive(Clone, Copy, Debug)]
pub struct Fields {
    pub actor: Field,
    pub action: Field,
    pub resource_type: Field,
    pub resource: Field,
    pub request: Field,
    pub occ: Field,
    pub stream: Field,
    pub seq: Field,
    pub attrs: Field,
}

impl Fields {
    pub fn schema() -> (Schema, Fields) {
        let mut builder = Schema::builder();
        // Raw terms, no positions or frequencies: filters only ever ask "has term". No
        // field norms either (a byte per text field per document, 5 bytes per event):
        // nothing is scored.
        let term = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("raw")
                .set_index_option(IndexRecordOption::Basic)
                .set_fieldnorms(false),
        );
        let fast = NumericOptions::default().set_fast();
        let fields = Fields {
            actor: builder.add_u64_field("actor", NumericOptions::default().set_indexed()),
            action: builder.add_text_field("action", term.clone()),
            resource_type: builder.add_text_field("resource_type", term),
            resource: builder.add_u64_field("resource", NumericOptions::default().set_indexed()),
            request: builder.add_u64_field("request", NumericOptions::default().set_indexed()),
            occ: builder.add_i64_field("occ", fast.clone()),
            stream: builder.add_u64_field("stream", fast.clone()),
            seq: builder.add_u64_field("seq", fast.clone()),
            attrs: builder.add_u64_field("attrs", fast),
        };
        (builder.build(), fields)
    }
}

/// The stream's number in the index: shard and per-shard stream number.
pub fn stream_value(shard: ShardId, stream_no: u32) -> u64 {
    (u64::from(shard) << 32) | u64::from(stream_no)
}

/// The `attrs` column of an event: its actor type in the low byte, its result in the
/// next (the ledger's numbers for them, 1 to 3).
pub fn attrs_value(kind: ActorKind, outcome: Outcome) -> u64 {
    u64::from(kind as u8) | (u64::from(outcome as u8) << 8)
}

/// What a filter asks of `attrs`: `attrs & mask == want` (`mask` 0 when it asks
/// nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttrsTest {
    pub mask: u64,
    pub want: u64,
}

impl AttrsTest {
    pub fn new(kind: Option<ActorKind>, outcome: Option<Outcome>) -> AttrsTest {
        let mut test = AttrsTest::default();
        if let Some(kind) = kind {
            test.mask |= 0xff;
            test.want |= u64::from(kind as u8);
        }
        if let Some(outcome) = outcome {
            test.mask |= 0xff00;
            test.want |= u64::from(outcome as u8) << 8;
        }
        test
    }

    pub fn is_none(&self) -> bool {
        self.mask == 0
    }

    pub fn admits(&self, attrs: u64) -> bool {
        attrs & self.mask == self.want
    }
}

/// Makes the tenant-scoped terms. Holds the index's term key.
#[derive(Clone)]
pub struct Terms {
    mac: Hmac<Sha256>,
    request_bucket_bits: u32,
}

impl std::fmt::Debug for Terms {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Terms(..)")
    }
}

/// Which keyed identifier a hashed term is (part of the HMAC input).
#[derive(Clone, Copy)]
enum Keyed {
    Actor = 1,
    Resource = 2,
    Request = 3,
}

impl Terms {
    pub fn new(key: &[u8; 32]) -> Terms {
        Terms::with_request_buckets(key, REQUEST_BUCKET_BITS)
    }

    /// With request ids in `2^bits` buckets (0: all in one, which tests use to make
    /// every request-id lookup read past other requests' events).
    pub fn with_request_buckets(key: &[u8; 32], bits: u32) -> Terms {
        Terms {
            mac: Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length"),
            request_bucket_bits: bits.min(64),
        }
    }

    fn keyed(&self, kind: Keyed, tenant_id: &str, value: &str) -> u64 {
        let mut mac = self.mac.clone();
        mac.update(&[kind as u8]);
        mac.update(&(tenant_id.len() as u32).to_be_bytes());
        mac.update(tenant_id.as_bytes());
        mac.update(value.as_bytes());
        let digest = mac.finalize().into_bytes();
        u64::from_be_bytes(digest[..8].try_into().expect("SHA-256 has 32 bytes"))
    }

    /// `"{tenant}\0{value}"`: tenant ids and vocabulary values hold no NUL (validated
    /// at ingest), so the pair is unambiguous.
    pub fn scoped(tenant_id: &str, value: &str) -> String {
        let mut term = String::with_capacity(tenant_id.len() + 1 + value.len());
        term.push_str(tenant_id);
        term.push('\0');
        term.push_str(value);
        term
    }

    /// The keyed value of an actor id (the `actor` term; also in time-index summaries).
    pub fn actor_value(&self, tenant_id: &str, actor_id: &str) -> u64 {
        self.keyed(Keyed::Actor, tenant_id, actor_id)
    }

    /// The keyed value of a resource id (the `resource` term).
    pub fn resource_value(&self, tenant_id: &str, resource_id: &str) -> u64 {
        self.keyed(Keyed::Resource, tenant_id, resource_id)
    }

    pub fn actor(&self, fields: &Fields, tenant_id: &str, actor_id: &str) -> Term {
        Term::from_field_u64(fields.actor, self.actor_value(tenant_id, actor_id))
    }

    pub fn resource(&self, fields: &Fields, tenant_id: &str, resource_id: &str) -> Term {
        Term::from_field_u64(fields.resource, self.resource_value(tenant_id, resource_id))
    }

    /// The bucket of a request id (the `request` term).
    pub fn request_value(&self, tenant_id: &str, request_id: &str) -> u64 {
        let value = self.keyed(Keyed::Request, tenant_id, request_id);
        value
            .checked_shr(64 - self.request_bucket_bits)
            .unwrap_or(0)
    }

    pub fn request(&self, fields: &Fields, tenant_id: &str, request_id: &str) -> Term {
        Term::from_field_u64(fields.request, self.request_value(tenant_id, request_id))
    }

    pub fn vocabulary(field: Field, tenant_id: &str, value: &str) -> Term {
        Term::from_field_text(field, &Terms::scoped(tenant_id, value))
    }

    /// The document of one event at its position, and its time-index summary
    /// (`summary.rs`), which share the event's keyed terms.
    pub fn document(
        &self,
        fields: &Fields,
        shard: ShardId,
        stream_no: u32,
        seq: u64,
        event: &EventRecord,
    ) -> (TantivyDocument, [u8; summary::SUMMARY_BYTES]) {
        let tenant = event.tenant_id.as_str();
        let actor = self.actor_value(tenant, &event.actor_id);
        let resource = self.resource_value(tenant, &event.resource_id);
        let mut doc = TantivyDocument::default();
        doc.add_u64(fields.actor, actor);
        doc.add_text(fields.action, Terms::scoped(tenant, &event.action));
        doc.add_text(
            fields.resource_type,
            Terms::scoped(tenant, &event.resource_type),
        );
        doc.add_u64(fields.resource, resource);
        if !event.request_id.is_empty() {
            doc.add_u64(
                fields.request,
                self.request_value(tenant, &event.request_id),
            );
        }
        doc.add_i64(fields.occ, event.occurred_at_ns);
        doc.add_u64(fields.stream, stream_value(shard, stream_no));
        doc.add_u64(fields.seq, seq);
        doc.add_u64(fields.attrs, attrs_value(event.actor_kind, event.outcome));
        (doc, summary::encode(actor, resource, event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_terms_are_scoped_and_keyed() {
        let (_, fields) = Fields::schema();
        let terms = Terms::new(&[7; 32]);
        let other_key = Terms::new(&[8; 32]);
        let a = terms.actor(&fields, "ten_a", "alice@example.com");
        assert_ne!(a, terms.actor(&fields, "ten_b", "alice@example.com"));
        assert_ne!(a, other_key.actor(&fields, "ten_a", "alice@example.com"));
        assert_eq!(a, terms.actor(&fields, "ten_a", "alice@example.com"));
        // Same value, other identifier kinds: other terms.
        let value = |term: &Term| term.value().as_u64().unwrap();
        assert_ne!(
            value(&a),
            value(&terms.resource(&fields, "ten_a", "alice@example.com"))
        );
        // No plaintext in the term: it is a number (8 bytes of the HMAC).
        assert!(a.value().as_str().is_none());
    }

    #[test]
    fn attrs_test_asks_only_what_the_filter_names() {
        let attrs = attrs_value(ActorKind::Service, Outcome::Denied);
        assert!(AttrsTest::new(None, None).is_none());
        assert!(AttrsTest::new(None, None).admits(attrs));
        assert!(AttrsTest::new(Some(ActorKind::Service), None).admits(attrs));
        assert!(!AttrsTest::new(Some(ActorKind::User), None).admits(attrs));
        assert!(AttrsTest::new(None, Some(Outcome::Denied)).admits(attrs));
        assert!(!AttrsTest::new(None, Some(Outcome::Failure)).admits(attrs));
        assert!(AttrsTest::new(Some(ActorKind::Service), Some(Outcome::Denied)).admits(attrs));
        assert!(!AttrsTest::new(Some(ActorKind::Service), Some(Outcome::Success)).admits(attrs));
        // Every pair has its own value.
        let kinds = [ActorKind::User, ActorKind::Service, ActorKind::System];
        let outcomes = [Outcome::Success, Outcome::Failure, Outcome::Denied];
        let mut values: Vec<u64> = kinds
            .iter()
            .flat_map(|kind| outcomes.iter().map(|outcome| attrs_value(*kind, *outcome)))
            .collect();
        values.sort_unstable();
        values.dedup();
        assert_eq!(values.len(), 9);
    }
}
