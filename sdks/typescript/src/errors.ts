// Errors: one class, TiercacheError, carrying the gRPC code and the server's google.rpc details.
//
// The server reports expected outcomes (a miss, a failed condition, a revoked lease) as values,
// so a thrown TiercacheError always means the call did not do its job.

import { Code, ConnectError } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";

/** The gRPC status codes (connect's `Code`): `TiercacheError.code` is one of them. */
export { Code };

/** One field the server rejected, from a `google.rpc.BadRequest` detail. */
export interface FieldViolation {
  readonly field: string;
  readonly description: string;
}

const CODE_NAMES: Record<Code, string> = {
  [Code.Canceled]: "cancelled",
  [Code.Unknown]: "unknown",
  [Code.InvalidArgument]: "invalid_argument",
  [Code.DeadlineExceeded]: "deadline_exceeded",
  [Code.NotFound]: "not_found",
  [Code.AlreadyExists]: "already_exists",
  [Code.PermissionDenied]: "permission_denied",
  [Code.ResourceExhausted]: "resource_exhausted",
  [Code.FailedPrecondition]: "failed_precondition",
  [Code.Aborted]: "aborted",
  [Code.OutOfRange]: "out_of_range",
  [Code.Unimplemented]: "unimplemented",
  [Code.Internal]: "internal",
  [Code.Unavailable]: "unavailable",
  [Code.DataLoss]: "data_loss",
  [Code.Unauthenticated]: "unauthenticated",
};

/** The gRPC code's name in lower snake case, as gRPC spells it: `invalid_argument`, `cancelled`… */
export function codeName(code: Code): string {
  return CODE_NAMES[code] ?? "unknown";
}

/** Codes after which the same call may succeed unchanged. */
const RETRYABLE = new Set<Code>([Code.Unavailable, Code.ResourceExhausted, Code.DeadlineExceeded]);

/** A failed call: the gRPC code, the status message and the server's details. */
export class TiercacheError extends Error {
  override readonly name: string = "TiercacheError";
  /** The gRPC status code. */
  readonly code: Code;
  /** The status message without the code prefix. */
  readonly rawMessage: string;
  /** The `ErrorInfo` reason, e.g. `NAMESPACE_NOT_FOUND`, when the server sent one. */
  readonly reason: string | undefined;
  /** The `ErrorInfo` metadata (e.g. `namespace`), empty when there was none. */
  readonly metadata: Readonly<Record<string, string>>;
  /** The fields a `BadRequest` detail rejected, in the server's order. */
  readonly fieldViolations: readonly FieldViolation[];
  /** Milliseconds the server asked the caller to wait before retrying (`RetryInfo`). */
  readonly retryAfterMs: number | undefined;

  constructor(
    code: Code,
    message: string,
    details: {
      reason?: string | undefined;
      metadata?: Record<string, string>;
      fieldViolations?: readonly FieldViolation[];
      retryAfterMs?: number | undefined;
      cause?: unknown;
    } = {},
  ) {
    const violations = details.fieldViolations ?? [];
    const suffix =
      violations.length > 0
        ? ` (${violations.map((v) => `${v.field}: ${v.description}`).join("; ")})`
        : "";
    super(`${codeName(code).replace(/_/g, " ")}: ${message}${suffix}`, { cause: details.cause });
    this.code = code;
    this.rawMessage = message;
    this.reason = details.reason;
    this.metadata = details.metadata ?? {};
    this.fieldViolations = violations;
    this.retryAfterMs = details.retryAfterMs;
  }

  /** The gRPC code's name: `invalid_argument`, `not_found`, `unavailable`, … */
  get codeName(): string {
    return codeName(this.code);
  }

  /** The missing right of a `permission_denied` (`read`, `write`, `invalidate`, `lock`, `admin`),
   * from the `ErrorInfo` metadata. */
  get right(): string | undefined {
    return this.metadata.right;
  }

