//! A zero-copy, validating scan of OTLP trace requests in protobuf wire format.
//!
//! Decoding a request into the owned prost types costs an allocation per string, attribute and
//! span; it is most of a receiver's CPU. When a request only has to be stored and indexed, a
//! scan over the bytes is enough: [`scan_request`] checks that the bytes are a well-formed
//! `ExportTraceServiceRequest` (the same checks prost's decoder makes: wire types, lengths,
//! UTF-8 strings, nesting) and hands each resource and span to a visitor as borrowed views.
//!
//! Field numbers are those of opentelemetry-proto `trace/v1/trace.proto`,
//! `common/v1/common.proto` and `resource/v1/resource.proto`. An `ExportTraceServiceRequest`
//! and a `TracesData` share their encoding (field 1: repeated `ResourceSpans`), so the bytes of
//! several requests, concatenated, are one valid `TracesData`.

use prost::encoding::{decode_varint, WireType};

/// Why bytes are not a valid OTLP trace request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid OTLP protobuf at byte {offset} ({context}): {problem}")]
pub struct WireError {
    pub offset: usize,
    pub context: &'static str,
    pub problem: String,
}

/// Nesting allowed for `AnyValue` arrays and maps (prost's recursion limit is 100).
const MAX_DEPTH: u32 = 64;

/// A borrowed attribute value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(&'a [u8]),
    /// An array or a map (not looked into by indexes).
    Composite,
    Empty,
}

/// A borrowed attribute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeyValueRef<'a> {
    pub key: &'a str,
    pub value: ValueRef<'a>,
}

/// The fields of a span that indexes need, borrowed from the request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpanRef<'a> {
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub parent_span_id: &'a [u8],
    pub name: &'a str,
    pub kind: i32,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub status_code: i32,
    pub attributes: Vec<KeyValueRef<'a>>,
}

