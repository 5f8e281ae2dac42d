// A namespace: the typed handle every cache operation goes through.

import { type Duration, DurationSchema } from "@bufbuild/protobuf/wkt";
import { type MessageInitShape, create } from "@bufbuild/protobuf";
import type { CallOptions, Client } from "./client.js";
import { type Entry as PbEntry, Tier, WriteConditionSchema } from "./gen/tiercache/v1/common_pb.js";
import {
  DeleteOutcome,
  FillOutcome,
  type FillRequestSchema,
  type GetOrSetResponse,
  GetOrSetOutcome,
  GetOutcome,
  type GetResponse,
  type SetRequestSchema,
  type SetResponse,
  SetOutcome,
  WaitTimeoutAction,
} from "./gen/tiercache/v1/cache_pb.js";
import { Code, TiercacheError, UnexpectedResponse } from "./errors.js";
import { type Serializer, bytes } from "./serializers.js";
import { type WatchEvent, type WatchOptions, watchEvents } from "./watch.js";
import { NearCache, type NearCacheOptions } from "./near.js";
import { type Lock, type LockOptions, acquireLock } from "./lock.js";
import { type Inspection, inspectionOf } from "./admin.js";

/** A cached value with its metadata, as `get` returns it. */
export interface Entry<T> {
  /** The decoded value; `undefined` for a negative entry (`absent`). */
  readonly value: T | undefined;
  /** Every write gets a new, larger version. */
  readonly version: bigint;
  /** True when the fresh period has ended and the entry is served within its stale window. */
  readonly stale: boolean;
  /** The tier that answered: the replica's memory, Redis, or this process's near cache. */
  readonly tier: "l1" | "l2" | "near" | "unknown";
  /** Milliseconds until the entry turns stale (0 when stale already). */
  readonly ttlRemainingMs: number;
  /** Milliseconds until the entry is gone. */
  readonly staleRemainingMs: number;
  readonly tags: readonly string[];
  /** A negative entry: the origin said the value does not exist. */
  readonly absent: boolean;
}

/** What a `set` did. */
export interface SetResult {
  /** True when the value was stored. */
  readonly stored: boolean;
  readonly outcome: "stored" | "version_mismatch" | "exists";
  /** The new version when stored. */
  readonly version: bigint;
  /** The version found when a condition failed (0n when no entry exists). */
  readonly currentVersion: bigint;
}

/** What `client.namespace(name, options)` takes. */
export interface NamespaceOptions<T> {
  /** How values become bytes: `bytes` (default), `string`, `json`, or your own. */
  serializer?: Serializer<T>;
  /** Keep fresh entries in this process too, coherent through the namespace's Watch stream:
   * `true` for the defaults, or the cache's bounds. Stop it with `ns.close()` or `client.close()`. */
  nearCache?: boolean | NearCacheOptions;
}

/**
 * What the read and write paths ask of a near cache (the opt-in in-process tier kept coherent by
 * Watch; src/near.ts). Reads consult `lookup` first; a read that goes to the server takes a
 * `ticket` before asking and offers the reply to `insert` with it (dropped when an event came in
 * between, or when the replica had not applied the sequence the cache has reached); this
 * process's own writes and deletes `forget` the key.
 * @internal
 */
export interface NearHook {
  /** A fresh entry held for `key`, or undefined (also while the cache is bypassed). */
  lookup(key: string): PbEntry | undefined;
  /** The current epoch to pass to `insert`, or undefined while the cache is bypassed. */
  ticket(key: string): number | undefined;
  /** Keeps `entry` (if fresh) unless an event arrived since `ticket` or the replica lagged. */
  insert(key: string, entry: PbEntry, ticket: number, appliedSequence: bigint): void;
  /** Drops `key`. */
  forget(key: string): void;
}

/** Options of `set`. */
export interface SetOptions extends CallOptions {
  /** Fresh time in ms (default: the namespace's `default_ttl`). */
  ttlMs?: number;
  /** Stale window after the fresh time, in ms (default: the namespace's `stale_ttl`). */
  staleTtlMs?: number;
  tags?: readonly string[];
  /** Store only if no visible entry exists. */
  ifAbsent?: boolean;
  /** Store only if the current entry has this version. */
  ifVersion?: bigint;
}

