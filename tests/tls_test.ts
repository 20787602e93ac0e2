/**
 * TLS on the RPC links: certificates made with openssl in a temp dir (a
 * farm CA, a host certificate for 127.0.0.1, and a second CA whose
 * certificates must be refused). A call over TLS works with the HMAC
 * handshake inside; a server with the wrong CA's certificate, a plain peer
 * on a TLS port and a TLS peer on a plain port are refused with errors that
 * name the peer; a farm builds with TLS on every link; the roles' TLS flags
 * name themselves in their errors.
 */
import assert from "node:assert/strict";
import {
  AuthError,
  connect,
  listen,
  readPemFile,
  type RpcServer,
  secretFromBytes,
  type TlsConfig,
} from "../rpc/mod.ts";
import { Farm, ROOT, runIn } from "../farm/mod.ts";
import { setTlsNoDelay } from "../rpc/_tcp_nodelay.ts";

const SECRET = await secretFromBytes(crypto.getRandomValues(new Uint8Array(32)));

async function openssl(dir: string, args: string[]): Promise<void> {
  const out = await new Deno.Command("openssl", {
    args,
    cwd: dir,
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
}

/** A CA, and a certificate for 127.0.0.1 signed by it: `${name}-ca.pem`, `${name}.pem`, `${name}.key`. */
async function makeCerts(dir: string, name: string): Promise<void> {
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  await openssl(dir, [
    "req",
    "-x509",
    ...ec,
    "-keyout",
    `${name}-ca.key`,
    "-out",
    `${name}-ca.pem`,
    "-days",
    "2",
    "-subj",
    `/CN=termite test CA ${name}`,
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
  ]);
  await openssl(dir, [
    "req",
    ...ec,
    "-keyout",
    `${name}.key`,
    "-out",
    `${name}.csr`,
    "-subj",
    "/CN=127.0.0.1",
  ]);
  await Deno.writeTextFile(
    `${dir}/${name}.ext`,
    "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n" +
      "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
  );
  await openssl(dir, [
    "x509",
    "-req",
    "-in",
    `${name}.csr`,
    "-CA",
    `${name}-ca.pem`,
    "-CAkey",
    `${name}-ca.key`,
    "-CAcreateserial",
    "-out",
    `${name}.pem`,
    "-days",
    "2",
    "-extfile",
    `${name}.ext`,
  ]);
  await Deno.chmod(`${dir}/${name}.key`, 0o600);
}

interface Certs {
  dir: string;
  /** CA "farm" and a host certificate from it. */
  farm: TlsConfig;
  /** A certificate from another CA ("other"), and that CA. */
  other: TlsConfig;
}

async function withCerts(fn: (certs: Certs) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "termite-tls-" });
  try {
    await makeCerts(dir, "farm");
    await makeCerts(dir, "other");
    const config = async (name: string): Promise<TlsConfig> => ({
      caCerts: [await readPemFile(`${dir}/${name}-ca.pem`, "CERTIFICATE")],
      cert: await readPemFile(`${dir}/${name}.pem`, "CERTIFICATE"),
      key: await readPemFile(`${dir}/${name}.key`, "PRIVATE KEY"),
    });
    await fn({ dir, farm: await config("farm"), other: await config("other") });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function server(tls: TlsConfig | undefined, logs: string[]): RpcServer {
  return listen({
    transport: "tcp",
    port: 0,
    secret: SECRET,
    role: "worker",
    tls,
    handlers: { add: (p: { a: number; b: number }) => p.a + p.b },
    log: (m) => logs.push(m),
  });
}

async function waitFor(condition: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 200 && !condition(); i++) await new Promise((r) => setTimeout(r, 25));
  assert.ok(condition(), `waited for ${what}`);
}

Deno.test("tls: a call goes through TLS with the HMAC handshake inside", async () => {
  await withCerts(async ({ farm }) => {
    const logs: string[] = [];
    await using s = server(farm, logs);
    await using peer = await connect({
      transport: "tcp",
      port: s.port,
      secret: SECRET,
      role: "master",
      tls: { caCerts: farm.caCerts },
    });
    assert.equal(await peer.call("add", { a: 2, b: 3 }), 5);
    // Inside TLS the secret still decides: a wrong one is refused.
    const wrong = await secretFromBytes(crypto.getRandomValues(new Uint8Array(32)));
    await assert.rejects(
      connect({
        transport: "tcp",
        port: s.port,
        secret: wrong,
        role: "master",
        tls: { caCerts: farm.caCerts },
      }),
      AuthError,
    );
    assert.deepEqual(logs.filter((l) => /TLS/.test(l)), [], logs.join("\n"));
  });
});

Deno.test("tls: an accepted TLS connection gets TCP_NODELAY (its socket found through /proc)", async () => {
  await withCerts(async ({ farm }) => {
    using listener = Deno.listenTls({
      hostname: "127.0.0.1",
      port: 0,
      cert: farm.cert!,
      key: farm.key!,
    });
    using client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
    using accepted = await listener.accept();
    assert.equal(setTlsNoDelay(accepted), true);
    assert.equal(client.remoteAddr.port, listener.addr.port);
  });
});

Deno.test("tls: a server whose certificate is from another CA is refused, naming it", async () => {
  await withCerts(async ({ farm, other }) => {
    const logs: string[] = [];
    await using s = server(other, logs);
    await assert.rejects(
      connect({
        transport: "tcp",
        port: s.port,
        secret: SECRET,
        role: "master",
        tls: { caCerts: farm.caCerts },
      }),
      (error: Error) => {
        assert.ok(error instanceof AuthError, String(error));
        assert.match(
          error.message,
          new RegExp(`^Cannot connect to 127\\.0\\.0\\.1:${s.port} over TLS: .*issuer`, "i"),
        );
        return true;
      },
    );
    await waitFor(() => logs.some((l) => /^Rejected peer 127\.0\.0\.1:\d+: TLS/.test(l)), "log");
  });
});

Deno.test("tls: a plain peer on a TLS port, and a TLS peer on a plain port, are refused", async () => {
  await withCerts(async ({ farm }) => {
    const tlsLogs: string[] = [];
    await using tlsServer = server(farm, tlsLogs);
    await assert.rejects(
      connect({ transport: "tcp", port: tlsServer.port, secret: SECRET, role: "master" }),
      (error: Error) => {
        assert.match(
          error.message,
          new RegExp(`^Cannot connect to 127\\.0\\.0\\.1:${tlsServer.port}: .*the peer speaks TLS`),
        );
        return true;
      },
    );
    await waitFor(
      () => tlsLogs.some((l) => /^Rejected peer 127\.0\.0\.1:\d+: TLS handshake failed/.test(l)),
      "the TLS server's log",
    );
    assert.equal(tlsServer.peers.size, 0);

    const plainLogs: string[] = [];
    await using plainServer = server(undefined, plainLogs);
    await assert.rejects(
      connect({
        transport: "tcp",
        port: plainServer.port,
        secret: SECRET,
        role: "master",
        tls: { caCerts: farm.caCerts },
      }),
      (error: Error) => {
        assert.ok(error instanceof AuthError, String(error));
        assert.match(
          error.message,
          new RegExp(`^Cannot connect to 127\\.0\\.0\\.1:${plainServer.port} over TLS: `),
        );
        return true;
      },
    );
    await waitFor(
      () => plainLogs.some((l) => /^Rejected peer 127\.0\.0\.1:\d+: .*the peer speaks TLS/.test(l)),
      "the plain server's log",
    );
    assert.equal(plainServer.peers.size, 0);
  });
});

Deno.test("tls: a certificate and key that do not match stop the coordinator with one line naming the flags", async () => {
  await withCerts(async ({ dir }) => {
    await Deno.writeFile(`${dir}/secret`, crypto.getRandomValues(new Uint8Array(32)), {
      mode: 0o600,
    });
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        `${ROOT}/coordinator.ts`,
        "--secret",
        `${dir}/secret`,
        "--port",
        "0",
        "--http-port",
        "none",
        "--tls-ca",
        `${dir}/farm-ca.pem`,
        "--tls-cert",
        `${dir}/farm.pem`,
        "--tls-key",
        `${dir}/other.key`,
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(out.code, 1);
    assert.match(
      new TextDecoder().decode(out.stderr),
      /^termite coordinator: Cannot use the TLS certificate and key: .*\(check --tls-cert and --tls-key\)\n$/,
    );
  });
});

Deno.test("tls: a farm builds with TLS on every link", async () => {
  await withCerts(async ({ dir: certs }) => {
    await Deno.mkdir(`${ROOT}/.cache/test`, { recursive: true });
    const dir = await Deno.makeTempDir({ dir: `${ROOT}/.cache/test`, prefix: "tls-farm-" });
    await Deno.chmod(dir, 0o755);
    const tree = `${dir}/tree`;
    await Deno.mkdir(tree);
    const ca = ["--tls-ca", `${certs}/farm-ca.pem`];
    const server = [...ca, "--tls-cert", `${certs}/farm.pem`, "--tls-key", `${certs}/farm.key`];
    const farm = await Farm.start({
      dir: `${dir}/farm`,
      tree,
      workers: 2,
      slotsPerWorker: 2,
      netns: false,
      coordinatorArgs: server,
      workerArgs: server,
      masterArgs: ca,
    });
    try {
      const objects: string[] = [];
      for (let i = 0; i < 6; i++) {
        await Deno.writeTextFile(`${tree}/t${i}.c`, `int t${i}(void) { return ${i}; }\n`);
        objects.push(`t${i}.o`);
      }
      // One result too large for the reply: fetched from the worker over TLS.
      await Deno.writeTextFile(
        `${tree}/Makefile`,
        `all: ${objects.join(" ")} big.bin\n%.o: %.c\n\tgcc -c $< -o $@\n` +
          `big.bin:\n\thead -c 300000 /dev/urandom > big.bin\n`,
      );
      const build = await runIn(
        tree,
        ["make", "-j4", `SHELL=${farm.binDir}/termite-sh`],
        farm.env,
      );
      assert.equal(build.code, 0, build.stdout + build.stderr);
      const metrics = await (await fetch(`http://127.0.0.1:${farm.statusPort}/metrics`)).text();
      assert.match(metrics, /^termite_master_jobs_run_total\{where="local"\} 0$/m, metrics);
      assert.match(metrics, /^termite_master_jobs_run_total\{where="worker"\} 7$/m, metrics);
      for (const o of objects) assert.ok((await Deno.stat(`${tree}/${o}`)).size > 0);
      assert.equal((await Deno.stat(`${tree}/big.bin`)).size, 300000);

      // A master without TLS is refused by the coordinator, which names it.
      const plain = new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          `${ROOT}/master.ts`,
          "--secret",
          farm.secretPath,
          "--coordinator",
          `127.0.0.1:${farm.coordinatorPort}`,
          "--cache-dir",
          `${dir}/plain-master`,
          "--socket",
          `${dir}/plain.sock`,
        ],
        cwd: tree,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const coordinatorLog = () => Deno.readTextFile(farm.coordinator.log);
      for (let i = 0; i < 200; i++) {
        if (/Rejected peer 127\.0\.0\.1:\d+: TLS handshake failed/.test(await coordinatorLog())) {
          break;
        }
        await new Promise((r) => setTimeout(r, 50));
      }
      plain.kill("SIGTERM");
      const out = await plain.output();
      assert.match(
        await coordinatorLog(),
        /Rejected peer 127\.0\.0\.1:\d+: TLS handshake failed/,
      );
      const masterErr = new TextDecoder().decode(out.stderr);
      assert.match(masterErr, new RegExp(`coordinator 127\\.0\\.0\\.1:${farm.coordinatorPort}`));
    } finally {
      await farm.stop();
      await Deno.remove(dir, { recursive: true });
    }
  });
});
