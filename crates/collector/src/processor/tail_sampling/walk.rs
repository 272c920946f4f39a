//! A walk over encoded `TracesData` that splits it into per-trace fragments without decoding
//! spans into structs, and sums up what the policies need to know of each trace.
//!
//! A fragment is one `ResourceSpans` (field 1 of `TracesData`, key and length included) holding
//! the resource, one `ScopeSpans` with its scope, and spans of one trace, all copied byte for
//! byte from the input. Fragments concatenated are a valid `TracesData` (and
//! `ExportTraceServiceRequest`), so a trace's buffer is simply its fragments one after the other.

use prost::encoding::{encode_varint, encoded_len_varint};

use super::policy::{AttrValue, Leaves};

/// A trace id.
pub type TraceKey = [u8; 16];
/// One bit per attribute / trace-state condition (see [`Leaves`]).
pub type Bits = [u64; 2];
/// Conditions a [`Bits`] can hold.
pub const MAX_CONDITIONS: usize = 128;

/// The span attribute that forces a trace to be kept when its value is > 0.
pub const PRIORITY_KEY: &str = "sampling.priority";

pub const STATUS_UNSET: u8 = 1;
pub const STATUS_OK: u8 = 2;
pub const STATUS_ERROR: u8 = 4;

/// What the policies need to know of (part of) a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub span_count: u32,
    pub min_start: u64,
    pub max_end: u64,
    /// `STATUS_*` bits of the status codes seen.
    pub status: u8,
    /// Some span had the W3C "sampled" trace flag.
    pub sampled_flag: bool,
    /// Some span had `sampling.priority` > 0.
    pub force_keep: bool,
    pub bits: Bits,
}

impl Default for Summary {
    fn default() -> Self {
        Self {
            span_count: 0,
            min_start: u64::MAX,
            max_end: 0,
            status: 0,
            sampled_flag: false,
            force_keep: false,
            bits: [0; 2],
        }
    }
}

impl Summary {
    pub fn merge(&mut self, o: &Summary) {
        self.span_count += o.span_count;
        self.min_start = self.min_start.min(o.min_start);
        self.max_end = self.max_end.max(o.max_end);
        self.status |= o.status;
        self.sampled_flag |= o.sampled_flag;
        self.force_keep |= o.force_keep;
        self.bits[0] |= o.bits[0];
        self.bits[1] |= o.bits[1];
    }

    /// `max(end) - min(start)` in whole milliseconds.
    pub fn duration_ms(&self) -> i64 {
        if self.span_count == 0 || self.max_end < self.min_start {
            return 0;
        }
        ((self.max_end - self.min_start) / 1_000_000) as i64
    }

    pub fn has(&self, bit: u16) -> bool {
        let b = bit as usize;
        self.bits[b / 64] & (1u64 << (b % 64)) != 0
    }
}

pub fn set_bit(bits: &mut Bits, bit: u16) {
    let b = bit as usize;
    bits[b / 64] |= 1u64 << (b % 64);
}

/// One trace's part of the input, in the output buffer.
#[derive(Debug, Clone)]
pub struct Fragment {
    pub trace: TraceKey,
    pub start: usize,
    pub end: usize,
    pub summary: Summary,
}

/// Bytes that are not the protobuf they should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid OTLP protobuf at byte {offset}: {problem}")]
pub struct WalkError {
    pub offset: usize,
    pub problem: &'static str,
}

const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const I32: u8 = 5;