/** Options of `get` and `getMany`. */
export interface GetOptions extends CallOptions {
  /** Treat a stale entry as a miss. */
  freshOnly?: boolean;
}

/** Options of `setMany`: one TTL and tag list for every item. */
export interface SetManyOptions extends CallOptions {
  /** Fresh time in ms (default: the namespace's `default_ttl`). */
  ttlMs?: number;
  /** Stale window after the fresh time, in ms (default: the namespace's `stale_ttl`). */
  staleTtlMs?: number;
  tags?: readonly string[];
}

/** Options of `delete`. */
export interface DeleteOptions extends CallOptions {
  /** Delete only if the current entry has this version. */
  ifVersion?: bigint;
}

/** What a `delete` did. */
export interface DeleteResult {
  /** True when a visible entry was removed. */
  readonly deleted: boolean;
  readonly outcome: "deleted" | "not_found" | "version_mismatch";
  /** The version found when `ifVersion` did not match (0n when no entry exists). */
  readonly currentVersion: bigint;
}

/**
 * Options of `getOrSet` and `getOrSetMany`. The call's deadline is its `timeoutMs` (or the
 * client's) plus `maxWaitMs` (the server's default 5 s when unset): a waiter may legitimately wait
 * that long for another caller's fill.
 */
export interface GetOrSetOptions extends CallOptions {
  /** Fresh time of the value filled, in ms (default: the namespace's `default_ttl`). */
  ttlMs?: number;
  /** Stale window of the value filled, in ms (default: the namespace's `stale_ttl`). */
  staleTtlMs?: number;
  /** Tags of the value filled. */
  tags?: readonly string[];
  /** How long to wait for another caller's fill (default: the namespace's `max_wait`). */
  maxWaitMs?: number;
  /** Return a stale entry at once instead of treating it as a miss (default true). */
  allowStale?: boolean;
  /** With `allowStale`: refresh a stale entry in the background when no refresh is under way
   * (default true). */
  refreshStale?: boolean;
  /** When the wait bound passes: `compute` (run the loader without storing; the default) or
   * `unavailable` (throw an `unavailable` TiercacheError with reason `WAIT_TIMEOUT`). */
  onWaitTimeout?: "compute" | "unavailable";
  /** Lease validity in ms (default: the namespace's `lease_ttl`). */
  leaseTtlMs?: number;
}

/** What a `getOrSet` loader returns: the value, or `undefined`/`null` for "does not exist". */
export type Loaded<T> = T | undefined | null;

/** Computes the value of a missing key; sync or async. */
export type Loader<T> = () => Loaded<T> | PromiseLike<Loaded<T>>;

/** Computes the values of missing keys in one go: a Map or a plain object from key to value;
 * a key left out is cached as absent. */
export type ManyLoader<T> = (
  keys: string[],
) => ReadonlyMap<string, Loaded<T>> | Readonly<Record<string, Loaded<T>>> | PromiseLike<ReadonlyMap<string, Loaded<T>> | Readonly<Record<string, Loaded<T>>>>;

/** Options of `wrap`: how arguments become a key (and tags), and the getOrSet options. */
export interface WrapOptions<A extends unknown[]> extends Omit<GetOrSetOptions, "tags" | "signal"> {
  /** The cache key of a call, from its arguments. */
  key: (...args: A) => string;
  /** The tags of a call's cached result, from its arguments. */
  tags?: (...args: A) => readonly string[];
}

/** The server's default `max_wait`: what a getOrSet without `maxWaitMs` may wait on top of its
 * deadline. */
export const SERVER_DEFAULT_MAX_WAIT_MS = 5_000;

/** A duration in ms as a protobuf Duration; rejects negative and non-finite values. */
export function durationOf(name: string, ms: number): Duration {
  if (!Number.isFinite(ms) || ms < 0) throw new RangeError(`${name} must be a non-negative number of ms, got ${ms}`);
  const ns = BigInt(Math.round(ms * 1_000_000));
  return create(DurationSchema, { seconds: ns / 1_000_000_000n, nanos: Number(ns % 1_000_000_000n) });
}

/** A protobuf Duration in ms (0 when unset). */
export function msOf(d: Duration | undefined): number {
  return d === undefined ? 0 : Number(d.seconds) * 1000 + d.nanos / 1e6;
}

const TIERS: Partial<Record<Tier, Entry<unknown>["tier"]>> = { [Tier.L1]: "l1", [Tier.L2]: "l2" };

