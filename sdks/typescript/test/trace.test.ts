// The traceparent of the active @opentelemetry/api span goes out with every call. The server does
// not echo it, so an interceptor after the SDK's records the headers each attempt sends.

import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { TraceFlags, context, trace } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { Client, activeTraceparent, string } from "../src/index.js";
import { Server } from "./servers.js";

const TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN_ID = "00f067aa0ba902b7";

describe("trace context and headers", () => {
  let workdir: string;
  let server: Server;
  let client: Client;
  const sent: (string | null)[] = [];
  before(async () => {
    // The api's default context manager is a no-op: context.with would not reach the call.
    context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
    workdir = mkdtempSync(join(tmpdir(), "tiercache-ts-trace-"));
    server = await Server.start(workdir);
    client = new Client({
      address: server.address,
      interceptors: [
        (next) => (req) => {
          sent.push(req.header.get("traceparent"));
          return next(req);
        },
      ],
    });
  });
  after(async () => {
    client.close();
    await server.stop();
    rmSync(workdir, { recursive: true, force: true });
    context.disable();
  });

  it("a call inside an active span sends its traceparent; outside, none", async () => {
    const ns = client.namespace("users", { serializer: string });
    const span = trace.wrapSpanContext({ traceId: TRACE_ID, spanId: SPAN_ID, traceFlags: TraceFlags.SAMPLED });
    const inside = trace.setSpan(context.active(), span);
    sent.length = 0;
    await context.with(inside, async () => {
      assert.equal(activeTraceparent(), `00-${TRACE_ID}-${SPAN_ID}-01`);
      await ns.set("k", "v");
      await ns.get("k");
      await ns.getOrSet("k2", () => "computed"); // GetOrSet, then Fill
    });
    assert.deepEqual(sent, Array(4).fill(`00-${TRACE_ID}-${SPAN_ID}-01`));

    sent.length = 0;
    assert.equal(activeTraceparent(), undefined);
    assert.equal((await ns.get("k"))?.value, "v");
    assert.deepEqual(sent, [null]);
  });

  for (const pipeline of [true, false]) {
    it(`the token and the client's headers go with every call (pipeline ${pipeline ? "on" : "off"})`, async () => {
      const seen: Headers[] = [];
      const c = new Client({
        address: server.address,
        token: "s3cret",
        headers: { "x-tenant": "acme" },
        pipeline,
        interceptors: [
          (next) => (req) => {
            seen.push(req.header);
            return next(req);
          },
        ],
      });
      try {
        const ns = c.namespace("users", { serializer: string });
        await ns.set("t", "v");
        assert.equal((await ns.get("t"))?.value, "v");
        assert.equal((await ns.delete("t")).outcome, "deleted");
        // Pipelined, the three requests share one stream: the headers go once, when it opens.
        assert.equal(seen.length, pipeline ? 1 : 3);
        for (const h of seen) {
          assert.equal(h.get("authorization"), "Bearer s3cret");
          assert.equal(h.get("x-tenant"), "acme");
        }
      } finally {
        c.close();
      }
    });
  }

  it("an unsampled span is sent with flags 00", async () => {
    const span = trace.wrapSpanContext({ traceId: TRACE_ID, spanId: SPAN_ID, traceFlags: TraceFlags.NONE });
    sent.length = 0;
    await context.with(trace.setSpan(context.active(), span), () => client.namespace("users").get("k"));
    assert.deepEqual(sent, [`00-${TRACE_ID}-${SPAN_ID}-00`]);
  });
});
