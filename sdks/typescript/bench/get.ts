// `get` throughput of the TypeScript client against ioredis GET on the same data, in one run.
//
//     make bench-typescript                       # from the repository root
//     node build/bench/get.js [--bin path] [--concurrency 64] [--seconds 5] [--keys 1000] [--value-bytes 100]
//
// Starts its own redis-server and one memory-only `tiercache serve` (the release binary when
// built, else the debug one; --bin or $TIERCACHE_BIN to choose), writes the same keys and values
// to both (tiercache through `setMany`, Redis through MSET), warms up for a second, then keeps
// `--concurrency` reads in flight for `--seconds` with each client (one connection each: what a
// Node service would have) and prints reads per second and the ratio. For comparison it also
// measures the SDK with `pipeline: false` (one unary call per get, connect's per-call cost) and a
// unary Get framed by hand over node:http2 (no connect, no SDK). Not run in CI.

import { accessSync, constants, mkdtempSync, rmSync } from "node:fs";
import { connect as h2connect } from "node:http2";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Redis as IORedis } from "ioredis";
import { toBinary } from "@bufbuild/protobuf";
import { Client } from "../src/index.js";
import { GetRequestSchema } from "../src/gen/tiercache/v1/cache_pb.js";
import { Redis, Server } from "../test/servers.js";

function defaultBin(): string | undefined {
  const target = process.env.CARGO_TARGET_DIR || join(homedir(), ".cache/tiercache-target");
  for (const profile of ["release", "debug"]) {
    const path = join(target, profile, "tiercache");
    try {
      accessSync(path, constants.X_OK);
      return path;
    } catch {
      // next
    }
  }
  return undefined;
}

/** Keeps `concurrency` calls of `read` in flight for `seconds`; returns reads per second. */
async function measure(read: (key: string) => Promise<unknown>, keys: string[], concurrency: number, seconds: number): Promise<number> {
  let n = 0;
  let i = 0;
  const deadline = performance.now() + seconds * 1000;
  const worker = async () => {
    while (performance.now() < deadline) {
      i = (i + 1) % keys.length;
      await read(keys[i] as string);
      n += 1;
    }
  };
  const t0 = performance.now();
  await Promise.all(Array.from({ length: concurrency }, worker));
  return n / ((performance.now() - t0) / 1000);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      bin: { type: "string" },
      concurrency: { type: "string", default: "64" },
      seconds: { type: "string", default: "5" },
      keys: { type: "string", default: "1000" },
      "value-bytes": { type: "string", default: "100" },
    },
  });
  const bin = values.bin ?? process.env.TIERCACHE_BIN ?? defaultBin();
  if (bin === undefined) throw new Error("no server binary: cargo build --release -p tiercache-cli, or pass --bin");
  process.env.TIERCACHE_BIN = bin;
  const concurrency = Number(values.concurrency);
  const seconds = Number(values.seconds);
  const keys = Array.from({ length: Number(values.keys) }, (_, i) => `bench:${i}`);
  const value = new Uint8Array(Number(values["value-bytes"])).fill(120);

  const workdir = mkdtempSync(join(tmpdir(), "tiercache-ts-bench-"));
  const redis = await Redis.start(workdir);
  const server = await Server.start(workdir);
  const client = new Client({ address: server.address });
  const unaryClient = new Client({ address: server.address, pipeline: false });
  const ioredis = new IORedis({ port: redis.port, host: "127.0.0.1" });
  try {
    const ns = client.namespace("default");
    await ns.setMany(new Map(keys.map((k) => [k, value])), { ttlMs: 3_600_000 });
    await ioredis.mset(...keys.flatMap((k) => [k, Buffer.from(value)]));
    const tcGet = async (k: string) => {
      if ((await ns.get(k)) === undefined) throw new Error(`tiercache: ${k} missing`);
    };
    const unaryNs = unaryClient.namespace("default");
    const unaryGet = async (k: string) => {
      if ((await unaryNs.get(k)) === undefined) throw new Error(`tiercache: ${k} missing`);
    };
    const redisGet = async (k: string) => {
      if ((await ioredis.getBuffer(k)) === null) throw new Error(`redis: ${k} missing`);
    };
    const session = h2connect(server.address);
    const frames = new Map(
      keys.map((k) => {
        const msg = toBinary(GetRequestSchema, { $typeName: "tiercache.v1.GetRequest", namespace: "default", key: k, freshOnly: false });
        const frame = Buffer.alloc(5 + msg.length);
        frame.writeUInt32BE(msg.length, 1);
        frame.set(msg, 5);
        return [k, frame];
      }),
    );
    const h2Get = (k: string) =>
      new Promise<void>((resolve, reject) => {
        const req = session.request({
          ":method": "POST",
          ":path": "/tiercache.v1.CacheService/Get",
          "content-type": "application/grpc",
          te: "trailers",
        });
        let bytes = 0;
        req.on("data", (d: Buffer) => (bytes += d.length));
        req.on("trailers", (t) => {
          if (t["grpc-status"] !== "0") reject(new Error(`grpc-status ${String(t["grpc-status"])}`));
        });
        req.on("end", () => (bytes > 100 ? resolve() : reject(new Error(`short reply for ${k}`))));
        req.on("error", reject);
        req.end(frames.get(k));
      });
    await measure(tcGet, keys, concurrency, 1);
    await measure(redisGet, keys, concurrency, 1);
    await measure(h2Get, keys, concurrency, 1);
    await measure(unaryGet, keys, concurrency, 1);
    const tc = await measure(tcGet, keys, concurrency, seconds);
    const rd = await measure(redisGet, keys, concurrency, seconds);
    const h2 = await measure(h2Get, keys, concurrency, seconds);
    const unary = await measure(unaryGet, keys, concurrency, seconds);
    session.close();
    console.log(`server binary: ${bin}`);
    console.log(`node ${process.version}, ${concurrency} reads in flight, ${seconds} s each, ${keys.length} keys of ${value.length} bytes`);
    console.log(`tiercache Namespace.get (memory-only server, pipelined): ${Math.round(tc)} reads/s`);
    console.log(`ioredis getBuffer (redis-server):                        ${Math.round(rd)} reads/s`);
    console.log(`ratio tiercache / ioredis: ${(tc / rd).toFixed(2)}`);
    console.log(`for comparison, unary calls (pipeline: false):           ${Math.round(unary)} reads/s`);
    console.log(`  and a unary Get framed by hand over node:http2:        ${Math.round(h2)} reads/s`);
  } finally {
    client.close();
    unaryClient.close();
    ioredis.disconnect();
    await server.stop();
    await redis.stop();
    rmSync(workdir, { recursive: true, force: true });
  }
}

await main();
