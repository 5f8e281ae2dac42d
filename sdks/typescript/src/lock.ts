// Distributed locks: `Namespace.lock` returns a held `Lock` that renews itself and is released
// by `release()` or `await using`.

import type { CallOptions, Client } from "./client.js";
import { Code, LockNotAcquired, TiercacheError, UnexpectedResponse } from "./errors.js";
import { AcquireLockOutcome, LockOwnershipOutcome } from "./gen/tiercache/v1/lock_pb.js";
import { durationOf, msOf } from "./namespace.js";

/** How long `lock()` waits for a held lock unless told otherwise (as in the Rust and Python SDKs). */
export const DEFAULT_LOCK_WAIT_MS = 10_000;
/** The lock's time to live unless told otherwise (as in the Python SDK). */
export const DEFAULT_LOCK_TTL_MS = 10_000;

/** Options of `Namespace.lock`. */
export interface LockOptions extends CallOptions {
  /** How long the lock lives without a renewal, in ms (default 10 000; the server caps it at the
   * namespace's `lock_ttl_max`). While the Lock is held it is renewed every `ttlMs / 3`. */
  ttlMs?: number;
  /** How long to wait while another owner holds the lock, in ms (default 10 000; 0 tries once).
   * The server caps it at the namespace's `max_wait_max`. */
  maxWaitMs?: number;
  /** Called once, if the lock is lost while held (see `Lock.isHeld`). An exception it throws is
   * rethrown asynchronously, as an uncaught exception. */
  onLost?: (lock: Lock) => void;
}

/**
 * A held distributed lock, from `await ns.lock(name, { ttlMs })`.
 *
 * While held it is renewed in the background every `ttlMs / 3`, so it stays held past its TTL for
 * as long as the holder runs; if the process dies, renewals stop and the lock expires after
 * `ttlMs`. Release it with `release()`, or let `await using` release it. Pass `fencingToken` to the
 * resource the lock protects, so it can refuse a holder whose lock has since gone to another.
 *
 * `isHeld()` turns false, for good, once the Lock can no longer vouch for the lock: a renewal was
 * refused (the lock expired or was taken), the TTL passed since the grant or the last confirmed
 * renewal (renewals that failed or hung; a failed renewal is retried at the next tick while the
 * TTL lasts), or the client was closed. Then `signal` aborts and `onLost` is called. Renewal
 * timers do not keep the process alive.
 */
export class Lock implements AsyncDisposable {
  /** The lock's name. */
  readonly name: string;
  /** The namespace the lock belongs to. */
  readonly namespace: string;
  /** Strictly increases with every grant of this lock: pass it to the protected resource. */
  readonly fencingToken: bigint;
  /** The owner token the server issued (needed by the raw RPCs; the Lock uses it itself). */
  readonly ownerToken: string;
  /** The TTL granted, in ms (the requested one capped by the namespace's `lock_ttl_max`). */
  readonly ttlMs: number;
  readonly #client: Client;
  readonly #onLost: ((lock: Lock) => void) | undefined;
  /** Aborted when the lock is released or lost; its reason says which. */
  readonly #state = new AbortController();
  /** Stops a renewal in flight on release or loss. */
  readonly #stopRenewal = new AbortController();
  /** The lock is held at least until then (performance.now() ms): the grant's arrival, or the
   * sending of the last confirmed renewal, plus the TTL. */
  #until: number;
  #released = false;
  #lost = false;
  #timer: ReturnType<typeof setTimeout> | undefined;
  readonly #onClientClosed = () => this.#lose("the client was closed");