/** A wire entry as an Entry, decoding its value. */
export function entryOf<T>(e: PbEntry, serializer: Serializer<T>): Entry<T> {
  return {
    value: e.absent ? undefined : serializer.decode(e.value),
    version: e.version,
    stale: e.stale,
    tier: TIERS[e.tier] ?? "unknown",
    ttlRemainingMs: msOf(e.freshRemaining),
    staleRemainingMs: msOf(e.staleRemaining),
    tags: e.tags,
    absent: e.absent,
  };
}

/**
 * A namespace of one tiercache server: its keys, tags, leases and locks, with values of type T.
 * Get one from `client.namespace(name, { serializer })`.
 */
export class Namespace<T = Uint8Array> {
  readonly name: string;
  readonly serializer: Serializer<T>;
  /** @internal */ readonly client: Client;
  /** The near cache, when the namespace was opened with one. @internal */
  near: NearHook | undefined;

  constructor(client: Client, name: string, options: NamespaceOptions<T> = {}) {
    if (typeof name !== "string" || name === "") throw new TypeError("namespace: `name` must be a non-empty string");
    this.client = client;
    this.name = name;
    this.serializer = options.serializer ?? (bytes as unknown as Serializer<T>);
    if (options.nearCache) {
      const near = new NearCache(options.nearCache === true ? {} : options.nearCache);
      near.start(client, name);
      this.near = near;
    }
  }

  /** The entry of `key`, or `undefined` on a miss. */
  async get(key: string, options: GetOptions = {}): Promise<Entry<T> | undefined> {
    const near = options.freshOnly ? undefined : this.near;
    const held = near?.lookup(key);
    if (held !== undefined) return { ...entryOf(held, this.serializer), tier: "near" };
    const ticket = near?.ticket(key);
    const req = { namespace: this.name, key, freshOnly: options.freshOnly ?? false };
    const pipeline = this.client.pipelineForCall();
    const reply: GetResponse = await this.client.call({ idempotent: true }, options, async (o) => {
      if (pipeline === undefined) return this.client.cache.get(req, o);
      const r = await pipeline.call({ case: "get", value: req }, o);
      if (r.case !== "get") throw new UnexpectedResponse(`Pipeline: a ${r.case} answer to a get`);
      return r.value;
    });
    switch (reply.outcome) {
      case GetOutcome.HIT:
        if (reply.entry === undefined) throw new UnexpectedResponse("Get: a HIT without an entry");
        if (near !== undefined && ticket !== undefined) near.insert(key, reply.entry, ticket, reply.appliedSequence);
        return entryOf(reply.entry, this.serializer);
      case GetOutcome.MISS:
        return undefined;
      default:
        throw new UnexpectedResponse(`Get: unexpected outcome ${reply.outcome}`);
    }
  }

  /** Stores `value` under `key`; with `ifAbsent` or `ifVersion`, only when the condition holds. */
  async set(key: string, value: T, options: SetOptions = {}): Promise<SetResult> {
    const req = setRequestOf(this.name, key, this.serializer.encode(value), options);
    try {
      const pipeline = this.client.pipelineForCall();
      const reply = await this.client.call({ idempotent: false }, options, async (o) => {
        if (pipeline === undefined) return this.client.cache.set(req, o);
        const r = await pipeline.call({ case: "set", value: req }, o);
        if (r.case !== "set") throw new UnexpectedResponse(`Pipeline: a ${r.case} answer to a set`);
        return r.value;
      });
      return setResultOf(reply);
    } finally {
      this.near?.forget(key); // after the write (even a failed one: it may have been applied)
    }
  }

