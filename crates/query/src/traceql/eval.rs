//! Evaluation of a [`Query`] over one whole trace (no I/O).

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;

use sextant_otlp_proto::attr;
use sextant_otlp_proto::proto::any_value::Value as Pv;
use sextant_otlp_proto::proto::{
    AnyValue, InstrumentationScope, KeyValue, Resource, ResourceSpans, Span,
};
use sextant_otlp_proto::{SpanId, TraceId};
use sextant_store::{MatchedSpan, Term, TraceSummary, ROOT_NOT_RECEIVED};

use super::ast::*;

/// A trace the query matched.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceResult {
    /// The trace's id.
    pub trace_id: TraceId,
    /// Root service and name, start, duration, span count.
    pub summary: TraceSummary,
    /// The non-empty spansets the query produced.
    pub span_sets: Vec<SpanSetResult>,
}

/// One spanset of a result.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanSetResult {
    /// Its first spans (at most the `spans_per_set` asked for), earliest first, each with the
    /// attributes the query referenced (and selected) as found on that span.
    pub spans: Vec<MatchedSpan>,
    /// How many spans the spanset holds in all.
    pub matched: usize,
    /// What the pipeline attached, as Tempo does: `by(field)` with the group's value, and
    /// each aggregate that passed (`count()`, `avg(duration)`, ...) with its value.
    pub attributes: Vec<KeyValue>,
}

/// A span with where it came from.
struct SpanCtx<'a> {
    /// Its position in [`TraceCtx::spans`] (0 outside a trace).
    index: usize,
    span: &'a Span,
    resource: Option<&'a Resource>,
    scope: Option<&'a InstrumentationScope>,
}

/// The per-trace structure the evaluation needs.
struct TraceCtx<'a> {
    spans: Vec<SpanCtx<'a>>,
    parent: Vec<Option<usize>>,
    children: Vec<Vec<usize>>,
    root: Option<usize>,
    /// Nested-set (left, right, parent) of each span, as Tempo numbers them.
    nested: Vec<(i64, i64, i64)>,
    start_ns: u64,
    end_ns: u64,
}

fn is_root(parent_span_id: &[u8]) -> bool {
    parent_span_id.iter().all(|b| *b == 0)
}

impl<'a> TraceCtx<'a> {
    fn new(trace: &'a [ResourceSpans]) -> Self {
        let mut spans = Vec::new();
        for rs in trace {
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    spans.push(SpanCtx {
                        index: spans.len(),
                        span,
                        resource: rs.resource.as_ref(),
                        scope: ss.scope.as_ref(),
                    });
                }
            }
        }
        let mut by_id: HashMap<&[u8], usize> = HashMap::with_capacity(spans.len());
        for (i, s) in spans.iter().enumerate() {
            by_id.entry(s.span.span_id.as_slice()).or_insert(i);
        }
        let mut parent = vec![None; spans.len()];
        let mut children = vec![Vec::new(); spans.len()];
        let mut root: Option<usize> = None;
        let (mut start_ns, mut end_ns) = (u64::MAX, 0u64);
        for (i, s) in spans.iter().enumerate() {
            start_ns = start_ns.min(s.span.start_time_unix_nano);
            end_ns = end_ns.max(s.span.end_time_unix_nano);
            if is_root(&s.span.parent_span_id) {
                if root.is_none_or(|r| {
                    s.span.start_time_unix_nano < spans[r].span.start_time_unix_nano
                }) {
                    root = Some(i);
                }
            } else if let Some(&p) = by_id.get(s.span.parent_span_id.as_slice()) {
                if p != i {
                    parent[i] = Some(p);
                    children[p].push(i);
                }
            }
        }
        if start_ns == u64::MAX {
            start_ns = 0;
        }
        for kids in &mut children {
            kids.sort_by_key(|&c| (spans[c].span.start_time_unix_nano, c));
        }
        let nested = nested_sets(&spans, &children);
        Self {
            spans,
            parent,
            children,
            root,
            nested,
            start_ns,
            end_ns,
        }
    }

    fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }

    /// The ancestors of `i`, nearest first (stops on a cycle).
    fn ancestors(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        let mut cur = self.parent[i];
        let mut steps = 0usize;
        std::iter::from_fn(move || {
            let p = cur?;
            steps += 1;
            if steps > self.spans.len() {
                return None;
            }
            cur = self.parent[p];
            Some(p)
        })
    }
}

/// Tempo's nested-set numbering: depth first from each root span (earliest first), children
/// by start time, one counter for entering and leaving; (0, 0, 0) for spans under no root.
fn nested_sets(spans: &[SpanCtx<'_>], children: &[Vec<usize>]) -> Vec<(i64, i64, i64)> {
    let n = spans.len();
    let mut nested = vec![(0i64, 0i64, 0i64); n];
    let mut roots: Vec<usize> = (0..n)
        .filter(|&i| is_root(&spans[i].span.parent_span_id))
        .collect();
    roots.sort_by_key(|&i| (spans[i].span.start_time_unix_nano, i));
    let mut visited = vec![false; n];
    let mut counter = 0i64;
    for r in roots {
        counter += 1;
        nested[r] = (counter, 0, -1);
        visited[r] = true;
        let mut stack: Vec<(usize, usize)> = vec![(r, 0)];
        while let Some(top) = stack.last_mut() {
            let (node, next) = *top;
            if let Some(&c) = children[node].get(next) {
                top.1 += 1;
                if !visited[c] {
                    visited[c] = true;
                    counter += 1;
                    nested[c] = (counter, 0, nested[node].0);
                    stack.push((c, 0));
                }
            } else {
                counter += 1;
                nested[node].1 = counter;
                stack.pop();
            }
        }
    }
    nested
}

/// A value looked at by a comparison.
#[derive(Debug)]
enum Val<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    Float(f64),
    Duration(i64),
    Bool(bool),
    Status(StatusCode),
    Kind(SpanKind),
    /// A value of a type no literal compares with (bytes, arrays, maps): it exists, no more.
    Other,
}

