// The runner of the language-neutral conformance cases in tests/conformance (see its README):
// every case, in every mode it lists, against a memory-only server ("memory": both clients on it)
// or two replicas on one Redis ("replicas": client 0 on A, client 1 on B). Raw calls go through
// the SDK's stubs and Client.call (deadline, errors); `sdk_get_or_set` through Namespace.getOrSet.

import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { after, before, describe, it } from "node:test";
import { Client, TiercacheError, string } from "../src/index.js";
import {
  DeleteOutcome,
  FillOutcome,
  GetOrSetOutcome,
  GetOutcome,
  ReleaseLeaseOutcome,
  SetOutcome,
  WaitTimeoutAction,
} from "../src/gen/tiercache/v1/cache_pb.js";
import type { Entry as PbEntry } from "../src/gen/tiercache/v1/common_pb.js";
import { durationOf, setRequestOf } from "../src/namespace.js";
import { Cluster, type Server, repoPath } from "./servers.js";

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type Value = Json | bigint | undefined;
type Result = Record<string, Value>;
interface Step {
  op: string;
  client?: number;
  expect?: Record<string, Json>;
  save?: Record<string, string>;
  background?: string;
  name?: string;
  eventually?: boolean;
  [arg: string]: Json | undefined;
}
interface Case {
  description: string;
  modes: string[];
  steps: Step[];
}

const DIR = repoPath("tests", "conformance");
const CASES = readdirSync(DIR)
  .filter((f) => f.endsWith(".json"))
  .sort()
  .map((f) => ({ file: f, case: JSON.parse(readFileSync(join(DIR, f), "utf8")) as Case }));

const GET: Partial<Record<GetOutcome, string>> = { [GetOutcome.HIT]: "hit", [GetOutcome.MISS]: "miss" };
const SET: Partial<Record<SetOutcome, string>> = {
  [SetOutcome.STORED]: "stored",
  [SetOutcome.EXISTS]: "exists",
  [SetOutcome.VERSION_MISMATCH]: "version_mismatch",
};
const DELETE: Partial<Record<DeleteOutcome, string>> = {
  [DeleteOutcome.DELETED]: "deleted",
  [DeleteOutcome.NOT_FOUND]: "not_found",
  [DeleteOutcome.VERSION_MISMATCH]: "version_mismatch",
};
const GET_OR_SET: Partial<Record<GetOrSetOutcome, string>> = {
  [GetOrSetOutcome.HIT]: "hit",
  [GetOrSetOutcome.LEASE]: "lease",
  [GetOrSetOutcome.FILLED]: "filled",
  [GetOrSetOutcome.COMPUTE]: "compute",
};
const FILL: Partial<Record<FillOutcome, string>> = {
  [FillOutcome.STORED]: "stored",
  [FillOutcome.LEASE_REVOKED]: "lease_revoked",
  [FillOutcome.LEASE_EXPIRED]: "lease_expired",
};
const RELEASE: Partial<Record<ReleaseLeaseOutcome, string>> = {
  [ReleaseLeaseOutcome.RELEASED]: "released",
  [ReleaseLeaseOutcome.NOT_HELD]: "not_held",
};

class LoaderError extends Error {}

const decoder = new TextDecoder();
const encoder = new TextEncoder();

function entryFields(e: PbEntry | undefined): Result {
  if (e === undefined) return { value: null };
  return { value: e.absent ? null : decoder.decode(e.value), absent: e.absent, stale: e.stale, version: e.version };
}

/** Equality of a result field and an expected JSON value (versions are bigints, JSON numbers). */
function same(got: Value, want: Value): boolean {
  if (typeof got === "bigint" || typeof want === "bigint") {
    try {
      return BigInt(got as bigint | number) === BigInt(want as bigint | number);
    } catch {
      return false;
    }
  }
  return JSON.stringify(got ?? null) === JSON.stringify(want ?? null);
}

function show(v: unknown): string {
  return JSON.stringify(v, (_k, x: unknown) => (typeof x === "bigint" ? `${x}n` : x));
}