/// A reader over `buf[pos..end]` that reports absolute offsets.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], start: usize, end: usize) -> Self {
        Self {
            buf,
            pos: start,
            end,
        }
    }

    fn done(&self) -> bool {
        self.pos >= self.end
    }

    fn err(&self, problem: &'static str) -> WalkError {
        WalkError {
            offset: self.pos,
            problem,
        }
    }

    fn varint(&mut self) -> Result<u64, WalkError> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos).filter(|_| self.pos < self.end) else {
                return Err(self.err("truncated varint"));
            };
            self.pos += 1;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err(self.err("varint too long"))
    }

    fn key(&mut self) -> Result<(u64, u8), WalkError> {
        let k = self.varint()?;
        Ok((k >> 3, (k & 7) as u8))
    }

    fn fixed(&mut self, n: usize) -> Result<u64, WalkError> {
        if self.pos + n > self.end {
            return Err(self.err("truncated fixed-width field"));
        }
        let mut v = 0u64;
        for (i, b) in self.buf[self.pos..self.pos + n].iter().enumerate() {
            v |= u64::from(*b) << (8 * i);
        }
        self.pos += n;
        Ok(v)
    }

    /// A length-delimited field's content, as absolute `(start, end)`.
    fn len_delim(&mut self) -> Result<(usize, usize), WalkError> {
        let n = self.varint()? as usize;
        let start = self.pos;
        let end = start
            .checked_add(n)
            .filter(|e| *e <= self.end)
            .ok_or_else(|| self.err("length past the end of its message"))?;
        self.pos = end;
        Ok((start, end))
    }

    fn skip(&mut self, wt: u8) -> Result<(), WalkError> {
        match wt {
            VARINT => self.varint().map(|_| ()),
            I64 => self.fixed(8).map(|_| ()),
            LEN => self.len_delim().map(|_| ()),
            I32 => self.fixed(4).map(|_| ()),
            _ => Err(self.err("unsupported wire type")),
        }
    }

    fn expect(&self, wt: u8, want: u8) -> Result<(), WalkError> {
        if wt == want {
            Ok(())
        } else {
            Err(self.err("unexpected wire type"))
        }
    }
}

/// A span's place in the input while its ScopeSpans is being split.
#[derive(Debug, Clone, Copy)]
pub struct SpanSlot {
    trace: TraceKey,
    start: usize,
    end: usize,
    summary: Summary,
}

/// Reusable buffers for [`split`].
#[derive(Default)]
pub struct Splitter {
    pub out: Vec<u8>,
    pub fragments: Vec<Fragment>,
    slots: Vec<SpanSlot>,
}

impl Splitter {
    pub fn clear(&mut self) {
        self.out.clear();
        self.fragments.clear();
        self.slots.clear();
    }

    /// Splits `input` (an encoded `TracesData`) into fragments appended to `self`.
    pub fn split(&mut self, input: &[u8], leaves: &Leaves) -> Result<(), WalkError> {
        let mut r = Reader::new(input, 0, input.len());
        while !r.done() {
            let (tag, wt) = r.key()?;
            if tag == 1 {
                r.expect(wt, LEN)?;
                let (s, e) = r.len_delim()?;
                self.resource_spans(input, s, e, leaves)?;
            } else {
                r.skip(wt)?;
            }
        }
        Ok(())
    }

