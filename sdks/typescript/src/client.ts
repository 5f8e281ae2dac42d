// The client: one HTTP/2 connection to a tiercache server (or a load balancer in front of a fleet),
// the call helper every operation goes through (deadline, AbortSignal, retries, errors, trace
// context), and namespaces.

import type { DescService } from "@bufbuild/protobuf";
import { type Client as RpcClient, type Interceptor, createClient } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";
import { setMaxListeners } from "node:events";
import { readFileSync } from "node:fs";
import { AdminService } from "./gen/tiercache/v1/admin_pb.js";
import { CacheService } from "./gen/tiercache/v1/cache_pb.js";
import { LockService } from "./gen/tiercache/v1/lock_pb.js";
import { Health } from "./gen/grpc/health/v1/health_pb.js";
import {
  type HealthStatus,
  type NamespaceInfo,
  type Stats,
  healthStatusOf,
  namespaceInfoOf,
  statsOf,
} from "./admin.js";
import { Code, TiercacheError } from "./errors.js";
import { activeTraceparent, traceparentInterceptor } from "./trace.js";
import { Pipeline } from "./pipeline.js";
import { Namespace, type NamespaceOptions } from "./namespace.js";

/** Milliseconds every call may take unless told otherwise (as in the Rust and Python SDKs). */
export const DEFAULT_TIMEOUT_MS = 5_000;
/** The largest message received or sent: the server's default `limits.max_message_bytes`. */
export const MAX_MESSAGE_BYTES = 16 << 20;

/** How idempotent calls (reads, stats, health) are retried after UNAVAILABLE. */
export interface RetryPolicy {
  /** Attempts in all, the first included (default 3). */
  maxAttempts: number;
  /** The pause after the first failed attempt, before jitter (default 25 ms). */
  initialBackoffMs: number;
  /** The longest pause, before jitter (default 1000 ms). */
  maxBackoffMs: number;
  /** Growth of the pause per attempt (default 2). */
  multiplier: number;
}

/** Default retry policy: 3 attempts, 25 ms doubling to at most 1 s, with jitter. */
export const DEFAULT_RETRY_POLICY: Readonly<RetryPolicy> = Object.freeze({
  maxAttempts: 3,
  initialBackoffMs: 25,
  maxBackoffMs: 1_000,
  multiplier: 2,
});

/** The pause before retry `n` (from 1): "equal jitter", between half and all of the backoff. */
export function backoffMs(policy: RetryPolicy, n: number): number {
  const base = Math.min(
    policy.initialBackoffMs * Math.max(policy.multiplier, 1) ** Math.max(n - 1, 0),
    policy.maxBackoffMs,
  );
  return base * (0.5 + Math.random() * 0.5);
}

/** Where the SDK reports what it cannot throw: a failed background refresh, a refused fill. */
export interface Logger {
  warn(message: string): void;
  debug?(message: string): void;
}

/**
 * TLS settings of a `Client` (`tls: true`, or an `https://` address, uses the system roots). The
 * same options as the Rust and Python SDKs and the CLI: a CA instead of the system roots, a client
 * certificate and key (mTLS), the name the server certificate must carry. Files are read when the
 * client is made; a missing or non-PEM file throws, naming the option.
 */
export interface TlsOptions {
  /** PEM CA certificate(s) to trust instead of the system roots. */
  ca?: string | Buffer;
  /** A file holding `ca`. */
  caFile?: string;
  /** PEM client certificate, for mutual TLS (with `key`). */
  cert?: string | Buffer;
  /** A file holding `cert`. */
  certFile?: string;
  /** PEM key of the client certificate. */
  key?: string | Buffer;
  /** A file holding `key`. */
  keyFile?: string;
  /** The name to check the server's certificate against, when it differs from the address. */
  serverName?: string;
  /** The same as `serverName` (Node's spelling). */
  servername?: string;
}