  /** The entries of `keys` (`undefined` for a miss), in order, in one call (none for an empty
   * list, or when the near cache holds every key). */
  async getMany(keys: readonly string[], options: GetOptions = {}): Promise<(Entry<T> | undefined)[]> {
    const near = options.freshOnly ? undefined : this.near;
    const out: (Entry<T> | undefined)[] = new Array<Entry<T> | undefined>(keys.length).fill(undefined);
    const ask: { i: number; ticket: number | undefined }[] = [];
    keys.forEach((k, i) => {
      const held = near?.lookup(k);
      if (held !== undefined) out[i] = { ...entryOf(held, this.serializer), tier: "near" };
      else ask.push({ i, ticket: near?.ticket(k) });
    });
    if (ask.length === 0) return out;
    const asked = ask.map(({ i }) => keys[i] as string);
    const reply = await this.client.call({ idempotent: true }, options, (o) =>
      this.client.cache.getMany({ namespace: this.name, keys: asked, freshOnly: options.freshOnly ?? false }, o),
    );
    if (reply.results.length !== ask.length) {
      throw new UnexpectedResponse(`GetMany: asked for ${ask.length} keys, got ${reply.results.length} results`);
    }
    reply.results.forEach((r, j) => {
      const { i, ticket } = ask[j] as { i: number; ticket: number | undefined };
      const hit = this.#hit(r);
      if (hit !== undefined && near !== undefined && ticket !== undefined && r.entry !== undefined) {
        near.insert(keys[i] as string, r.entry, ticket, r.appliedSequence);
      }
      out[i] = hit;
    });
    return out;
  }

  /** Stores several values in one call (a Map, a plain object, or [key, value] pairs); one result
   * per item, in order (no call for no items). */
  async setMany(
    items: ReadonlyMap<string, T> | Readonly<Record<string, T>> | Iterable<readonly [string, T]>,
    options: SetManyOptions = {},
  ): Promise<SetResult[]> {
    const pairs: [string, T][] = entriesOf(items);
    if (pairs.length === 0) return [];
    const requests = pairs.map(([k, v]) =>
      setRequestOf(this.name, k, this.serializer.encode(v), { ttlMs: options.ttlMs, staleTtlMs: options.staleTtlMs, tags: options.tags }),
    );
    let reply;
    try {
      reply = await this.client.call({ idempotent: false }, options, (o) => this.client.cache.setMany({ requests }, o));
    } finally {
      for (const [k] of pairs) this.near?.forget(k);
    }
    if (reply.responses.length !== pairs.length) {
      throw new UnexpectedResponse(`SetMany: sent ${pairs.length} writes, got ${reply.responses.length} results`);
    }
    return reply.responses.map(setResultOf);
  }

  /** Removes `key` (with `ifVersion`, only at that version) and revokes its lease. */
  async delete(key: string, options: DeleteOptions = {}): Promise<DeleteResult> {
    let reply;
    try {
      const req = { namespace: this.name, key, ifVersion: options.ifVersion };
      const pipeline = this.client.pipelineForCall();
      reply = await this.client.call({ idempotent: false }, options, async (o) => {
        if (pipeline === undefined) return this.client.cache.delete(req, o);
        const r = await pipeline.call({ case: "delete", value: req }, o);
        if (r.case !== "delete") throw new UnexpectedResponse(`Pipeline: a ${r.case} answer to a delete`);
        return r.value;
      });
    } finally {
      this.near?.forget(key);
    }
    const outcome = outcomeName("Delete", DELETE_OUTCOMES, reply.outcome);
    return { deleted: outcome === "deleted", outcome, currentVersion: reply.currentVersion };
  }

  /** Hides every entry carrying any of `tags`, in every tier, on every replica; returns the
   * namespace sequence the invalidation took. */
  async invalidateTags(tags: readonly string[], options?: CallOptions): Promise<bigint> {
    const reply = await this.client.call({ idempotent: false }, options, (o) =>
      this.client.cache.invalidateTags({ namespace: this.name, tags: [...tags] }, o),
    );
    return reply.sequence;
  }

  /** Hides every entry of the namespace; returns the namespace sequence the flush took. */
  async flush(options?: CallOptions): Promise<bigint> {
    const reply = await this.client.call({ idempotent: false }, options, (o) =>
      this.client.cache.flushNamespace({ namespace: this.name }, o),
    );
    return reply.sequence;
  }

  /** Explains `key`: which tiers hold it, whether and why it is visible, any outstanding lease. */
  async inspect(key: string, options?: CallOptions): Promise<Inspection> {
    const reply = await this.client.call({ idempotent: true }, options, (o) =>
      this.client.admin.inspect({ namespace: this.name, key }, o),
    );
    return inspectionOf(reply);
  }

