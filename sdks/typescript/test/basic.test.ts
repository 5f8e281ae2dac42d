import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Client, TiercacheError, json, string } from "../src/index.js";
import { Cluster, uniqueNamespace } from "./servers.js";

describe("get and set", () => {
  let cluster: Cluster;
  let client: Client;
  before(async () => {
    cluster = await Cluster.start();
    client = new Client({ address: cluster.replicas[0].address });
  });
  after(async () => {
    client.close();
    await cluster.stop();
  });

  it("stores a value and reads it back with its metadata", async () => {
    const ns = client.namespace(uniqueNamespace(), { serializer: json });
    const set = await ns.set("user:42", { name: "Ada" }, { ttlMs: 30_000, tags: ["org:7"] });
    assert.equal(set.outcome, "stored");
    assert.ok(set.version > 0n);
    const entry = await ns.get("user:42");
    assert.deepEqual(entry?.value, { name: "Ada" });
    assert.equal(entry?.version, set.version);
    assert.deepEqual(entry?.tags, ["org:7"]);
    assert.equal(entry?.stale, false);
    assert.ok(entry !== undefined && entry.ttlRemainingMs > 25_000 && entry.ttlRemainingMs <= 30_000);
    assert.equal(await ns.get("missing"), undefined);
  });

  it("rejects a bad key with invalid_argument naming the field", async () => {
    const ns = client.namespace("users", { serializer: string });
    await assert.rejects(ns.set("", "v"), (err: unknown) => {
      assert.ok(err instanceof TiercacheError);
      assert.equal(err.codeName, "invalid_argument");
      assert.equal(err.field, "key");
      return true;
    });
  });
});
