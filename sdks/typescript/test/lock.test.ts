import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Redis as RedisClient } from "ioredis";
import { Client, Lock, LockNotAcquired, type Namespace, TiercacheError } from "../src/index.js";
import { Cluster, startReplicaClients, stopReplicaClients, uniqueNamespace } from "./servers.js";
import { TcpProxy, isPending, waitFor } from "./streams-kit.js";

describe("locks", () => {
  let cluster: Cluster;
  let a: Client;
  let b: Client;
  let redis: RedisClient;
  before(async () => {
    ({ cluster, a, b } = await startReplicaClients());
    redis = new RedisClient(cluster.redis.port, "127.0.0.1", { lazyConnect: true, maxRetriesPerRequest: 1 });
    await redis.connect();
  });
  after(async () => {
    redis.disconnect();
    await stopReplicaClients({ cluster, a, b });
  });

  /** The same namespace through replica a and through replica b. */
  function pair(): [Namespace, Namespace] {
    const name = uniqueNamespace();
    return [a.namespace(name), b.namespace(name)];
  }

  it("is exclusive across clients of two replicas, with increasing fencing tokens", async () => {
    const [na, nb] = pair();
    const first = await na.lock("nightly", { ttlMs: 5_000 });
    assert.ok(first instanceof Lock);
    assert.equal(first.name, "nightly");
    assert.equal(first.isHeld(), true);
    assert.equal(first.ttlMs, 5_000);
    await assert.rejects(nb.lock("nightly", { maxWaitMs: 0 }), LockNotAcquired);
    assert.equal(await first.release(), true);
    assert.equal(first.isHeld(), false);
    assert.equal(await first.release(), false, "a second release does nothing");

    const second = await nb.lock("nightly", { ttlMs: 5_000, maxWaitMs: 0 });
    assert.ok(second.fencingToken > first.fencingToken);
    await second.release();
    const third = await na.lock("nightly", { maxWaitMs: 0 });
    assert.ok(third.fencingToken > second.fencingToken);
    await third.release();
  });

  it("a waiting acquirer gets the lock when its holder releases it", async () => {
    const [na, nb] = pair();
    const held = await na.lock("job", { ttlMs: 10_000 });
    const waiting = nb.lock("job", { ttlMs: 5_000, maxWaitMs: 8_000 });
    // The waiter stays parked while the lock is held (a server that did not wait would have
    // answered by now: granted, or LockNotAcquired).
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(await isPending(waiting), true);
    const releasedAt = Date.now();
    await held.release();
    const got = await waiting;
    assert.ok(got.fencingToken > held.fencingToken);
    assert.ok(Date.now() - releasedAt < 3_000, "woken by the release, well before maxWaitMs");
    await got.release();
  });

  it("throws LockNotAcquired once maxWaitMs passed", async () => {
    const [na, nb] = pair();
    const held = await na.lock("busy", { ttlMs: 10_000 });
    const started = performance.now();
    await assert.rejects(nb.lock("busy", { maxWaitMs: 400 }), (err: unknown) => {
      assert.ok(err instanceof LockNotAcquired);
      assert.ok(err instanceof TiercacheError);
      assert.equal(err.reason, "LOCK_NOT_ACQUIRED");
      return true;
    });
    const waited = performance.now() - started;
    assert.ok(waited >= 350 && waited < 5_000, `waited ${waited} ms for maxWaitMs 400`);
    assert.equal(held.isHeld(), true);
    await held.release();
  });

  it("renewals keep the lock held past its ttl", async () => {
    const [na, nb] = pair();
    const lock = await na.lock("long", { ttlMs: 600 });
    // Three TTLs pass: without renewals the lock would have expired twice over.
    await new Promise((r) => setTimeout(r, 1_800));
    assert.equal(lock.isHeld(), true);
    assert.equal(lock.signal.aborted, false);
    await assert.rejects(nb.lock("long", { maxWaitMs: 0 }), LockNotAcquired);
    assert.equal(await lock.release(), true, "the server still had it under this owner");
  });

  it("await using releases the lock at the end of the block", async () => {
    const [na, nb] = pair();
    let signal: AbortSignal | undefined;
    {
      await using lock = await na.lock("scoped", { ttlMs: 10_000 });
      signal = lock.signal;
      assert.equal(signal.aborted, false);
      await assert.rejects(nb.lock("scoped", { maxWaitMs: 0 }), LockNotAcquired);
    }
    assert.equal(signal.aborted, true);
    assert.equal((signal.reason as TiercacheError).reason, "LOCK_RELEASED");
    const next = await nb.lock("scoped", { maxWaitMs: 0 });
    await next.release();
  });

  it("await using releases the lock when the block throws", async () => {
    const [na, nb] = pair();
    await assert.rejects(
      (async () => {
        await using _lock = await na.lock("throws", { ttlMs: 10_000 });
        throw new Error("work failed");
      })(),
      /work failed/,
    );
    const next = await nb.lock("throws", { maxWaitMs: 0 });
    await next.release();
  });

  it("detects a lock lost on the server: isHeld() false, signal aborted, onLost called", async () => {
    const name = uniqueNamespace();
    const lostCalls: Lock[] = [];
    const lock = await a.namespace(name).lock("fragile", { ttlMs: 900, onLost: (l) => lostCalls.push(l) });
    // The lock's Redis key vanishes (what an expiry during a long pause, or a Redis failover that
    // lost the write, looks like): the next renewal is refused.
    assert.equal(await redis.del(`tc:{${name}:fragile}:lock`), 1);
    await waitFor("the loss to be detected", () => !lock.isHeld(), 3_000);
    assert.equal(lock.signal.aborted, true);
    assert.equal((lock.signal.reason as TiercacheError).reason, "LOCK_LOST");
    assert.deepEqual(lostCalls, [lock]);
    // Another owner can take it now, with a larger fencing token.
    const other = await b.namespace(name).lock("fragile", { maxWaitMs: 0 });
    assert.ok(other.fencingToken > lock.fencingToken);
    assert.equal(await lock.release(), false, "the old owner's release changes nothing");
    assert.equal(other.isHeld(), true);
    await other.release();
  });

  it("reports the lock lost once its ttl passed without a confirmed renewal (the server unreachable)", async () => {
    const proxy = await TcpProxy.start(cluster.replicas[0].port);
    const c = new Client({ address: `http://127.0.0.1:${proxy.port}` });
    try {
      const name = uniqueNamespace();
      let lostAt = 0;
      const lock = await c.namespace(name).lock("cut-off", { ttlMs: 900, onLost: () => (lostAt = performance.now()) });
      // A renewal gets through first.
      await new Promise((r) => setTimeout(r, 400));
      assert.equal(lock.isHeld(), true);
      // Then every connection hangs: renewals neither succeed nor get refused.
      const cutAt = performance.now();
      proxy.blackhole();
      await waitFor("the loss to be reported", () => lostAt > 0, 3_000);
      assert.equal(lock.isHeld(), false);
      assert.match(String((lock.signal.reason as Error).message), /ttl passed/);
      // At most one ttl after the last confirmed renewal, which was sent before the cut.
      assert.ok(lostAt - cutAt <= 900 + 400, `lost ${lostAt - cutAt} ms after the cut`);
      // The server let it expire too: another owner takes it.
      const other = await b.namespace(name).lock("cut-off", { maxWaitMs: 3_000 });
      assert.ok(other.fencingToken > lock.fencingToken);
      await other.release();
    } finally {
      c.close();
      await proxy.stop();
    }
  });

  it("closing the client reports its locks lost", async () => {
    const c = new Client({ address: cluster.replicas[0].address });
    const lock = await c.namespace(uniqueNamespace()).lock("until-close", { ttlMs: 10_000 });
    c.close();
    assert.equal(lock.isHeld(), false);
    assert.equal((lock.signal.reason as TiercacheError).reason, "LOCK_LOST");
    await lock[Symbol.asyncDispose](); // does not throw on a closed client
  });

  it("rejects a bad name or ttl before calling the server", async () => {
    const [na] = pair();
    await assert.rejects(na.lock(""), TypeError);
    await assert.rejects(na.lock("x", { ttlMs: 0 }), RangeError);
  });
});
