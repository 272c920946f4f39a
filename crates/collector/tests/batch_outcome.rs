//! The batch processor tells each request it merged of its own refused spans only (OTLP
//! partial success per client), however the downstream outcome is split.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message as _;
use sextant_collector::config::BatchConfig;
use sextant_collector::processor::batch::BatchProcessor;
use sextant_collector::receiver::response_for;
use sextant_collector::{
    BoxFuture, CollectorMetrics, Consumer, ExportOutcome, PipelineError, RejectedTrace, TraceBatch,
};
use sextant_otlp_proto::proto::{ExportTraceServiceRequest, ResourceSpans, ScopeSpans, Span};
use sextant_otlp_proto::{wire, TraceId};

fn trace(n: u8) -> TraceId {
    let mut b = [0u8; 16];
    b[0] = n;
    b[15] = 1;
    TraceId::from_slice(&b).expect("16 bytes")
}

/// `spans` spans of each `(trace, spans)`, in one resource.
fn resource_spans(traces: &[(TraceId, usize)]) -> Vec<ResourceSpans> {
    let mut spans = Vec::new();
    for (t, n) in traces {
        for i in 0..*n {
            spans.push(Span {
                trace_id: t.as_bytes().to_vec(),
                span_id: vec![1, 2, 3, 4, 5, 6, 7, i as u8 + 1],
                name: format!("s{i}"),
                ..Default::default()
            });
        }
    }
    vec![ResourceSpans {
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }]
}

/// A request as the receivers pass it on: validated bytes with their scan.
fn encoded(traces: &[(TraceId, usize)]) -> TraceBatch {
    let bytes = ExportTraceServiceRequest {
        resource_spans: resource_spans(traces),
    }
    .encode_to_vec();
    let mut rec = wire::Recorder::new(&bytes);
    wire::scan_request(&bytes, &mut rec).expect("a valid request");
    let recorded = rec.finish();
    TraceBatch::from_scanned(bytes.into(), recorded)
}

fn decoded(traces: &[(TraceId, usize)]) -> TraceBatch {
    TraceBatch::from_decoded(resource_spans(traces))
}

/// The next stage: refuses every span of some traces, naming them (as the store does), or
/// `unnamed` spans of each batch naming no trace (as a backend's partial success does).
#[derive(Default)]
struct Refuser {
    refuse: HashSet<TraceId>,
    unnamed: u64,
    batches: Mutex<Vec<usize>>,
}

impl Consumer for Refuser {
    fn consume(&self, batch: TraceBatch) -> BoxFuture<'_, Result<ExportOutcome, PipelineError>> {
        Box::pin(async move {
            if let Ok(mut b) = self.batches.lock() {
                b.push(batch.span_count);
            }
            let mut all = batch.clone();
            let spans = all
                .decode()
                .map_err(|e| PipelineError::InvalidArgument(e.to_string()))?;
            let mut outcome = ExportOutcome::default();
            for rs in spans.iter() {
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        let Ok(id) = TraceId::from_slice(&span.trace_id) else {
                            continue;
                        };
                        if !self.refuse.contains(&id) {
                            continue;
                        }
                        let one = ExportOutcome {
                            rejected_spans: 1,
                            message: format!("TRACE_TOO_LARGE: trace {}", id.to_hex()),
                            rejected_traces: vec![RejectedTrace {
                                trace_id: id,
                                spans: 1,
                                reason: format!("TRACE_TOO_LARGE: trace {}", id.to_hex()),
                            }],
                        };
                        outcome.merge(&one);
                    }
                }
            }
            if self.unnamed > 0 {
                outcome.merge(&ExportOutcome {
                    rejected_spans: self.unnamed,
                    message: "the backend refused spans".into(),
                    rejected_traces: Vec::new(),
                });
            }
            Ok(outcome)
        })
    }
}

fn config(size: usize, max: usize) -> BatchConfig {
    BatchConfig {
        send_batch_size: size,
        timeout: Duration::from_secs(30),
        send_batch_max_size: max,
        flush_when_idle: false,
    }
}