/// What the visitor is shown, in order.
pub trait Visitor<'a> {
    /// Whether spans should come with their attributes (validation is the same either way).
    fn wants_attributes(&self) -> bool {
        true
    }
    /// A new `ResourceSpans` begins, with its resource's attributes.
    fn resource(&mut self, attributes: &[KeyValueRef<'a>]);
    /// A span of the current resource.
    fn span(&mut self, span: &SpanRef<'a>);
}

/// A visitor that only validates (the span count comes back from [`scan_request`]).
pub struct CountSpans;

impl<'a> Visitor<'a> for CountSpans {
    fn wants_attributes(&self) -> bool {
        false
    }
    fn resource(&mut self, _attributes: &[KeyValueRef<'a>]) {}
    fn span(&mut self, _span: &SpanRef<'a>) {}
}

/// What a validating scan saw, kept as offsets into the scanned bytes, so that a later stage
/// can be shown the same resources and spans ([`Recorded::replay`]) without parsing the
/// protobuf again.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recorded {
    /// Per resource: its first span, its first attribute and its attribute count.
    resources: Vec<(u32, u32, u32)>,
    spans: Vec<RecSpan>,
    attrs: Vec<RecAttr>,
    /// The length of the bytes scanned (replay checks it).
    len: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Range(u32, u32);

#[derive(Debug, Clone, Copy, PartialEq)]
enum RecValue {
    Str(Range),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(Range),
    Composite,
    Empty,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct RecAttr {
    key: Range,
    value: RecValue,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct RecSpan {
    trace_id: Range,
    span_id: Range,
    parent_span_id: Range,
    name: Range,
    kind: i32,
    start_time_unix_nano: u64,
    end_time_unix_nano: u64,
    status_code: i32,
    first_attr: u32,
    attr_count: u32,
}

/// The visitor that fills a [`Recorded`].
pub struct Recorder<'b> {
    base: &'b [u8],
    rec: Recorded,
}

impl<'b> Recorder<'b> {
    /// A recorder for a scan of `bytes`.
    pub fn new(bytes: &'b [u8]) -> Self {
        Self {
            base: bytes,
            rec: Recorded {
                len: bytes.len(),
                ..Default::default()
            },
        }
    }

    pub fn finish(self) -> Recorded {
        self.rec
    }

    fn range(&self, part: &[u8]) -> Range {
        // Every slice a scan hands out lies inside the scanned bytes.
        let start = (part.as_ptr() as usize).saturating_sub(self.base.as_ptr() as usize);
        Range(start as u32, part.len() as u32)
    }

    fn attr(&self, kv: &KeyValueRef<'_>) -> RecAttr {
        let value = match kv.value {
            ValueRef::Str(s) => RecValue::Str(self.range(s.as_bytes())),
            ValueRef::Bool(b) => RecValue::Bool(b),
            ValueRef::Int(i) => RecValue::Int(i),
            ValueRef::Double(d) => RecValue::Double(d),
            ValueRef::Bytes(b) => RecValue::Bytes(self.range(b)),
            ValueRef::Composite => RecValue::Composite,
            ValueRef::Empty => RecValue::Empty,
        };
        RecAttr {
            key: self.range(kv.key.as_bytes()),
            value,
        }
    }
}

impl<'a> Visitor<'a> for Recorder<'_> {
    fn resource(&mut self, attributes: &[KeyValueRef<'a>]) {
        let first = self.rec.attrs.len() as u32;
        for kv in attributes {
            let a = self.attr(kv);
            self.rec.attrs.push(a);
        }
        self.rec
            .resources
            .push((self.rec.spans.len() as u32, first, attributes.len() as u32));
    }

    fn span(&mut self, span: &SpanRef<'a>) {
        let first_attr = self.rec.attrs.len() as u32;
        for kv in &span.attributes {
            let a = self.attr(kv);
            self.rec.attrs.push(a);
        }
        let rec = RecSpan {
            trace_id: self.range(span.trace_id),
            span_id: self.range(span.span_id),
            parent_span_id: self.range(span.parent_span_id),
            name: self.range(span.name.as_bytes()),
            kind: span.kind,
            start_time_unix_nano: span.start_time_unix_nano,
            end_time_unix_nano: span.end_time_unix_nano,
            status_code: span.status_code,
            first_attr,
            attr_count: span.attributes.len() as u32,
        };
        self.rec.spans.push(rec);
    }
}

impl Recorded {
    /// The number of spans recorded.
    pub fn span_count(&self) -> usize {
        self.spans.len()
    }

    /// Shows `visitor` what the recording scan saw, reading strings from `bytes`, which must be
    /// the bytes that were scanned.
    pub fn replay<'a>(
        &self,
        bytes: &'a [u8],
        visitor: &mut impl Visitor<'a>,
    ) -> Result<usize, WireError> {
        let bad = |problem: &str| WireError {
            offset: 0,
            context: "Recorded",
            problem: problem.to_string(),
        };
        if bytes.len() != self.len {
            return Err(bad("replayed over other bytes than were scanned"));
        }
        let slice = |r: Range| -> Result<&'a [u8], WireError> {
            bytes
                .get(r.0 as usize..r.0 as usize + r.1 as usize)
                .ok_or_else(|| bad("a recorded range lies outside the bytes"))
        };
        let text = |r: Range| -> Result<&'a str, WireError> {
            std::str::from_utf8(slice(r)?).map_err(|_| bad("a recorded string is not UTF-8"))
        };
        let attr = |a: &RecAttr| -> Result<KeyValueRef<'a>, WireError> {
            Ok(KeyValueRef {
                key: text(a.key)?,
                value: match a.value {
                    RecValue::Str(r) => ValueRef::Str(text(r)?),
                    RecValue::Bool(b) => ValueRef::Bool(b),
                    RecValue::Int(i) => ValueRef::Int(i),
                    RecValue::Double(d) => ValueRef::Double(d),
                    RecValue::Bytes(r) => ValueRef::Bytes(slice(r)?),
                    RecValue::Composite => ValueRef::Composite,
                    RecValue::Empty => ValueRef::Empty,
                },
            })
        };
        let mut scratch = SpanRef::default();
        let mut resource_attrs = Vec::new();
        for (i, &(first_span, first_attr, count)) in self.resources.iter().enumerate() {
            let end_span = self
                .resources
                .get(i + 1)
                .map(|r| r.0)
                .unwrap_or(self.spans.len() as u32);
            resource_attrs.clear();
            for a in self
                .attrs
                .get(first_attr as usize..(first_attr + count) as usize)
                .ok_or_else(|| bad("recorded attributes out of range"))?
            {
                resource_attrs.push(attr(a)?);
            }
            visitor.resource(&resource_attrs);
            let spans = self
                .spans
                .get(first_span as usize..end_span as usize)
                .ok_or_else(|| bad("recorded spans out of range"))?;
            for s in spans {
                let mut attrs = std::mem::take(&mut scratch.attributes);
                attrs.clear();
                if visitor.wants_attributes() {
                    for a in self
                        .attrs
                        .get(s.first_attr as usize..(s.first_attr + s.attr_count) as usize)
                        .ok_or_else(|| bad("recorded attributes out of range"))?
                    {
                        attrs.push(attr(a)?);
                    }
                }
                scratch = SpanRef {
                    trace_id: slice(s.trace_id)?,
                    span_id: slice(s.span_id)?,
                    parent_span_id: slice(s.parent_span_id)?,
                    name: text(s.name)?,
                    kind: s.kind,
                    start_time_unix_nano: s.start_time_unix_nano,
                    end_time_unix_nano: s.end_time_unix_nano,
                    status_code: s.status_code,
                    attributes: attrs,
                };
                visitor.span(&scratch);
            }
        }
        Ok(self.spans.len())
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
    last_tag: u32,
    /// Validate everything (else skip what no visitor sees).
    full: bool,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Self {
            buf,
            pos: 0,
            base,
            last_tag: 0,
            full: true,
        }
    }

    fn err(&self, context: &'static str, problem: impl Into<String>) -> WireError {
        WireError {
            offset: self.base + self.pos,
            context,
            problem: problem.into(),
        }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    #[inline]
    fn varint(&mut self, context: &'static str) -> Result<u64, WireError> {
        // Most varints (keys, lengths, small numbers) are one byte.
        if let Some(&b) = self.buf.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(b as u64);
            }
        }
        let mut rest = &self.buf[self.pos.min(self.buf.len())..];
        let before = rest.len();
        let v = decode_varint(&mut rest).map_err(|e| self.err(context, e.to_string()))?;
        self.pos += before - rest.len();
        Ok(v)
    }

    /// The next field's number and wire type.
    fn key(&mut self, context: &'static str) -> Result<(u32, WireType), WireError> {
        let k = self.varint(context)?;
        if k > u32::MAX as u64 {
            return Err(self.err(context, format!("invalid key value: {k}")));
        }
        let wt = WireType::try_from(k & 7)
            .map_err(|_| self.err(context, format!("invalid wire type {}", k & 7)))?;
        let tag = (k as u32) >> 3;
        if tag == 0 {
            return Err(self.err(context, "invalid tag value: 0"));
        }
        self.last_tag = tag;
        Ok((tag, wt))
    }

    fn fixed64(&mut self, context: &'static str) -> Result<u64, WireError> {
        let b = self
            .buf
            .get(self.pos..self.pos + 8)
            .ok_or_else(|| self.err(context, "buffer underflow"))?;
        self.pos += 8;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn bytes(&mut self, context: &'static str) -> Result<(&'a [u8], usize), WireError> {
        let len = self.varint(context)? as usize;
        let start = self.pos;
        let end = start
            .checked_add(len)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| self.err(context, "buffer underflow"))?;
        self.pos = end;
        Ok((&self.buf[start..end], self.base + start))
    }

    fn string(&mut self, context: &'static str) -> Result<&'a str, WireError> {
        let at = self.pos;
        let (b, _) = self.bytes(context)?;
        std::str::from_utf8(b).map_err(|_| WireError {
            offset: self.base + at,
            context,
            problem: "invalid string value: data is not UTF-8 encoded".into(),
        })
    }

    fn skip(&mut self, wt: WireType, context: &'static str) -> Result<(), WireError> {
        match wt {
            WireType::Varint => {
                self.varint(context)?;
            }
            WireType::SixtyFourBit => {
                self.fixed64(context)?;
            }
            WireType::ThirtyTwoBit => {
                if self.pos + 4 > self.buf.len() {
                    return Err(self.err(context, "buffer underflow"));
                }
                self.pos += 4;
            }
            WireType::LengthDelimited => {
                self.bytes(context)?;
            }
            WireType::StartGroup => self.skip_group(context, 0)?,
            WireType::EndGroup => return Err(self.err(context, "unexpected end group tag")),
        }
        Ok(())
    }

    /// Skips a (deprecated) group up to its end tag, as prost does for unknown fields.
    fn skip_group(&mut self, context: &'static str, depth: u32) -> Result<(), WireError> {
        if depth > MAX_DEPTH {
            return Err(self.err(context, "recursion limit reached"));
        }
        // The start key was just read; its tag is needed to match the end.
        let start_tag = self.last_tag;
        loop {
            if self.done() {
                return Err(self.err(context, "buffer underflow"));
            }
            let (tag, wt) = self.key(context)?;
            match wt {
                WireType::EndGroup if tag == start_tag => return Ok(()),
                WireType::EndGroup => return Err(self.err(context, "unexpected end group tag")),
                WireType::StartGroup => self.skip_group(context, depth + 1)?,
                other => self.skip(other, context)?,
            }
        }
    }

    fn expect(
        &self,
        got: WireType,
        want: WireType,
        context: &'static str,
    ) -> Result<(), WireError> {
        if got == want {
            Ok(())
        } else {
            Err(self.err(
                context,
                format!("invalid wire type: {got:?} (expected {want:?})"),
            ))
        }
    }

    /// A length-delimited sub-message as its own reader.
    fn message(&mut self, wt: WireType, context: &'static str) -> Result<Reader<'a>, WireError> {
        self.expect(wt, WireType::LengthDelimited, context)?;
        let (b, base) = self.bytes(context)?;
        let mut sub = Reader::new(b, base);
        sub.full = self.full;
        Ok(sub)
    }
}

/// Scans an `ExportTraceServiceRequest` (or `TracesData`), validating all of it, and returns
/// the number of spans.
pub fn scan_request<'a>(
    bytes: &'a [u8],
    visitor: &mut impl Visitor<'a>,
) -> Result<usize, WireError> {
    scan(bytes, visitor, true)
}

/// Scans bytes that [`scan_request`] has validated before, for what visitors are shown only:
/// scopes, events, links and status messages are skipped without being looked into.
pub fn scan_validated<'a>(
    bytes: &'a [u8],
    visitor: &mut impl Visitor<'a>,
) -> Result<usize, WireError> {
    scan(bytes, visitor, false)
}

fn scan<'a>(
    bytes: &'a [u8],
    visitor: &mut impl Visitor<'a>,
    full: bool,
) -> Result<usize, WireError> {
    let mut r = Reader::new(bytes, 0);
    r.full = full;
    // One span value reused for every span, so its attribute vector is allocated once.
    let mut scratch = SpanRef::default();
    let mut spans = 0;
    while !r.done() {
        let (tag, wt) = r.key("ExportTraceServiceRequest")?;
        if tag == 1 {
            let sub = r.message(wt, "ResourceSpans")?;
            spans += resource_spans(sub, visitor, &mut scratch)?;
        } else {
            r.skip(wt, "ExportTraceServiceRequest")?;
        }
    }
    Ok(spans)
}