/** The TLS options Node's `http2.connect` takes, from a `TlsOptions`, checked. */
export function tlsConnectOptions(tls: TlsOptions): {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  servername?: string;
} {
  const ca = pemOf("ca", tls.ca, tls.caFile, "CERTIFICATE");
  const cert = pemOf("cert", tls.cert, tls.certFile, "CERTIFICATE");
  const key = pemOf("key", tls.key, tls.keyFile, "PRIVATE KEY");
  if ((cert === undefined) !== (key === undefined)) {
    const missing = key === undefined ? "key/keyFile" : "cert/certFile";
    throw new TypeError(`Client: tls: a client certificate needs a certificate and a key; ${missing} is missing`);
  }
  if (tls.serverName !== undefined && tls.servername !== undefined && tls.serverName !== tls.servername) {
    throw new TypeError("Client: tls: give serverName or servername, not both");
  }
  const servername = tls.serverName ?? tls.servername;
  if (servername !== undefined && (servername === "" || /\s/.test(servername))) {
    throw new TypeError(`Client: tls.serverName: ${JSON.stringify(servername)} is not a host name`);
  }
  return {
    ...(ca === undefined ? {} : { ca }),
    ...(cert === undefined ? {} : { cert }),
    ...(key === undefined ? {} : { key }),
    ...(servername === undefined ? {} : { servername }),
  };
}

function pemOf(name: string, pem: string | Buffer | undefined, file: string | undefined, kind: string): Buffer | undefined {
  if (pem !== undefined && file !== undefined) {
    throw new TypeError(`Client: tls: give ${name} or ${name}File, not both`);
  }
  let where = `tls.${name}`;
  let data: Buffer;
  if (file !== undefined) {
    where = `tls.${name}File (${file})`;
    try {
      data = readFileSync(file);
    } catch (err) {
      const why = (err as NodeJS.ErrnoException).code ?? String(err);
      throw new TypeError(`Client: ${where}: cannot read: ${why}`);
    }
  } else if (pem !== undefined) {
    data = typeof pem === "string" ? Buffer.from(pem) : pem;
  } else {
    return undefined;
  }
  // "PRIVATE KEY" also matches "RSA PRIVATE KEY" and "EC PRIVATE KEY" (PKCS#1, SEC1).
  const text = data.toString("latin1");
  if (!text.includes("-----BEGIN ") || !text.includes(kind)) {
    throw new TypeError(`Client: ${where}: not PEM (expected a -----BEGIN ...${kind}----- block)`);
  }
  return data;
}

/** Refuses a token an HTTP/2 header cannot carry, without echoing it. */
function checkToken(token: string): void {
  if (!/^[\x21-\x7e]+$/.test(token)) {
    throw new TypeError("Client: `token` must be non-empty printable ASCII without spaces (the value is not shown)");
  }
}

/** What `new Client(...)` takes; only `address` is required. */
export interface ClientOptions {
  /** `http://host:port` (plaintext HTTP/2) or `https://host:port` (TLS). A bare `host:port` is
   * plaintext unless `tls` is given. */
  address: string;
  /** A bearer token sent as `authorization: Bearer <token>` on every call. */
  token?: string;
  /** TLS: `true` for the system roots, or the CA / client certificate / server name to use. */
  tls?: boolean | TlsOptions;
  /** The deadline of each call in ms (default 5000). A getOrSet or lock wait is added on top. */
  timeoutMs?: number;
  /** Retries of idempotent calls after UNAVAILABLE: a count (default 2) or a policy. */
  retries?: number | Partial<RetryPolicy>;
  /** Extra headers sent on every call. */
  headers?: Record<string, string>;
  /** Extra connect interceptors, run after the SDK's own. */
  interceptors?: Interceptor[];
  /**
   * Send Get, Set and Delete over one multiplexed `Pipeline` stream (default true, as in the Rust
   * SDK): several times the throughput of a unary call each. Calls made while an OpenTelemetry span
   * is active still go as unary calls, so each carries its own `traceparent`; interceptors see
   * the stream once, not each pipelined request.
   */
  pipeline?: boolean;
  /** Receives warnings about background work that has no caller to throw to (a failed stale
   * refresh, a fill or lease release the server refused). Silent by default. */
  logger?: Logger;
}

/** Per-call options every operation takes. */
export interface CallOptions {
  /** Aborts the call; the returned promise rejects with a `cancelled` TiercacheError. */
  signal?: AbortSignal;
  /** This call's deadline in ms, instead of the client's `timeoutMs`. */
  timeoutMs?: number;
}