  /** @internal Use `Namespace.lock`. */
  constructor(
    client: Client,
    namespace: string,
    name: string,
    grant: { ownerToken: string; fencingToken: bigint; ttlMs: number; grantedAt: number },
    onLost: ((lock: Lock) => void) | undefined,
  ) {
    this.#client = client;
    this.namespace = namespace;
    this.name = name;
    this.ownerToken = grant.ownerToken;
    this.fencingToken = grant.fencingToken;
    this.ttlMs = grant.ttlMs;
    this.#until = grant.grantedAt + grant.ttlMs;
    this.#onLost = onLost;
    client.closingSignal.addEventListener("abort", this.#onClientClosed, { once: true });
    if (client.closingSignal.aborted) this.#lose("the client was closed");
    else this.#schedule();
  }

  /** Aborted once the lock is released or lost: hand it to the work the lock protects. The
   * reason is a TiercacheError with reason `LOCK_LOST` or `LOCK_RELEASED`. */
  get signal(): AbortSignal {
    return this.#state.signal;
  }

  /** False once released or lost (see the class comment); true while the lock is vouched for. */
  isHeld(): boolean {
    if (this.#released || this.#lost) return false;
    if (performance.now() >= this.#until) {
      this.#lose("its ttl passed without a confirmed renewal");
      return false;
    }
    return true;
  }

  /** Releases the lock now; resolves to whether it was still held by this owner on the server
   * (false after a loss, or when already released). Throws a TiercacheError when the server
   * cannot be reached; the lock then expires after its TTL. */
  async release(options: CallOptions = {}): Promise<boolean> {
    if (this.#released) return false;
    this.#finish();
    this.#released = true;
    if (!this.#state.signal.aborted) {
      this.#state.abort(new TiercacheError(Code.Canceled, `lock "${this.name}" was released`, { reason: "LOCK_RELEASED" }));
    }
    const r = await this.#client.call({ idempotent: false }, options, (o) =>
      this.#client.locks.releaseLock({ namespace: this.namespace, name: this.name, ownerToken: this.ownerToken }, o),
    );
    return r.outcome === LockOwnershipOutcome.OK;
  }

  /** `await using lock = await ns.lock(…)`: releases the lock at the end of the block. Never
   * throws: if the release fails (the client closed, the server unreachable), the lock expires
   * after its TTL. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#released || this.#client.closingSignal.aborted) {
      this.#finish();
      this.#released = true;
      return;
    }
    try {
      await this.release();
    } catch {
      // The lock expires after its ttl; a dispose that throws would mask the block's own error.
    }
  }

  /** Stops renewing and listening. */
  #finish(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#stopRenewal.abort();
    this.#client.closingSignal.removeEventListener("abort", this.#onClientClosed);
  }

  #lose(why: string): void {
    if (this.#lost || this.#released) return;
    this.#lost = true;
    this.#finish();
    this.#state.abort(new TiercacheError(Code.Aborted, `lock "${this.name}" was lost: ${why}`, { reason: "LOCK_LOST" }));
    try {
      this.#onLost?.(this);
    } catch (err) {
      // A throwing callback must not become an unhandled error of a timer.
      queueMicrotask(() => {
        throw err;
      });
    }
  }

  #schedule(): void {
    const every = Math.max(this.ttlMs / 3, 1);
    this.#timer = setTimeout(() => void this.#renew(), every);
    this.#timer.unref();
  }

  async #renew(): Promise<void> {
    this.#timer = undefined;
    if (!this.isHeld()) return;
    const sent = performance.now();
    try {
      // The renewal may take until the lock would expire, not longer: a renewal that hangs past
      // that cannot vouch for the lock any more.
      const r = await this.#client.call(
        { idempotent: false },
        { signal: this.#stopRenewal.signal, timeoutMs: Math.max(1, Math.min(this.#until - sent, this.#client.timeoutMs)) },
        (o) =>
          this.#client.locks.renewLock(
            { namespace: this.namespace, name: this.name, ownerToken: this.ownerToken, ttl: durationOf("ttlMs", this.ttlMs) },
            o,
          ),
      );
      if (this.#released || this.#lost) return;
      if (r.outcome !== LockOwnershipOutcome.OK) {
        this.#lose("a renewal found it expired or taken");
        return;
      }
      const granted = msOf(r.ttl);
      this.#until = Math.max(this.#until, sent + (granted > 0 ? granted : this.ttlMs));
    } catch {
      if (this.#released || this.#lost) return;
      // Retried at the next tick while the ttl lasts; isHeld() turns false when it passes.
    }
    if (this.isHeld()) this.#schedule();
  }
}

/** AcquireLock, waiting up to `maxWaitMs`; throws LockNotAcquired when the wait ran out. */
export async function acquireLock(client: Client, namespace: string, name: string, options: LockOptions = {}): Promise<Lock> {
  if (typeof name !== "string" || name === "") throw new TypeError("lock: `name` must be a non-empty string");
  const ttlMs = options.ttlMs ?? DEFAULT_LOCK_TTL_MS;
  const maxWaitMs = options.maxWaitMs ?? DEFAULT_LOCK_WAIT_MS;
  if (!(ttlMs > 0)) throw new RangeError(`lock: ttlMs must be positive, got ${ttlMs}`);
  const started = performance.now();
  const r = await client.call({ idempotent: false, extraWaitMs: maxWaitMs }, options, (o) =>
    client.locks.acquireLock(
      { namespace, name, ttl: durationOf("ttlMs", ttlMs), maxWait: durationOf("maxWaitMs", maxWaitMs) },
      o,
    ),
  );
  // The grant happened just before its reply left the server.
  const grantedAt = performance.now();
  if (r.outcome === AcquireLockOutcome.TIMEOUT) throw new LockNotAcquired(name, Math.round(grantedAt - started));
  if (r.outcome !== AcquireLockOutcome.ACQUIRED) throw new UnexpectedResponse(`AcquireLock: unexpected outcome ${r.outcome}`);
  const granted = msOf(r.ttl);
  return new Lock(
    client,
    namespace,
    name,
    { ownerToken: r.ownerToken, fencingToken: r.fencingToken, ttlMs: granted > 0 ? granted : ttlMs, grantedAt },
    options.onLost,
  );
}