/// Sends the requests at once through a batch processor in front of `next`; their outcomes in
/// order.
async fn run(
    next: Arc<Refuser>,
    config: BatchConfig,
    requests: Vec<TraceBatch>,
) -> Vec<ExportOutcome> {
    let p = Arc::new(BatchProcessor::new(
        config,
        next,
        CollectorMetrics::unregistered(),
    ));
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|r| {
            let p = p.clone();
            tokio::spawn(async move { p.consume(r).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        let outcome = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("the batch is sent by size")
            .expect("the task runs")
            .expect("the export succeeds");
        out.push(outcome);
    }
    out
}

#[tokio::test]
async fn each_request_is_told_only_of_its_own_refused_spans() {
    let (t1, t2) = (trace(1), trace(2));
    let next = Arc::new(Refuser {
        refuse: HashSet::from([t1]),
        ..Default::default()
    });
    let out = run(
        next.clone(),
        config(5, 0),
        vec![encoded(&[(t1, 3)]), encoded(&[(t2, 2)])],
    )
    .await;
    // Both requests went out in one batch.
    assert_eq!(*next.batches.lock().unwrap(), vec![5]);

    let (a, b) = (&out[0], &out[1]);
    assert_eq!(a.rejected_spans, 3);
    assert!(a.message.contains(&t1.to_hex()), "{}", a.message);
    assert_eq!(a.rejected_traces.len(), 1);
    assert_eq!(
        (a.rejected_traces[0].trace_id, a.rejected_traces[0].spans),
        (t1, 3)
    );
    let ra = response_for(a, 3)
        .partial_success
        .expect("a partial success");
    assert_eq!(ra.rejected_spans, 3);
    assert!(ra.error_message.contains("TRACE_TOO_LARGE"));

    assert_eq!(b, &ExportOutcome::default());
    assert_eq!(response_for(b, 2).partial_success, None);
}

#[tokio::test]
async fn a_trace_in_several_requests_is_split_by_their_spans() {
    let (t1, t2, t3) = (trace(1), trace(2), trace(3));
    let next = Arc::new(Refuser {
        refuse: HashSet::from([t1, t3]),
        ..Default::default()
    });
    // Decoded (JSON) and encoded requests, both holding spans of t1; only the second holds t3.
    let out = run(
        next.clone(),
        config(7, 0),
        vec![
            decoded(&[(t1, 2), (t2, 1)]),
            encoded(&[(t3, 2), (t1, 1), (t2, 1)]),
        ],
    )
    .await;
    assert_eq!(*next.batches.lock().unwrap(), vec![7]);
    let (a, b) = (&out[0], &out[1]);
    assert_eq!(a.rejected_spans, 2);
    assert_eq!(a.rejected_traces.len(), 1);
    assert!(a.message.contains(&t1.to_hex()), "{}", a.message);
    assert!(!a.message.contains("more traces"), "{}", a.message);
    assert_eq!(b.rejected_spans, 3);
    let mut bt: Vec<(TraceId, u64)> = b
        .rejected_traces
        .iter()
        .map(|t| (t.trace_id, t.spans))
        .collect();
    bt.sort();
    assert_eq!(bt, vec![(t1, 1), (t3, 2)]);
    assert!(
        b.message.contains("and 1 more traces refused"),
        "{}",
        b.message
    );
}

#[tokio::test]
async fn split_batches_are_attributed_by_trace() {
    let (t1, t2) = (trace(1), trace(2));
    let next = Arc::new(Refuser {
        refuse: HashSet::from([t1]),
        ..Default::default()
    });
    let out = run(
        next.clone(),
        config(5, 2),
        vec![encoded(&[(t1, 3)]), encoded(&[(t2, 2)])],
    )
    .await;
    assert_eq!(*next.batches.lock().unwrap(), vec![2, 2, 1]);
    let (a, b) = (&out[0], &out[1]);
    assert_eq!(a.rejected_spans, 3);
    assert_eq!(a.rejected_traces.len(), 1);
    assert_eq!(b, &ExportOutcome::default());
}

#[tokio::test]
async fn refusals_named_by_no_trace_reach_every_request_up_to_its_spans() {
    let next = Arc::new(Refuser {
        unnamed: 4,
        ..Default::default()
    });
    let out = run(
        next,
        config(5, 0),
        vec![encoded(&[(trace(1), 3)]), decoded(&[(trace(2), 2)])],
    )
    .await;
    assert_eq!(out[0].rejected_spans, 3);
    assert_eq!(out[1].rejected_spans, 2);
    for o in &out {
        assert_eq!(o.message, "the backend refused spans");
        assert!(o.rejected_traces.is_empty());
    }
}

#[tokio::test]
async fn a_request_alone_gets_the_outcome_as_it_came() {
    let t1 = trace(1);
    let next = Arc::new(Refuser {
        refuse: HashSet::from([t1]),
        unnamed: 5,
        ..Default::default()
    });
    let out = run(next, config(3, 0), vec![encoded(&[(t1, 3)])]).await;
    assert_eq!(out[0].rejected_spans, 8);
    assert_eq!(out[0].attributed_spans(), 3);
    // The response never says more spans were refused than the request held.
    let r = response_for(&out[0], 3)
        .partial_success
        .expect("a partial success");
    assert_eq!(r.rejected_spans, 3);
}

#[test]
fn merge_adds_up_per_trace() {
    let (t1, t2) = (trace(1), trace(2));
    let of = |t: TraceId, n: u64| ExportOutcome {
        rejected_spans: n,
        message: format!("m{n}"),
        rejected_traces: vec![RejectedTrace {
            trace_id: t,
            spans: n,
            reason: String::new(),
        }],
    };
    let mut o = ExportOutcome::default();
    o.merge(&of(t1, 1));
    o.merge(&of(t2, 2));
    o.merge(&of(t1, 4));
    assert_eq!(o.rejected_spans, 7);
    assert_eq!(o.message, "m1");
    let per: Vec<(TraceId, u64)> = o
        .rejected_traces
        .iter()
        .map(|t| (t.trace_id, t.spans))
        .collect();
    assert_eq!(per, vec![(t1, 5), (t2, 2)]);
    assert_eq!(o.attributed_spans(), 7);
}
