import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Client, TiercacheError, type WatchEvent, string } from "../src/index.js";
import { CONFIG, Cluster, Server, startReplicaClients, stopReplicaClients, uniqueNamespace } from "./servers.js";
import { nextWithin } from "./streams-kit.js";

describe("watch", () => {
  let cluster: Cluster;
  let a: Client;
  let b: Client;
  before(async () => ({ cluster, a, b } = await startReplicaClients()));
  after(() => stopReplicaClients({ cluster, a, b }));

  it("sees key changes, tag invalidations and flushes written through the other replica", async () => {
    const name = uniqueNamespace();
    const ac = new AbortController();
    const events = a.namespace(name).watch({ signal: ac.signal })[Symbol.asyncIterator]();
    const started = (await nextWithin(events)).value as WatchEvent;
    assert.equal(started.kind, "started");
    const s0 = started.sequence;

    const writer = b.namespace(name, { serializer: string });
    const set = await writer.set("user:1", "Ada", { tags: ["org:7"] });
    assert.deepEqual((await nextWithin(events)).value, {
      sequence: s0 + 1n,
      kind: "key_changed",
      key: "user:1",
      version: set.version,
    });

    const inv = await b.cache.invalidateTags({ namespace: name, tags: ["org:7", "org:8"] });
    const tagsEvent = (await nextWithin(events)).value as WatchEvent;
    assert.equal(tagsEvent.kind, "tags_invalidated");
    assert.equal(tagsEvent.sequence, inv.sequence);
    assert.equal(tagsEvent.sequence, s0 + 2n);
    assert.deepEqual([...(tagsEvent.tags ?? [])].sort(), ["org:7", "org:8"]);

    await b.cache.delete({ namespace: name, key: "user:1" });
    const deleted = (await nextWithin(events)).value as WatchEvent;
    assert.deepEqual(deleted, { sequence: s0 + 3n, kind: "key_changed", key: "user:1", version: 0n });

    const flush = await b.cache.flushNamespace({ namespace: name });
    assert.deepEqual((await nextWithin(events)).value, { sequence: flush.sequence, kind: "flushed" });
    assert.equal(flush.sequence, s0 + 4n);

    ac.abort();
    assert.deepEqual(await nextWithin(events), { done: true, value: undefined });
  });

  it("ends the loop without an error when the caller's signal aborts while it waits", async () => {
    const ac = new AbortController();
    const seen: WatchEvent[] = [];
    const loop = (async () => {
      for await (const ev of a.namespace(uniqueNamespace()).watch({ signal: ac.signal })) {
        seen.push(ev);
        // Aborted while the loop waits for the next event (none comes).
        if (ev.kind === "started") setTimeout(() => ac.abort(), 50);
      }
      return "ended";
    })();
    assert.equal(await loop, "ended");
    assert.deepEqual(
      seen.map((e) => e.kind),
      ["started"],
    );
  });

  it("yields nothing when the signal is already aborted", async () => {
    const seen: WatchEvent[] = [];
    for await (const ev of a.namespace(uniqueNamespace()).watch({ signal: AbortSignal.abort() })) seen.push(ev);
    assert.deepEqual(seen, []);
  });

  it("a break ends the stream, and the namespace can be watched again", async () => {
    const ns = a.namespace(uniqueNamespace(), { serializer: string });
    for await (const ev of ns.watch()) {
      assert.equal(ev.kind, "started");
      break;
    }
    // A second watch sees a write made after the first one ended.
    const events = ns.watch()[Symbol.asyncIterator]();
    assert.equal(((await nextWithin(events)).value as WatchEvent).kind, "started");
    await ns.set("k", "v");
    assert.equal(((await nextWithin(events)).value as WatchEvent).kind, "key_changed");
    await events.return?.();
  });

  it("ends without an error when the client is closed", async () => {
    const c = new Client({ address: cluster.replicas[1].address });
    const events = c.namespace(uniqueNamespace()).watch()[Symbol.asyncIterator]();
    assert.equal(((await nextWithin(events)).value as WatchEvent).kind, "started");
    const pending = nextWithin(events);
    c.close();
    assert.deepEqual(await pending, { done: true, value: undefined });
  });

  it("throws a TiercacheError when the server rejects the stream", async () => {
    const events = a.namespace("no spaces allowed").watch()[Symbol.asyncIterator]();
    await assert.rejects(nextWithin(events), (err: unknown) => {
      assert.ok(err instanceof TiercacheError, `not a TiercacheError: ${String(err)}`);
      assert.equal(err.codeName, "invalid_argument");
      return true;
    });
  });

  it("throws UNAVAILABLE with reason DRAINING when the replica shuts down", async () => {
    const server = await Server.start(cluster.workdir, cluster.redis.url);
    const c = new Client({ address: server.address });
    try {
      const events = c.namespace(uniqueNamespace()).watch()[Symbol.asyncIterator]();
      assert.equal(((await nextWithin(events)).value as WatchEvent).kind, "started");
      const pending = nextWithin(events, 10_000);
      const stopped = server.stop();
      await assert.rejects(pending, (err: unknown) => {
        assert.ok(err instanceof TiercacheError, `not a TiercacheError: ${String(err)}`);
        assert.equal(err.codeName, "unavailable");
        assert.equal(err.reason, "DRAINING");
        return true;
      });
      await stopped;
    } finally {
      c.close();
      await server.stop();
    }
  });

  it("throws RESOURCE_EXHAUSTED with reason WATCH_OVERFLOW when the consumer falls too far behind", async () => {
    const server = await Server.start(cluster.workdir, undefined, `${CONFIG}\n[limits]\nwatch_buffer = 8\n`);
    const c = new Client({ address: server.address });
    try {
      const name = uniqueNamespace();
      const events = c.namespace(name).watch()[Symbol.asyncIterator]();
      assert.equal(((await nextWithin(events)).value as WatchEvent).kind, "started");
      // Events far beyond what the HTTP/2 windows and the server's buffer of 8 hold, never read
      // meanwhile: invalidations of 1000 tags of 100 bytes are 100 KB each (6 MB in all).
      const tags = Array.from({ length: 1000 }, (_, i) => String(i).padStart(100, "0"));
      for (let i = 0; i < 60; i++) await c.cache.invalidateTags({ namespace: name, tags });
      let delivered = 0;
      await assert.rejects(
        (async () => {
          for (;;) {
            const r = await nextWithin(events);
            if (r.done) return;
            delivered += 1;
          }
        })(),
        (err: unknown) => {
          assert.ok(err instanceof TiercacheError, `not a TiercacheError: ${String(err)}`);
          assert.equal(err.codeName, "resource_exhausted");
          assert.equal(err.reason, "WATCH_OVERFLOW");
          return true;
        },
      );
      assert.ok(delivered < 60, `the stream ended early: ${delivered} of 60 events delivered`);
    } finally {
      c.close();
      await server.stop();
    }
  });
});
