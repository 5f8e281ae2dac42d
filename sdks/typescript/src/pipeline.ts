// The Pipeline multiplexer, as in the Rust SDK: one bidirectional `Pipeline` stream per client
// carries Get, Set and Delete requests tagged with ids, answered out of order. A unary call costs
// a new HTTP/2 stream and connect's per-call machinery; a pipelined request costs one message
// each way.
//
// Each request takes an id and parks its resolver in the pending map; a reader loop completes
// the matching one per answer. When the stream fails or ends, every pending request fails with
// UNAVAILABLE (so reads are retried by Client.call) and the next request opens a new stream. A
// `PipelineError` answer is rebuilt into the error the unary call would have thrown. The stream
// is ended after a quiet spell, so an idle client does not keep the process alive.

import { type MessageInitShape, fromBinary } from "@bufbuild/protobuf";
import { ConnectError } from "@connectrpc/connect";
import type { Client } from "./client.js";
import { StatusSchema } from "./gen/google/rpc/status_pb.js";
import type { PipelineRequestSchema, PipelineResponse } from "./gen/tiercache/v1/cache_pb.js";
import type { PipelineError } from "./gen/tiercache/v1/common_pb.js";
import { Code, TiercacheError } from "./errors.js";

type Operation = MessageInitShape<typeof PipelineRequestSchema>["operation"];
/** The answer of one pipelined request (never the `error` case: that one is thrown). */
export type PipelineResult = PipelineResponse["result"];

/** How long the stream stays open without a request in flight. */
const IDLE_MS = 250;

interface Pending {
  resolve(r: PipelineResult): void;
  reject(e: unknown): void;
}

class Conn {
  readonly pending = new Map<bigint, Pending>();
  readonly queue: MessageInitShape<typeof PipelineRequestSchema>[] = [];
  closed = false;
  #wake: (() => void) | undefined;
  #idle: ReturnType<typeof setTimeout> | undefined;

  /** The outbound messages: what is queued, until the connection closes. */
  async *requests(): AsyncGenerator<MessageInitShape<typeof PipelineRequestSchema>> {
    for (;;) {
      while (this.queue.length > 0) yield this.queue.shift() as MessageInitShape<typeof PipelineRequestSchema>;
      if (this.closed) return;
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
      });
      this.#wake = undefined;
    }
  }

  send(req: MessageInitShape<typeof PipelineRequestSchema>): void {
    this.queue.push(req);
    this.#wake?.();
  }

  /** Completes one request; when none is left, ends the stream after a quiet spell. */
  settle(id: bigint): Pending | undefined {
    const p = this.pending.get(id);
    this.pending.delete(id);
    if (this.pending.size === 0 && this.#idle === undefined && !this.closed) {
      this.#idle = setTimeout(() => {
        this.#idle = undefined;
        if (this.pending.size === 0) this.close();
      }, IDLE_MS);
      this.#idle.unref();
    }
    return p;
  }

  track(id: bigint, p: Pending): void {
    if (this.#idle !== undefined) {
      clearTimeout(this.#idle);
      this.#idle = undefined;
    }
    this.pending.set(id, p);
  }

  /** No new requests; the outbound side ends once the queue is drained. */
  close(): void {
    this.closed = true;
    this.#wake?.();
  }

  failAll(why: string): void {
    this.close();
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) p.reject(new TiercacheError(Code.Unavailable, why));
  }
}

/** @internal */
export class Pipeline {
  readonly #client: Client;
  #conn: Conn | undefined;
  #nextId = 1n;

  constructor(client: Client) {
    this.#client = client;
  }

  /** Sends one operation and waits for its answer within `timeoutMs`, or until `signal` aborts. */
  call(op: Operation, o: { signal: AbortSignal; timeoutMs: number }): Promise<PipelineResult> {
    if (o.signal.aborted) return Promise.reject(cancelled(o.signal));
    const conn = this.#open();
    const id = this.#nextId++;
    return new Promise<PipelineResult>((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        o.signal.removeEventListener("abort", onAbort);
      };
      const timer = setTimeout(() => {
        conn.settle(id);
        o.signal.removeEventListener("abort", onAbort);
        reject(new TiercacheError(Code.DeadlineExceeded, `the request's deadline of ${o.timeoutMs} ms passed`));
      }, o.timeoutMs);
      const onAbort = () => {
        conn.settle(id);
        clearTimeout(timer);
        reject(cancelled(o.signal));
      };
      o.signal.addEventListener("abort", onAbort, { once: true });
      conn.track(id, {
        resolve: (r) => {
          done();
          if (r.case === "error") reject(errorOf(r.value));
          else resolve(r);
        },
        reject: (e) => {
          done();
          reject(e);
        },
      });
      conn.send({ id, operation: op });
    });
  }

  /** The open stream, or a new one when there is none or the last one closed. */
  #open(): Conn {
    if (this.#conn !== undefined && !this.#conn.closed) return this.#conn;
    const conn = new Conn();
    this.#conn = conn;
    const { signal, headers } = this.#client.streamOptions();
    const responses = this.#client.cache.pipeline(conn.requests(), { signal, headers });
    void (async () => {
      let why = "the pipeline stream ended";
      try {
        for await (const r of responses) conn.settle(r.id)?.resolve(r.result);
      } catch (err) {
        why = `the pipeline stream failed: ${TiercacheError.from(err).rawMessage}`;
      }
      conn.failAll(why);
    })();
    return conn;
  }
}

function cancelled(signal: AbortSignal): TiercacheError {
  return TiercacheError.from(
    signal.reason instanceof TiercacheError ? signal.reason : new TiercacheError(Code.Canceled, "the call was aborted", { cause: signal.reason }),
  );
}

/** The error the unary call would have thrown, from a `PipelineError`. */
export function errorOf(e: PipelineError): TiercacheError {
  const ce = new ConnectError(e.message, e.code as Code);
  if (e.details.length > 0) {
    const status = fromBinary(StatusSchema, e.details);
    ce.details = status.details.map((any) => ({
      type: any.typeUrl.substring(any.typeUrl.lastIndexOf("/") + 1),
      value: any.value,
    }));
  }
  return TiercacheError.from(ce);
}
