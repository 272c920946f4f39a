//! [`SpanBatch`]: spans on their way through the pipeline, decoded or still encoded.
//!
//! A request that only has to be stored need never be decoded into owned structs: the receiver
//! validates its bytes with [`crate::wire::scan_request`] and passes them on as they are. A
//! stage that must change spans calls [`SpanBatch::decode`]; a batch may hold both kinds.

use prost::bytes::Bytes;
use prost::Message;

use std::sync::Arc;

use crate::proto::{ExportTraceServiceRequest, ResourceSpans};
use crate::wire::Recorded;

/// Spans moving through the pipeline: moved, never cloned wholesale.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SpanBatch {
    /// Spans as structs.
    pub decoded: Vec<ResourceSpans>,
    /// Validated protobuf `ExportTraceServiceRequest`s (equivalently `TracesData`).
    pub encoded: Vec<Bytes>,
    /// For each part of `encoded` (by position; missing = none), what its validating scan saw,
    /// so that the store need not parse it again.
    pub recorded: Vec<Option<Arc<Recorded>>>,
    /// Spans in both parts together.
    pub span_count: usize,
    /// The address of the client that sent these spans, while they are one client's (a batch
    /// merged from several clients has none): what k8sattributes' `from: connection` reads.
    pub client: Option<std::net::IpAddr>,
}

impl SpanBatch {
    /// A batch of decoded spans.
    pub fn from_decoded(resource_spans: Vec<ResourceSpans>) -> Self {
        let span_count = crate::span_count(&resource_spans);
        Self {
            decoded: resource_spans,
            span_count,
            ..Default::default()
        }
    }

    /// A batch of bytes validated by [`crate::wire::scan_request`] with a
    /// [`crate::wire::Recorder`], with what the scan recorded.
    pub fn from_scanned(bytes: Bytes, recorded: Recorded) -> Self {
        Self {
            span_count: recorded.span_count(),
            encoded: vec![bytes],
            recorded: vec![Some(Arc::new(recorded))],
            ..Default::default()
        }
    }

    /// What the validating scan recorded of encoded part `i`, if anything.
    pub fn recorded(&self, i: usize) -> Option<&Recorded> {
        self.recorded.get(i).and_then(|r| r.as_deref())
    }

    /// A batch of bytes already validated by [`crate::wire::scan_request`], holding `span_count`
    /// spans.
    pub fn from_encoded(bytes: Bytes, span_count: usize) -> Self {
        Self {
            encoded: vec![bytes],
            span_count,
            ..Default::default()
        }
    }

    /// Moves `other`'s spans into this batch.
    pub fn append(&mut self, other: SpanBatch) {
        let SpanBatch {
            decoded,
            encoded,
            mut recorded,
            span_count,
            client,
        } = other;
        if self.span_count == 0 {
            self.client = client;
        } else if self.client != client {
            self.client = None;
        }
        self.recorded.resize(self.encoded.len(), None);
        recorded.resize(encoded.len(), None);
        self.decoded.extend(decoded);
        self.encoded.extend(encoded);
        self.recorded.extend(recorded);
        self.span_count += span_count;
    }

    pub fn is_empty(&self) -> bool {
        self.span_count == 0
    }

    /// Bytes of the encoded part plus the wire size of the decoded part.
    pub fn wire_len(&self) -> usize {
        self.encoded.iter().map(Bytes::len).sum::<usize>()
            + prost::encoding::message::encoded_len_repeated(1, &self.decoded)
    }

    /// Decodes the encoded part, so that every span is in `decoded`.
    pub fn decode(&mut self) -> Result<&mut Vec<ResourceSpans>, prost::DecodeError> {
        self.recorded.clear();
        for bytes in std::mem::take(&mut self.encoded) {
            let req = ExportTraceServiceRequest::decode(bytes)?;
            self.decoded.extend(req.resource_spans);
        }
        Ok(&mut self.decoded)
    }

    /// All spans as one protobuf `TracesData` (encoded parts are copied as they are).
    pub fn to_protobuf(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.wire_len());
        for b in &self.encoded {
            out.extend_from_slice(b);
        }
        for rs in &self.decoded {
            prost::encoding::message::encode(1, rs, &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ScopeSpans, Span, TracesData};

    fn rs(n: usize) -> ResourceSpans {
        ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![
                    Span {
                        name: "x".into(),
                        ..Default::default()
                    };
                    n
                ],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn mixed_batches_encode_and_decode_to_the_same_spans() {
        let enc = ExportTraceServiceRequest {
            resource_spans: vec![rs(2)],
        }
        .encode_to_vec();
        let mut b = SpanBatch::from_encoded(enc.into(), 2);
        b.append(SpanBatch::from_decoded(vec![rs(3)]));
        assert_eq!(b.span_count, 5);
        let all = TracesData::decode(b.to_protobuf().as_slice()).unwrap();
        assert_eq!(crate::span_count(&all.resource_spans), 5);
        assert_eq!(b.wire_len(), b.to_protobuf().len());
        let decoded = b.decode().unwrap();
        assert_eq!(crate::span_count(decoded), 5);
        assert!(b.encoded.is_empty());
    }
}
