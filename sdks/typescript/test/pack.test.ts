// `npm pack` makes a package that installs into an empty folder and runs the README's quick start
// against a real memory-only server. The dependencies install offline, from the npm cache that
// `npm ci` (scripts/setup-typescript.sh) filled from the same lock file.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { after, before, describe, it } from "node:test";
import { Server } from "./servers.js";

const run = promisify(execFile);

/** The package's folder (this file runs from build/test/). */
function packageDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as { name?: string };
      if (pkg.name === "@tiercache/client") return dir;
    } catch {
      // not here
    }
    const parent = dirname(dir);
    if (parent === dir) throw new Error("no @tiercache/client package.json above this test");
    dir = parent;
  }
}

/** The first ```ts block under "## Quick start" in the README. */
function quickStart(readme: string): string {
  const section = readme.split(/^## Quick start$/m)[1];
  assert.ok(section !== undefined, "README.md has no '## Quick start' section");
  const block = /```ts\n([\s\S]*?)```/.exec(section);
  assert.ok(block?.[1] !== undefined, "the quick start has no ```ts block");
  return block[1];
}

describe("npm pack", () => {
  const pkg = packageDir();
  let workdir: string;
  let server: Server;
  before(async () => {
    workdir = mkdtempSync(join(tmpdir(), "tiercache-ts-pack-"));
    server = await Server.start(workdir);
  });
  after(async () => {
    await server.stop();
    rmSync(workdir, { recursive: true, force: true });
  });

  it("installs into an empty folder and runs the README's quick start", { timeout: 120_000 }, async () => {
    const out = join(workdir, "pack");
    mkdirSync(out);
    await run("npm", ["pack", "--pack-destination", out, "--loglevel=error"], { cwd: pkg });
    const tarballs = readdirSync(out).filter((f) => f.endsWith(".tgz"));
    assert.equal(tarballs.length, 1, `npm pack made ${tarballs.join(", ")}`);
    const tarball = join(out, tarballs[0] as string);

    const { stdout: listing } = await run("tar", ["tzf", tarball]);
    const files = listing.split("\n").filter((f) => f !== "");
    for (const want of ["package/package.json", "package/README.md", "package/dist/index.js", "package/dist/index.d.ts"]) {
      assert.ok(files.includes(want), `${want} is not in the tarball`);
    }
    assert.deepEqual(files.filter((f) => /^package\/(src|test|build|node_modules)\//.test(f)), []);
    // No `any` in the public types.
    for (const f of files.filter((f) => f.endsWith(".d.ts"))) {
      const { stdout } = await run("tar", ["xzOf", tarball, f]);
      const code = stdout.replace(/\/\*[\s\S]*?\*\//g, "").replace(/\/\/.*$/gm, "");
      assert.doesNotMatch(code, /\bany\b/, `${f} declares an any`);
    }

    const app = join(workdir, "app");
    mkdirSync(app);
    writeFileSync(join(app, "package.json"), JSON.stringify({ name: "quickstart", private: true, type: "module" }));
    // The runtime dependencies at their locked versions (the ranges of the tarball's package.json
    // must accept them), so the offline install finds every tarball in the cache.
    const lock = JSON.parse(readFileSync(join(pkg, "package-lock.json"), "utf8")) as {
      packages: Record<string, { version: string }>;
    };
    const manifest = JSON.parse(readFileSync(join(pkg, "package.json"), "utf8")) as { dependencies: Record<string, string> };
    const deps = Object.keys(manifest.dependencies).map((n) => `${n}@${lock.packages[`node_modules/${n}`]?.version}`);
    try {
      await run("npm", ["install", "--offline", "--no-audit", "--no-fund", "--loglevel=error", tarball, ...deps], { cwd: app });
    } catch (err) {
      const e = err as { stderr?: string };
      assert.fail(
        `npm install --offline of the tarball failed (its dependencies must be in the npm cache: ` +
          `run bash scripts/setup-typescript.sh):\n${e.stderr ?? String(err)}`,
      );
    }
    const code = quickStart(readFileSync(join(pkg, "README.md"), "utf8"));
    assert.match(code, /http:\/\/127\.0\.0\.1:50051/);
    writeFileSync(join(app, "quickstart.mjs"), code.replace("http://127.0.0.1:50051", server.address));
    const { stdout } = await run("node", ["quickstart.mjs"], { cwd: app, timeout: 30_000 });
    assert.match(stdout, /\{ name: 'Ada' \} \d+n\n/);
    assert.match(stdout, /\{ id: 42, plan: 'pro' \}\n/);
  });
});