fn any_val(v: &AnyValue) -> Val<'_> {
    match &v.value {
        Some(Pv::StringValue(s)) => Val::Str(Cow::Borrowed(s)),
        Some(Pv::IntValue(i)) => Val::Int(*i),
        Some(Pv::DoubleValue(f)) => Val::Float(*f),
        Some(Pv::BoolValue(b)) => Val::Bool(*b),
        _ => Val::Other,
    }
}

fn duration_of(span: &Span) -> i64 {
    i64::try_from(
        span.end_time_unix_nano
            .saturating_sub(span.start_time_unix_nano),
    )
    .unwrap_or(i64::MAX)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Calls `f` with each raw attribute value a field refers to on a span (unscoped: the span's,
/// else the resource's; event and link attributes: one per event or link that has it), with
/// no allocation: this runs for every span a query looks at.
fn each_attribute_value<'a>(a: &Attribute, s: &SpanCtx<'a>, f: &mut dyn FnMut(&'a AnyValue)) {
    let span: &'a [KeyValue] = &s.span.attributes;
    let resource: &'a [KeyValue] = s.resource.map_or(&[], |r| r.attributes.as_slice());
    let found = match a.scope {
        Scope::Unscoped => attr::get(span, &a.name).or_else(|| attr::get(resource, &a.name)),
        Scope::Span => attr::get(span, &a.name),
        Scope::Resource => attr::get(resource, &a.name),
        Scope::Instrumentation => {
            attr::get(s.scope.map_or(&[], |sc| sc.attributes.as_slice()), &a.name)
        }
        Scope::Event => {
            for e in &s.span.events {
                if let Some(v) = attr::get(&e.attributes, &a.name) {
                    f(v);
                }
            }
            None
        }
        Scope::Link => {
            for l in &s.span.links {
                if let Some(v) = attr::get(&l.attributes, &a.name) {
                    f(v);
                }
            }
            None
        }
    };
    if let Some(v) = found {
        f(v);
    }
}

/// The first raw attribute value a field refers to on a span.
fn first_attribute_value<'a>(a: &Attribute, s: &SpanCtx<'a>) -> Option<&'a AnyValue> {
    let mut first = None;
    each_attribute_value(a, s, &mut |v| {
        first.get_or_insert(v);
    });
    first
}

/// The values of `field` on span `s` (several for event and link attributes, none when absent).
fn values<'a>(field: &Field, s: &SpanCtx<'a>, t: Option<&TraceCtx<'a>>, out: &mut Vec<Val<'a>>) {
    let span = s.span;
    match field {
        Field::Attribute(a) => each_attribute_value(a, s, &mut |v| out.push(any_val(v))),
        Field::Intrinsic(i) => match i {
            Intrinsic::Name => out.push(Val::Str(Cow::Borrowed(&span.name))),
            Intrinsic::Status => out.push(Val::Status(StatusCode::from_otlp(
                span.status.as_ref().map_or(0, |st| st.code),
            ))),
            Intrinsic::StatusMessage => out.push(Val::Str(Cow::Borrowed(
                span.status.as_ref().map_or("", |st| st.message.as_str()),
            ))),
            Intrinsic::Kind => out.push(Val::Kind(SpanKind::from_otlp(span.kind))),
            Intrinsic::Duration => out.push(Val::Duration(duration_of(span))),
            Intrinsic::SpanId => out.push(Val::Str(Cow::Owned(hex(&span.span_id)))),
            Intrinsic::ParentId => {
                if !is_root(&span.parent_span_id) {
                    out.push(Val::Str(Cow::Owned(hex(&span.parent_span_id))));
                }
            }
            Intrinsic::TraceId => out.push(Val::Str(Cow::Owned(hex(&span.trace_id)))),
            Intrinsic::EventName => out.extend(
                span.events
                    .iter()
                    .map(|e| Val::Str(Cow::Borrowed(e.name.as_str()))),
            ),
            Intrinsic::ScopeName => {
                if let Some(sc) = s.scope {
                    out.push(Val::Str(Cow::Borrowed(&sc.name)));
                }
            }
            Intrinsic::ScopeVersion => {
                if let Some(sc) = s.scope {
                    out.push(Val::Str(Cow::Borrowed(&sc.version)));
                }
            }
            Intrinsic::EventTimeSinceStart => out.extend(span.events.iter().map(|e| {
                let since = i128::from(e.time_unix_nano) - i128::from(span.start_time_unix_nano);
                Val::Duration(i64::try_from(since).unwrap_or(i64::MAX))
            })),
            Intrinsic::LinkTraceId => out.extend(
                span.links
                    .iter()
                    .map(|l| Val::Str(Cow::Owned(hex(&l.trace_id)))),
            ),
            Intrinsic::LinkSpanId => out.extend(
                span.links
                    .iter()
                    .map(|l| Val::Str(Cow::Owned(hex(&l.span_id)))),
            ),
            Intrinsic::NestedSetLeft | Intrinsic::NestedSetRight | Intrinsic::NestedSetParent => {
                if let Some((left, right, parent)) = t.and_then(|t| t.nested.get(s.index)) {
                    out.push(Val::Int(match i {
                        Intrinsic::NestedSetLeft => *left,
                        Intrinsic::NestedSetRight => *right,
                        _ => *parent,
                    }));
                }
            }
            Intrinsic::TraceDuration => {
                if let Some(t) = t {
                    out.push(Val::Duration(
                        i64::try_from(t.duration_ns()).unwrap_or(i64::MAX),
                    ));
                }
            }
            Intrinsic::RootName => {
                if let Some(r) = t.and_then(|t| t.root.map(|r| &t.spans[r])) {
                    out.push(Val::Str(Cow::Borrowed(&r.span.name)));
                }
            }
            Intrinsic::RootService => {
                if let Some(r) = t.and_then(|t| t.root.map(|r| &t.spans[r])) {
                    out.push(Val::Str(Cow::Borrowed(attr::service_name(r.resource))));
                }
            }
        },
    }
}

