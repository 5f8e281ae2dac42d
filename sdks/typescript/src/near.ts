// The near cache (L0): this process's copy of one namespace's fresh entries, kept coherent by the
// namespace's Watch stream. The same rules as the Rust and Python SDKs' near caches:
//
// - Only fresh entries are kept, each until its server-side fresh period ends (never longer than
//   `maxTtlMs`), so L0 never serves stale and never outlives the server.
// - Nothing is read from or stored in L0 until the Watch stream has started; when it fails or
//   ends, L0 is cleared and bypassed until a new stream has started.
// - `key_changed` drops the key (unless L0 holds that very version); `tags_invalidated` drops the
//   entries carrying one of the tags; `flushed`, `gap` and a sequence that is not the next one
//   clear everything.
// - A read that raced with an event must not store what it read: every event bumps an epoch, a
//   read takes a ticket (the epoch) before asking the server, and its insert is dropped when the
//   epoch moved meanwhile.
// - A reply is kept only if the replica that answered had applied at least the sequence the Watch
//   stream has reached (the reply's `applied_sequence`, sampled before its lookup): behind a
//   per-request balancer a lagging replica could otherwise hand back a value whose invalidation
//   this cache already applied. Such a reply is returned to the caller but not kept.

import type { Client } from "./client.js";
import type { Entry as PbEntry } from "./gen/tiercache/v1/common_pb.js";
import type { NearHook } from "./namespace.js";
import { type WatchEvent, watchEvents } from "./watch.js";

/** Settings of a near cache (`client.namespace(name, { nearCache: { … } })`). */
export interface NearCacheOptions {
  /** The most entries kept; the least recently used go first (default 10 000). */
  maxEntries?: number;
  /** The longest an entry stays, in ms, however long its fresh period: a safety net (default
   * 60 000). */
  maxTtlMs?: number;
}

/** The default of `NearCacheOptions.maxEntries`. */
export const DEFAULT_NEAR_MAX_ENTRIES = 10_000;
/** The default of `NearCacheOptions.maxTtlMs`. */
export const DEFAULT_NEAR_MAX_TTL_MS = 60_000;

/** The first pause after the Watch stream failed or ended; doubled per failure up to the max. */
const RECONNECT_MIN_MS = 50;
const RECONNECT_MAX_MS = 2_000;

function remainingMs(e: PbEntry): number {
  const d = e.freshRemaining;
  return d === undefined ? 0 : Number(d.seconds) * 1000 + d.nanos / 1e6;
}

/** A pause that does not keep the process alive and ends early (without error) on `signal`. */
function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) {
      resolve();
      return;
    }
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    timer.unref();
    signal.addEventListener("abort", done, { once: true });
  });
}

/**
 * A namespace's near cache: its fresh entries in this process, kept coherent by a background
 * Watch stream that reconnects with backoff. Created by `client.namespace(name, { nearCache })`;
 * stopped by `ns.close()` or `client.close()`. Reads that it answers report the tier `"near"`.
 */
export class NearCache implements NearHook {
  /** The most entries kept. */
  readonly maxEntries: number;
  /** The longest an entry stays, in ms. */
  readonly maxTtlMs: number;
  /** Replies not kept because their replica lagged behind the Watch stream. */
  laggingReplies = 0;
  /** Watch streams that started (1 after the first, more after reconnects). */
  streamsStarted = 0;
  /** Why the last Watch stream ended, when it failed (for diagnostics). */
  lastError: unknown = undefined;
  /** Insertion order is recency order: a hit moves its key to the end; the first key goes first. */
  readonly #entries = new Map<string, { entry: PbEntry; until: number }>();
  #epoch = 0;
  /** The sequence the stream has reached; undefined while it has not started. */
  #sequence: bigint | undefined = undefined;
  readonly #stop = new AbortController();
  #loop: Promise<void> | undefined;

  constructor(options: NearCacheOptions = {}) {
    this.maxEntries = options.maxEntries ?? DEFAULT_NEAR_MAX_ENTRIES;
    this.maxTtlMs = options.maxTtlMs ?? DEFAULT_NEAR_MAX_TTL_MS;
    if (!Number.isInteger(this.maxEntries) || this.maxEntries < 1) {
      throw new RangeError(`nearCache.maxEntries must be a positive integer, got ${this.maxEntries}`);
    }
    if (!(this.maxTtlMs > 0)) throw new RangeError(`nearCache.maxTtlMs must be positive, got ${this.maxTtlMs}`);
  }

  /** Whether the Watch stream has started: until then the cache is bypassed. */
  get active(): boolean {
    return this.#sequence !== undefined;
  }