  /** The namespace the error is about (a missing right's, an unknown namespace's), from the
   * `ErrorInfo` metadata. */
  get namespace(): string | undefined {
    return this.metadata.namespace;
  }

  /** The first rejected field (`key`, `tags[2]`, …), from the `BadRequest` detail. */
  get field(): string | undefined {
    return this.fieldViolations[0]?.field;
  }

  /** Whether the same call may succeed later unchanged. */
  get retryable(): boolean {
    return RETRYABLE.has(this.code);
  }

  /** Maps anything a call threw to a TiercacheError, reading the status details. */
  static from(err: unknown): TiercacheError {
    if (err instanceof TiercacheError) return err;
    const tls = tlsFailure(err);
    if (tls !== undefined) {
      // Node reports a refused handshake as a plain error that connect calls INTERNAL; it is the
      // connection that failed, as gRPC's own clients (and the Python SDK) say: UNAVAILABLE.
      return new TiercacheError(Code.Unavailable, `TLS handshake failed (${tls.code}): ${tls.message.trim()}`, {
        reason: "TLS_HANDSHAKE_FAILED",
        metadata: { tls_error: tls.code },
        cause: err,
      });
    }
    const ce = ConnectError.from(err);
    let reason: string | undefined;
    let metadata: Record<string, string> = {};
    let retryAfterMs: number | undefined;
    const fieldViolations: FieldViolation[] = [];
    for (const info of ce.findDetails(ErrorInfoSchema)) {
      reason ??= info.reason;
      metadata = { ...info.metadata, ...metadata };
    }
    for (const retry of ce.findDetails(RetryInfoSchema)) {
      const d = retry.retryDelay;
      if (d !== undefined && retryAfterMs === undefined) {
        retryAfterMs = Number(d.seconds) * 1000 + Math.floor(d.nanos / 1e6);
      }
    }
    for (const bad of ce.findDetails(BadRequestSchema)) {
      for (const v of bad.fieldViolations) {
        fieldViolations.push({ field: v.field, description: v.description });
      }
    }
    return new TiercacheError(ce.code, ce.rawMessage, {
      reason: reason === "" ? undefined : reason,
      metadata,
      fieldViolations,
      retryAfterMs,
      cause: err,
    });
  }
}

/** Node's codes for a certificate that did not verify (OpenSSL's X509_V_ERR names). */
const CERT_ERRORS = new Set([
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "CERT_HAS_EXPIRED",
  "CERT_NOT_YET_VALID",
  "CERT_SIGNATURE_FAILURE",
  "CERT_UNTRUSTED",
  "CERT_REJECTED",
  "CERT_REVOKED",
  "INVALID_CA",
  "HOSTNAME_MISMATCH",
]);

/** The TLS error (a refused certificate, a handshake the server ended) behind `err`, if any. */
function tlsFailure(err: unknown): { code: string; message: string } | undefined {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    const code = (e as NodeJS.ErrnoException).code;
    if (typeof code === "string" && (CERT_ERRORS.has(code) || /^ERR_(TLS|SSL)_/.test(code))) {
      return { code, message: e.message };
    }
  }
  return undefined;
}

/** `lock()` waited its `maxWaitMs` while another owner held the lock. */
export class LockNotAcquired extends TiercacheError {
  override readonly name: string = "LockNotAcquired";
  constructor(lockName: string, waitedMs: number) {
    super(Code.DeadlineExceeded, `lock "${lockName}" is held by another owner (waited ${waitedMs} ms)`, {
      reason: "LOCK_NOT_ACQUIRED",
    });
  }
}

/** The server answered with something this SDK does not understand (likely a newer server). */
export class UnexpectedResponse extends TiercacheError {
  override readonly name: string = "UnexpectedResponse";
  constructor(message: string) {
    super(Code.Internal, message, { reason: "UNEXPECTED_RESPONSE" });
  }
}