    fn resource_spans(
        &mut self,
        input: &[u8],
        start: usize,
        end: usize,
        leaves: &Leaves,
    ) -> Result<(), WalkError> {
        // First the resource and the schema url (they may come after the scope spans).
        let mut resource = (0, 0);
        let mut schema = (0, 0);
        let mut res_bits: Bits = [0; 2];
        let mut r = Reader::new(input, start, end);
        while !r.done() {
            let field_start = r.pos;
            let (tag, wt) = r.key()?;
            match tag {
                1 => {
                    r.expect(wt, LEN)?;
                    let (s, e) = r.len_delim()?;
                    resource = (field_start, e);
                    let mut rr = Reader::new(input, s, e);
                    while !rr.done() {
                        let (t, w) = rr.key()?;
                        if t == 1 {
                            rr.expect(w, LEN)?;
                            let (ks, ke) = rr.len_delim()?;
                            let (key, value) = key_value(input, ks, ke)?;
                            leaves.attr(key, value, &mut res_bits);
                        } else {
                            rr.skip(w)?;
                        }
                    }
                }
                3 => {
                    r.expect(wt, LEN)?;
                    r.len_delim()?;
                    schema = (field_start, r.pos);
                }
                _ => r.skip(wt)?,
            }
        }
        let mut r = Reader::new(input, start, end);
        while !r.done() {
            let (tag, wt) = r.key()?;
            if tag == 2 {
                r.expect(wt, LEN)?;
                let (s, e) = r.len_delim()?;
                self.scope_spans(input, s, e, resource, schema, res_bits, leaves)?;
            } else {
                r.skip(wt)?;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn scope_spans(
        &mut self,
        input: &[u8],
        start: usize,
        end: usize,
        resource: (usize, usize),
        rs_schema: (usize, usize),
        res_bits: Bits,
        leaves: &Leaves,
    ) -> Result<(), WalkError> {
        let mut scope = (0, 0);
        let mut schema = (0, 0);
        self.slots.clear();
        let mut r = Reader::new(input, start, end);
        while !r.done() {
            let field_start = r.pos;
            let (tag, wt) = r.key()?;
            match tag {
                1 => {
                    r.expect(wt, LEN)?;
                    r.len_delim()?;
                    scope = (field_start, r.pos);
                }
                2 => {
                    r.expect(wt, LEN)?;
                    let (s, e) = r.len_delim()?;
                    let mut slot = span(input, s, e, leaves)?;
                    slot.summary.bits[0] |= res_bits[0];
                    slot.summary.bits[1] |= res_bits[1];
                    self.slots.push(slot);
                }
                3 => {
                    r.expect(wt, LEN)?;
                    r.len_delim()?;
                    schema = (field_start, r.pos);
                }
                _ => r.skip(wt)?,
            }
        }
        if self.slots.is_empty() {
            return Ok(());
        }
        // Group by trace, keeping the order of spans within a trace.
        self.slots.sort_unstable_by_key(|a| (a.trace, a.start));
        let slice = |(s, e): (usize, usize)| &input[s..e];
        let fixed_ss = (scope.1 - scope.0) + (schema.1 - schema.0);
        let fixed_rs = (resource.1 - resource.0) + (rs_schema.1 - rs_schema.0);
        let mut i = 0;
        while i < self.slots.len() {
            let trace = self.slots[i].trace;
            let mut j = i;
            let mut spans_len = 0;
            let mut summary = Summary::default();
            while j < self.slots.len() && self.slots[j].trace == trace {
                let n = self.slots[j].end - self.slots[j].start;
                spans_len += 1 + encoded_len_varint(n as u64) + n;
                summary.merge(&self.slots[j].summary);
                j += 1;
            }
            let ss_len = fixed_ss + spans_len;
            let rs_len = fixed_rs + 1 + encoded_len_varint(ss_len as u64) + ss_len;
            let out = &mut self.out;
            let frag_start = out.len();
            out.reserve(1 + encoded_len_varint(rs_len as u64) + rs_len);
            out.push(0x0a);
            encode_varint(rs_len as u64, out);
            out.extend_from_slice(slice(resource));
            out.push(0x12);
            encode_varint(ss_len as u64, out);
            out.extend_from_slice(slice(scope));
            for s in &self.slots[i..j] {
                out.push(0x12);
                encode_varint((s.end - s.start) as u64, out);
                out.extend_from_slice(&input[s.start..s.end]);
            }
            out.extend_from_slice(slice(schema));
            out.extend_from_slice(slice(rs_schema));
            self.fragments.push(Fragment {
                trace,
                start: frag_start,
                end: out.len(),
                summary,
            });
            i = j;
        }
        Ok(())
    }
}

fn span(input: &[u8], start: usize, end: usize, leaves: &Leaves) -> Result<SpanSlot, WalkError> {
    let mut slot = SpanSlot {
        trace: [0; 16],
        start,
        end,
        summary: Summary {
            span_count: 1,
            ..Summary::default()
        },
    };
    let mut span_start = 0u64;
    let mut span_end = 0u64;
    let mut code = 0u64;
    let mut r = Reader::new(input, start, end);
    while !r.done() {
        let (tag, wt) = r.key()?;
        match (tag, wt) {
            (1, LEN) => {
                let (s, e) = r.len_delim()?;
                // Ids that are not 16 bytes (refused downstream) share the all-zero key.
                if e - s == 16 {
                    slot.trace.copy_from_slice(&input[s..e]);
                }
            }
            (3, LEN) => {
                let (s, e) = r.len_delim()?;
                if leaves.has_trace_state() && e > s {
                    if let Ok(ts) = std::str::from_utf8(&input[s..e]) {
                        leaves.trace_state(ts, &mut slot.summary.bits);
                    }
                }
            }
            (7, I64) => span_start = r.fixed(8)?,
            (8, I64) => span_end = r.fixed(8)?,
            (9, LEN) => {
                let (s, e) = r.len_delim()?;
                let (key, value) = key_value(input, s, e)?;
                if key == PRIORITY_KEY && value.is_positive() {
                    slot.summary.force_keep = true;
                }
                leaves.attr(key, value, &mut slot.summary.bits);
            }
            (15, LEN) => {
                let (s, e) = r.len_delim()?;
                let mut sr = Reader::new(input, s, e);
                while !sr.done() {
                    let (t, w) = sr.key()?;
                    if t == 3 && w == VARINT {
                        code = sr.varint()?;
                    } else {
                        sr.skip(w)?;
                    }
                }
            }
            (16, I32) => {
                let flags = r.fixed(4)?;
                if flags & 1 == 1 {
                    slot.summary.sampled_flag = true;
                }
            }
            _ => r.skip(wt)?,
        }
    }
    slot.summary.min_start = span_start;
    slot.summary.max_end = span_end.max(span_start);
    slot.summary.status = match code {
        1 => STATUS_OK,
        2 => STATUS_ERROR,
        _ => STATUS_UNSET,
    };
    Ok(slot)
}

/// A `KeyValue`'s key and (scalar) value.
fn key_value(input: &[u8], start: usize, end: usize) -> Result<(&str, AttrValue<'_>), WalkError> {
    let mut key = "";
    let mut value = AttrValue::Other;
    let mut r = Reader::new(input, start, end);
    while !r.done() {
        let (tag, wt) = r.key()?;
        match (tag, wt) {
            (1, LEN) => {
                let (s, e) = r.len_delim()?;
                key = std::str::from_utf8(&input[s..e]).map_err(|_| r.err("key is not UTF-8"))?;
            }
            (2, LEN) => {
                let (s, e) = r.len_delim()?;
                value = any_value(input, s, e)?;
            }
            _ => r.skip(wt)?,
        }
    }
    Ok((key, value))
}

fn any_value(input: &[u8], start: usize, end: usize) -> Result<AttrValue<'_>, WalkError> {
    let mut value = AttrValue::Other;
    let mut r = Reader::new(input, start, end);
    while !r.done() {
        let (tag, wt) = r.key()?;
        match (tag, wt) {
            (1, LEN) => {
                let (s, e) = r.len_delim()?;
                value = match std::str::from_utf8(&input[s..e]) {
                    Ok(text) => AttrValue::Str(text),
                    Err(_) => AttrValue::Other,
                };
            }
            (2, VARINT) => value = AttrValue::Bool(r.varint()? != 0),
            (3, VARINT) => value = AttrValue::Int(r.varint()? as i64),
            (4, I64) => value = AttrValue::Double(f64::from_bits(r.fixed(8)?)),
            _ => {
                r.skip(wt)?;
                value = AttrValue::Other;
            }
        }
    }
    Ok(value)
}

/// Visits the spans of encoded `TracesData` (for counting).
pub fn count_spans(input: &[u8]) -> Result<usize, WalkError> {
    let mut n = 0;
    let mut r = Reader::new(input, 0, input.len());
    while !r.done() {
        let (tag, wt) = r.key()?;
        if tag != 1 {
            r.skip(wt)?;
            continue;
        }
        r.expect(wt, LEN)?;
        let (s, e) = r.len_delim()?;
        let mut rs = Reader::new(input, s, e);
        while !rs.done() {
            let (t, w) = rs.key()?;
            if t != 2 {
                rs.skip(w)?;
                continue;
            }
            rs.expect(w, LEN)?;
            let (ss, se) = rs.len_delim()?;
            let mut sr = Reader::new(input, ss, se);
            while !sr.done() {
                let (t, w) = sr.key()?;
                if t == 2 {
                    n += 1;
                }
                sr.skip(w)?;
            }
        }
    }
    Ok(n)
}

struct ScopeGroup<'a> {
    scope: &'a [u8],
    schema: &'a [u8],
    spans: Vec<&'a [u8]>,
}

struct ResourceGroup<'a> {
    resource: &'a [u8],
    schema: &'a [u8],
    scopes: Vec<ScopeGroup<'a>>,
}

