// A namespace: the typed handle every cache operation goes through.

import { type Duration, DurationSchema } from "@bufbuild/protobuf/wkt";
import { create } from "@bufbuild/protobuf";
import type { CallOptions, Client } from "./client.js";
import { type Entry as PbEntry, Tier, WriteConditionSchema } from "./gen/tiercache/v1/common_pb.js";
import { GetOutcome, SetOutcome } from "./gen/tiercache/v1/cache_pb.js";
import { UnexpectedResponse } from "./errors.js";
import { type Serializer, bytes } from "./serializers.js";
import { type WatchEvent, type WatchOptions, watchEvents } from "./watch.js";
import { NearCache, type NearCacheOptions } from "./near.js";
import { type Lock, type LockOptions, acquireLock } from "./lock.js";

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

export interface GetOptions extends CallOptions {
  /** Treat a stale entry as a miss. */
  freshOnly?: boolean;
}

/** A duration in ms as a protobuf Duration; rejects negative and non-finite values. */
export function durationOf(name: string, ms: number): Duration {
  if (!Number.isFinite(ms) || ms < 0) throw new RangeError(`${name} must be a non-negative number of ms, got ${ms}`);
  const whole = Math.floor(ms);
  return create(DurationSchema, {
    seconds: BigInt(Math.floor(whole / 1000)),
    nanos: (whole % 1000) * 1_000_000 + Math.round((ms - whole) * 1_000_000),
  });
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
    const reply = await this.client.call({ idempotent: true }, options, (o) =>
      this.client.cache.get({ namespace: this.name, key, freshOnly: options.freshOnly ?? false }, o),
    );
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
    if (options.ifAbsent && options.ifVersion !== undefined) {
      throw new TypeError("set: give ifAbsent or ifVersion, not both");
    }
    const data = this.serializer.encode(value);
    this.near?.forget(key);
    const reply = await this.client.call({ idempotent: false }, options, (o) =>
      this.client.cache.set(
        {
          namespace: this.name,
          key,
          value: data,
          ttl: options.ttlMs === undefined ? undefined : durationOf("ttlMs", options.ttlMs),
          staleTtl: options.staleTtlMs === undefined ? undefined : durationOf("staleTtlMs", options.staleTtlMs),
          tags: [...(options.tags ?? [])],
          condition: options.ifAbsent
            ? create(WriteConditionSchema, { condition: { case: "ifAbsent", value: true } })
            : options.ifVersion !== undefined
              ? create(WriteConditionSchema, { condition: { case: "ifVersion", value: options.ifVersion } })
              : undefined,
        },
        o,
      ),
    );
    const outcome =
      reply.outcome === SetOutcome.STORED
        ? "stored"
        : reply.outcome === SetOutcome.VERSION_MISMATCH
          ? "version_mismatch"
          : reply.outcome === SetOutcome.EXISTS
            ? "exists"
            : undefined;
    if (outcome === undefined) throw new UnexpectedResponse(`Set: unexpected outcome ${reply.outcome}`);
    return { stored: outcome === "stored", outcome, version: reply.version, currentVersion: reply.currentVersion };
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
