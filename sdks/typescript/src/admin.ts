// What the AdminService and the health service answer, as plain objects: namespaces and their
// policies, counters, the explanation of one key, and the serving status.

import {
  type GetStatsResponse,
  type InspectResponse,
  type NamespaceInfo as PbNamespaceInfo,
  type NamespaceStats as PbNamespaceStats,
  StorageMode,
  Visibility,
} from "./gen/tiercache/v1/admin_pb.js";
import { HealthCheckResponse_ServingStatus } from "./gen/grpc/health/v1/health_pb.js";
import { Tier } from "./gen/tiercache/v1/common_pb.js";
import { msOf } from "./namespace.js";

/** The effective policy of a namespace (durations in ms). */
export interface NamespacePolicy {
  readonly defaultTtlMs: number;
  readonly maxTtlMs: number;
  readonly staleTtlMs: number;
  readonly negativeTtlMs: number;
  /** Random fraction (0..1) added to every TTL. */
  readonly jitter: number;
  /** L1 budget in bytes. */
  readonly l1MaxBytes: bigint;
  /** The longest time L1 may hold an entry when an L2 is configured. */
  readonly l1MaxTtlMs: number;
  readonly maxValueBytes: bigint;
  readonly leaseTtlMs: number;
  readonly maxWaitMs: number;
  /** False when L1 is bypassed for this namespace. */
  readonly l1Enabled: boolean;
}

/** One namespace the server knows, as `Client.listNamespaces` returns it. */
export interface NamespaceInfo {
  readonly name: string;
  readonly policy: NamespacePolicy;
  /** True when the namespace was created on first use. */
  readonly dynamic: boolean;
}

/** Counters of one namespace since the server started (`Client.stats`). */
export type NamespaceStats = Readonly<Omit<PbNamespaceStats, "$typeName" | "$unknown">>;

/** The server's counters and storage status, as `Client.stats` returns them. */
export interface Stats {
  readonly namespaces: readonly NamespaceStats[];
  /** `memory`: one process, no Redis; `two_tier`: L1 in front of a shared Redis. */
  readonly mode: "memory" | "two_tier" | "unknown";
  /** True while Redis is unreachable and the server runs on its own memory. */
  readonly degraded: boolean;
}

/** Whether an entry would be served, and if not, why. */
export type KeyVisibility = "fresh" | "stale" | "absent" | "hidden_by_flush" | "hidden_by_tag" | "unknown";

/** What one tier holds for an inspected key. */
export interface TierView {
  readonly tier: "l1" | "l2" | "unknown";
  readonly present: boolean;
  /** The stored entry's metadata, when present. */
  readonly entry: InspectedEntry | undefined;
  readonly visibility: KeyVisibility;
  /** The latest invalidation sequence of each of the entry's tags (0 when never invalidated). */
  readonly tagMarks: readonly { readonly tag: string; readonly mark: bigint }[];
}

/** An entry as a tier stores it (Inspect does not send values). */
export interface InspectedEntry {
  readonly version: bigint;
  readonly tags: readonly string[];
  readonly absent: boolean;
  readonly stale: boolean;
  /** The namespace sequence the entry was born at. */
  readonly born: bigint;
  readonly ttlRemainingMs: number;
  readonly staleRemainingMs: number;
}

/** The explanation of one key (`Namespace.inspect`). */
export interface Inspection {
  readonly tiers: readonly TierView[];
  /** The namespace's current sequence. */
  readonly sequence: bigint;
  /** The namespace's flush mark. */
  readonly flushMark: bigint;
  /** True when a lease on the key is outstanding. */
  readonly leaseHeld: boolean;
  readonly leaseRemainingMs: number;
  /** The sequence the lease was granted at. */
  readonly leaseBorn: bigint;
  /** A sentence that explains the key's state. */
  readonly explanation: string;
}

/** The standard gRPC health service's answer (`Client.health`). */
export type HealthStatus = "serving" | "not_serving" | "service_unknown" | "unknown";

const TIER_NAMES: Partial<Record<Tier, "l1" | "l2">> = { [Tier.L1]: "l1", [Tier.L2]: "l2" };

const VISIBILITY: Record<Visibility, KeyVisibility> = {
  [Visibility.UNSPECIFIED]: "unknown",
  [Visibility.FRESH]: "fresh",
  [Visibility.STALE]: "stale",
  [Visibility.ABSENT]: "absent",
  [Visibility.HIDDEN_BY_FLUSH]: "hidden_by_flush",
  [Visibility.HIDDEN_BY_TAG]: "hidden_by_tag",
};

/** @internal */
export function namespaceInfoOf(n: PbNamespaceInfo): NamespaceInfo {
  const p = n.policy;
  return {
    name: n.name,
    dynamic: n.dynamic,
    policy: {
      defaultTtlMs: msOf(p?.defaultTtl),
      maxTtlMs: msOf(p?.maxTtl),
      staleTtlMs: msOf(p?.staleTtl),
      negativeTtlMs: msOf(p?.negativeTtl),
      jitter: p?.jitter ?? 0,
      l1MaxBytes: p?.l1MaxBytes ?? 0n,
      l1MaxTtlMs: msOf(p?.l1MaxTtl),
      maxValueBytes: p?.maxValueBytes ?? 0n,
      leaseTtlMs: msOf(p?.leaseTtl),
      maxWaitMs: msOf(p?.maxWait),
      l1Enabled: p?.l1Enabled ?? false,
    },
  };
}

/** @internal */
export function statsOf(r: GetStatsResponse): Stats {
  return {
    namespaces: r.namespaces.map(({ $typeName: _t, $unknown: _u, ...counters }) => counters),
    mode: r.mode === StorageMode.MEMORY ? "memory" : r.mode === StorageMode.TWO_TIER ? "two_tier" : "unknown",
    degraded: r.degraded,
  };
}

/** @internal */
export function inspectionOf(r: InspectResponse): Inspection {
  return {
    tiers: r.tiers.map((t) => ({
      tier: TIER_NAMES[t.tier] ?? "unknown",
      present: t.present,
      entry:
        t.entry === undefined || !t.present
          ? undefined
          : {
              version: t.entry.version,
              tags: t.entry.tags,
              absent: t.entry.absent,
              stale: t.entry.stale,
              born: t.entry.born,
              ttlRemainingMs: msOf(t.entry.freshRemaining),
              staleRemainingMs: msOf(t.entry.staleRemaining),
            },
      visibility: VISIBILITY[t.visibility] ?? "unknown",
      tagMarks: t.tagMarks.map((m) => ({ tag: m.tag, mark: m.mark })),
    })),
    sequence: r.sequence,
    flushMark: r.flushMark,
    leaseHeld: r.leaseHeld,
    leaseRemainingMs: msOf(r.leaseRemaining),
    leaseBorn: r.leaseBorn,
    explanation: r.explanation,
  };
}

/** @internal */
export function healthStatusOf(s: HealthCheckResponse_ServingStatus): HealthStatus {
  switch (s) {
    case HealthCheckResponse_ServingStatus.SERVING:
      return "serving";
    case HealthCheckResponse_ServingStatus.NOT_SERVING:
      return "not_serving";
    case HealthCheckResponse_ServingStatus.SERVICE_UNKNOWN:
      return "service_unknown";
    default:
      return "unknown";
  }
}