/// Merges trace buffers (fragments) into one encoded `TracesData` with one `ResourceSpans`
/// per distinct resource and one `ScopeSpans` per distinct scope in it (compared as bytes).
/// Bytes that cannot be read are passed on as they are.
pub fn regroup<'a>(parts: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let parts: Vec<&[u8]> = parts.collect();
    match try_regroup(&parts) {
        Ok(out) => out,
        Err(_) => parts.concat(),
    }
}

fn try_regroup(parts: &[&[u8]]) -> Result<Vec<u8>, WalkError> {
    let mut groups: Vec<ResourceGroup<'_>> = Vec::new();
    let mut index: rustc_hash::FxHashMap<(&[u8], &[u8]), usize> = Default::default();
    let mut total = 0;
    for input in parts {
        let input: &[u8] = input;
        total += input.len();
        let mut r = Reader::new(input, 0, input.len());
        while !r.done() {
            let (tag, wt) = r.key()?;
            if tag != 1 {
                r.skip(wt)?;
                continue;
            }
            r.expect(wt, LEN)?;
            let (s, e) = r.len_delim()?;
            // Resource and schema first.
            let (mut resource, mut schema): (&[u8], &[u8]) = (&[], &[]);
            let mut rr = Reader::new(input, s, e);
            while !rr.done() {
                let at = rr.pos;
                let (t, w) = rr.key()?;
                rr.skip(w)?;
                match t {
                    1 => resource = &input[at..rr.pos],
                    3 => schema = &input[at..rr.pos],
                    _ => {}
                }
            }
            let gi = *index.entry((resource, schema)).or_insert_with(|| {
                groups.push(ResourceGroup {
                    resource,
                    schema,
                    scopes: Vec::new(),
                });
                groups.len() - 1
            });
            let mut rr = Reader::new(input, s, e);
            while !rr.done() {
                let (t, w) = rr.key()?;
                if t != 2 {
                    rr.skip(w)?;
                    continue;
                }
                rr.expect(w, LEN)?;
                let (ss, se) = rr.len_delim()?;
                let (mut scope, mut sschema): (&[u8], &[u8]) = (&[], &[]);
                let mut spans = Vec::new();
                let mut sr = Reader::new(input, ss, se);
                while !sr.done() {
                    let at = sr.pos;
                    let (t, w) = sr.key()?;
                    sr.skip(w)?;
                    match t {
                        1 => scope = &input[at..sr.pos],
                        2 => spans.push(&input[at..sr.pos]),
                        3 => sschema = &input[at..sr.pos],
                        _ => {}
                    }
                }
                let g = &mut groups[gi];
                match g
                    .scopes
                    .iter_mut()
                    .find(|x| x.scope == scope && x.schema == sschema)
                {
                    Some(x) => x.spans.extend(spans),
                    None => g.scopes.push(ScopeGroup {
                        scope,
                        schema: sschema,
                        spans,
                    }),
                }
            }
        }
    }
    let mut out = Vec::with_capacity(total);
    for g in &groups {
        let ss_lens: Vec<usize> = g
            .scopes
            .iter()
            .map(|s| {
                s.scope.len() + s.schema.len() + s.spans.iter().map(|x| x.len()).sum::<usize>()
            })
            .collect();
        let rs_len = g.resource.len()
            + g.schema.len()
            + ss_lens
                .iter()
                .map(|n| 1 + encoded_len_varint(*n as u64) + n)
                .sum::<usize>();
        out.push(0x0a);
        encode_varint(rs_len as u64, &mut out);
        out.extend_from_slice(g.resource);
        for (s, n) in g.scopes.iter().zip(&ss_lens) {
            out.push(0x12);
            encode_varint(*n as u64, &mut out);
            out.extend_from_slice(s.scope);
            for span in &s.spans {
                out.extend_from_slice(span);
            }
            out.extend_from_slice(s.schema);
        }
        out.extend_from_slice(g.schema);
    }
    Ok(out)
}