fn ordering(v: &Val<'_>, lit: &Literal) -> Option<Ordering> {
    let same = |eq: bool| {
        Some(if eq {
            Ordering::Equal
        } else {
            Ordering::Greater
        })
    };
    match (v, lit) {
        (Val::Str(a), Literal::Str(b)) => Some(a.as_ref().cmp(b.as_str())),
        (Val::Int(a), Literal::Int(b)) => Some(a.cmp(b)),
        (Val::Int(a), Literal::Float(b)) => (*a as f64).partial_cmp(b),
        (Val::Float(a), Literal::Int(b)) => a.partial_cmp(&(*b as f64)),
        (Val::Float(a), Literal::Float(b)) => a.partial_cmp(b),
        (Val::Duration(a) | Val::Int(a), Literal::Duration(b)) => Some(a.cmp(b)),
        (Val::Float(a), Literal::Duration(b)) => a.partial_cmp(&(*b as f64)),
        (Val::Bool(a), Literal::Bool(b)) => same(a == b),
        (Val::Status(a), Literal::Status(b)) => same(a == b),
        (Val::Kind(a), Literal::Kind(b)) => same(a == b),
        _ => None,
    }
}

fn op_holds(op: &CmpOp, ord: Ordering) -> bool {
    match op {
        CmpOp::Eq => ord == Ordering::Equal,
        CmpOp::Ne => ord != Ordering::Equal,
        CmpOp::Gt => ord == Ordering::Greater,
        CmpOp::Ge => ord != Ordering::Less,
        CmpOp::Lt => ord == Ordering::Less,
        CmpOp::Le => ord != Ordering::Greater,
        CmpOp::Match(_) | CmpOp::NotMatch(_) => false,
    }
}

/// Whether one value satisfies `op value`; a value of another type never does.
fn compare(v: &Val<'_>, op: &CmpOp, lit: &Literal) -> bool {
    match op {
        CmpOp::Match(re) => matches!(v, Val::Str(s) if re.is_match(s)),
        CmpOp::NotMatch(re) => matches!(v, Val::Str(s) if !re.is_match(s)),
        _ => ordering(v, lit).is_some_and(|ord| op_holds(op, ord)),
    }
}

fn eval_comparison<'a>(c: &Comparison, s: &SpanCtx<'a>, t: Option<&TraceCtx<'a>>) -> bool {
    let mut vals = Vec::new();
    values(&c.field, s, t, &mut vals);
    match (&c.value, &c.op) {
        (Literal::Nil, CmpOp::Eq) => vals.is_empty(),
        (Literal::Nil, _) => !vals.is_empty(),
        _ => vals.iter().any(|v| compare(v, &c.op, &c.value)),
    }
}

fn eval_filter<'a>(f: &FilterExpr, s: &SpanCtx<'a>, t: Option<&TraceCtx<'a>>) -> bool {
    match f {
        FilterExpr::True => true,
        FilterExpr::And(a, b) => eval_filter(a, s, t) && eval_filter(b, s, t),
        FilterExpr::Or(a, b) => eval_filter(a, s, t) || eval_filter(b, s, t),
        FilterExpr::Compare(c) => eval_comparison(c, s, t),
    }
}

/// A spanset during evaluation: span indexes in trace order, and its `by` labels.
#[derive(Debug, Clone)]
struct Set {
    spans: Vec<usize>,
    labels: Vec<KeyValue>,
}

fn members(sets: &[Set], n: usize) -> Vec<bool> {
    let mut m = vec![false; n];
    for s in sets {
        for &i in &s.spans {
            m[i] = true;
        }
    }
    m
}

fn to_sets(m: &[bool]) -> Vec<Set> {
    let spans: Vec<usize> = (0..m.len()).filter(|&i| m[i]).collect();
    if spans.is_empty() {
        Vec::new()
    } else {
        vec![Set {
            spans,
            labels: Vec::new(),
        }]
    }
}

/// Spans with an ancestor in `a`, in O(n): each span's answer is memoised on the way up.
fn below(a: &[bool], t: &TraceCtx<'_>) -> Vec<bool> {
    let n = a.len();
    let mut memo: Vec<Option<bool>> = vec![None; n];
    let mut path = Vec::new();
    for i in 0..n {
        path.clear();
        let mut cur = i;
        let answer = loop {
            if let Some(known) = memo[cur] {
                break known;
            }
            path.push(cur);
            match t.parent[cur] {
                None => break false,
                Some(p) if a[p] => break true,
                // A cycle of parent links: no ancestor outside it is in `a`.
                Some(_) if path.len() > n => break false,
                Some(p) => cur = p,
            }
        };
        for &j in &path {
            memo[j] = Some(answer);
        }
    }
    memo.into_iter().map(|m| m.unwrap_or(false)).collect()
}