fn resource_spans<'a>(
    mut r: Reader<'a>,
    visitor: &mut impl Visitor<'a>,
    scratch: &mut SpanRef<'a>,
) -> Result<usize, WireError> {
    // The resource may come after the scope spans on the wire: find it first.
    let mut resource_attrs = Vec::new();
    {
        let mut first = Reader::new(r.buf, r.base);
        while !first.done() {
            let (tag, wt) = first.key("ResourceSpans")?;
            match tag {
                1 => {
                    let mut res = first.message(wt, "Resource")?;
                    while !res.done() {
                        let (t, w) = res.key("Resource")?;
                        match t {
                            1 => resource_attrs
                                .push(key_value(res.message(w, "Resource.attributes")?, 0)?),
                            2 => {
                                res.expect(
                                    w,
                                    WireType::Varint,
                                    "Resource.dropped_attributes_count",
                                )?;
                                res.varint("Resource.dropped_attributes_count")?;
                            }
                            _ => res.skip(w, "Resource")?,
                        }
                    }
                }
                3 => {
                    first.expect(wt, WireType::LengthDelimited, "ResourceSpans.schema_url")?;
                    first.string("ResourceSpans.schema_url")?;
                }
                _ => first.skip(wt, "ResourceSpans")?,
            }
        }
    }
    visitor.resource(&resource_attrs);
    let mut spans = 0;
    while !r.done() {
        let (tag, wt) = r.key("ResourceSpans")?;
        if tag == 2 {
            spans += scope_spans(r.message(wt, "ScopeSpans")?, visitor, scratch)?;
        } else {
            r.skip(wt, "ResourceSpans")?;
        }
    }
    Ok(spans)
}

