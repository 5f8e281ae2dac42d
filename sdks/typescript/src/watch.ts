// Watch: a namespace's invalidation events as an async iterable (`for await … of ns.watch()`).

import type { Client } from "./client.js";
import { TiercacheError } from "./errors.js";
import type { WatchResponse } from "./gen/tiercache/v1/cache_pb.js";

/** What a Watch event reports. */
export type WatchEventKind = "started" | "key_changed" | "tags_invalidated" | "flushed" | "gap";

/**
 * One event of a namespace's Watch stream. The first is always `started` (its `sequence` is the
 * one the stream starts after); after it, events have consecutive sequences, except across a
 * `gap`, which tells the watcher that events were lost and everything it cached from the
 * namespace must be dropped.
 */
export interface WatchEvent {
  /** The namespace sequence of the event. */
  readonly sequence: bigint;
  /** What happened; the fields below are set for the kinds they name. */
  readonly kind: WatchEventKind;
  /** For `key_changed`: the key written (`version` > 0) or deleted (`version` 0). */
  readonly key?: string;
  /** For `key_changed`: the version written, 0n for a delete. */
  readonly version?: bigint;
  /** For `tags_invalidated`: the tags invalidated. */
  readonly tags?: readonly string[];
  /** For `gap`: the last sequence delivered before the gap. */
  readonly lastSequence?: bigint;
}

/** Options of `Namespace.watch`. */
export interface WatchOptions {
  /** Ends the stream: the loop over it finishes without an error. */
  signal?: AbortSignal;
}

/** A wire event as a WatchEvent; undefined for an event kind this SDK does not know. */
export function watchEventOf(r: WatchResponse): WatchEvent | undefined {
  const e = r.event;
  switch (e.case) {
    case "started":
      return { sequence: r.sequence, kind: "started" };
    case "keyChanged":
      return { sequence: r.sequence, kind: "key_changed", key: e.value.key, version: e.value.version };
    case "tagsInvalidated":
      return { sequence: r.sequence, kind: "tags_invalidated", tags: [...e.value.tags] };
    case "namespaceFlushed":
      return { sequence: r.sequence, kind: "flushed" };
    case "gap":
      return { sequence: r.sequence, kind: "gap", lastSequence: e.value.lastSequence };
    default:
      return undefined;
  }
}

/**
 * The events of `namespace`, from its `started` event on, until `options.signal` aborts, the
 * client is closed or the loop over them stops (`break`): each of these ends the iteration
 * without an error and cancels the stream. A stream the server ends with an error (the replica
 * draining: `DRAINING`; a consumer too slow: `WATCH_OVERFLOW`; …) throws that TiercacheError;
 * watch again, and drop what you cached, as after a gap.
 */
export async function* watchEvents(
  client: Client,
  namespace: string,
  options: WatchOptions = {},
): AsyncGenerator<WatchEvent, void, undefined> {
  const own = new AbortController();
  const opts = client.streamOptions(
    options.signal === undefined ? own.signal : AbortSignal.any([options.signal, own.signal]),
  );
  try {
    for await (const r of client.cache.watch({ namespace }, opts)) {
      const ev = watchEventOf(r);
      if (ev !== undefined) yield ev;
    }
  } catch (err) {
    // Our own cancellation (the caller's signal, client.close(), a break) ends the loop quietly,
    // as the Python SDK's Watch does on CANCELLED.
    if (opts.signal.aborted) return;
    throw TiercacheError.from(err);
  } finally {
    own.abort();
  }
}