/// Spans with a descendant in `a`: walks up from each `a` span until a marked span.
fn above(a: &[bool], t: &TraceCtx<'_>) -> Vec<bool> {
    let n = a.len();
    let mut marked = vec![false; n];
    for i in (0..n).filter(|&i| a[i]) {
        for p in t.ancestors(i) {
            if marked[p] {
                break;
            }
            marked[p] = true;
        }
    }
    marked
}

/// `b` spans related to some `a` span: the heart of the structural operators.
fn related(rel: SpansetOp, a: &[bool], b: &[bool], t: &TraceCtx<'_>) -> Vec<bool> {
    let n = b.len();
    let mask: Vec<bool> = match rel {
        SpansetOp::Child => (0..n).map(|i| t.parent[i].is_some_and(|p| a[p])).collect(),
        SpansetOp::Descendant => below(a, t),
        SpansetOp::Parent => (0..n)
            .map(|i| t.children[i].iter().any(|&c| a[c]))
            .collect(),
        SpansetOp::Ancestor => above(a, t),
        SpansetOp::Sibling => {
            // How many `a` spans each span is the parent of, so that siblings cost O(n).
            let a_children: Vec<usize> = (0..n)
                .map(|p| t.children[p].iter().filter(|&&c| a[c]).count())
                .collect();
            (0..n)
                .map(|i| t.parent[i].is_some_and(|p| a_children[p] > usize::from(a[i])))
                .collect()
        }
        _ => vec![false; n],
    };
    (0..n).map(|i| b[i] && mask[i]).collect()
}

fn or(x: &[bool], y: &[bool]) -> Vec<bool> {
    x.iter().zip(y).map(|(a, b)| *a || *b).collect()
}

fn combine(op: SpansetOp, a: &[bool], b: &[bool], t: &TraceCtx<'_>) -> Vec<bool> {
    use SpansetOp as O;
    let negate = |base: O| -> Vec<bool> {
        let r = related(base, a, b, t);
        (0..b.len()).map(|i| b[i] && !r[i]).collect()
    };
    match op {
        O::And => {
            if a.contains(&true) && b.contains(&true) {
                or(a, b)
            } else {
                vec![false; b.len()]
            }
        }
        O::Or => or(a, b),
        O::Child | O::Descendant | O::Parent | O::Ancestor | O::Sibling => related(op, a, b, t),
        O::NotChild => negate(O::Child),
        O::NotDescendant => negate(O::Descendant),
        O::NotParent => negate(O::Parent),
        O::NotAncestor => negate(O::Ancestor),
        O::NotSibling => negate(O::Sibling),
        O::UnionChild => or(&related(O::Child, a, b, t), &related(O::Parent, b, a, t)),
        O::UnionDescendant => or(
            &related(O::Descendant, a, b, t),
            &related(O::Ancestor, b, a, t),
        ),
        O::UnionParent => or(&related(O::Parent, a, b, t), &related(O::Child, b, a, t)),
        O::UnionAncestor => or(
            &related(O::Ancestor, a, b, t),
            &related(O::Descendant, b, a, t),
        ),
        O::UnionSibling => or(&related(O::Sibling, a, b, t), &related(O::Sibling, b, a, t)),
    }
}

fn eval_spanset(e: &SpansetExpr, t: &TraceCtx<'_>) -> Vec<Set> {
    let n = t.spans.len();
    match e {
        SpansetExpr::Filter(f) => {
            let m: Vec<bool> = t.spans.iter().map(|s| eval_filter(f, s, Some(t))).collect();
            to_sets(&m)
        }
        SpansetExpr::Binary { op, lhs, rhs } => {
            let a = members(&eval_spanset(lhs, t), n);
            if *op == SpansetOp::And && !a.contains(&true) {
                return Vec::new();
            }
            let b = members(&eval_spanset(rhs, t), n);
            to_sets(&combine(*op, &a, &b, t))
        }
        SpansetExpr::Pipeline { input, stages } => {
            let mut sets = eval_spanset(input, t);
            for stage in stages {
                if sets.is_empty() {
                    break;
                }
                sets = apply_stage(stage, sets, t);
            }
            sets
        }
    }
}

fn numeric(v: &Val<'_>) -> Option<f64> {
    match v {
        Val::Int(i) | Val::Duration(i) => Some(*i as f64),
        Val::Float(f) => Some(*f),
        _ => None,
    }
}

fn aggregate(func: AggregateFn, field: Option<&Field>, set: &Set, t: &TraceCtx<'_>) -> Option<f64> {
    let field = match (func, field) {
        (AggregateFn::Count, _) | (_, None) => return Some(set.spans.len() as f64),
        (_, Some(f)) => f,
    };
    let mut nums = Vec::new();
    let mut vals = Vec::new();
    for &i in &set.spans {
        vals.clear();
        values(field, &t.spans[i], Some(t), &mut vals);
        if let Some(x) = vals.iter().find_map(numeric) {
            nums.push(x);
        }
    }
    if nums.is_empty() {
        return None;
    }
    let sum: f64 = nums.iter().sum();
    Some(match func {
        AggregateFn::Avg => sum / nums.len() as f64,
        AggregateFn::Sum => sum,
        AggregateFn::Min => nums.iter().copied().fold(f64::INFINITY, f64::min),
        AggregateFn::Max => nums.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        AggregateFn::Count => nums.len() as f64,
    })
}

fn literal_number(lit: &Literal) -> Option<f64> {
    match lit {
        Literal::Int(i) | Literal::Duration(i) => Some(*i as f64),
        Literal::Float(f) => Some(*f),
        _ => None,
    }
}