fn scope_spans<'a>(
    mut r: Reader<'a>,
    visitor: &mut impl Visitor<'a>,
    scratch: &mut SpanRef<'a>,
) -> Result<usize, WireError> {
    let mut spans = 0;
    while !r.done() {
        let (tag, wt) = r.key("ScopeSpans")?;
        match tag {
            1 if !r.full => r.skip(wt, "ScopeSpans")?,
            1 => scope(r.message(wt, "InstrumentationScope")?)?,
            2 => {
                span(r.message(wt, "Span")?, visitor.wants_attributes(), scratch)?;
                visitor.span(scratch);
                spans += 1;
            }
            3 => {
                r.expect(wt, WireType::LengthDelimited, "ScopeSpans.schema_url")?;
                r.string("ScopeSpans.schema_url")?;
            }
            _ => r.skip(wt, "ScopeSpans")?,
        }
    }
    Ok(spans)
}

fn scope(mut r: Reader<'_>) -> Result<(), WireError> {
    while !r.done() {
        let (tag, wt) = r.key("InstrumentationScope")?;
        match tag {
            1 | 2 => {
                r.expect(wt, WireType::LengthDelimited, "InstrumentationScope.name")?;
                r.string("InstrumentationScope.name")?;
            }
            3 => {
                key_value(r.message(wt, "InstrumentationScope.attributes")?, 0)?;
            }
            _ => r.skip(wt, "InstrumentationScope")?,
        }
    }
    Ok(())
}

