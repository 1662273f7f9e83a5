//! The codec of every generated client and server (`build.rs`, `codec_path`): prost's,
//! plus bounds checked on the raw bytes before a request is materialized.
//!
//! A `RecordBatchRequest` of 32 MiB holding empty events (two bytes each) would decode
//! into ~16 million `Event` structs (~200 bytes each: several GB) before the node could
//! count them; here the top-level `events` fields are counted in the bytes first (a
//! scan of tags and lengths, no allocation) and a batch over
//! [`RECORD_BATCH_EVENTS_MAX`] is refused with INVALID_ARGUMENT naming `events`.
//! Bytes that do not decode are INVALID_ARGUMENT too (prost's codec says INTERNAL).

use std::any::TypeId;
use std::marker::PhantomData;

use prost::bytes::Buf;
use prost::encoding::{decode_key, skip_field, DecodeContext, WireType};
use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Most events in one `RecordBatchRequest` (the node's `BATCH_EVENTS_MAX`, which
/// asserts that the two agree).
pub const RECORD_BATCH_EVENTS_MAX: usize = 10_000;

/// Field number of `RecordBatchRequest.events` (trail.proto).
const RECORD_BATCH_EVENTS_FIELD: u32 = 1;

/// prost's codec with the checks above.
#[derive(Debug, Clone)]
pub struct TrailCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for TrailCodec<T, U> {
    fn default() -> Self {
        TrailCodec {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for TrailCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = TrailDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        TrailDecoder {
            inner: ProstDecoder::new(BufferSettings::default()),
        }
    }
}

/// Decodes `U` once its bounds hold.
#[derive(Debug, Clone)]
pub struct TrailDecoder<U> {
    inner: ProstDecoder<U>,
}

impl<U: Message + Default + 'static> Decoder for TrailDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if TypeId::of::<U>() == TypeId::of::<crate::v1::RecordBatchRequest>() {
            // tonic hands over the whole message in one contiguous buffer.
            let bytes = buf.chunk();
            if bytes.len() == buf.remaining() {
                check_record_batch(bytes)?;
            } else {
                let whole = buf.copy_to_bytes(buf.remaining());
                check_record_batch(&whole)?;
                return U::decode(whole).map(Some).map_err(invalid);
            }
        }
        self.inner.decode(buf).map_err(|status| {
            if status.code() == tonic::Code::Internal {
                Status::invalid_argument(format!(
                    "the request does not decode as its protobuf message: {}",
                    status.message()
                ))
            } else {
                status
            }
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}

fn invalid(error: prost::DecodeError) -> Status {
    Status::invalid_argument(format!(
        "the request does not decode as its protobuf message: {error}"
    ))
}

/// Counts the top-level `events` fields of an encoded `RecordBatchRequest` without
/// decoding them: refused past [`RECORD_BATCH_EVENTS_MAX`] (and when the bytes are not
/// protobuf).
pub fn check_record_batch(mut bytes: &[u8]) -> Result<(), Status> {
    let mut events = 0usize;
    while bytes.has_remaining() {
        let (tag, wire_type) = decode_key(&mut bytes).map_err(invalid)?;
        if tag == RECORD_BATCH_EVENTS_FIELD && wire_type == WireType::LengthDelimited {
            events += 1;
            if events > RECORD_BATCH_EVENTS_MAX {
                return Err(Status::invalid_argument(format!(
                    "events: the batch has more than {RECORD_BATCH_EVENTS_MAX} events; at \
                     most {RECORD_BATCH_EVENTS_MAX} are accepted per request (split it)"
                )));
            }
        }
        skip_field(wire_type, tag, &mut bytes, DecodeContext::default()).map_err(invalid)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1;

    fn batch(events: usize) -> Vec<u8> {
        v1::RecordBatchRequest {
            events: vec![v1::Event::default(); events],
        }
        .encode_to_vec()
    }

    #[test]
    fn a_batch_over_the_limit_is_refused_before_it_is_decoded() {
        assert!(check_record_batch(&batch(RECORD_BATCH_EVENTS_MAX)).is_ok());
        let refused = check_record_batch(&batch(RECORD_BATCH_EVENTS_MAX + 1)).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().starts_with("events: "), "{refused:?}");
        // Two bytes per empty event: 16 M of them in 32 MiB, counted without decoding.
        let huge = [0x0a_u8, 0x00].repeat(16 << 20);
        assert_eq!(
            check_record_batch(&huge).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn bytes_that_are_not_protobuf_are_invalid_argument() {
        let refused = check_record_batch(&[0x0a, 0x05, 0x01]).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    }
}