/** What `Client.call` needs to know about an operation. */
export interface CallSpec {
  /** Reads, stats and health may be retried; writes, leases and locks never are. */
  idempotent: boolean;
  /** Time the server may legitimately wait (a getOrSet or lock wait), added to the deadline. */
  extraWaitMs?: number;
}

type RpcOptions = { signal: AbortSignal; timeoutMs: number; headers?: Record<string, string> };

function baseUrlOf(address: string, tls: ClientOptions["tls"]): string {
  if (/^https?:\/\//.test(address)) return address.replace(/\/+$/, "");
  return `${tls ? "https" : "http"}://${address}`;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason);
      return;
    }
    const t = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal.reason);
    };
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * A connection to tiercache. Cheap to share: make one per process and take namespaces from it.
 *
 * ```ts
 * const client = new Client({ address: "http://127.0.0.1:50051" });
 * const users = client.namespace("users", { serializer: json });
 * ```
 */
export class Client {
  /** @internal */ readonly cache: RpcClient<typeof CacheService>;
  /** @internal */ readonly admin: RpcClient<typeof AdminService>;
  /** @internal */ readonly locks: RpcClient<typeof LockService>;
  /** @internal */ readonly healthService: RpcClient<typeof Health>;
  /** @internal */ readonly logger: Logger | undefined;
  readonly #pipeline: Pipeline | undefined;
  /** The client's default deadline per call, in ms. */
  readonly timeoutMs: number;
  /** The retry policy of idempotent calls. */
  readonly retryPolicy: Readonly<RetryPolicy>;
  readonly #headers: Record<string, string>;
  readonly #closing = new AbortController();
  readonly #session: Http2SessionManager;

  constructor(options: ClientOptions) {
    if (typeof options?.address !== "string" || options.address === "") {
      throw new TypeError("Client: `address` is required, e.g. http://127.0.0.1:50051");
    }
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    if (!(this.timeoutMs > 0)) throw new RangeError("Client: `timeoutMs` must be positive");
    const retries = options.retries ?? 2;
    this.retryPolicy = Object.freeze(
      typeof retries === "number"
        ? { ...DEFAULT_RETRY_POLICY, maxAttempts: Math.max(1, Math.floor(retries) + 1) }
        : { ...DEFAULT_RETRY_POLICY, ...retries },
    );
    // Every call in flight listens on the closing signal: no limit (Node warns past 10).
    setMaxListeners(0, this.#closing.signal);
    this.#headers = { ...options.headers };
    if (options.token !== undefined) {
      checkToken(options.token);
      this.#headers.authorization = `Bearer ${options.token}`;
    }
    if (options.address.startsWith("http://") && options.tls !== undefined && options.tls !== false) {
      throw new TypeError(`Client: address ${options.address} is plaintext (http://) but \`tls\` is set: use https://`);
    }
    const tls = typeof options.tls === "object" ? tlsConnectOptions(options.tls) : undefined;
    const baseUrl = baseUrlOf(options.address, options.tls);
    // One HTTP/2 connection, kept alive with PINGs while calls are open (as gRPC clients do) and
    // closed by close(); when idle it does not keep the process alive.
    this.#session = new Http2SessionManager(
      baseUrl,
      { pingIntervalMs: 30_000, pingTimeoutMs: 10_000, idleConnectionTimeoutMs: 15 * 60_000 },
      tls ?? {},
    );
    const transport = createGrpcTransport({
      baseUrl,
      sessionManager: this.#session,
      readMaxBytes: MAX_MESSAGE_BYTES,
      writeMaxBytes: MAX_MESSAGE_BYTES,
      interceptors: [traceparentInterceptor, ...(options.interceptors ?? [])],
    });
    this.cache = createClient(CacheService, transport);
    this.admin = createClient(AdminService, transport);
    this.locks = createClient(LockService, transport);
    this.healthService = createClient(Health, transport);
    this.logger = options.logger;
    this.#pipeline = options.pipeline === false ? undefined : new Pipeline(this);
  }