fn span<'a>(mut r: Reader<'a>, attributes: bool, s: &mut SpanRef<'a>) -> Result<(), WireError> {
    let mut attrs = std::mem::take(&mut s.attributes);
    attrs.clear();
    *s = SpanRef {
        attributes: attrs,
        ..SpanRef::default()
    };
    while !r.done() {
        let (tag, wt) = r.key("Span")?;
        match tag {
            1 => {
                r.expect(wt, WireType::LengthDelimited, "Span.trace_id")?;
                s.trace_id = r.bytes("Span.trace_id")?.0;
            }
            2 => {
                r.expect(wt, WireType::LengthDelimited, "Span.span_id")?;
                s.span_id = r.bytes("Span.span_id")?.0;
            }
            3 if r.full => {
                r.expect(wt, WireType::LengthDelimited, "Span.trace_state")?;
                r.string("Span.trace_state")?;
            }
            4 => {
                r.expect(wt, WireType::LengthDelimited, "Span.parent_span_id")?;
                s.parent_span_id = r.bytes("Span.parent_span_id")?.0;
            }
            5 => {
                r.expect(wt, WireType::LengthDelimited, "Span.name")?;
                s.name = r.string("Span.name")?;
            }
            6 => {
                r.expect(wt, WireType::Varint, "Span.kind")?;
                s.kind = r.varint("Span.kind")? as i32;
            }
            7 => {
                r.expect(wt, WireType::SixtyFourBit, "Span.start_time_unix_nano")?;
                s.start_time_unix_nano = r.fixed64("Span.start_time_unix_nano")?;
            }
            8 => {
                r.expect(wt, WireType::SixtyFourBit, "Span.end_time_unix_nano")?;
                s.end_time_unix_nano = r.fixed64("Span.end_time_unix_nano")?;
            }
            9 => {
                let kv = key_value(r.message(wt, "Span.attributes")?, 0)?;
                if attributes {
                    s.attributes.push(kv);
                }
            }
            10 | 12 | 14 => {
                r.expect(wt, WireType::Varint, "Span.dropped_count")?;
                r.varint("Span.dropped_count")?;
            }
            3 | 11 | 13 if !r.full => r.skip(wt, "Span")?,
            11 => event(r.message(wt, "Span.Event")?)?,
            13 => link(r.message(wt, "Span.Link")?)?,
            15 => {
                let mut st = r.message(wt, "Status")?;
                while !st.done() {
                    let (t, w) = st.key("Status")?;
                    match t {
                        2 => {
                            st.expect(w, WireType::LengthDelimited, "Status.message")?;
                            st.string("Status.message")?;
                        }
                        3 => {
                            st.expect(w, WireType::Varint, "Status.code")?;
                            s.status_code = st.varint("Status.code")? as i32;
                        }
                        _ => st.skip(w, "Status")?,
                    }
                }
            }
            16 => {
                r.expect(wt, WireType::ThirtyTwoBit, "Span.flags")?;
                r.skip(wt, "Span.flags")?;
            }
            _ => r.skip(wt, "Span")?,
        }
    }
    Ok(())
}

