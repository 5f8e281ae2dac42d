// getOrSet, getOrSetMany and wrap: the lease protocol driven by the SDK, against two replicas on
// one Redis.

import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { after, before, describe, it } from "node:test";
import { Client, type Namespace, TiercacheError, json, string } from "../src/index.js";
import { Cluster, startReplicaClients, stopReplicaClients, uniqueNamespace } from "./servers.js";

class LoaderError extends Error {}

/** Polls `check` until it returns true, for up to 5 s; fails with `what` otherwise. */
async function until(what: string, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

describe("getOrSet", () => {
  let cluster: Cluster;
  let a: Client;
  let b: Client;
  const warnings: string[] = [];
  before(async () => ({ cluster, a, b } = await startReplicaClients({ logger: { warn: (m) => warnings.push(m) } })));
  after(() => stopReplicaClients({ cluster, a, b }));

  it("500 concurrent callers on one cold key over 2 replicas run the loader once", async () => {
    const name = uniqueNamespace();
    const nss = [a.namespace(name, { serializer: json }), b.namespace(name, { serializer: json })];
    let calls = 0;
    const loader = async () => {
      calls += 1;
      await sleep(200);
      return { computed: true };
    };
    const results = await Promise.all(
      Array.from({ length: 500 }, (_, i) => (nss[i % 2] as Namespace<unknown>).getOrSet("hot", loader, { ttlMs: 60_000 })),
    );
    assert.equal(calls, 1);
    assert.equal(results.length, 500);
    for (const r of results) assert.deepEqual(r, { computed: true });
    assert.deepEqual((await nss[1]?.get("hot"))?.value, { computed: true });
  });

  it("a hit does not call the loader; sync and async loaders both work", async () => {
    const ns = a.namespace(uniqueNamespace(), { serializer: string });
    assert.equal(await ns.getOrSet("k", () => "sync"), "sync");
    assert.equal(await ns.getOrSet("k", () => assert.fail("called on a hit")), "sync");
    assert.equal(await ns.getOrSet("k2", async () => "async", { ttlMs: 30_000, tags: ["t"] }), "async");
    const entry = await ns.get("k2");
    assert.deepEqual(entry?.tags, ["t"]);
    assert.ok(entry !== undefined && entry.ttlRemainingMs > 25_000 && entry.ttlRemainingMs <= 30_000);
  });

  it("bad options are rejected before a lease is taken", async () => {
    const ns = a.namespace(uniqueNamespace(), { serializer: string });
    await ns.set("other", "creates the namespace");
    await assert.rejects(ns.getOrSet("k", () => "v", { ttlMs: -1 }), RangeError);
    await assert.rejects(ns.getOrSetMany(["k"], () => ({ k: "v" }), { staleTtlMs: Number.NaN }), RangeError);
    assert.equal((await ns.inspect("k")).leaseHeld, false);
  });

  it("a loader returning undefined or null caches absent (negative caching)", async () => {
    const name = uniqueNamespace();
    const ns = a.namespace(name, { serializer: string });
    let calls = 0;
    assert.equal(await ns.getOrSet("none", () => { calls += 1; return undefined; }), undefined);
    assert.equal(await ns.getOrSet("null", async () => { calls += 1; return null; }), undefined);
    assert.equal(calls, 2);
    const onB = b.namespace(name, { serializer: string });
    assert.equal(await onB.getOrSet("none", () => assert.fail("absent is cached")), undefined);
    assert.equal(await onB.getOrSet("null", () => assert.fail("absent is cached")), undefined);
    const entry = await ns.get("none");
    assert.equal(entry?.absent, true);
    assert.equal(entry?.value, undefined);
  });

  it("a loader error is rethrown, nothing cached, the lease released and a waiter takes over", async () => {
    const name = uniqueNamespace();
    const first = a.namespace(name, { serializer: string });
    const second = b.namespace(name, { serializer: string });
    await first.set("created", "the namespace, so inspect finds it");
    const failing = first.getOrSet("k", async () => {
      await sleep(400);
      throw new LoaderError("origin down");
    });
    await until("the lease", async () => (await first.inspect("k")).leaseHeld);
    let waiterCalls = 0;
    const waiter = second.getOrSet("k", () => { waiterCalls += 1; return "from the waiter"; }, { maxWaitMs: 5_000 });
    await assert.rejects(failing, LoaderError);
    assert.equal(await waiter, "from the waiter");
    assert.equal(waiterCalls, 1);
    assert.equal((await first.get("k"))?.value, "from the waiter");

    // A synchronous throw, with no waiter: released, nothing cached.
    await assert.rejects(first.getOrSet("sync", () => { throw new LoaderError("sync"); }), LoaderError);
    assert.equal((await first.inspect("sync")).leaseHeld, false);
    assert.equal(await first.get("sync"), undefined);
  });

  it("a stale hit is served at once and refreshed in the background", async () => {
    const ns = a.namespace("stale", { serializer: string });
    const [ok, bad, strict] = [uniqueNamespace("ok"), uniqueNamespace("bad"), uniqueNamespace("strict")];
    await Promise.all([ns.set(ok, "old"), ns.set(bad, "old"), ns.set(strict, "old")]);
    await sleep(1_200); // default_ttl of `stale` is 1 s
    assert.equal((await ns.get(ok))?.stale, true);
    assert.equal(await ns.get(ok, { freshOnly: true }), undefined);
    assert.deepEqual((await ns.getMany([ok, strict], { freshOnly: true })), [undefined, undefined]);

    let refreshed = false;
    const served = await ns.getOrSet(ok, async () => {
      await sleep(300);
      refreshed = true;
      return "new";
    }, { ttlMs: 60_000 });
    assert.equal(served, "old");
    assert.equal(refreshed, false); // served without waiting for the loader
    await until("the refresh", async () => (await ns.get(ok))?.value === "new");
    const fresh = await ns.get(ok);
    assert.equal(fresh?.stale, false);
    assert.ok(fresh !== undefined && fresh.ttlRemainingMs > 50_000);

    // A refresh that fails keeps the stale value and releases the refresh lease.
    warnings.length = 0;
    assert.equal(await ns.getOrSet(bad, () => { throw new LoaderError("refresh failed"); }), "old");
    await until("the warning", async () => warnings.length > 0);
    assert.match(warnings[0] ?? "", /background refresh .* failed/);
    await until("the release", async () => !(await ns.inspect(bad)).leaseHeld);
    assert.equal((await ns.get(bad))?.value, "old");

    // allowStale: false treats the stale entry as a miss and computes in the call.
    assert.equal(await ns.getOrSet(strict, () => "computed", { allowStale: false }), "computed");
  });

  it("COMPUTE: past the wait bound the loader runs and its value is not stored", async () => {
    const ns = b.namespace(uniqueNamespace(), { serializer: string });
    const held = await a.cache.getOrSet({ namespace: ns.name, key: "k" });
    assert.ok(held.lease !== undefined);
    let calls = 0;
    const t0 = Date.now();
    const v = await ns.getOrSet("k", () => { calls += 1; return "computed"; }, { maxWaitMs: 200 });
    assert.equal(v, "computed");
    assert.equal(calls, 1);
    assert.ok(Date.now() - t0 >= 150);
    assert.equal(await ns.get("k"), undefined);
    assert.equal((await ns.inspect("k")).leaseHeld, true);
    await assert.rejects(
      ns.getOrSet("k", () => "x", { maxWaitMs: 100, onWaitTimeout: "unavailable" }),
      (e: unknown) => e instanceof TiercacheError && e.codeName === "unavailable" && e.reason === "WAIT_TIMEOUT",
    );
    await a.cache.releaseLease({ namespace: ns.name, key: "k", leaseToken: held.lease.token });
  });

  it("a fill refused because a write revoked the lease still returns the computed value", async () => {
    const ns = a.namespace(uniqueNamespace(), { serializer: string });
    const v = await ns.getOrSet("k", async () => {
      await ns.set("k", "written meanwhile");
      return "computed";
    });
    assert.equal(v, "computed");
    assert.equal((await ns.get("k"))?.value, "written meanwhile");
  });

  it("aborting while the loader runs rejects with cancelled and releases the lease", async () => {
    const ns = a.namespace(uniqueNamespace(), { serializer: string });
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 100);
    const t0 = Date.now();
    await assert.rejects(
      ns.getOrSet("k", () => sleep(2_000).then(() => "late"), { signal: ac.signal }),
      (e: unknown) => e instanceof TiercacheError && e.codeName === "cancelled",
    );
    assert.ok(Date.now() - t0 < 1_000);
    assert.equal((await ns.inspect("k")).leaseHeld, false);
    assert.equal(await ns.get("k"), undefined);
  });

  it("getOrSetMany: one loader call with the keys to compute, absent for keys left out", async () => {
    const name = uniqueNamespace();
    const ns = a.namespace(name, { serializer: string });
    await ns.set("a", "A");
    const asked: string[][] = [];
    const values = await ns.getOrSetMany(["a", "b", "c"], async (keys) => {
      asked.push(keys);
      return new Map([["b", "B"], ["unasked", "ignored"]]);
    }, { tags: ["batch"] });
    assert.deepEqual(values, ["A", "B", undefined]);
    assert.deepEqual(asked, [["b", "c"]]);
    const onB = b.namespace(name, { serializer: string });
    const again = await onB.getOrSetMany(["c", "b", "a"], (keys) => assert.fail(`loader called for ${keys.join()}`));
    assert.deepEqual(again, [undefined, "B", "A"]);
    assert.equal((await ns.get("c"))?.absent, true);
    assert.deepEqual((await ns.get("b"))?.tags, ["batch"]);
    assert.equal(await ns.get("unasked"), undefined);

    // A plain object works too; a throwing loader releases every lease and caches nothing.
    assert.deepEqual(await ns.getOrSetMany(["d"], () => ({ d: "D" })), ["D"]);
    await assert.rejects(ns.getOrSetMany(["x", "y"], () => { throw new LoaderError("batch"); }), LoaderError);
    for (const k of ["x", "y"]) {
      assert.equal((await ns.inspect(k)).leaseHeld, false);
      assert.equal(await ns.get(k), undefined);
    }
  });

  it("wrap caches a function's result under its key and tags", async () => {
    const ns = a.namespace(uniqueNamespace(), { serializer: json });
    let calls = 0;
    const loadUser = ns.wrap(
      async (id: number, org: string) => {
        calls += 1;
        return id === 0 ? undefined : { id, org };
      },
      { key: (id, org) => `user:${org}:${id}`, tags: (_id, org) => [`org:${org}`], ttlMs: 60_000 },
    );
    assert.deepEqual(await loadUser(42, "7"), { id: 42, org: "7" });
    assert.deepEqual(await loadUser(42, "7"), { id: 42, org: "7" });
    assert.equal(calls, 1);
    assert.deepEqual(await loadUser(43, "7"), { id: 43, org: "7" });
    assert.equal(await loadUser(0, "7"), undefined);
    assert.equal(await loadUser(0, "7"), undefined);
    assert.equal(calls, 3);
    const entry = await ns.get("user:7:42");
    assert.deepEqual(entry?.tags, ["org:7"]);
    await ns.invalidateTags(["org:7"]);
    assert.deepEqual(await loadUser(42, "7"), { id: 42, org: "7" });
    assert.equal(calls, 4);
  });
});