class Runner {
  readonly vars = new Map<string, Value>();
  readonly background = new Map<string, Promise<Result>>();

  constructor(
    readonly clients: [Client, Client],
    readonly ns: string,
  ) {}

  arg(step: Step, name: string): Value {
    const v = step[name];
    if (typeof v === "string" && v.startsWith("$")) return this.vars.get(v.slice(1));
    return v;
  }

  async run(steps: Step[]): Promise<void> {
    for (const [i, step] of steps.entries()) {
      const where = `step ${i} (${step.op})`;
      let result: Result;
      if (step.op === "await") {
        const name = String(step.name);
        const pending = this.background.get(name);
        assert.ok(pending !== undefined, `${where}: no background step ${name}`);
        this.background.delete(name);
        result = await pending;
      } else if (step.background !== undefined) {
        const pending = this.one(step);
        pending.catch(() => {});
        this.background.set(step.background, pending);
        continue;
      } else {
        result = await this.one(step);
        // Another replica's change reaches this one through pub/sub: read again a while.
        const deadline = Date.now() + 5_000;
        while (step.eventually && this.mismatch(step, result) !== undefined && Date.now() <= deadline) {
          await sleep(20);
          result = await this.one(step);
        }
      }
      for (const [name, field] of Object.entries(step.save ?? {})) this.vars.set(name, result[field]);
      const problem = this.mismatch(step, result);
      if (problem !== undefined) assert.fail(`${where}: ${problem}`);
    }
    await Promise.allSettled(this.background.values());
  }

  mismatch(step: Step, result: Result): string | undefined {
    for (const [field, raw] of Object.entries(step.expect ?? {})) {
      const want: Value = typeof raw === "string" && raw.startsWith("$") ? this.vars.get(raw.slice(1)) : raw;
      if (!(field in result)) return `no ${field} in ${show(result)}`;
      if (!same(result[field], want)) return `${field} is ${show(result[field])}, not ${show(want)} (in ${show(result)})`;
    }
    if ("error" in result && !("error" in (step.expect ?? {}))) return `unexpected error ${show(result)}`;
    return undefined;
  }

  async one(step: Step): Promise<Result> {
    const client = this.clients[step.client ?? 0];
    assert.ok(client !== undefined, `no client ${step.client}`);
    try {
      return await this.call(client, step);
    } catch (err) {
      if (!(err instanceof TiercacheError)) throw err;
      return { error: err.codeName, field: err.field ?? null, reason: err.reason ?? null };
    }
  }