fn event(mut r: Reader<'_>) -> Result<(), WireError> {
    while !r.done() {
        let (tag, wt) = r.key("Span.Event")?;
        match tag {
            1 => {
                r.expect(wt, WireType::SixtyFourBit, "Span.Event.time_unix_nano")?;
                r.fixed64("Span.Event.time_unix_nano")?;
            }
            2 => {
                r.expect(wt, WireType::LengthDelimited, "Span.Event.name")?;
                r.string("Span.Event.name")?;
            }
            3 => {
                key_value(r.message(wt, "Span.Event.attributes")?, 0)?;
            }
            _ => r.skip(wt, "Span.Event")?,
        }
    }
    Ok(())
}

fn link(mut r: Reader<'_>) -> Result<(), WireError> {
    while !r.done() {
        let (tag, wt) = r.key("Span.Link")?;
        match tag {
            1 | 2 => {
                r.expect(wt, WireType::LengthDelimited, "Span.Link.id")?;
                r.bytes("Span.Link.id")?;
            }
            3 => {
                r.expect(wt, WireType::LengthDelimited, "Span.Link.trace_state")?;
                r.string("Span.Link.trace_state")?;
            }
            4 => {
                key_value(r.message(wt, "Span.Link.attributes")?, 0)?;
            }
            _ => r.skip(wt, "Span.Link")?,
        }
    }
    Ok(())
}

