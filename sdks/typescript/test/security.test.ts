// Tokens, TLS and mTLS against real servers: `tiercache serve` with [tls] and [auth], and
// certificates made at test time with the openssl CLI (test/pki.ts).

import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Client, type ClientOptions, TiercacheError, type TlsOptions } from "../src/index.js";
import { Ca, type Issued, sha256Hex } from "./pki.js";
import { CONFIG, Server } from "./servers.js";

const APP_TOKEN = "app-token-0123456789";
const OPS_TOKEN = "ops-token-0123456789";
const SERVER_NAME = "cache.tiercache.test";

function authToml(server: Issued, ca: Ca, mtls: boolean): string {
  return `
[tls]
cert_file = "${server.cert}"
key_file = "${server.key}"
${mtls ? `client_ca_file = "${ca.cert}"` : ""}

[auth]

[auth.principals.app]
token_sha256 = ["${sha256Hex(APP_TOKEN)}"]

[auth.principals.app.rights]
"app*" = ["read", "write"]

[auth.principals.ops]
token_sha256 = ["${sha256Hex(OPS_TOKEN)}"]
client_cert_names = ["ops.tiercache.test"]

[auth.principals.ops.rights]
"*" = ["read", "admin"]
`;
}

function isError(code: string, check?: (e: TiercacheError) => void) {
  return (err: unknown): boolean => {
    assert.ok(err instanceof TiercacheError, `not a TiercacheError: ${String(err)}`);
    assert.equal(err.codeName, code, err.message);
    check?.(err);
    return true;
  };
}

/** A TLS failure: the handshake was refused, UNAVAILABLE, and the message says why. */
function isTlsFailure(err: unknown): boolean {
  assert.ok(err instanceof TiercacheError, `not a TiercacheError: ${String(err)}`);
  assert.equal(err.codeName, "unavailable", err.message);
  assert.equal(err.reason, "TLS_HANDSHAKE_FAILED", err.message);
  assert.match(err.message, /^unavailable: TLS handshake failed \(\w+\): /);
  return true;
}

