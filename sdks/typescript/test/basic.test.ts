import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { Client, TiercacheError, bytes, json, jsonOf, string } from "../src/index.js";
import { Cluster, uniqueNamespace } from "./servers.js";

const run = promisify(execFile);

/** Retries `read` until `ok` holds (another replica's change arrives through pub/sub). */
async function eventually<R>(read: () => Promise<R>, ok: (r: R) => boolean): Promise<R> {
  const deadline = Date.now() + 5_000;
  for (;;) {
    const r = await read();
    if (ok(r) || Date.now() > deadline) return r;
    await new Promise((res) => setTimeout(res, 20));
  }
}

describe("namespace operations", () => {
  let cluster: Cluster;
  let client: Client;
  let other: Client;
  let unary: Client;
  before(async () => {
    cluster = await Cluster.start();
    client = new Client({ address: cluster.replicas[0].address });
    other = new Client({ address: cluster.replicas[1].address });
    unary = new Client({ address: cluster.replicas[0].address, pipeline: false });
  });
  after(async () => {
    client.close();
    other.close();
    unary.close();
    await cluster.stop();
  });

  it("stores a value and reads it back with its metadata", async () => {
    const ns = client.namespace(uniqueNamespace(), { serializer: jsonOf<{ name: string }>() });
    const set = await ns.set("user:42", { name: "Ada" }, { ttlMs: 30_000, tags: ["org:7"] });
    assert.equal(set.outcome, "stored");
    assert.equal(set.stored, true);
    assert.ok(set.version > 0n);
    const entry = await ns.get("user:42");
    assert.deepEqual(entry?.value, { name: "Ada" });
    assert.equal(entry?.value?.name, "Ada");
    assert.equal(entry?.version, set.version);
    assert.deepEqual(entry?.tags, ["org:7"]);
    assert.equal(entry?.stale, false);
    assert.equal(entry?.absent, false);
    assert.ok(entry?.tier === "l1" || entry?.tier === "l2", `tier ${entry?.tier}`);
    assert.equal((await ns.get("user:42"))?.tier, "l1"); // the read put it in the replica's L1
    assert.ok(entry !== undefined && entry.ttlRemainingMs > 25_000 && entry.ttlRemainingMs <= 30_000);
    assert.equal(await ns.get("missing"), undefined);
  });

  it("reads another replica's write through Redis", async () => {
    const name = uniqueNamespace();
    await client.namespace(name, { serializer: string }).set("k", "from A");
    const entry = await other.namespace(name, { serializer: string }).get("k");
    assert.equal(entry?.value, "from A");
    assert.equal(entry?.tier, "l2");
  });

  it("bytes are the default serializer", async () => {
    const ns = client.namespace(uniqueNamespace());
    assert.equal(ns.serializer, bytes);
    await ns.set("b", new Uint8Array([0, 1, 255]));
    assert.deepEqual((await ns.get("b"))?.value, new Uint8Array([0, 1, 255]));
    await assert.rejects(ns.set("b", "text" as unknown as Uint8Array), TypeError);
  });

  for (const mode of ["pipelined", "unary"] as const) {
    const c = () => (mode === "pipelined" ? client : unary);
    it(`conditional writes: ifAbsent and ifVersion (${mode})`, async () => {
      const ns = c().namespace(uniqueNamespace(), { serializer: string });
      const first = await ns.set("k", "v1", { ifAbsent: true });
      assert.equal(first.outcome, "stored");
      const exists = await ns.set("k", "x", { ifAbsent: true });
      assert.deepEqual([exists.stored, exists.outcome, exists.currentVersion], [false, "exists", first.version]);
      const mismatch = await ns.set("k", "x", { ifVersion: first.version + 100n });
      assert.deepEqual([mismatch.outcome, mismatch.currentVersion], ["version_mismatch", first.version]);
      const second = await ns.set("k", "v2", { ifVersion: first.version });
      assert.equal(second.outcome, "stored");
      assert.ok(second.version > first.version);
      assert.equal((await ns.get("k"))?.value, "v2");
      await assert.rejects(ns.set("k", "x", { ifAbsent: true, ifVersion: 1n }), TypeError);
    });

    it(`delete: deleted, not_found, version_mismatch (${mode})`, async () => {
      const ns = c().namespace(uniqueNamespace(), { serializer: string });
      const { version } = await ns.set("k", "v");
      const mismatch = await ns.delete("k", { ifVersion: version + 1n });
      assert.deepEqual([mismatch.deleted, mismatch.outcome, mismatch.currentVersion], [false, "version_mismatch", version]);
      const deleted = await ns.delete("k", { ifVersion: version });
      assert.deepEqual([deleted.deleted, deleted.outcome], [true, "deleted"]);
      assert.equal(await ns.get("k"), undefined);
      assert.equal((await ns.delete("k")).outcome, "not_found");
    });
  }

  it("a process that never closes its client exits once the pipeline is idle", async () => {
    const sdk = new URL("../src/index.js", import.meta.url).href;
    const script = `
      import { Client, string } from ${JSON.stringify(sdk)};
      const ns = new Client({ address: ${JSON.stringify(cluster.memory.address)} }).namespace("users", { serializer: string });
      await ns.set("exit", "v");
      console.log((await ns.get("exit"))?.value);
    `;
    const t0 = Date.now();
    const { stdout } = await run(process.execPath, ["--input-type=module", "-e", script], { timeout: 10_000 });
    assert.equal(stdout, "v\n");
    assert.ok(Date.now() - t0 < 5_000, `exited after ${Date.now() - t0} ms`);
  });

  it("concurrent pipelined reads each get their own answer", async () => {
    const ns = client.namespace(uniqueNamespace(), { serializer: string });
    const keys = Array.from({ length: 300 }, (_, i) => `k${i}`);
    await Promise.all(keys.map((k) => ns.set(k, `value of ${k}`)));
    const entries = await Promise.all([...keys, ...keys].map((k) => ns.get(k)));
    assert.deepEqual(entries.map((e) => e?.value), [...keys, ...keys].map((k) => `value of ${k}`));
  });

  it("getMany and setMany keep the order of the keys", async () => {
    const ns = client.namespace(uniqueNamespace(), { serializer: json });
    const results = await ns.setMany(new Map<string, unknown>([["a", 1], ["b", { two: 2 }]]), { ttlMs: 60_000, tags: ["batch"] });
    assert.deepEqual(results.map((r) => r.outcome), ["stored", "stored"]);
    const fromRecord = await ns.setMany({ c: "three" });
    assert.equal(fromRecord[0]?.stored, true);
    const entries = await ns.getMany(["b", "missing", "a", "c"]);
    assert.deepEqual(entries.map((e) => e?.value), [{ two: 2 }, undefined, 1, "three"]);
    assert.deepEqual(entries[0]?.tags, ["batch"]);
    assert.equal(entries[0]?.version, results[1]?.version);
    assert.deepEqual(await ns.getMany([]), []);
  });

  it("invalidateTags hides the tagged entries on every replica; flush hides all", async () => {
    const name = uniqueNamespace();
    const a = client.namespace(name, { serializer: string });
    const b = other.namespace(name, { serializer: string });
    await a.set("x", "1", { tags: ["org:7"] });
    await a.set("y", "2", { tags: ["org:8"] });
    assert.equal((await eventually(() => b.get("x"), (e) => e !== undefined))?.value, "1");
    const seq = await b.invalidateTags(["org:7"]);
    assert.ok(seq > 0n);
    assert.equal(await eventually(() => a.get("x"), (e) => e === undefined), undefined);
    assert.equal((await a.get("y"))?.value, "2");
    const flushed = await a.flush();
    assert.ok(flushed > seq);
    assert.equal(await eventually(() => b.get("y"), (e) => e === undefined), undefined);
  });

  it("inspect explains a key", async () => {
    const ns = client.namespace(uniqueNamespace(), { serializer: string });
    const { version } = await ns.set("k", "v", { tags: ["t"] });
    await ns.get("k");
    const seen = await ns.inspect("k");
    assert.equal(seen.leaseHeld, false);
    assert.ok(seen.explanation.length > 0);
    const l1 = seen.tiers.find((t) => t.tier === "l1");
    assert.equal(l1?.present, true);
    assert.equal(l1?.visibility, "fresh");
    assert.equal(l1?.entry?.version, version);
    assert.deepEqual(l1?.tagMarks.map((m) => m.tag), ["t"]);
    assert.ok(seen.tiers.some((t) => t.tier === "l2" && t.present));
    const missing = await ns.inspect("nope");
    assert.ok(missing.tiers.every((t) => !t.present));
  });

  it("stats, listNamespaces and health", async () => {
    const name = uniqueNamespace();
    const ns = client.namespace(name, { serializer: string });
    await ns.set("k", "v");
    await ns.get("k");
    await ns.get("missing");
    const stats = await client.stats(name);
    assert.equal(stats.mode, "two_tier");
    assert.equal(stats.degraded, false);
    const mine = stats.namespaces.find((s) => s.namespace === name);
    assert.equal(mine?.sets, 1n);
    assert.equal(mine?.misses, 1n);
    assert.ok((mine?.hitsL1 ?? 0n) + (mine?.hitsL2 ?? 0n) >= 1n);
    const memory = new Client({ address: cluster.memory.address });
    try {
      assert.equal((await memory.stats()).mode, "memory");
    } finally {
      memory.close();
    }
    const namespaces = await client.listNamespaces();
    const stale = namespaces.find((n) => n.name === "stale");
    assert.equal(stale?.dynamic, false);
    assert.equal(stale?.policy.defaultTtlMs, 1_000);
    assert.equal(stale?.policy.staleTtlMs, 60_000);
    assert.equal(namespaces.find((n) => n.name === "tiny")?.policy.maxValueBytes, 16n);
    assert.equal(namespaces.find((n) => n.name === name)?.dynamic, true);
    assert.equal(await client.health(), "serving");
    assert.equal(await client.health("tiercache.v1.CacheService"), "serving");
    assert.equal(await client.health("tiercache.redis"), "serving");
    await assert.rejects(client.health("no.such.Service"), (err: unknown) => {
      assert.ok(err instanceof TiercacheError);
      assert.equal(err.codeName, "not_found");
      return true;
    });
  });
});