  /**
   * The value of `key`, computed by `loader` on a miss, with stampede protection across every
   * client of the fleet: of all concurrent callers one gets the lease and runs `loader`; the
   * others wait and get its value pushed.
   *
   * - `loader` returning `undefined` (or `null`) caches "does not exist" (a negative entry, for the
   *   namespace's negative TTL); this and later callers get `undefined` without calling it.
   * - A `loader` that throws releases the lease (a waiter takes over); the error is rethrown and
   *   nothing is cached.
   * - A stale hit is returned at once; when this caller got the refresh lease, `loader` runs in
   *   the background and fills the entry (its errors are reported to the client's logger and the
   *   lease released).
   * - When the server says compute without a lease (the wait bound passed with `onWaitTimeout:
   *   "compute"`), `loader` runs and its value is returned, not stored.
   * - A fill the server refuses (the lease was revoked by a write, or expired) still returns the
   *   computed value.
   * - Aborting `signal` while `loader` runs releases the lease and rejects with `cancelled`.
   */
  async getOrSet(key: string, loader: Loader<T>, options: GetOrSetOptions = {}): Promise<T | undefined> {
    const near = this.near;
    const held = near?.lookup(key);
    if (held !== undefined) return this.#valueOf(held);
    const req = getOrSetFields(options);
    const fill = fillShapeOf(options); // checked before a lease is taken
    const ticket = near?.ticket(key);
    const reply: GetOrSetResponse = await this.client.call(
      { idempotent: false, extraWaitMs: options.maxWaitMs ?? SERVER_DEFAULT_MAX_WAIT_MS },
      options,
      (o) => this.client.cache.getOrSet({ namespace: this.name, key, ...req }, o),
    );
    switch (reply.outcome) {
      case GetOrSetOutcome.HIT:
      case GetOrSetOutcome.FILLED: {
        if (reply.entry === undefined) throw new UnexpectedResponse("GetOrSet: a hit without an entry");
        if (near !== undefined && ticket !== undefined) near.insert(key, reply.entry, ticket, reply.appliedSequence);
        if (reply.lease !== undefined) this.#refresh(key, reply.lease.token, loader, fill);
        return this.#valueOf(reply.entry);
      }
      case GetOrSetOutcome.LEASE: {
        if (reply.lease === undefined) throw new UnexpectedResponse("GetOrSet: LEASE without a lease");
        const token = reply.lease.token;
        let value: Loaded<T>;
        let data: Uint8Array | undefined;
        try {
          value = await untilAborted(runLoader(loader), options.signal);
          data = value === undefined || value === null ? undefined : this.serializer.encode(value);
        } catch (err) {
          await this.#release(key, token);
          throw err;
        }
        await this.#fill(fillFields(this.name, key, token, data, fill));
        near?.forget(key);
        return value ?? undefined;
      }
      case GetOrSetOutcome.COMPUTE:
        return (await untilAborted(runLoader(loader), options.signal)) ?? undefined;
      default:
        throw new UnexpectedResponse(`GetOrSet: unexpected outcome ${reply.outcome}`);
    }
  }

