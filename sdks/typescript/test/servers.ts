// Real processes for the tests: redis-server and `tiercache serve` on free ports, stopped by
// `stop()` (and killed if the test process exits first).

import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { accessSync, constants, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, connect } from "node:net";
import { homedir, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Client, type ClientOptions, type TlsOptions } from "../src/index.js";

/** A file of the repository, found by walking up from this file (build/test/ or test/ of the
 * package) to the folder that holds `tests/conformance`. */
export function repoPath(...parts: string[]): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, "tests", "conformance", "README.md"))) return join(dir, ...parts);
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`no tests/conformance above ${fileURLToPath(import.meta.url)}`);
    dir = parent;
  }
}

/** The config every test server gets, shared with the Python kit (tests/conformance/server.toml):
 * the namespaces the tests use, dynamic namespaces on. */
export const CONFIG = readFileSync(repoPath("tests", "conformance", "server.toml"), "utf8");

const children = new Set<ChildProcess>();
process.on("exit", () => {
  for (const c of children) c.kill("SIGKILL");
});

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === "object" && addr !== null ? resolve(addr.port) : reject(new Error("no port"))));
    });
  });
}

/** The server binary: $TIERCACHE_BIN, else the debug build of the shared target dir. */
export function tiercacheBin(): string {
  const fromEnv = process.env.TIERCACHE_BIN;
  if (fromEnv) return fromEnv;
  const target = process.env.CARGO_TARGET_DIR || join(homedir(), ".cache/tiercache-target");
  const path = join(target, "debug", "tiercache");
  try {
    accessSync(path, constants.X_OK);
  } catch {
    throw new Error(`no server binary at ${path}; build it with: cargo build -p tiercache-cli (or set TIERCACHE_BIN)`);
  }
  return path;
}

function redisBin(): string {
  const found = spawnSync("sh", ["-c", "command -v redis-server"], { encoding: "utf8" });
  const path = found.stdout.trim();
  if (found.status !== 0 || path === "") {
    throw new Error("redis-server is missing; install it with: apt-get install -y redis-server");
  }
  return path;
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, "127.0.0.1");
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

async function waitPort(port: number, proc: ChildProcess, what: string, log: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (proc.exitCode !== null) {
      throw new Error(`${what} exited with ${proc.exitCode}: ${readFileSync(log, "utf8").slice(-2000)}`);
    }
    if (await canConnect(port)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${what} did not listen on ${port} within 30s`);
}

function start(exe: string, args: string[], log: string, env?: NodeJS.ProcessEnv): ChildProcess {
  const out = openSync(log, "w");
  const proc = spawn(exe, args, { stdio: ["ignore", out, out], env });
  children.add(proc);
  proc.once("exit", () => children.delete(proc));
  return proc;
}

async function stopProc(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise<void>((r) => proc.once("exit", () => r()));
  proc.kill("SIGTERM");
  const timer = setTimeout(() => proc.kill("SIGKILL"), 15_000);
  await exited;
  clearTimeout(timer);
}

export class Redis {
  readonly port: number;
  readonly url: string;
  readonly proc: ChildProcess;

  private constructor(port: number, proc: ChildProcess) {
    this.port = port;
    this.url = `redis://127.0.0.1:${port}`;
    this.proc = proc;
  }

  static async start(workdir: string): Promise<Redis> {
    const exe = redisBin();
    const port = await freePort();
    const log = join(workdir, `redis-${port}.log`);
    const proc = start(
      exe,
      ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
      log,
    );
    await waitPort(port, proc, "redis-server", log);
    return new Redis(port, proc);
  }

  stop(): Promise<void> {
    return stopProc(this.proc);
  }
}

export class Server {
  readonly port: number;
  /** `http://127.0.0.1:<port>` (`https://` for a TLS server), what `new Client({ address })` takes. */
  readonly address: string;
  readonly proc: ChildProcess;
  readonly log: string;

  private constructor(port: number, proc: ChildProcess, log: string, scheme = "http") {
    this.port = port;
    this.address = `${scheme}://127.0.0.1:${port}`;
    this.proc = proc;
    this.log = log;
  }