describe("security: tokens, TLS, mTLS", () => {
  let workdir: string;
  let ca: Ca;
  let otherCa: Ca;
  let client: Issued;
  let stranger: Issued;
  let tls: Server;
  let mtls: Server;
  const open: Client[] = [];

  /** TLS options trusting the test CA, with `over` on top. */
  const tlsOf = (over: TlsOptions = {}): TlsOptions => ({ caFile: ca.cert, serverName: SERVER_NAME, ...over });
  /** A client closed after the suite. */
  const make = (options: ClientOptions): Client => {
    const c = new Client({ retries: 0, pipeline: false, ...options });
    open.push(c);
    return c;
  };

  before(async () => {
    workdir = mkdtempSync(join(tmpdir(), "tiercache-ts-tls-"));
    ca = Ca.make(join(workdir, "pki"), "test-ca");
    otherCa = Ca.make(join(workdir, "pki"), "other-ca");
    const server = ca.issue("server", [SERVER_NAME], ["127.0.0.1"], "serverAuth");
    client = ca.issue("ops", ["ops.tiercache.test"], [], "clientAuth");
    stranger = otherCa.issue("stranger", ["ops.tiercache.test"], [], "clientAuth");
    const mtlsClient = tlsOf({ certFile: client.cert, keyFile: client.key });
    [tls, mtls] = await Promise.all([
      Server.start(workdir, undefined, CONFIG + authToml(server, ca, false), tlsOf()),
      Server.start(workdir, undefined, CONFIG + authToml(server, ca, true), mtlsClient),
    ]);
  });

  after(async () => {
    for (const c of open) c.close();
    await Promise.all([tls?.stop(), mtls?.stop()]);
    rmSync(workdir, { recursive: true, force: true });
  });

  it("a token with the right works, over TLS with the test CA", async () => {
    const c = make({ address: tls.address, token: APP_TOKEN, tls: tlsOf() });
    const ns = c.namespace("app1");
    assert.equal((await ns.set("k", new TextEncoder().encode("v"))).stored, true);
    assert.equal(new TextDecoder().decode((await ns.get("k"))?.value), "v");
  });

  for (const [what, token] of [["no token", undefined], ["a wrong token", "not-a-known-token"]] as const) {
    it(`${what} is unauthenticated; health stays open`, async () => {
      const c = make({ address: tls.address, tls: tlsOf(), ...(token ? { token } : {}) });
      await assert.rejects(
        c.namespace("app1").get("k"),
        isError("unauthenticated", (e) => {
          assert.equal(e.retryable, false);
          if (token) assert.ok(!e.message.includes(token));
        }),
      );
      assert.equal(await c.health(), "serving");
    });
  }

  it("a missing right is permission_denied naming the right and the namespace", async () => {
    const c = make({ address: tls.address, token: APP_TOKEN, tls: tlsOf() });
    await assert.rejects(
      c.namespace("billing").get("k"),
      isError("permission_denied", (e) => assert.deepEqual([e.right, e.namespace], ["read", "billing"])),
    );
    await assert.rejects(
      c.namespace("app1").flush(),
      isError("permission_denied", (e) => assert.deepEqual([e.right, e.namespace], ["invalidate", "app1"])),
    );
    await assert.rejects(c.stats("app1"), isError("permission_denied", (e) => assert.equal(e.right, "admin")));
  });

  it("a wrong CA fails the handshake", async () => {
    const c = make({ address: tls.address, token: APP_TOKEN, tls: tlsOf({ caFile: otherCa.cert }) });
    await assert.rejects(c.namespace("app1").get("k"), (err) => {
      isTlsFailure(err);
      assert.match((err as Error).message, /certificate/i);
      assert.equal((err as TiercacheError).metadata.tls_error, "UNABLE_TO_VERIFY_LEAF_SIGNATURE");
      return true;
    });
  });

  it("serverName is the name checked; without it the address's IP is", async () => {
    const wrong = make({ address: tls.address, token: APP_TOKEN, tls: tlsOf({ serverName: "other.tiercache.test" }) });
    await assert.rejects(wrong.namespace("app1").get("k"), (err) => {
      isTlsFailure(err);
      assert.equal((err as TiercacheError).metadata.tls_error, "ERR_TLS_CERT_ALTNAME_INVALID");
      return true;
    });
    const byIp = make({ address: tls.address, token: APP_TOKEN, tls: { ca: readFileSync(ca.cert) } });
    assert.equal(await byIp.namespace("app1").get("absent"), undefined);
  });

  it("https:// means TLS with the system roots (which do not hold the test CA)", async () => {
    const c = make({ address: tls.address, token: APP_TOKEN });
    assert.ok(tls.address.startsWith("https://"));
    await assert.rejects(c.namespace("app1").get("k"), (err) => {
      isTlsFailure(err);
      assert.match((err as Error).message, /certificate/i);
      return true;
    });
  });

  it("mTLS: the client certificate is a principal; a token still works", async () => {
    const certOnly = make({ address: mtls.address, tls: tlsOf({ certFile: client.cert, keyFile: client.key }) });
    assert.ok(await certOnly.stats());
    await assert.rejects(
      certOnly.namespace("app1").set("k", new Uint8Array([1])),
      isError("permission_denied", (e) => assert.deepEqual([e.right, e.namespace], ["write", "app1"])),
    );
    const withToken = make({
      address: mtls.address,
      token: APP_TOKEN,
      tls: tlsOf({ cert: readFileSync(client.cert, "utf8"), key: readFileSync(client.key) }),
    });
    assert.equal((await withToken.namespace("app1").set("k", new Uint8Array([1]))).stored, true);
  });

  it("mTLS refuses a client without a certificate, and one from another CA", async () => {
    const none = make({ address: mtls.address, token: APP_TOKEN, tls: tlsOf() });
    await assert.rejects(none.namespace("app1").get("k"), isTlsFailure);
    const foreign = make({
      address: mtls.address,
      token: APP_TOKEN,
      tls: tlsOf({ certFile: stranger.cert, keyFile: stranger.key }),
    });
    await assert.rejects(foreign.namespace("app1").get("k"), isTlsFailure);
  });
});

describe("security: options refused before any connection", () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "tiercache-ts-opts-"));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("bad TLS options name the option", () => {
    const notPem = join(dir, "ca.crt");
    writeFileSync(notPem, "hello");
    const cases: [TlsOptions, RegExp][] = [
      [{ caFile: join(dir, "missing.crt") }, /tls\.caFile .*missing\.crt.*cannot read: ENOENT/],
      [{ caFile: notPem }, /tls\.caFile .*not PEM/],
      [{ ca: "x" }, /tls\.ca: not PEM/],
      [{ ca: "x", caFile: notPem }, /give ca or caFile, not both/],
      [{ serverName: "two words" }, /tls\.serverName: "two words" is not a host name/],
    ];
    for (const [tls, message] of cases) {
      assert.throws(() => new Client({ address: "127.0.0.1:1", tls }), message);
    }
  });

  it("a client certificate needs its key, and the other way round", () => {
    const ca = Ca.make(dir, "ca");
    const leaf = ca.issue("c", ["c.test"], [], "clientAuth");
    assert.throws(() => new Client({ address: "127.0.0.1:1", tls: { certFile: leaf.cert } }), /key\/keyFile is missing/);
    assert.throws(() => new Client({ address: "127.0.0.1:1", tls: { keyFile: leaf.key } }), /cert\/certFile is missing/);
  });

  it("an http:// address with tls is refused", () => {
    assert.throws(() => new Client({ address: "http://127.0.0.1:1", tls: true }), /use https:\/\//);
  });

  it("a token headers cannot carry is refused without showing it", () => {
    assert.throws(
      () => new Client({ address: "127.0.0.1:1", token: "secret with space" }),
      (err: Error) => !err.message.includes("secret") && /token/.test(err.message),
    );
  });
});
