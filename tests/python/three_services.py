"""A trace across three services with the official OpenTelemetry Python SDK.

Usage: three_services.py grpc|http ENDPOINT

Three TracerProviders (frontend, checkout, inventory) with their own resources; the context
crosses each service boundary through a W3C traceparent carrier (inject/extract). Times are
explicit so durations are exact. Every batch is exported through the official OTLP exporter and
also encoded with the exporter's own encoder, so the caller can compare what was sent with what
the server gives back.

Prints one JSON line: {"trace_id", "other_trace_id", "base_ns", "sent": [hex protobuf of each
ExportTraceServiceRequest], "results": ["SUCCESS", ...]}. Exits 1 if any export failed.
"""

import json
import sys

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

SENT = []
RESULTS = []


class Tee(SpanExporter):
    """Records the encoded request, then exports it with the real exporter."""

    def __init__(self, inner):
        self.inner = inner

    def export(self, spans):
        SENT.append(encode_spans(spans).SerializeToString().hex())
        result = self.inner.export(spans)
        RESULTS.append(result.name)
        return result

    def shutdown(self):
        self.inner.shutdown()

    def force_flush(self, timeout_millis=30000):
        return self.inner.force_flush(timeout_millis)


def make_exporter(protocol, endpoint):
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=30)
    if protocol == "http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint, timeout=30)
    raise SystemExit(f"unknown protocol {protocol}")


def make_provider(protocol, endpoint, service):
    resource = Resource.create(
        {
            "service.name": service,
            "service.instance.id": f"{service}-1",
            "deployment.environment": "e2e-py",
            "host.cores": 2,
        }
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(Tee(make_exporter(protocol, endpoint))))
    return provider


def main():
    protocol, endpoint = sys.argv[1], sys.argv[2]
    services = ["py-frontend", "py-checkout", "py-inventory"]
    providers = [make_provider(protocol, endpoint, s) for s in services]
    tracers = [
        p.get_tracer(f"e2e.{s}", "3.1.4", attributes={"scope.owner": "e2e-py"})
        for p, s in zip(providers, services)
    ]
    ta, tb, tc = tracers
    propagator = TraceContextTextMapPropagator()

    import time

    base = time.time_ns() - 60 * 1_000_000_000
    ms = lambda n: base + n * 1_000_000

    # Another trace, for a cross-trace link.
    other = ta.start_span(
        "nightly-reindex", context=Context(), kind=SpanKind.INTERNAL, start_time=ms(-5000)
    )
    other_ctx = other.get_span_context()
    other.end(end_time=ms(-4000))

    root = ta.start_span(
        "GET /checkout",
        context=Context(),
        kind=SpanKind.SERVER,
        start_time=ms(0),
        attributes={
            "http.route": "/checkout",
            "order.id": "ord-py-1",
            "cart.express": True,
            "cart.items": 3,
            "cart.total": 42.5,
            "big.int": 2**63 - 1,
            "neg.int": -17,
            "cart.skus": ["sku-1", "sku-2"],
            "cart.flags": [True, False],
            "cart.qty": [1, 2, -3],
            "cart.prices": [9.99, 0.5],
            "unicode": "größe ✓ 日本",
        },
    )
    root.add_event(
        "cache.miss",
        attributes={"cache.key": "cart:42", "cache.hit": False, "cache.tries": 2, "cache.ratio": 0.25},
        timestamp=ms(5),
    )
    root_cx = set_span_in_context(root, Context())
    call = ta.start_span(
        "POST checkout/pay",
        context=root_cx,
        kind=SpanKind.CLIENT,
        start_time=ms(10),
        attributes={"peer.service": "py-checkout"},
    )
    carrier = {}
    propagator.inject(carrier, context=set_span_in_context(call, root_cx))
    assert "traceparent" in carrier, carrier

    b_parent = propagator.extract(carrier, context=Context())
    pay = tb.start_span(
        "POST /pay",
        context=b_parent,
        kind=SpanKind.SERVER,
        start_time=ms(20),
        attributes={"payment.method": "card"},
    )
    pay.add_event(
        "exception",
        attributes={"exception.type": "CardDeclined", "exception.message": "card declined by issuer"},
        timestamp=ms(250),
    )
    pay.set_status(Status(StatusCode.ERROR, "card declined by issuer"))
    pay_cx = set_span_in_context(pay, b_parent)
    publish = tb.start_span(
        "orders publish",
        context=pay_cx,
        kind=SpanKind.PRODUCER,
        start_time=ms(30),
        attributes={"messaging.destination.name": "orders"},
    )
    headers = {}
    propagator.inject(headers, context=set_span_in_context(publish, pay_cx))

    c_parent = propagator.extract(headers, context=Context())
    consume = tc.start_span(
        "orders process",
        context=c_parent,
        kind=SpanKind.CONSUMER,
        start_time=ms(50),
        links=[
            Link(other_ctx, {"link.reason": "reindex", "link.weight": 7}),
            Link(root.get_span_context()),
        ],
    )
    consume_cx = set_span_in_context(consume, c_parent)
    reserve = tc.start_span(
        "reserve stock",
        context=consume_cx,
        kind=SpanKind.INTERNAL,
        start_time=ms(60),
        attributes={"stock.reserved": True},
    )
    reserve.end(end_time=ms(100))
    consume.set_status(Status(StatusCode.OK))
    consume.end(end_time=ms(150))
    publish.end(end_time=ms(40))
    pay.end(end_time=ms(280))
    call.end(end_time=ms(290))
    root.end(end_time=ms(300))

    for p in providers:
        p.force_flush()
        p.shutdown()

    print(
        json.dumps(
            {
                "trace_id": format(root.get_span_context().trace_id, "032x"),
                "other_trace_id": format(other_ctx.trace_id, "032x"),
                "base_ns": base,
                "sent": SENT,
                "results": RESULTS,
            }
        )
    )
    sys.exit(0 if RESULTS and all(r == SpanExportResult.SUCCESS.name for r in RESULTS) else 1)


if __name__ == "__main__":
    main()
