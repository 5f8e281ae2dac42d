// Errors, deadlines, cancellation and retries, against real servers and against sockets that
// refuse (a closed port) or never answer (a listener that accepts and stays silent).

import assert from "node:assert/strict";
import { type Server as NetServer, type Socket, createServer } from "node:net";
import { after, before, describe, it } from "node:test";
import type { Interceptor } from "@connectrpc/connect";
import { Client, DEFAULT_RETRY_POLICY, TiercacheError, string } from "../src/index.js";
import { backoffMs } from "../src/client.js";
import { CONFIG, Cluster, Server, freePort, uniqueNamespace } from "./servers.js";

/** An interceptor that counts the attempts of every call (it runs once per attempt). */
function counter(): { interceptor: Interceptor; attempts: () => number } {
  let n = 0;
  return {
    interceptor: (next) => (req) => {
      n += 1;
      return next(req);
    },
    attempts: () => n,
  };
}

function isError(code: string, check?: (e: TiercacheError) => void) {
  return (err: unknown): boolean => {
    assert.ok(err instanceof TiercacheError, `not a TiercacheError: ${String(err)}`);
    assert.equal(err.codeName, code, err.message);
    check?.(err);
    return true;
  };
}

/** A TCP listener that accepts connections and never says a word. */
async function silentListener(): Promise<{ address: string; close: () => Promise<void> }> {
  const sockets = new Set<Socket>();
  const srv: NetServer = createServer((s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
    s.on("error", () => {});
  });
  const port = await new Promise<number>((resolve) =>
    srv.listen(0, "127.0.0.1", () => {
      const a = srv.address();
      resolve(typeof a === "object" && a !== null ? a.port : 0);
    }),
  );
  return {
    address: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        srv.close(() => resolve());
      }),
  };
}

describe("retry pacing", () => {
  it("backs off exponentially with equal jitter, capped", () => {
    const policy = { ...DEFAULT_RETRY_POLICY, initialBackoffMs: 100, maxBackoffMs: 300 };
    for (let i = 0; i < 200; i++) {
      const [first, second, late] = [backoffMs(policy, 1), backoffMs(policy, 2), backoffMs(policy, 10)];
      assert.ok(first >= 50 && first <= 100, `first ${first}`);
      assert.ok(second >= 100 && second <= 200, `second ${second}`);
      assert.ok(late >= 150 && late <= 300, `late ${late}`);
    }
  });
});