/// The first value of `field` on span `s`, as an attribute value (for answers and `by`).
fn first_any<'a>(field: &Field, s: &SpanCtx<'a>, t: Option<&TraceCtx<'a>>) -> Option<AnyValue> {
    if let Field::Attribute(a) = field {
        return first_attribute_value(a, s).cloned();
    }
    let mut vals = Vec::new();
    values(field, s, t, &mut vals);
    let value = match vals.into_iter().next()? {
        Val::Str(x) => Pv::StringValue(x.into_owned()),
        Val::Int(i) | Val::Duration(i) => Pv::IntValue(i),
        Val::Float(f) => Pv::DoubleValue(f),
        Val::Bool(b) => Pv::BoolValue(b),
        Val::Status(st) => Pv::StringValue(st.as_str().to_string()),
        Val::Kind(k) => Pv::StringValue(k.as_str().to_string()),
        Val::Other => return None,
    };
    Some(AnyValue { value: Some(value) })
}

fn apply_stage(stage: &Stage, sets: Vec<Set>, t: &TraceCtx<'_>) -> Vec<Set> {
    match stage {
        Stage::Filter(f) => sets
            .into_iter()
            .filter_map(|mut s| {
                s.spans.retain(|&i| eval_filter(f, &t.spans[i], Some(t)));
                (!s.spans.is_empty()).then_some(s)
            })
            .collect(),
        Stage::Aggregate {
            func,
            field,
            op,
            value,
        } => sets
            .into_iter()
            .filter_map(|mut s| {
                let x = aggregate(*func, field.as_ref(), &s, t)?;
                let y = literal_number(value)?;
                if !x.partial_cmp(&y).is_some_and(|ord| op_holds(op, ord)) {
                    return None;
                }
                // As Tempo does, the spanset carries the aggregate: `count()`, `avg(duration)`.
                let (name, value) = match func {
                    AggregateFn::Count => ("count", Pv::IntValue(s.spans.len() as i64)),
                    AggregateFn::Avg => ("avg", Pv::DoubleValue(x)),
                    AggregateFn::Min => ("min", Pv::DoubleValue(x)),
                    AggregateFn::Max => ("max", Pv::DoubleValue(x)),
                    AggregateFn::Sum => ("sum", Pv::DoubleValue(x)),
                };
                let arg = field.as_ref().map(ToString::to_string).unwrap_or_default();
                s.labels.push(KeyValue {
                    key: format!("{name}({arg})"),
                    value: Some(AnyValue { value: Some(value) }),
                    ..Default::default()
                });
                Some(s)
            })
            .collect(),
        Stage::By(fields) => {
            let mut out: Vec<Set> = Vec::new();
            for set in sets {
                let mut groups: HashMap<String, usize> = HashMap::new();
                for &i in &set.spans {
                    let key_values: Vec<Option<AnyValue>> = fields
                        .iter()
                        .map(|f| first_any(f, &t.spans[i], Some(t)))
                        .collect();
                    let key = format!("{key_values:?}");
                    let slot = *groups.entry(key).or_insert_with(|| {
                        let mut labels = set.labels.clone();
                        for (f, v) in fields.iter().zip(&key_values) {
                            if let Some(v) = v {
                                labels.push(KeyValue {
                                    key: format!("by({f})"),
                                    value: Some(v.clone()),
                                    ..Default::default()
                                });
                            }
                        }
                        out.push(Set {
                            spans: Vec::new(),
                            labels,
                        });
                        out.len() - 1
                    });
                    out[slot].spans.push(i);
                }
            }
            out
        }
        Stage::Select(_) => sets,
    }
}

fn collect_filter_fields<'q>(f: &'q FilterExpr, out: &mut Vec<&'q Field>) {
    match f {
        FilterExpr::True => {}
        FilterExpr::And(a, b) | FilterExpr::Or(a, b) => {
            collect_filter_fields(a, out);
            collect_filter_fields(b, out);
        }
        FilterExpr::Compare(c) => out.push(&c.field),
    }
}

fn collect_fields<'q>(e: &'q SpansetExpr, out: &mut Vec<&'q Field>) {
    match e {
        SpansetExpr::Filter(f) => collect_filter_fields(f, out),
        SpansetExpr::Binary { lhs, rhs, .. } => {
            collect_fields(lhs, out);
            collect_fields(rhs, out);
        }
        SpansetExpr::Pipeline { input, stages } => {
            collect_fields(input, out);
            for s in stages {
                match s {
                    Stage::Filter(f) => collect_filter_fields(f, out),
                    Stage::Aggregate { field, .. } => out.extend(field.iter()),
                    Stage::By(fs) | Stage::Select(fs) => out.extend(fs.iter()),
                }
            }
        }
    }
}

/// The key a field's value is returned under: the attribute's own key, or the intrinsic's
/// name; `None` for what a span's answer already carries (name, duration, ids, trace fields).
fn answer_key(field: &Field) -> Option<&str> {
    match field {
        Field::Attribute(a) => Some(&a.name),
        Field::Intrinsic(i @ (Intrinsic::Status | Intrinsic::StatusMessage | Intrinsic::Kind)) => {
            Some(i.as_str())
        }
        Field::Intrinsic(
            i @ (Intrinsic::EventName | Intrinsic::ScopeName | Intrinsic::ScopeVersion),
        ) => Some(i.as_str()),
        Field::Intrinsic(_) => None,
    }
}