  /**
   * The batch form of `getOrSet`: one GetOrSetMany call, then **one** `loader(keys)` call with
   * exactly the keys this caller must compute (misses it got the lease for, stale hits it got the
   * refresh lease for, keys whose wait bound passed), then one FillMany for the leased ones.
   *
   * A key the loader's result leaves out (or maps to `undefined`/`null`) is cached as absent and
   * reads as `undefined`; keys it returns that were not asked for are ignored. When the loader
   * throws, every lease is released, nothing is cached, and the error is rethrown. Returns one
   * value per key, in order (no call for no keys). The near cache is not consulted for batches.
   */
  async getOrSetMany(
    keys: readonly string[],
    loader: ManyLoader<T>,
    options: GetOrSetOptions = {},
  ): Promise<(T | undefined)[]> {
    const list = [...keys];
    if (list.length === 0) return [];
    const fields = getOrSetFields(options);
    const fill = fillShapeOf(options);
    const resp = await this.client.call(
      { idempotent: false, extraWaitMs: options.maxWaitMs ?? SERVER_DEFAULT_MAX_WAIT_MS },
      options,
      (o) => this.client.cache.getOrSetMany({ namespace: this.name, keys: list, ...fields }, o),
    );
    if (resp.results.length !== list.length) {
      throw new UnexpectedResponse(`GetOrSetMany: asked for ${list.length} keys, got ${resp.results.length} results`);
    }
    const out: (T | undefined)[] = new Array<T | undefined>(list.length).fill(undefined);
    const compute: { i: number; token: string | undefined }[] = [];
    resp.results.forEach((r, i) => {
      switch (r.outcome) {
        case GetOrSetOutcome.HIT:
        case GetOrSetOutcome.FILLED:
          if (r.entry === undefined) throw new UnexpectedResponse("GetOrSetMany: a hit without an entry");
          out[i] = this.#valueOf(r.entry);
          if (r.lease !== undefined) compute.push({ i, token: r.lease.token });
          break;
        case GetOrSetOutcome.LEASE:
          if (r.lease === undefined) throw new UnexpectedResponse("GetOrSetMany: LEASE without a lease");
          compute.push({ i, token: r.lease.token });
          break;
        case GetOrSetOutcome.COMPUTE:
          compute.push({ i, token: undefined });
          break;
        default:
          throw new UnexpectedResponse(`GetOrSetMany: unexpected outcome ${r.outcome}`);
      }
    });
    if (compute.length === 0) return out;
    let values: Map<string, Loaded<T>>;
    const encoded = new Map<string, Uint8Array>();
    try {
      const asked = compute.map(({ i }) => list[i] as string);
      values = mapOf(await untilAborted(Promise.resolve().then(() => loader(asked)), options.signal));
      for (const [k, v] of values) if (v !== undefined && v !== null) encoded.set(k, this.serializer.encode(v));
    } catch (err) {
      await Promise.all(compute.map(({ i, token }) => (token === undefined ? undefined : this.#release(list[i] as string, token))));
      throw err;
    }
    const fills: MessageInitShape<typeof FillRequestSchema>[] = [];
    for (const { i, token } of compute) {
      const k = list[i] as string;
      if (token !== undefined) fills.push(fillFields(this.name, k, token, encoded.get(k), fill));
      out[i] = values.get(k) ?? undefined;
    }
    if (fills.length > 0) {
      try {
        const r = await this.client.call({ idempotent: false }, undefined, (o) => this.client.cache.fillMany({ requests: fills }, o));
        const stored = r.responses.filter((x) => x.outcome === FillOutcome.STORED).length;
        this.client.logger?.debug?.(`tiercache: filled ${stored} of ${fills.length} entries of ${this.name}`);
      } catch (err) {
        this.client.logger?.warn(`tiercache: cannot fill a batch of ${this.name}: ${String(err)}`);
      }
    }
    return out;
  }

  /**
   * Wraps `fn` so its result is cached with `getOrSet` under `options.key(...args)` (tagged
   * `options.tags(...args)`): the returned function runs `fn` only on a miss, once across the
   * fleet. `fn` returning `undefined`/`null` is cached as absent.
   *
   * ```ts
   * const loadUser = users.wrap((id: string) => db.find(id), { key: (id) => `user:${id}`, ttlMs: 60_000 });
   * ```
   */
  wrap<A extends unknown[]>(
    fn: (...args: A) => Loaded<T> | PromiseLike<Loaded<T>>,
    options: WrapOptions<A>,
  ): (...args: A) => Promise<T | undefined> {
    const { key, tags, ...rest } = options;
    return (...args: A) =>
      this.getOrSet(key(...args), () => fn(...args), { ...rest, tags: tags === undefined ? undefined : tags(...args) });
  }

  /** A Get reply as an Entry, or undefined on a miss. */
  #hit(r: GetResponse): Entry<T> | undefined {
    switch (r.outcome) {
      case GetOutcome.HIT:
        if (r.entry === undefined) throw new UnexpectedResponse("Get: a HIT without an entry");
        return entryOf(r.entry, this.serializer);
      case GetOutcome.MISS:
      case GetOutcome.NOT_MODIFIED:
        return undefined;
      default:
        throw new UnexpectedResponse(`Get: unexpected outcome ${r.outcome}`);
    }
  }

  #valueOf(e: PbEntry): T | undefined {
    return e.absent ? undefined : this.serializer.decode(e.value);
  }

  /** The background refresh of a stale hit this caller got the refresh lease for. */
  #refresh(key: string, token: string, loader: Loader<T>, fill: FillShape): void {
    void (async () => {
      let data: Uint8Array | undefined;
      try {
        const value = await untilAborted(runLoader(loader), this.client.closingSignal);
        data = value === undefined || value === null ? undefined : this.serializer.encode(value);
      } catch (err) {
        this.client.logger?.warn(
          `tiercache: background refresh of ${this.name}/${key} failed; the stale value keeps serving: ${String(err)}`,
        );
        await this.#release(key, token);
        return;
      }
      await this.#fill(fillFields(this.name, key, token, data, fill));
      this.near?.forget(key);
    })();
  }