  /** One `tiercache serve`; memory-only without `redisUrl`. `tls`: the server serves TLS (its
   * config has a [tls] table) and these client options reach it; the address is then https://
   * and readiness is checked with the health service (open under auth). */
  static async start(
    workdir: string,
    redisUrl?: string,
    config: string = CONFIG,
    tls?: TlsOptions,
  ): Promise<Server> {
    const port = await freePort();
    const configPath = join(workdir, `tiercache-${port}.toml`);
    writeFileSync(configPath, config);
    const log = join(workdir, `tiercache-${port}.log`);
    const args = ["serve", "--config", configPath, "--listen", `127.0.0.1:${port}`];
    if (redisUrl !== undefined) args.push("--redis-url", redisUrl);
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("OTEL_")) env[k] = v;
    env.RUST_LOG ??= "warn";
    const proc = start(tiercacheBin(), args, log, env);
    await waitPort(port, proc, "tiercache serve", log);
    const server = new Server(port, proc, log, tls === undefined ? "http" : "https");
    await server.waitServing(tls);
    return server;
  }

  private async waitServing(tls?: TlsOptions): Promise<void> {
    const client = new Client({ address: this.address, timeoutMs: 2_000, ...(tls ? { tls } : {}) });
    try {
      const deadline = Date.now() + 30_000;
      for (;;) {
        try {
          if (tls === undefined) await client.namespace("default").get("tiercache-test-kit-probe");
          else if ((await client.health()) !== "serving") throw new Error("not serving yet");
          return;
        } catch (err) {
          if (Date.now() > deadline) throw err;
          await new Promise((r) => setTimeout(r, 50));
        }
      }
    } finally {
      client.close();
    }
  }

  stop(): Promise<void> {
    return stopProc(this.proc);
  }
}

/** What most suites run against: one Redis, two replicas on it, one memory-only server. */
export class Cluster {
  readonly workdir: string;
  readonly redis: Redis;
  readonly replicas: [Server, Server];
  readonly memory: Server;

  private constructor(workdir: string, redis: Redis, replicas: [Server, Server], memory: Server) {
    this.workdir = workdir;
    this.redis = redis;
    this.replicas = replicas;
    this.memory = memory;
  }

  static async start(): Promise<Cluster> {
    const workdir = mkdtempSync(join(tmpdir(), "tiercache-ts-"));
    const redis = await Redis.start(workdir);
    const [a, b, memory] = await Promise.all([
      Server.start(workdir, redis.url),
      Server.start(workdir, redis.url),
      Server.start(workdir),
    ]);
    return new Cluster(workdir, redis, [a, b], memory);
  }

  async stop(): Promise<void> {
    await Promise.all([...this.replicas, this.memory].map((s) => s.stop()));
    await this.redis.stop();
    rmSync(this.workdir, { recursive: true, force: true });
  }
}

/** A Cluster with a client on each replica: what the two-replica suites share. */
export interface ReplicaClients {
  cluster: Cluster;
  /** A client of replica A (`aOptions` added to its options). */
  a: Client;
  /** A client of replica B. */
  b: Client;
}

/** Starts a Cluster and a client on each of its two replicas. */
export async function startReplicaClients(aOptions: Partial<ClientOptions> = {}): Promise<ReplicaClients> {
  const cluster = await Cluster.start();
  return {
    cluster,
    a: new Client({ ...aOptions, address: cluster.replicas[0].address }),
    b: new Client({ address: cluster.replicas[1].address }),
  };
}

/** Closes both clients and stops the cluster. */
export async function stopReplicaClients(r: ReplicaClients): Promise<void> {
  r.a.close();
  r.b.close();
  await r.cluster.stop();
}

let unique = 0;
/** A namespace name no other test uses (dynamic namespaces are created on first use). */
export function uniqueNamespace(prefix = "ts"): string {
  unique += 1;
  return `${prefix}-${process.pid}-${unique}`;
}