  /** The pipeline for the next Get/Set/Delete, or undefined when it goes as a unary call (the
   * pipeline is off, or a span is active whose traceparent the call must carry). @internal */
  pipelineForCall(): Pipeline | undefined {
    if (this.#pipeline === undefined || activeTraceparent() !== undefined) return undefined;
    return this.#pipeline;
  }

  /** A namespace of this server, with values of type T (bytes unless a serializer is given). */
  namespace<T = Uint8Array>(name: string, options: NamespaceOptions<T> = {}): Namespace<T> {
    return new Namespace<T>(this, name, options);
  }

  /** The server's counters (of every namespace, or of `namespace`) and its storage status. */
  async stats(namespace = "", options?: CallOptions): Promise<Stats> {
    const r = await this.call({ idempotent: true }, options, (o) => this.admin.getStats({ namespace }, o));
    return statsOf(r);
  }

  /** The namespaces the server knows, with their effective policies. */
  async listNamespaces(options?: CallOptions): Promise<NamespaceInfo[]> {
    const r = await this.call({ idempotent: true }, options, (o) => this.admin.listNamespaces({}, o));
    return r.namespaces.map(namespaceInfoOf);
  }

  /**
   * Asks the standard gRPC health service (`grpc.health.v1.Health/Check`) whether the server (or
   * one of its services: `tiercache.v1.CacheService`, `tiercache.redis`…) is serving.
   */
  async health(service = "", options?: CallOptions): Promise<HealthStatus> {
    const r = await this.call({ idempotent: true }, options, (o) => this.healthService.check({ service }, o));
    return healthStatusOf(r.status);
  }

  /**
   * Runs one unary call with the client's rules: a deadline (the call's `timeoutMs`, or the
   * client's, plus `spec.extraWaitMs`), the caller's AbortSignal, retries of idempotent calls on
   * UNAVAILABLE with backoff and jitter within the deadline, and errors as TiercacheError.
   * @internal
   */
  async call<T>(spec: CallSpec, opts: CallOptions | undefined, rpc: (o: RpcOptions) => Promise<T>): Promise<T> {
    const budget = (opts?.timeoutMs ?? this.timeoutMs) + (spec.extraWaitMs ?? 0);
    const deadline = Date.now() + budget;
    const signal = this.#signal(opts?.signal);
    const attempts = spec.idempotent ? this.retryPolicy.maxAttempts : 1;
    for (let n = 1; ; n++) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) {
        throw new TiercacheError(Code.DeadlineExceeded, `the call's deadline of ${budget} ms passed`);
      }
      try {
        return await rpc({ signal, timeoutMs: remaining, headers: this.#headers });
      } catch (err) {
        const e = TiercacheError.from(err);
        if (n >= attempts || e.code !== Code.Unavailable || signal.aborted) throw e;
        const pause = Math.max(backoffMs(this.retryPolicy, n), e.retryAfterMs ?? 0);
        if (Date.now() + pause >= deadline) throw e;
        try {
          await sleep(pause, signal);
        } catch {
          throw e;
        }
      }
    }
  }

  /** Options for a streaming call (Watch): the caller's signal and the client's headers. @internal */
  streamOptions(signal?: AbortSignal): { signal: AbortSignal; headers: Record<string, string> } {
    return { signal: this.#signal(signal), headers: this.#headers };
  }

  /** Combines the caller's signal with the client's own (aborted by close()). */
  #signal(signal: AbortSignal | undefined): AbortSignal {
    return signal === undefined ? this.#closing.signal : AbortSignal.any([signal, this.#closing.signal]);
  }

  /** A signal aborted when the client is closed; background work (refreshes, renewals, the near
   * cache's watch) stops on it. @internal */
  get closingSignal(): AbortSignal {
    return this.#closing.signal;
  }

  /** Cancels every call in flight and stops background work (lock renewals, near-cache watches). */
  close(): void {
    if (this.#closing.signal.aborted) return;
    this.#closing.abort(new TiercacheError(Code.Canceled, "the client was closed"));
    this.#session.abort();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** The generated service descriptors, for callers who want the raw stubs. */
export const services: Readonly<Record<string, DescService>> = Object.freeze({
  CacheService,
  AdminService,
  LockService,
});