  /** Fills under a lease; a failed or refused fill is reported to the logger, not thrown: the
   * caller has its value. */
  async #fill(req: MessageInitShape<typeof FillRequestSchema>): Promise<void> {
    try {
      const r = await this.client.call({ idempotent: false }, undefined, (o) => this.client.cache.fill(req, o));
      if (r.outcome !== FillOutcome.STORED) {
        this.client.logger?.debug?.(`tiercache: fill of ${this.name}/${req.key} not stored (outcome ${r.outcome})`);
      }
    } catch (err) {
      this.client.logger?.warn(`tiercache: cannot fill ${this.name}/${req.key}: ${String(err)}`);
    }
  }

  /** Gives a lease back (a waiter takes over); failures only logged: the lease expires anyway. */
  async #release(key: string, token: string): Promise<void> {
    try {
      await this.client.call({ idempotent: false }, undefined, (o) =>
        this.client.cache.releaseLease({ namespace: this.name, key, leaseToken: token }, o),
      );
    } catch (err) {
      this.client.logger?.warn(`tiercache: cannot release the lease of ${this.name}/${key}: ${String(err)}`);
    }
  }

  /**
   * The namespace's invalidation events, from a `started` event on:
   * `for await (const event of ns.watch({ signal })) { … }`. The loop ends without an error when
   * `signal` aborts, the client is closed or the loop breaks; a stream the server ends with an
   * error (e.g. `DRAINING`, `WATCH_OVERFLOW`) throws a TiercacheError.
   */
  watch(options: WatchOptions = {}): AsyncIterable<WatchEvent> {
    return watchEvents(this.client, this.name, options);
  }

  /**
   * A distributed lock: `await using lock = await ns.lock("nightly", { ttlMs: 10_000 })`. Waits up
   * to `maxWaitMs` (default 10 s) while another owner holds it, then throws LockNotAcquired; the
   * returned Lock is renewed in the background until released.
   */
  lock(name: string, options: LockOptions = {}): Promise<Lock> {
    return acquireLock(this.client, this.name, name, options);
  }

  /** The near cache, when the namespace was opened with `nearCache`. */
  get nearCache(): NearCache | undefined {
    return this.near instanceof NearCache ? this.near : undefined;
  }

  /** Stops the near cache's background Watch, if any, and clears it (closing the client does too).
   * The namespace stays usable; its reads then always go to the server. */
  close(): void {
    this.nearCache?.close();
  }

  /** `using ns = client.namespace(…)`: `close()` at the end of the block. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** @internal */
export function setRequestOf(
  namespace: string,
  key: string,
  value: Uint8Array,
  options: Pick<SetOptions, "ttlMs" | "staleTtlMs" | "tags" | "ifAbsent" | "ifVersion">,
): MessageInitShape<typeof SetRequestSchema> {
  if (options.ifAbsent && options.ifVersion !== undefined) {
    throw new TypeError("set: give ifAbsent or ifVersion, not both");
  }
  return {
    namespace,
    key,
    value,
    ttl: options.ttlMs === undefined ? undefined : durationOf("ttlMs", options.ttlMs),
    staleTtl: options.staleTtlMs === undefined ? undefined : durationOf("staleTtlMs", options.staleTtlMs),
    tags: [...(options.tags ?? [])],
    condition: options.ifAbsent
      ? create(WriteConditionSchema, { condition: { case: "ifAbsent", value: true } })
      : options.ifVersion !== undefined
        ? create(WriteConditionSchema, { condition: { case: "ifVersion", value: options.ifVersion } })
        : undefined,
  };
}

const SET_OUTCOMES: Partial<Record<SetOutcome, SetResult["outcome"]>> = {
  [SetOutcome.STORED]: "stored",
  [SetOutcome.VERSION_MISMATCH]: "version_mismatch",
  [SetOutcome.EXISTS]: "exists",
};