describe("errors", () => {
  let cluster: Cluster;
  let client: Client;
  let strict: Server;
  before(async () => {
    cluster = await Cluster.start();
    client = new Client({ address: cluster.memory.address });
    strict = await Server.start(cluster.workdir, undefined, CONFIG.replace("dynamic_namespaces = true", "dynamic_namespaces = false"));
  });
  after(async () => {
    client.close();
    await strict.stop();
    await cluster.stop();
  });

  it("an invalid key is invalid_argument naming the field, with the reason", async () => {
    const ns = client.namespace("users", { serializer: string });
    await assert.rejects(
      ns.set("", "v"),
      isError("invalid_argument", (e) => {
        assert.equal(e.field, "key");
        assert.equal(e.reason, "INVALID_ARGUMENT");
        assert.equal(e.retryable, false);
        assert.match(e.message, /^invalid argument: .*\(key: /);
      }),
    );
    await assert.rejects(ns.get("x".repeat(100_000)), isError("invalid_argument", (e) => assert.equal(e.field, "key")));
    await assert.rejects(ns.getOrSet("", () => "v"), isError("invalid_argument", (e) => assert.equal(e.field, "key")));
  });

  it("a value over the namespace's max_value_bytes is rejected with its reason", async () => {
    const tiny = client.namespace("tiny", { serializer: string });
    await assert.rejects(
      tiny.set("k", "seventeen bytes!!"),
      isError("invalid_argument", (e) => {
        assert.equal(e.reason, "INVALID_ARGUMENT");
        assert.equal(e.field, "value");
      }),
    );
    assert.equal((await tiny.set("k", "small")).outcome, "stored");
  });

  it("an unknown namespace is not_found with NAMESPACE_NOT_FOUND when dynamic namespaces are off", async () => {
    const c = new Client({ address: strict.address });
    try {
      await assert.rejects(
        c.namespace("nope").get("k"),
        isError("not_found", (e) => assert.equal(e.reason, "NAMESPACE_NOT_FOUND")),
      );
      assert.equal(await c.namespace("users").get("k"), undefined);
    } finally {
      c.close();
    }
  });

  it("a getOrSet waiter's deadline gets its maxWait on top", async () => {
    const ns = client.namespace(uniqueNamespace(), { serializer: string });
    const leased = await client.cache.getOrSet({ namespace: ns.name, key: "k" });
    assert.ok(leased.lease !== undefined);
    // timeoutMs 300 alone would expire first, but the wait of 1000 ms is added: the waiter times
    // out on the server (WAIT_TIMEOUT), not on the client.
    const t0 = Date.now();
    await assert.rejects(
      ns.getOrSet("k", () => "x", { timeoutMs: 300, maxWaitMs: 1_000, onWaitTimeout: "unavailable" }),
      isError("unavailable", (e) => {
        assert.equal(e.reason, "WAIT_TIMEOUT");
        assert.ok((e.retryAfterMs ?? 0) > 0, `retryAfterMs ${e.retryAfterMs}`); // from RetryInfo
      }),
    );
    assert.ok(Date.now() - t0 >= 950);
  });

  for (const pipeline of [true, false]) {
    const mode = pipeline ? "pipelined" : "unary";
    it(`a call past its deadline is deadline_exceeded, and is not retried (${mode})`, async () => {
      const silent = await silentListener();
      const count = counter();
      const c = new Client({ address: silent.address, timeoutMs: 300, interceptors: [count.interceptor], pipeline });
      try {
        const t0 = Date.now();
        await assert.rejects(c.namespace("users").get("k"), isError("deadline_exceeded"));
        const took = Date.now() - t0;
        assert.ok(took >= 250 && took < 3_000, `took ${took} ms`);
        assert.equal(count.attempts(), 1);
        // The per-call timeoutMs wins over the client's.
        const t1 = Date.now();
        await assert.rejects(c.namespace("users").get("k", { timeoutMs: 50 }), isError("deadline_exceeded"));
        assert.ok(Date.now() - t1 < 1_000, `took ${Date.now() - t1} ms`);
      } finally {
        c.close();
        await silent.close();
      }
    });

    it(`aborting the signal rejects with cancelled (${mode})`, async () => {
      const silent = await silentListener();
      const c = new Client({ address: silent.address, timeoutMs: 10_000, pipeline });
      try {
        const ac = new AbortController();
        const t0 = Date.now();
        setTimeout(() => ac.abort(), 100);
        await assert.rejects(c.namespace("users").get("k", { signal: ac.signal }), isError("cancelled"));
        assert.ok(Date.now() - t0 < 2_000);
        await assert.rejects(c.namespace("users").get("k", { signal: AbortSignal.abort() }), isError("cancelled"));
      } finally {
        c.close();
        await silent.close();
      }
      // Against a real server too, and close() cancels what is in flight.
      const ns = new Client({ address: cluster.memory.address, pipeline }).namespace("users", { serializer: string });
      await assert.rejects(ns.set("k", "v", { signal: AbortSignal.abort() }), isError("cancelled"));
      ns.client.close();
    });

    it(`close() cancels calls in flight (${mode})`, async () => {
      const silent = await silentListener();
      const c = new Client({ address: silent.address, timeoutMs: 10_000, pipeline });
      try {
        const pending = c.namespace("users").get("k");
        setTimeout(() => c.close(), 100);
        await assert.rejects(pending, isError("cancelled"));
      } finally {
        await silent.close();
      }
    });

  }

  it("reads are retried on unavailable, then it is surfaced; writes are not retried", async () => {
    const port = await freePort();
    const count = counter();
    const c = new Client({
      address: `http://127.0.0.1:${port}`,
      retries: { maxAttempts: 4, initialBackoffMs: 10, maxBackoffMs: 20 },
      interceptors: [count.interceptor],
    });
    try {
      await assert.rejects(c.namespace("users").get("k"), isError("unavailable", (e) => assert.equal(e.retryable, true)));
      assert.equal(count.attempts(), 4);
      await assert.rejects(c.stats(), isError("unavailable"));
      assert.equal(count.attempts(), 8);
      await assert.rejects(c.namespace("users").set("k", new Uint8Array([1])), isError("unavailable"));
      assert.equal(count.attempts(), 9);
      await assert.rejects(c.namespace("users").getOrSet("k", () => new Uint8Array([1])), isError("unavailable"));
      assert.equal(count.attempts(), 10);
    } finally {
      c.close();
    }
  });

  it("a read after its server stopped is retried, then unavailable is surfaced", async () => {
    const server = await Server.start(cluster.workdir);
    const count = counter();
    // Unary, so that the interceptor counts every attempt (a pipelined attempt may ride the
    // stream that is breaking and open none).
    const c = new Client({
      address: server.address,
      retries: { maxAttempts: 3, initialBackoffMs: 10, maxBackoffMs: 20 },
      interceptors: [count.interceptor],
      pipeline: false,
    });
    const piped = new Client({ address: server.address });
    try {
      const ns = c.namespace("users", { serializer: string });
      await ns.set("k", "v");
      assert.equal((await ns.get("k"))?.value, "v");
      const pns = piped.namespace("users", { serializer: string });
      assert.equal((await pns.get("k"))?.value, "v");
      await server.stop();
      const before = count.attempts();
      await assert.rejects(ns.get("k"), isError("unavailable"));
      assert.equal(count.attempts() - before, 3);
      await assert.rejects(pns.get("k"), isError("unavailable"));
      await assert.rejects(pns.set("k", "w"), isError("unavailable"));
    } finally {
      c.close();
      piped.close();
      await server.stop();
    }
  });
});
