import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { after, before, describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { EntrySchema } from "../src/gen/tiercache/v1/common_pb.js";
import { durationOf } from "../src/namespace.js";
import { Client, NearCache, type Namespace, TiercacheError, json } from "../src/index.js";
import { Cluster, startReplicaClients, stopReplicaClients, uniqueNamespace } from "./servers.js";
import { TcpProxy, waitFor, within } from "./streams-kit.js";

/** A wire entry as the server sends it: fresh for `freshMs`. */
function pbEntry(version: bigint, freshMs: number, tags: string[] = [], stale = false) {
  return create(EntrySchema, {
    value: new TextEncoder().encode(`"v${version}"`),
    version,
    tags,
    stale,
    freshRemaining: durationOf("fresh", freshMs),
  });
}

/** A near cache whose stream has started at `sequence` (no background watch). */
function started(sequence = 10n, options = {}): NearCache {
  const near = new NearCache(options);
  near.apply({ sequence, kind: "started" });
  return near;
}

/** Puts `key` into `near` as a read that went to an up-to-date replica would. */
function fill(near: NearCache, key: string, version: bigint, tags: string[] = []): void {
  const ticket = near.ticket(key);
  assert.notEqual(ticket, undefined);
  near.insert(key, pbEntry(version, 30_000, tags), ticket as number, near.sequence ?? 0n);
}

describe("near cache rules", () => {
  it("is bypassed until the Watch stream has started, and after it ended", () => {
    const near = new NearCache();
    assert.equal(near.active, false);
    assert.equal(near.ticket("k"), undefined);
    near.apply({ sequence: 5n, kind: "key_changed", key: "k", version: 3n });
    assert.equal(near.active, false, "an event before `started` does not start the cache");
    near.apply({ sequence: 7n, kind: "started" });
    fill(near, "k", 1n);
    assert.equal(near.lookup("k")?.version, 1n);
    near.reset();
    assert.equal(near.lookup("k"), undefined);
    assert.equal(near.ticket("k"), undefined);
  });

  it("drops a key on key_changed unless it holds that very version; a delete always drops", () => {
    const near = started(10n);
    fill(near, "a", 4n);
    fill(near, "b", 4n);
    fill(near, "c", 4n);
    near.apply({ sequence: 11n, kind: "key_changed", key: "a", version: 4n });
    near.apply({ sequence: 12n, kind: "key_changed", key: "b", version: 5n });
    assert.equal(near.lookup("a")?.version, 4n, "the event of the held version keeps it");
    assert.equal(near.lookup("b"), undefined);
    near.apply({ sequence: 13n, kind: "key_changed", key: "c", version: 0n });
    assert.equal(near.lookup("c"), undefined);
  });

  it("drops tagged entries on tags_invalidated and clears on flushed, gap and a skipped sequence", () => {
    const near = started(10n);
    fill(near, "tagged", 1n, ["org:7"]);
    fill(near, "other", 1n, ["org:8"]);
    near.apply({ sequence: 11n, kind: "tags_invalidated", tags: ["org:7", "org:9"] });
    assert.equal(near.lookup("tagged"), undefined);
    assert.equal(near.lookup("other")?.version, 1n);

    near.apply({ sequence: 12n, kind: "flushed" });
    assert.equal(near.size, 0);

    fill(near, "x", 1n);
    near.apply({ sequence: 13n, kind: "gap", lastSequence: 12n });
    assert.equal(near.lookup("x"), undefined);

    fill(near, "y", 1n);
    near.apply({ sequence: 15n, kind: "key_changed", key: "unrelated", version: 2n });
    assert.equal(near.lookup("y"), undefined, "a skipped sequence (14) clears everything");
    fill(near, "z", 1n);
    near.apply({ sequence: 16n, kind: "key_changed", key: "unrelated", version: 3n });
    assert.equal(near.lookup("z")?.version, 1n, "consecutive again: nothing cleared");
  });

  it("does not keep a read that raced with an event or a local write (epoch tickets)", () => {
    const near = started(10n);
    const t1 = near.ticket("k") as number;
    near.apply({ sequence: 11n, kind: "key_changed", key: "other", version: 1n });
    near.insert("k", pbEntry(1n, 30_000), t1, 11n);
    assert.equal(near.lookup("k"), undefined);
    const t2 = near.ticket("k") as number;
    near.forget("k");
    near.insert("k", pbEntry(1n, 30_000), t2, 11n);
    assert.equal(near.lookup("k"), undefined);
  });

  it("does not keep a reply from a replica behind the Watch stream (applied_sequence)", () => {
    const near = started(20n);
    near.insert("k", pbEntry(1n, 30_000), near.ticket("k") as number, 19n);
    assert.equal(near.lookup("k"), undefined);
    assert.equal(near.laggingReplies, 1);
    near.insert("k", pbEntry(1n, 30_000), near.ticket("k") as number, 20n);
    assert.equal(near.lookup("k")?.version, 1n);
  });

  it("keeps only fresh entries, at most until their fresh period or maxTtlMs ends", async () => {
    const near = started(1n, { maxTtlMs: 150 });
    near.insert("stale", pbEntry(1n, 30_000, [], true), near.ticket("stale") as number, 1n);
    near.insert("expired", pbEntry(1n, 0), near.ticket("expired") as number, 1n);
    assert.equal(near.size, 0);
    near.insert("short", pbEntry(1n, 30_000), near.ticket("short") as number, 1n);
    const at = performance.now();
    assert.equal(near.lookup("short")?.version, 1n);
    await waitFor("the entry to expire at maxTtlMs", () => near.lookup("short") === undefined);
    const held = performance.now() - at;
    assert.ok(held >= 140 && held < 2_000, `held ${held} ms with maxTtlMs 150`);
  });

  it("evicts the least recently used entry beyond maxEntries", () => {
    const near = started(1n, { maxEntries: 2 });
    fill(near, "a", 1n);
    fill(near, "b", 1n);
    assert.ok(near.lookup("a") !== undefined); // a is now the most recently used
    fill(near, "c", 1n);
    assert.equal(near.size, 2);
    assert.equal(near.lookup("b"), undefined);
    assert.ok(near.lookup("a") !== undefined);
    assert.ok(near.lookup("c") !== undefined);
  });

  it("rejects bad bounds", () => {
    assert.throws(() => new NearCache({ maxEntries: 0 }), RangeError);
    assert.throws(() => new NearCache({ maxTtlMs: -1 }), RangeError);
  });
});

describe("near cache against two replicas", () => {
  let cluster: Cluster;
  let a: Client;
  let b: Client;
  before(async () => ({ cluster, a, b } = await startReplicaClients()));
  after(() => stopReplicaClients({ cluster, a, b }));

  /** A namespace of client a with a near cache whose stream has started. */
  async function nearNamespace(): Promise<{ ns: Namespace<unknown>; near: NearCache; name: string }> {
    const name = uniqueNamespace();
    const ns = a.namespace<unknown>(name, { serializer: json, nearCache: true });
    const near = ns.nearCache;
    assert.ok(near !== undefined);
    await waitFor("the near cache's watch to start", () => near.active);
    return { ns, near, name };
  }

  /** Waits until the near cache has applied the event of sequence `seq`. */
  function reached(near: NearCache, seq: bigint): Promise<true> {
    return waitFor(`the near cache to reach sequence ${seq}`, () => (near.sequence ?? 0n) >= seq);
  }

  /** Writes through replica b and waits until the near cache of a has applied the write. */
  async function writeOther(near: NearCache, name: string, key: string, value: unknown, tags: string[] = []) {
    const before = near.sequence ?? 0n;
    const set = await b.namespace<unknown>(name, { serializer: json }).set(key, value, { tags, ttlMs: 30_000 });
    await reached(near, before + 1n);
    return set;
  }

  it("serves the second get from the near cache", async () => {
    const { ns, near, name } = await nearNamespace();
    const set = await writeOther(near, name, "user:1", { name: "Ada" });
    const first = await ns.get("user:1");
    assert.notEqual(first?.tier, "near");
    const second = await ns.get("user:1");
    assert.equal(second?.tier, "near");
    assert.deepEqual(second?.value, { name: "Ada" });
    assert.equal(second?.version, set.version);
    assert.equal(second?.stale, false);
    // freshOnly reads bypass it.
    assert.notEqual((await ns.get("user:1", { freshOnly: true }))?.tier, "near");
    ns.close();
  });

  it("drops an entry when another client writes it through the other replica", async () => {
    const { ns, near, name } = await nearNamespace();
    await writeOther(near, name, "k", 1);
    await ns.get("k");
    assert.equal((await ns.get("k"))?.tier, "near");
    const wrote = Date.now();
    const v2 = await b.namespace<unknown>(name, { serializer: json }).set("k", 2);
    const seen = await waitFor("the new value", async () => {
      const e = await ns.get("k");
      return e?.value === 2 ? e : undefined;
    });
    assert.equal(seen.version, v2.version);
    assert.ok(Date.now() - wrote < 5_000);
    // And the new value is cached again.
    await waitFor("the new value served near", async () => (await ns.get("k"))?.tier === "near");
    ns.close();
  });

  it("this process's own write is never hidden by the near cache", async () => {
    const { ns } = await nearNamespace();
    await ns.set("own", 1);
    await ns.get("own");
    await waitFor("a near hit", async () => (await ns.get("own"))?.tier === "near");
    await ns.set("own", 2);
    assert.equal((await ns.get("own"))?.value, 2);
    ns.close();
  });

  it("drops the entries of invalidated tags and keeps the others", async () => {
    const { ns, near, name } = await nearNamespace();
    await writeOther(near, name, "tagged", "t", ["org:7"]);
    await writeOther(near, name, "untagged", "u", ["org:8"]);
    for (const k of ["tagged", "untagged"]) await ns.get(k);
    assert.equal((await ns.get("tagged"))?.tier, "near");
    assert.equal((await ns.get("untagged"))?.tier, "near");
    const inv = await b.cache.invalidateTags({ namespace: name, tags: ["org:7"] });
    await reached(near, inv.sequence);
    assert.equal(await ns.get("tagged"), undefined);
    assert.equal((await ns.get("untagged"))?.tier, "near");
    ns.close();
  });

  it("is cleared by a flush through the other replica", async () => {
    const { ns, near, name } = await nearNamespace();
    await writeOther(near, name, "x", 1);
    await writeOther(near, name, "y", 2);
    for (const k of ["x", "y", "x", "y"]) await ns.get(k);
    assert.equal(near.size, 2);
    const flush = await b.cache.flushNamespace({ namespace: name });
    await reached(near, flush.sequence);
    assert.equal(near.size, 0);
    assert.equal(await ns.get("x"), undefined);
    assert.equal(await ns.get("y"), undefined);
    ns.close();
  });

  it("never serves a stale entry", async () => {
    const { ns, near, name } = await nearNamespace();
    const before = near.sequence ?? 0n;
    await b.namespace<unknown>(name, { serializer: json }).set("s", "v", { ttlMs: 400, staleTtlMs: 60_000 });
    await reached(near, before + 1n);
    let nearHits = 0;
    const stale = await waitFor("the entry to turn stale", async () => {
      const e = await ns.get("s");
      assert.ok(e !== undefined);
      if (e.tier === "near") {
        nearHits += 1;
        assert.equal(e.stale, false);
      }
      return e.stale ? e : undefined;
    }, 5_000, 20);
    assert.ok(nearHits > 0, "the entry was served near while fresh");
    assert.notEqual(stale.tier, "near");
    const again = await ns.get("s");
    assert.equal(again?.stale, true);
    assert.notEqual(again?.tier, "near", "a stale reply is not kept");
    ns.close();
  });

  it("ns.close() stops the watch and bypasses the cache", async () => {
    const { ns, near, name } = await nearNamespace();
    await writeOther(near, name, "k", 1);
    await ns.get("k");
    assert.equal((await ns.get("k"))?.tier, "near");
    ns.close();
    await within("the watch to stop", near.stopped);
    assert.equal(near.active, false);
    assert.equal((await ns.get("k"))?.tier === "near", false);
    assert.equal((await ns.get("k"))?.tier === "near", false, "nothing stored after close");
  });

  it("clears and bypasses itself when its stream is cut, then reconnects and serves near again", async () => {
    // A TCP proxy in front of replica a: destroying its sockets cuts the client's connection.
    const proxy = await TcpProxy.start(cluster.replicas[0].port);
    const c = new Client({ address: `http://127.0.0.1:${proxy.port}` });
    try {
      const name = uniqueNamespace();
      const ns = c.namespace<unknown>(name, { serializer: json, nearCache: { maxEntries: 100, maxTtlMs: 10_000 } });
      const near = ns.nearCache as NearCache;
      await waitFor("started", () => near.active);
      await writeOther(near, name, "k", 1);
      await ns.get("k");
      assert.equal((await ns.get("k"))?.tier, "near");
      assert.equal(near.streamsStarted, 1);

      proxy.cut();
      await waitFor("the cache to be cleared", () => near.size === 0 && (!near.active || near.streamsStarted > 1));
      await waitFor("a second stream", () => near.active && near.streamsStarted === 2);
      assert.ok(near.lastError instanceof TiercacheError, `lastError: ${String(near.lastError)}`);
      await ns.get("k");
      assert.equal((await ns.get("k"))?.tier, "near");
      // And the new stream keeps it coherent.
      const v2 = await b.namespace<unknown>(name, { serializer: json }).set("k", 2);
      await waitFor("the new value", async () => (await ns.get("k"))?.version === v2.version);
      ns.close();
      await within("the watch to stop", near.stopped);
    } finally {
      c.close();
      await proxy.stop();
    }
  });

  for (const how of ["client.close()", "ns.close()"] as const) {
    it(`does not keep the process alive after ${how}`, async () => {
      const index = fileURLToPath(new URL("../src/index.js", import.meta.url));
      const script = `
        import { Client, json } from ${JSON.stringify(index)};
        const client = new Client({ address: ${JSON.stringify(cluster.replicas[0].address)} });
        const ns = client.namespace("users", { serializer: json, nearCache: true });
        const deadline = Date.now() + 5000;
        while (!ns.nearCache.active) {
          if (Date.now() > deadline) { console.error("never started"); process.exit(2); }
          await new Promise((r) => setTimeout(r, 10));
        }
        await ns.set("child", 1);
        await ns.get("child");
        ${how === "client.close()" ? "client.close();" : "ns.close();"}
        console.log("closed");
      `;
      const child = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "pipe"] });
      let out = "";
      child.stdout.on("data", (d: Buffer) => (out += d.toString()));
      child.stderr.on("data", (d: Buffer) => (out += d.toString()));
      const started = Date.now();
      const code = await new Promise<number | string>((resolve) => {
        const timer = setTimeout(() => {
          child.kill("SIGKILL");
          resolve("still running after 8 s");
        }, 8_000);
        child.once("exit", (c, s) => {
          clearTimeout(timer);
          resolve(c ?? String(s));
        });
      });
      assert.equal(code, 0, `child: ${out}`);
      assert.match(out, /closed/);
      assert.ok(Date.now() - started < 8_000);
    });
  }
});
