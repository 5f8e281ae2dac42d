// W3C trace context: when @opentelemetry/api is installed and a span is active, every call
// carries its `traceparent` (and `tracestate`), so the server's spans join the caller's trace.
// The package is an optional peer dependency: without it, nothing is sent and nothing fails.

import type { Interceptor } from "@connectrpc/connect";
import { createRequire } from "node:module";

interface OtelApi {
  context: { active(): unknown };
  propagation: {
    inject(ctx: unknown, carrier: Record<string, string>, setter?: unknown): void;
  };
  trace: { getSpanContext(ctx: unknown): { traceId: string; spanId: string; traceFlags: number } | undefined };
}

let api: OtelApi | null | undefined;

function otel(): OtelApi | null {
  if (api === undefined) {
    try {
      api = createRequire(import.meta.url)("@opentelemetry/api") as OtelApi;
    } catch {
      api = null;
    }
  }
  return api;
}

/** The `traceparent` of the active span, or undefined when there is none (or no OpenTelemetry). */
export function activeTraceparent(): string | undefined {
  const o = otel();
  if (o === null) return undefined;
  const sc = o.trace.getSpanContext(o.context.active());
  if (sc === undefined || /^0+$/.test(sc.traceId)) return undefined;
  return `00-${sc.traceId}-${sc.spanId}-${(sc.traceFlags & 0xff).toString(16).padStart(2, "0")}`;
}

/** The connect interceptor that adds the active trace context to every call. @internal */
export const traceparentInterceptor: Interceptor = (next) => async (req) => {
  const o = otel();
  if (o !== null && !req.header.has("traceparent")) {
    // The registered propagator (W3C by default in the SDK) writes traceparent and tracestate;
    // without a registered propagator, the active span context is written directly.
    const carrier: Record<string, string> = {};
    o.propagation.inject(o.context.active(), carrier);
    if (carrier.traceparent === undefined) {
      const tp = activeTraceparent();
      if (tp !== undefined) carrier.traceparent = tp;
    }
    for (const [k, v] of Object.entries(carrier)) req.header.set(k, v);
  }
  return next(req);
};