  /** The sequence the Watch stream has reached, undefined while it has not started. */
  get sequence(): bigint | undefined {
    return this.#sequence;
  }

  /** How many entries are held (expired ones included until looked up). */
  get size(): number {
    return this.#entries.size;
  }

  /** A fresh entry held for `key`, or undefined (also while the cache is bypassed). */
  lookup(key: string): PbEntry | undefined {
    if (this.#sequence === undefined) return undefined;
    const held = this.#entries.get(key);
    if (held === undefined) return undefined;
    this.#entries.delete(key);
    if (performance.now() >= held.until) return undefined;
    this.#entries.set(key, held);
    return held.entry;
  }

  /** The epoch to pass to `insert`, or undefined while the cache is bypassed. */
  ticket(_key: string): number | undefined {
    return this.#sequence === undefined ? undefined : this.#epoch;
  }

  /** Keeps a fresh entry the server returned, unless an event came in since `ticket` or the
   * replica that answered had applied less (`appliedSequence`) than the Watch stream has
   * delivered. */
  insert(key: string, entry: PbEntry, ticket: number, appliedSequence: bigint): void {
    if (entry.stale) return;
    const fresh = Math.min(remainingMs(entry), this.maxTtlMs);
    if (!(fresh > 0)) return;
    if (this.#sequence === undefined || this.#epoch !== ticket) return;
    if (appliedSequence < this.#sequence) {
      this.laggingReplies += 1;
      return;
    }
    this.#entries.delete(key);
    this.#entries.set(key, { entry, until: performance.now() + fresh });
    while (this.#entries.size > this.maxEntries) {
      const oldest = this.#entries.keys().next();
      if (oldest.done) break;
      this.#entries.delete(oldest.value);
    }
  }

  /** Drops `key` (this process wrote or deleted it); a read in flight will not store it. */
  forget(key: string): void {
    this.#epoch += 1;
    this.#entries.delete(key);
  }

  /** Applies one event of the namespace's Watch stream. */
  apply(ev: WatchEvent): void {
    this.#epoch += 1;
    if (ev.kind === "started") {
      this.#entries.clear();
      this.#sequence = ev.sequence;
      return;
    }
    if (this.#sequence === undefined) return;
    const expected = this.#sequence + 1n;
    this.#sequence = ev.sequence;
    if (ev.sequence !== expected || ev.kind === "flushed" || ev.kind === "gap") {
      this.#entries.clear();
    } else if (ev.kind === "key_changed" && ev.key !== undefined) {
      const held = this.#entries.get(ev.key);
      if (held === undefined || held.entry.version !== ev.version || ev.version === 0n) {
        this.#entries.delete(ev.key);
      }
    } else if (ev.kind === "tags_invalidated") {
      const gone = new Set(ev.tags ?? []);
      for (const [k, held] of this.#entries) {
        if (held.entry.tags.some((t) => gone.has(t))) this.#entries.delete(k);
      }
    }
  }

  /** The stream failed or ended: clear, and bypass until a new one starts. */
  reset(): void {
    this.#epoch += 1;
    this.#entries.clear();
    this.#sequence = undefined;
  }

  /**
   * Starts the background Watch of `namespace` that feeds this cache: it reconnects after a
   * failure with backoff (50 ms doubling to 2 s) and stops on `close()` or `client.close()`.
   * @internal
   */
  start(client: Client, namespace: string): void {
    if (this.#loop !== undefined) throw new Error("NearCache.start: already started");
    const signal = AbortSignal.any([this.#stop.signal, client.closingSignal]);
    this.#loop = this.#run(client, namespace, signal);
  }

  /** Resolves once the background Watch has stopped (after `close()` or `client.close()`). */
  get stopped(): Promise<void> {
    return this.#loop ?? Promise.resolve();
  }

  /** Stops the background Watch and clears the cache; reads then always go to the server. */
  close(): void {
    this.#stop.abort();
    this.reset();
  }

  async #run(client: Client, namespace: string, signal: AbortSignal): Promise<void> {
    let wait = RECONNECT_MIN_MS;
    while (!signal.aborted) {
      try {
        for await (const ev of watchEvents(client, namespace, { signal })) {
          if (ev.kind === "started") this.streamsStarted += 1;
          this.apply(ev);
          wait = RECONNECT_MIN_MS;
        }
      } catch (err) {
        this.lastError = err;
      } finally {
        this.reset();
      }
      await pause(wait, signal);
      wait = Math.min(wait * 2, RECONNECT_MAX_MS);
    }
  }
}