fn key_value(mut r: Reader<'_>, depth: u32) -> Result<KeyValueRef<'_>, WireError> {
    let mut kv = KeyValueRef {
        key: "",
        value: ValueRef::Empty,
    };
    while !r.done() {
        let (tag, wt) = r.key("KeyValue")?;
        match tag {
            1 => {
                r.expect(wt, WireType::LengthDelimited, "KeyValue.key")?;
                kv.key = r.string("KeyValue.key")?;
            }
            2 => kv.value = any_value(r.message(wt, "AnyValue")?, depth + 1)?,
            _ => r.skip(wt, "KeyValue")?,
        }
    }
    Ok(kv)
}

fn any_value(mut r: Reader<'_>, depth: u32) -> Result<ValueRef<'_>, WireError> {
    if depth > MAX_DEPTH {
        return Err(r.err("AnyValue", "recursion limit reached"));
    }
    let mut v = ValueRef::Empty;
    while !r.done() {
        let (tag, wt) = r.key("AnyValue")?;
        v = match tag {
            1 => {
                r.expect(wt, WireType::LengthDelimited, "AnyValue.string_value")?;
                ValueRef::Str(r.string("AnyValue.string_value")?)
            }
            2 => {
                r.expect(wt, WireType::Varint, "AnyValue.bool_value")?;
                ValueRef::Bool(r.varint("AnyValue.bool_value")? != 0)
            }
            3 => {
                r.expect(wt, WireType::Varint, "AnyValue.int_value")?;
                ValueRef::Int(r.varint("AnyValue.int_value")? as i64)
            }
            4 => {
                r.expect(wt, WireType::SixtyFourBit, "AnyValue.double_value")?;
                ValueRef::Double(f64::from_bits(r.fixed64("AnyValue.double_value")?))
            }
            5 => {
                let mut arr = r.message(wt, "ArrayValue")?;
                while !arr.done() {
                    let (t, w) = arr.key("ArrayValue")?;
                    if t == 1 {
                        any_value(arr.message(w, "AnyValue")?, depth + 1)?;
                    } else {
                        arr.skip(w, "ArrayValue")?;
                    }
                }
                ValueRef::Composite
            }
            6 => {
                let mut kvl = r.message(wt, "KeyValueList")?;
                while !kvl.done() {
                    let (t, w) = kvl.key("KeyValueList")?;
                    if t == 1 {
                        key_value(kvl.message(w, "KeyValue")?, depth + 1)?;
                    } else {
                        kvl.skip(w, "KeyValueList")?;
                    }
                }
                ValueRef::Composite
            }
            7 => {
                r.expect(wt, WireType::LengthDelimited, "AnyValue.bytes_value")?;
                ValueRef::Bytes(r.bytes("AnyValue.bytes_value")?.0)
            }
            _ => {
                r.skip(wt, "AnyValue")?;
                v
            }
        };
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attr::{kv_int, kv_str};
    use crate::proto::*;
    use prost::Message;

    type Attrs = Vec<(String, String)>;
    /// trace id, name, start, end, status code, attributes.
    type SeenSpan = (Vec<u8>, String, u64, u64, i32, Attrs);

    #[derive(Default)]
    struct Collect {
        resources: Vec<Attrs>,
        spans: Vec<SeenSpan>,
    }

    fn show(v: &ValueRef<'_>) -> String {
        match v {
            ValueRef::Str(s) => s.to_string(),
            ValueRef::Int(i) => i.to_string(),
            ValueRef::Bool(b) => b.to_string(),
            ValueRef::Double(d) => d.to_string(),
            ValueRef::Bytes(b) => hex::encode(b),
            ValueRef::Composite => "composite".into(),
            ValueRef::Empty => String::new(),
        }
    }

    impl<'a> Visitor<'a> for Collect {
        fn resource(&mut self, attributes: &[KeyValueRef<'a>]) {
            self.resources.push(
                attributes
                    .iter()
                    .map(|kv| (kv.key.to_string(), show(&kv.value)))
                    .collect(),
            );
        }
        fn span(&mut self, s: &SpanRef<'a>) {
            self.spans.push((
                s.trace_id.to_vec(),
                s.name.to_string(),
                s.start_time_unix_nano,
                s.end_time_unix_nano,
                s.status_code,
                s.attributes
                    .iter()
                    .map(|kv| (kv.key.to_string(), show(&kv.value)))
                    .collect(),
            ));
        }
    }

    fn request() -> ExportTraceServiceRequest {
        let span = Span {
            trace_id: vec![7; 16],
            span_id: vec![1; 8],
            name: "GET /users".into(),
            kind: 2,
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 5_000,
            attributes: vec![
                kv_str("http.method", "GET"),
                kv_int("http.status_code", -500),
            ],
            events: vec![span::Event {
                name: "ev".into(),
                attributes: vec![kv_str("k", "v")],
                ..Default::default()
            }],
            links: vec![span::Link {
                trace_id: vec![8; 16],
                span_id: vec![2; 8],
                ..Default::default()
            }],
            status: Some(Status {
                code: 2,
                message: "boom".into(),
            }),
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv_str("service.name", "api")],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "lib".into(),
                        ..Default::default()
                    }),
                    spans: vec![
                        span.clone(),
                        Span {
                            name: "second".into(),
                            ..span
                        },
                    ],
                    ..Default::default()
                }],
                schema_url: "https://opentelemetry.io/schemas/1.21.0".into(),
            }],
        }
    }

    #[test]
    fn scan_sees_what_decode_sees() {
        let bytes = request().encode_to_vec();
        let mut c = Collect::default();
        assert_eq!(scan_request(&bytes, &mut c).unwrap(), 2);
        assert_eq!(
            c.resources,
            vec![vec![("service.name".to_string(), "api".to_string())]]
        );
        assert_eq!(c.spans.len(), 2);
        let (tid, name, start, end, status, attrs) = &c.spans[0];
        assert_eq!(tid, &vec![7; 16]);
        assert_eq!(name, "GET /users");
        assert_eq!((*start, *end, *status), (1_000, 5_000, 2));
        assert_eq!(
            attrs[1],
            ("http.status_code".to_string(), "-500".to_string())
        );
        assert_eq!(c.spans[1].1, "second");
        let mut fast = Collect::default();
        assert_eq!(scan_validated(&bytes, &mut fast).unwrap(), 2);
        assert_eq!(fast.spans, c.spans);
        assert_eq!(fast.resources, c.resources);
        // A recording replays exactly what the scan saw.
        let mut rec = Recorder::new(&bytes);
        scan_request(&bytes, &mut rec).unwrap();
        let rec = rec.finish();
        let mut again = Collect::default();
        assert_eq!(rec.replay(&bytes, &mut again).unwrap(), 2);
        assert_eq!(again.spans, c.spans);
        assert_eq!(again.resources, c.resources);
        assert!(rec.replay(&bytes[1..], &mut Collect::default()).is_err());
        // Concatenated requests are one valid request.
        let twice = [bytes.clone(), bytes].concat();
        assert_eq!(scan_request(&twice, &mut Collect::default()).unwrap(), 4);
        assert_eq!(
            ExportTraceServiceRequest::decode(twice.as_slice())
                .unwrap()
                .resource_spans
                .len(),
            2
        );
    }

    #[test]
    fn scan_agrees_with_prost_on_corrupted_bytes() {
        let good = request().encode_to_vec();
        // Every truncation and many single-byte corruptions: scan fails exactly when decode does
        // (a scan may be stricter only about the parts it does not look into; here it is not).
        let mut checked = 0;
        for cut in 0..good.len() {
            let bytes = &good[..cut];
            let scan = scan_request(bytes, &mut Collect::default());
            let decode = ExportTraceServiceRequest::decode(bytes);
            assert_eq!(
                scan.is_ok(),
                decode.is_ok(),
                "truncated at {cut}: {scan:?} vs {decode:?}"
            );
            checked += 1;
        }
        let mut seed = 0x9e3779b97f4a7c15u64;
        for _ in 0..3000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut bytes = good.clone();
            let at = (seed as usize) % bytes.len();
            bytes[at] = (seed >> 32) as u8;
            let scan = scan_request(&bytes, &mut Collect::default());
            let decode = ExportTraceServiceRequest::decode(bytes.as_slice());
            assert_eq!(
                scan.is_ok(),
                decode.is_ok(),
                "byte {at} set: {scan:?} vs {decode:?}"
            );
            checked += 1;
        }
        assert!(checked > 3000);
        let e = scan_request(b"\xff\xff\xff", &mut Collect::default()).unwrap_err();
        assert!(
            e.to_string().starts_with("invalid OTLP protobuf at byte"),
            "{e}"
        );
    }
}