fn summary(t: &TraceCtx<'_>) -> TraceSummary {
    let (root_service, root_name) = match t.root.map(|r| &t.spans[r]) {
        Some(r) => (
            attr::service_name(r.resource).to_string(),
            r.span.name.clone(),
        ),
        None => (ROOT_NOT_RECEIVED.to_string(), ROOT_NOT_RECEIVED.to_string()),
    };
    TraceSummary {
        root_service,
        root_name,
        start_ns: t.start_ns,
        duration_ns: t.duration_ns(),
        span_count: t.spans.len(),
    }
}

/// Runs `query` over one whole trace (every span of it, grouped as stored).
///
/// Returns `None` when the query produces no non-empty spanset. Otherwise each spanset lists
/// at most `spans_per_set` spans (earliest first), with `matched` its full size.
pub fn evaluate(
    query: &Query,
    trace_id: TraceId,
    trace: &[ResourceSpans],
    spans_per_set: usize,
) -> Option<TraceResult> {
    let t = TraceCtx::new(trace);
    let sets = eval_spanset(&query.root, &t);
    if sets.is_empty() {
        return None;
    }
    let mut fields = Vec::new();
    collect_fields(&query.root, &mut fields);
    let span_sets = sets
        .into_iter()
        .map(|set| {
            let mut order = set.spans.clone();
            order.sort_by_key(|&i| (t.spans[i].span.start_time_unix_nano, i));
            let spans = order
                .iter()
                .take(spans_per_set)
                .map(|&i| {
                    let s = &t.spans[i];
                    let mut attributes: Vec<KeyValue> = Vec::new();
                    for f in &fields {
                        let Some(key) = answer_key(f) else { continue };
                        if attributes.iter().any(|kv| kv.key == key) {
                            continue;
                        }
                        if let Some(value) = first_any(f, s, Some(&t)) {
                            attributes.push(KeyValue {
                                key: key.to_string(),
                                value: Some(value),
                                ..Default::default()
                            });
                        }
                    }
                    MatchedSpan {
                        span_id: SpanId::from_slice(&s.span.span_id).unwrap_or_default(),
                        name: s.span.name.clone(),
                        start_ns: s.span.start_time_unix_nano,
                        duration_ns: s
                            .span
                            .end_time_unix_nano
                            .saturating_sub(s.span.start_time_unix_nano),
                        attributes,
                    }
                })
                .collect();
            SpanSetResult {
                spans,
                matched: set.spans.len(),
                attributes: set.labels,
            }
        })
        .collect();
    Some(TraceResult {
        trace_id,
        summary: summary(&t),
        span_sets,
    })
}

/// Whether a filter only looks at the span itself and its resource (no trace-level fields,
/// no instrumentation scope), so that a store scan can test it span by span.
pub(crate) fn is_span_local(f: &FilterExpr) -> bool {
    match f {
        FilterExpr::True => true,
        FilterExpr::And(a, b) | FilterExpr::Or(a, b) => is_span_local(a) && is_span_local(b),
        FilterExpr::Compare(c) => is_span_local_field(&c.field),
    }
}

fn pushdown(e: &SpansetExpr) -> Option<&FilterExpr> {
    use SpansetOp as O;
    match e {
        SpansetExpr::Filter(f) => (*f != FilterExpr::True && is_span_local(f)).then_some(f),
        // Stages only ever keep some of their input's spans.
        SpansetExpr::Pipeline { input, .. } => pushdown(input),
        SpansetExpr::Binary { op: O::Or, .. } => None,
        // The right-hand side's spans, whatever the left-hand side holds.
        SpansetExpr::Binary {
            op: O::NotChild | O::NotDescendant | O::NotParent | O::NotAncestor | O::NotSibling,
            rhs,
            ..
        } => pushdown(rhs),
        // Both sides must have spans.
        SpansetExpr::Binary { lhs, rhs, .. } => pushdown(lhs).or_else(|| pushdown(rhs)),
    }
}

impl Query {
    /// A filter that every matching trace has at least one span for, to push down into a
    /// scan (test it with [`FilterExpr::matches_span`]); `None` when there is none to offer
    /// (every trace must be read).
    pub fn prefilter(&self) -> Option<&FilterExpr> {
        pushdown(&self.root)
    }

    /// Adds Tempo's `minDuration` / `maxDuration` to a TraceQL query: every spanset filter
    /// also requires `duration >= min` and `duration <= max` (nanoseconds).
    pub fn with_span_duration_bounds(mut self, min_ns: Option<i64>, max_ns: Option<i64>) -> Self {
        fn bound(e: &mut SpansetExpr, min_ns: Option<i64>, max_ns: Option<i64>) {
            match e {
                SpansetExpr::Filter(f) => {
                    for (op, ns) in [(CmpOp::Ge, min_ns), (CmpOp::Le, max_ns)] {
                        let Some(ns) = ns else { continue };
                        let cond = FilterExpr::Compare(Comparison {
                            field: Field::Intrinsic(Intrinsic::Duration),
                            op,
                            value: Literal::Duration(ns),
                        });
                        let old = std::mem::replace(f, FilterExpr::True);
                        *f = match old {
                            FilterExpr::True => cond,
                            old => FilterExpr::And(Box::new(old), Box::new(cond)),
                        };
                    }
                }
                SpansetExpr::Binary { lhs, rhs, .. } => {
                    bound(lhs, min_ns, max_ns);
                    bound(rhs, min_ns, max_ns);
                }
                SpansetExpr::Pipeline { input, .. } => bound(input, min_ns, max_ns),
            }
        }
        bound(&mut self.root, min_ns, max_ns);
        self
    }
}

