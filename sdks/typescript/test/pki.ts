// Certificates made at test time with the openssl CLI (Node's crypto cannot issue X.509): CAs,
// and server and client certificates they sign.

import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

function openssl(dir: string, ...args: string[]): void {
  const r = spawnSync("openssl", args, { cwd: dir, encoding: "utf8" });
  if (r.error !== undefined) throw new Error(`the openssl CLI is missing (apt-get install -y openssl): ${r.error.message}`);
  if (r.status !== 0) throw new Error(`openssl ${args.join(" ")}: ${r.stderr}`);
}

/** A certificate and its key, as files. */
export interface Issued {
  cert: string;
  key: string;
}

/** A CA in `dir` (`<name>.crt`, `<name>.key`) and the leaves it signs. */
export class Ca {
  readonly dir: string;
  readonly name: string;

  private constructor(dir: string, name: string) {
    this.dir = dir;
    this.name = name;
  }

  /** The CA certificate's file. */
  get cert(): string {
    return join(this.dir, `${this.name}.crt`);
  }

  static make(dir: string, name: string): Ca {
    mkdirSync(dir, { recursive: true });
    openssl(dir, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
      "-keyout", `${name}.key`, "-out", `${name}.crt`, "-days", "2", "-subj", `/CN=${name}`,
      "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign");
    return new Ca(dir, name);
  }

  /** A leaf for `dns` and `ips`; `usage` is serverAuth or clientAuth. */
  issue(name: string, dns: string[], ips: string[], usage: "serverAuth" | "clientAuth"): Issued {
    const sans = [...dns.map((d) => `DNS:${d}`), ...ips.map((i) => `IP:${i}`)].join(",");
    writeFileSync(join(this.dir, `${name}.ext`),
      `subjectAltName=${sans}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=${usage}\n`);
    openssl(this.dir, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
      "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${name}`);
    openssl(this.dir, "x509", "-req", "-in", `${name}.csr`, "-CA", `${this.name}.crt`, "-CAkey", `${this.name}.key`,
      "-CAcreateserial", "-out", `${name}.crt`, "-days", "2", "-extfile", `${name}.ext`);
    return { cert: join(this.dir, `${name}.crt`), key: join(this.dir, `${name}.key`) };
  }
}

export function sha256Hex(token: string): string {
  return createHash("sha256").update(token).digest("hex");
}
