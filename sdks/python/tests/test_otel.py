"""Every call carries the W3C traceparent of the current OpenTelemetry context."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest
from opentelemetry import context, trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

import tiercache


def test_traceparent_of_the_current_span_is_sent() -> None:
    seen: list[dict[str, str]] = []

    def handler(request: bytes, ctx: grpc.ServicerContext) -> bytes:
        seen.append({k: str(v) for k, v in ctx.invocation_metadata()})
        ctx.abort(grpc.StatusCode.UNIMPLEMENTED, "recorded")
        raise AssertionError

    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "tiercache.v1.CacheService",
                {"Get": grpc.unary_unary_rpc_method_handler(handler, lambda b: b, lambda b: b)},
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        span = NonRecordingSpan(
            SpanContext(
                trace_id=0x0AF7651916CD43DD8448EB211C80319C,
                span_id=0xB7AD6B7169203331,
                is_remote=False,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
            )
        )
        with tiercache.Client(f"127.0.0.1:{port}", token="t0k") as c:
            token = context.attach(trace.set_span_in_context(span))
            try:
                with pytest.raises(tiercache.Unimplemented):
                    c.namespace("users").get("k")
            finally:
                context.detach(token)
            with pytest.raises(tiercache.Unimplemented):
                c.namespace("users").get("k")
    finally:
        server.stop(None)
    assert seen[0]["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert seen[0]["authorization"] == "Bearer t0k"
    assert "traceparent" not in seen[1]