const DELETE_OUTCOMES: Partial<Record<DeleteOutcome, DeleteResult["outcome"]>> = {
  [DeleteOutcome.DELETED]: "deleted",
  [DeleteOutcome.NOT_FOUND]: "not_found",
  [DeleteOutcome.VERSION_MISMATCH]: "version_mismatch",
};

/** The SDK's name of a reply's outcome; an outcome it does not know (a newer server) is an
 * UnexpectedResponse naming the call. */
function outcomeName<O extends number, N extends string>(call: string, names: Partial<Record<O, N>>, outcome: O): N {
  const name = names[outcome];
  if (name === undefined) throw new UnexpectedResponse(`${call}: unexpected outcome ${outcome}`);
  return name;
}

/** @internal */
export function setResultOf(reply: SetResponse): SetResult {
  const outcome = outcomeName("Set", SET_OUTCOMES, reply.outcome);
  return { stored: outcome === "stored", outcome, version: reply.version, currentVersion: reply.currentVersion };
}

/** The request fields getOrSet and getOrSetMany share. */
function getOrSetFields(o: GetOrSetOptions) {
  const allowStale = o.allowStale ?? true;
  return {
    maxWait: o.maxWaitMs === undefined ? undefined : durationOf("maxWaitMs", o.maxWaitMs),
    allowStale,
    refreshStale: allowStale && (o.refreshStale ?? true),
    onWaitTimeout: o.onWaitTimeout === "unavailable" ? WaitTimeoutAction.UNAVAILABLE : WaitTimeoutAction.COMPUTE,
    leaseTtl: o.leaseTtlMs === undefined ? undefined : durationOf("leaseTtlMs", o.leaseTtlMs),
  };
}

/** What every fill of one getOrSet carries besides the value. */
interface FillShape {
  ttl: Duration | undefined;
  staleTtl: Duration | undefined;
  tags: string[];
}

function fillShapeOf(o: GetOrSetOptions): FillShape {
  return {
    ttl: o.ttlMs === undefined ? undefined : durationOf("ttlMs", o.ttlMs),
    staleTtl: o.staleTtlMs === undefined ? undefined : durationOf("staleTtlMs", o.staleTtlMs),
    tags: [...(o.tags ?? [])],
  };
}

/** A fill of `value`, or of a negative entry when `value` is undefined. */
function fillFields(
  namespace: string,
  key: string,
  leaseToken: string,
  value: Uint8Array | undefined,
  f: FillShape,
): MessageInitShape<typeof FillRequestSchema> {
  return {
    namespace,
    key,
    leaseToken,
    value: value ?? new Uint8Array(),
    absent: value === undefined,
    ttl: f.ttl,
    staleTtl: f.staleTtl,
    tags: f.tags,
  };
}

/** Runs a loader, sync or async, as a promise (a synchronous throw becomes a rejection). */
function runLoader<T>(loader: Loader<T>): Promise<Loaded<T>> {
  return Promise.resolve().then(loader);
}

/** `p`, or a `cancelled` rejection as soon as `signal` aborts. */
function untilAborted<R>(p: Promise<R>, signal: AbortSignal | undefined): Promise<R> {
  if (signal === undefined) return p;
  const cancelled = () => new TiercacheError(Code.Canceled, "the call was aborted", { cause: signal.reason });
  if (signal.aborted) return Promise.reject(cancelled());
  return new Promise<R>((resolve, reject) => {
    const onAbort = () => reject(cancelled());
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(e);
      },
    );
  });
}

function entriesOf<T>(items: ReadonlyMap<string, T> | Readonly<Record<string, T>> | Iterable<readonly [string, T]>): [string, T][] {
  if (items instanceof Map) return [...(items as ReadonlyMap<string, T>)];
  if (typeof (items as Iterable<unknown>)[Symbol.iterator] === "function") {
    return [...(items as Iterable<readonly [string, T]>)].map(([k, v]) => [k, v]);
  }
  return Object.entries(items as Readonly<Record<string, T>>);
}

function mapOf<T>(m: ReadonlyMap<string, Loaded<T>> | Readonly<Record<string, Loaded<T>>>): Map<string, Loaded<T>> {
  if (m instanceof Map) return new Map(m as ReadonlyMap<string, Loaded<T>>);
  if (m === null || typeof m !== "object") throw new TypeError("getOrSetMany: the loader must return a Map or an object");
  return new Map(Object.entries(m));
}