impl FilterExpr {
    /// What every span this filter matches carries, for the store to skip data without it
    /// ([`sextant_store::TraceReader::scan_terms`]): the equalities on span names, statuses,
    /// kinds and span, resource or unscoped attributes that `&&` joins. Conservative: `||` and
    /// other comparisons require nothing.
    pub fn required_terms(&self) -> Vec<Term> {
        let mut out = Vec::new();
        self.collect_terms(&mut out);
        out
    }

    fn collect_terms(&self, out: &mut Vec<Term>) {
        match self {
            FilterExpr::And(a, b) => {
                a.collect_terms(out);
                b.collect_terms(out);
            }
            FilterExpr::True | FilterExpr::Or(..) => {}
            FilterExpr::Compare(c) if c.op == CmpOp::Eq => {
                let term = match (&c.field, &c.value) {
                    (Field::Intrinsic(Intrinsic::Name), Literal::Str(s)) => Term::Name(s.clone()),
                    (Field::Intrinsic(Intrinsic::Status), Literal::Status(st)) => {
                        Term::Status(st.as_str().to_string())
                    }
                    (Field::Intrinsic(Intrinsic::Kind), Literal::Kind(k)) => {
                        Term::Kind(k.as_str().to_string())
                    }
                    (Field::Attribute(a), lit)
                        if matches!(a.scope, Scope::Unscoped | Scope::Span | Scope::Resource) =>
                    {
                        // Rendered as the store renders attribute values (`attr::render`).
                        let value = match lit {
                            Literal::Str(s) => s.clone(),
                            Literal::Int(i) => i.to_string(),
                            Literal::Float(f) => f.to_string(),
                            Literal::Bool(b) => b.to_string(),
                            _ => return,
                        };
                        if value.len() > sextant_store::MAX_TERM_VALUE {
                            return;
                        }
                        Term::Attr {
                            key: a.name.clone(),
                            value,
                        }
                    }
                    _ => return,
                };
                out.push(term);
            }
            FilterExpr::Compare(_) => {}
        }
    }

    /// Tests the filter on one span with its resource, outside its trace: trace-level fields
    /// and instrumentation scope are absent. Exact for filters [`Query::prefilter`] returns.
    pub fn matches_span(&self, span: &Span, resource: Option<&Resource>) -> bool {
        let s = SpanCtx {
            index: 0,
            span,
            resource,
            scope: None,
        };
        eval_filter(self, &s, None)
    }
}

/// Whether a field's value on a span is known from the span and its resource alone (no
/// trace-level field, no instrumentation scope): what [`SpanView`] can answer.
pub fn is_span_local_field(field: &Field) -> bool {
    match field {
        Field::Attribute(a) => a.scope != Scope::Instrumentation,
        Field::Intrinsic(i) => !matches!(
            i,
            Intrinsic::TraceDuration
                | Intrinsic::RootName
                | Intrinsic::RootService
                | Intrinsic::ScopeName
                | Intrinsic::ScopeVersion
                | Intrinsic::NestedSetLeft
                | Intrinsic::NestedSetRight
                | Intrinsic::NestedSetParent
        ),
    }
}

/// A span seen outside its trace, with its resource: what a span-by-span scan gives.
#[derive(Clone, Copy)]
pub struct SpanView<'a> {
    span: &'a Span,
    resource: Option<&'a Resource>,
}

impl<'a> SpanView<'a> {
    /// A view of `span` under `resource`.
    pub fn new(span: &'a Span, resource: Option<&'a Resource>) -> Self {
        Self { span, resource }
    }