  async call(c: Client, s: Step): Promise<Result> {
    const namespace = this.ns;
    const key = String(this.arg(s, "key") ?? "");
    const ms = (name: string) => (typeof s[name] === "number" ? durationOf(name, s[name] as number) : undefined);
    const version = (name: string) => {
      const v = this.arg(s, name);
      return v === undefined || v === null ? undefined : BigInt(v as number | bigint);
    };
    switch (s.op) {
      case "set": {
        const req = setRequestOf(namespace, key, encoder.encode(String(s.value)), {
          ttlMs: s.ttl_ms as number | undefined,
          staleTtlMs: s.stale_ttl_ms as number | undefined,
          tags: s.tags as string[] | undefined,
          ifAbsent: s.if_absent === true,
          ifVersion: version("if_version"),
        });
        const r = await c.call({ idempotent: false }, undefined, (o) => c.cache.set(req, o));
        return { outcome: SET[r.outcome], version: r.version };
      }
      case "get": {
        const r = await c.call({ idempotent: true }, undefined, (o) => c.cache.get({ namespace, key }, o));
        return { outcome: GET[r.outcome], ...entryFields(r.entry) };
      }
      case "delete": {
        const ifVersion = version("if_version");
        const r = await c.call({ idempotent: false }, undefined, (o) => c.cache.delete({ namespace, key, ifVersion }, o));
        return { outcome: DELETE[r.outcome] };
      }
      case "get_or_set": {
        const r = await c.call({ idempotent: false, extraWaitMs: 30_000 }, undefined, (o) =>
          c.cache.getOrSet(
            {
              namespace,
              key,
              maxWait: ms("max_wait_ms"),
              onWaitTimeout: s.on_wait_timeout === "unavailable" ? WaitTimeoutAction.UNAVAILABLE : WaitTimeoutAction.COMPUTE,
              allowStale: s.allow_stale !== false,
              refreshStale: s.refresh_stale !== false,
            },
            o,
          ),
        );
        return { outcome: GET_OR_SET[r.outcome], lease: r.lease?.token ?? null, ...entryFields(r.entry) };
      }
      case "fill": {
        const r = await c.call({ idempotent: false }, undefined, (o) =>
          c.cache.fill(
            {
              namespace,
              key,
              leaseToken: String(this.arg(s, "lease")),
              value: encoder.encode(typeof s.value === "string" ? s.value : ""),
              absent: s.absent === true,
              tags: (s.tags as string[] | undefined) ?? [],
              ttl: ms("ttl_ms"),
            },
            o,
          ),
        );
        return { outcome: FILL[r.outcome] };
      }
      case "release_lease": {
        const leaseToken = String(this.arg(s, "lease"));
        const r = await c.call({ idempotent: false }, undefined, (o) => c.cache.releaseLease({ namespace, key, leaseToken }, o));
        return { outcome: RELEASE[r.outcome] };
      }
      case "invalidate_tags":
        await c.namespace(namespace).invalidateTags(s.tags as string[]);
        return {};
      case "flush":
        await c.namespace(namespace).flush();
        return {};
      case "inspect":
        return { lease_held: (await c.namespace(namespace).inspect(key)).leaseHeld };
      case "sdk_get_or_set":
        return this.sdkGetOrSet(c, s, key);
      case "sleep":
        await sleep(s.ms as number);
        return {};
      default:
        throw new Error(`unknown op ${s.op}`);
    }
  }

  async sdkGetOrSet(c: Client, s: Step, key: string): Promise<Result> {
    let calls = 0;
    const spec = s.loader as { value?: Json; none?: boolean; raise?: boolean };
    const loader = (): string | undefined => {
      calls += 1;
      if (spec.raise) throw new LoaderError("loader failed");
      if (spec.none) return undefined;
      return String(spec.value);
    };
    const ns = c.namespace(this.ns, { serializer: string });
    try {
      const value = await ns.getOrSet(key, loader, {
        ttlMs: s.ttl_ms as number | undefined,
        tags: s.tags as string[] | undefined,
      });
      return { value: value ?? null, loader_calls: calls };
    } catch (err) {
      if (err instanceof LoaderError) return { error: "loader", loader_calls: calls };
      throw err;
    }
  }
}

let unique = 0;

describe("conformance", () => {
  let cluster: Cluster;
  before(async () => {
    cluster = await Cluster.start();
  });
  after(async () => {
    await cluster?.stop();
  });

  it("finds the cases", () => {
    assert.ok(CASES.length >= 10, `only ${CASES.length} cases in ${DIR}`);
  });

  for (const { file, case: c } of CASES) {
    assert.ok(c.modes.length > 0, `${file} lists no mode`);
    for (const mode of c.modes) {
      it(`${file.replace(/\.json$/, "")} [${mode}]: ${c.description}`, async () => {
        const servers: [Server, Server] | undefined =
          mode === "replicas" ? cluster.replicas : mode === "memory" ? [cluster.memory, cluster.memory] : undefined;
        assert.ok(servers !== undefined, `${file}: unknown mode ${mode}`);
        const clients: [Client, Client] = [new Client({ address: servers[0].address }), new Client({ address: servers[1].address })];
        unique += 1;
        try {
          await new Runner(clients, `conf-${file.replace(/\.json$/, "").replace(/_/g, "-")}-${process.pid}-${unique}`).run(c.steps);
        } finally {
          for (const cl of clients) cl.close();
        }
      });
    }
  }
});