    fn ctx(&self) -> SpanCtx<'a> {
        SpanCtx {
            index: 0,
            span: self.span,
            resource: self.resource,
            scope: None,
        }
    }

    /// The span.
    pub fn span(&self) -> &'a Span {
        self.span
    }

    /// Whether the filter holds for this span (exact for span-local filters, see
    /// [`is_span_local_field`]).
    pub fn matches(&self, f: &FilterExpr) -> bool {
        eval_filter(f, &self.ctx(), None)
    }

    /// The first value of `field` on the span, as `by(...)` takes it.
    pub fn first_value(&self, field: &Field) -> Option<AnyValue> {
        first_any(field, &self.ctx(), None)
    }

    /// Appends the first value of `field` to `key` (a type letter, for strings their length,
    /// then the content; without allocating for attributes), so that a sequence of fields
    /// written one after the other is equal exactly when their values are.
    pub fn write_first_value(&self, field: &Field, key: &mut String) {
        use std::fmt::Write;
        let ctx = self.ctx();
        if let Field::Attribute(a) = field {
            match first_attribute_value(a, &ctx).and_then(|v| v.value.as_ref()) {
                Some(Pv::StringValue(s)) => {
                    let _ = write!(key, "s{}:{s}", s.len());
                }
                Some(Pv::IntValue(i)) => {
                    let _ = write!(key, "i{i}");
                }
                Some(Pv::DoubleValue(f)) => {
                    let _ = write!(key, "f{}", f.to_bits());
                }
                Some(Pv::BoolValue(b)) => {
                    let _ = write!(key, "b{b}");
                }
                Some(other) => {
                    let text = format!("{other:?}");
                    let _ = write!(key, "o{}:{text}", text.len());
                }
                None => key.push('-'),
            }
        } else {
            let mut vals = Vec::new();
            values(field, &ctx, None, &mut vals);
            match vals.first() {
                Some(Val::Str(x)) => {
                    let _ = write!(key, "s{}:{x}", x.len());
                }
                Some(Val::Int(i)) | Some(Val::Duration(i)) => {
                    let _ = write!(key, "i{i}");
                }
                Some(Val::Float(f)) => {
                    let _ = write!(key, "f{}", f.to_bits());
                }
                Some(Val::Bool(b)) => {
                    let _ = write!(key, "b{b}");
                }
                Some(Val::Status(st)) => {
                    let _ = write!(key, "s{}:{}", st.as_str().len(), st.as_str());
                }
                Some(Val::Kind(k)) => {
                    let _ = write!(key, "s{}:{}", k.as_str().len(), k.as_str());
                }
                Some(Val::Other) | None => key.push('-'),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    #[test]
    fn prefilters() {
        let pre = |q: &str| parse(q).unwrap().prefilter().cloned();
        assert!(pre("{ }").is_none());
        assert!(pre(r#"{ .a = 1 } || { .b = 2 }"#).is_none());
        assert!(pre(r#"{ trace:rootName = "x" }"#).is_none());
        assert!(pre(r#"{ instrumentation.x = "x" }"#).is_none());
        assert_eq!(
            pre(r#"{ name = "x" } | count() > 1"#),
            pre(r#"{ name = "x" }"#)
        );
        assert_eq!(pre(r#"{ } > { name = "x" }"#), pre(r#"{ name = "x" }"#));
        assert_eq!(
            pre(r#"{ name = "y" } !> { name = "x" }"#),
            pre(r#"{ name = "x" }"#)
        );
        assert_eq!(pre(r#"{ name = "y" } && { }"#), pre(r#"{ name = "y" }"#));
        let f = parse(r#"{ resource.service.name = "api" }"#).unwrap();
        let f = f.prefilter().unwrap();
        let span = Span::default();
        let api = Resource {
            attributes: vec![attr::kv_str("service.name", "api")],
            ..Default::default()
        };
        assert!(f.matches_span(&span, Some(&api)));
        assert!(!f.matches_span(&span, None));
    }

    #[test]
    fn duration_bounds_are_added_to_every_filter() {
        let q = parse("{ } && { .a = 1 }")
            .unwrap()
            .with_span_duration_bounds(Some(5), None);
        assert_eq!(
            q,
            parse("{ duration >= 5ns } && { .a = 1 && duration >= 5ns }").unwrap()
        );
    }

    /// A chain of spans, each the parent of the next: `depth` spans, ids 1..=depth.
    fn chain(depth: u64) -> Vec<ResourceSpans> {
        let spans = (1..=depth)
            .map(|i| Span {
                trace_id: vec![1; 16],
                span_id: i.to_be_bytes().to_vec(),
                parent_span_id: if i == 1 {
                    Vec::new()
                } else {
                    (i - 1).to_be_bytes().to_vec()
                },
                name: format!("s{i}"),
                start_time_unix_nano: i,
                end_time_unix_nano: 2 * depth - i,
                ..Default::default()
            })
            .collect();
        vec![ResourceSpans {
            scope_spans: vec![sextant_otlp_proto::proto::ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }]
    }

    fn matched(q: &str, trace: &[ResourceSpans]) -> usize {
        let query = parse(q).unwrap();
        evaluate(&query, TraceId([1; 16]), trace, 1)
            .map_or(0, |r| r.span_sets.iter().map(|s| s.matched).sum())
    }

    #[test]
    fn deep_traces_need_no_recursion() {
        let trace = chain(20_000);
        assert_eq!(matched(r#"{ name = "s1" } >> { }"#, &trace), 19_999);
        assert_eq!(matched(r#"{ name = "s20000" } << { }"#, &trace), 19_999);
        assert_eq!(matched("{ } >> { }", &trace), 19_999);
        assert_eq!(matched("{ } << { }", &trace), 19_999);
        assert_eq!(matched(r#"{ name = "s5" } !>> { }"#, &trace), 5);
        assert_eq!(matched("{ nestedSetRight = 40000 }", &trace), 1);
        assert_eq!(
            matched(
                "{ nestedSetLeft = 20000 && nestedSetRight = 20001 }",
                &trace
            ),
            1
        );
    }

    #[test]
    fn parent_cycles_terminate() {
        // 1 -> 2 -> 3 -> 1: no root, every span has an ancestor (itself, via the cycle).
        let mut trace = chain(3);
        let spans = &mut trace[0].scope_spans[0].spans;
        spans[0].parent_span_id = 3u64.to_be_bytes().to_vec();
        assert_eq!(matched("{ } >> { }", &trace), 3);
        assert_eq!(matched("{ } << { }", &trace), 3);
        assert_eq!(matched(r#"{ name = "s1" } > { }"#, &trace), 1);
        assert_eq!(matched("{ nestedSetParent = 0 }", &trace), 3);
    }

    #[test]
    fn typing() {
        let lit = |l: Literal| l;
        assert!(compare(
            &Val::Int(500),
            &CmpOp::Eq,
            &lit(Literal::Float(500.0))
        ));
        assert!(compare(&Val::Float(1.5), &CmpOp::Gt, &lit(Literal::Int(1))));
        assert!(!compare(
            &Val::Int(500),
            &CmpOp::Eq,
            &lit(Literal::Str("500".into()))
        ));
        assert!(!compare(
            &Val::Int(500),
            &CmpOp::Ne,
            &lit(Literal::Str("500".into()))
        ));
        assert!(compare(
            &Val::Int(2_000),
            &CmpOp::Gt,
            &lit(Literal::Duration(1_000))
        ));
        assert!(compare(
            &Val::Bool(true),
            &CmpOp::Ne,
            &lit(Literal::Bool(false))
        ));
        assert!(!compare(
            &Val::Other,
            &CmpOp::Eq,
            &lit(Literal::Str(String::new()))
        ));
    }
}
