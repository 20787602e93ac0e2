/**
 * Mutual TLS on the RPC links: certificates made with openssl in a temp dir
 * (a farm CA, a host certificate for 127.0.0.1 for server and client use,
 * and a second CA whose certificates must be refused). A call over TLS works
 * with the HMAC handshake inside; a server with the wrong CA's certificate, a
 * client with no certificate or another CA's, a plain peer on a TLS port and
 * a TLS peer on a plain port are refused with errors on both sides that name
 * the peer and what to fix; a farm builds with mutual TLS on every link and
 * serves its page over HTTPS; the roles' TLS flags name themselves in their
 * errors.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  AuthError,
  type CallContext,
  connect,
  listen,
  listenTls,
  readPemFile,
  type RpcPeer,
  type RpcServer,
  secretFromBytes,
  type TlsConfig,
} from "../rpc/mod.ts";
import { startCoordinator } from "../coordinator/mod.ts";
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
      "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
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

/** A worker-role RPC server serving `add`: over mutual TLS with `tls`, plain TCP without. */
async function server(
  tls: TlsConfig | undefined,
  logs: string[],
  handshakeTimeoutMs?: number,
): Promise<RpcServer> {
  const options = {
    handshakeTimeoutMs,
    transport: "tcp" as const,
    port: 0,
    secret: SECRET,
    role: "worker" as const,
    tls,
    handlers: { add: (p: { a: number; b: number }) => p.a + p.b },
    log: (m: string) => logs.push(m),
  };
  return tls === undefined ? listen(options) : await listenTls(options);
}

/** A master-role client of `s`, over TLS with `tls` (which may lack a certificate). */
function client(s: RpcServer, tls?: TlsConfig, secret = SECRET) {
  return connect({ transport: "tcp", port: s.port, secret, role: "master", tls });
}

/** Asserts that `promise` rejects with an AuthError whose message matches `pattern`. */
async function rejectsWith(promise: Promise<unknown>, pattern: RegExp): Promise<void> {
  await assert.rejects(promise, (error: Error) => {
    assert.ok(error instanceof AuthError, String(error));
    assert.match(error.message, pattern);
    return true;
  });
}

async function waitFor(condition: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 200 && !condition(); i++) await new Promise((r) => setTimeout(r, 25));
  assert.ok(condition(), `waited for ${what}`);
}

Deno.test("tls: a call goes through mutual TLS with the HMAC handshake inside", async () => {
  await withCerts(async ({ farm }) => {
    const logs: string[] = [];
    await using s = await server(farm, logs);
    await using peer = await client(s, farm);
    assert.equal(await peer.call("add", { a: 2, b: 3 }), 5);
    // Inside TLS the secret still decides: a wrong one is refused.
    const wrong = await secretFromBytes(crypto.getRandomValues(new Uint8Array(32)));
    await assert.rejects(client(s, farm, wrong), AuthError);
    await waitFor(() => logs.length > 0, "the wrong secret's log");
    assert.deepEqual(logs.filter((l) => /TLS/.test(l)), [], logs.join("\n"));
  });
});

Deno.test("tls: 8 MiB streams both ways with a slow reader, its SHA-256 intact (node socket paused, writes wait for drain)", async () => {
  await withCerts(async ({ farm }) => {
    const blob = new Uint8Array(8 * 1024 * 1024 + 12345);
    for (let i = 0; i < blob.length; i += 65536) {
      crypto.getRandomValues(blob.subarray(i, i + 65536));
    }
    const expected = createHash("sha256").update(blob).digest("hex");
    const handlers = {
      bytes: async (_: unknown, ctx: CallContext) => {
        await ctx.sendBytes(blob);
        return blob.length;
      },
    };
    await using s = await listenTls({
      transport: "tcp",
      port: 0,
      secret: SECRET,
      role: "worker",
      tls: farm,
      handlers,
      log: () => {},
    });
    await using peer = await connect({
      transport: "tcp",
      port: s.port,
      secret: SECRET,
      role: "master",
      tls: farm,
      handlers,
    });
    const pull = async (from: RpcPeer) => {
      const hash = createHash("sha256");
      let chunks = 0;
      const total = await from.call<number>("bytes", null, {
        onChunk: async (chunk) => {
          hash.update(chunk as Uint8Array);
          // A slow reader: bytes pile up behind it.
          if (++chunks % 4 === 0) await new Promise((resolve) => setTimeout(resolve, 10));
        },
        timeoutMs: 60_000,
      });
      assert.equal(total, blob.length);
      return hash.digest("hex");
    };
    // The node:tls server writes; then it reads, slower than the client sends.
    assert.equal(await pull(peer), expected);
    await waitFor(() => s.peers.size === 1, "the server's peer");
    assert.equal(await pull([...s.peers][0]), expected);
  });
});

Deno.test("tls: a TLS connection made by Deno.connectTls gets TCP_NODELAY (its socket found through /proc)", async () => {
  await withCerts(async ({ farm }) => {
    using listener = Deno.listenTls({
      hostname: "127.0.0.1",
      port: 0,
      cert: farm.cert!,
      key: farm.key!,
    });
    const accepting = listener.accept();
    using conn = await Deno.connectTls({
      hostname: "127.0.0.1",
      port: listener.addr.port,
      caCerts: farm.caCerts,
    });
    using _accepted = await accepting;
    assert.equal(setTlsNoDelay(conn), true);
  });
});

Deno.test("tls: a server whose certificate is from another CA is refused, naming it", async () => {
  await withCerts(async ({ farm, other }) => {
    const logs: string[] = [];
    await using s = await server(other, logs);
    await rejectsWith(
      client(s, farm),
      new RegExp(`^Cannot connect to 127\\.0\\.0\\.1:${s.port} over TLS: .*issuer`, "i"),
    );
    await waitFor(() => logs.some((l) => /^Rejected peer 127\.0\.0\.1:\d+: TLS/.test(l)), "log");
    assert.equal(s.peers.size, 0);
  });
});

Deno.test("tls: a client with no certificate is refused, both sides saying to start it with --tls-cert and --tls-key", async () => {
  await withCerts(async ({ farm }) => {
    const logs: string[] = [];
    await using s = await server(farm, logs);
    await rejectsWith(
      client(s, { caCerts: farm.caCerts }),
      new RegExp(
        `^Cannot connect to 127\\.0\\.0\\.1:${s.port}: Peer refused the handshake: ` +
          "TLS client certificate missing: every member needs --tls-cert and --tls-key: " +
          "a certificate from the farm CA \\(--tls-ca\\)$",
      ),
    );
    await waitFor(() => logs.length > 0, "the server's log");
    assert.match(
      logs[0],
      /^Rejected peer 127\.0\.0\.1:\d+: TLS client certificate missing: every member needs --tls-cert and --tls-key/,
    );
    assert.equal(s.peers.size, 0);
  });
});

Deno.test("tls: a client certificate from another CA is refused, both sides saying so", async () => {
  await withCerts(async ({ farm, other }) => {
    const logs: string[] = [];
    await using s = await server(farm, logs);
    const pattern =
      /TLS client certificate refused \([A-Z_]+: not signed by the farm CA, or its extendedKeyUsage lacks clientAuth\): every member needs --tls-cert and --tls-key/;
    await rejectsWith(
      client(s, { caCerts: farm.caCerts, cert: other.cert, key: other.key }),
      new RegExp(
        `^Cannot connect to 127\\.0\\.0\\.1:${s.port}: Peer refused the handshake: ${pattern.source}`,
      ),
    );
    await waitFor(() => logs.length > 0, "the server's log");
    assert.match(logs[0], new RegExp(`^Rejected peer 127\\.0\\.0\\.1:\\d+: ${pattern.source}`));
    assert.equal(s.peers.size, 0);
    // The server still serves members.
    await using peer = await client(s, farm);
    assert.equal(await peer.call("add", { a: 1, b: 1 }), 2);
  });
});

Deno.test("tls: a silent client is dropped at the handshake deadline", async () => {
  await withCerts(async ({ farm }) => {
    const logs: string[] = [];
    await using s = await listenTls({
      transport: "tcp",
      port: 0,
      secret: SECRET,
      role: "worker",
      tls: farm,
      handlers: {},
      handshakeTimeoutMs: 200,
      log: (m) => logs.push(m),
    });
    using conn = await Deno.connect({ hostname: "127.0.0.1", port: s.port });
    // The server closes: the read ends (EOF or reset), it does not hang.
    await conn.read(new Uint8Array(16)).catch(() => null);
    await waitFor(() => logs.length > 0, "the server's log");
    assert.match(logs[0], /^Rejected peer 127\.0\.0\.1:\d+: TLS handshake failed: .*timeout/i);
  });
});

Deno.test("tls: connections beyond peersMax are closed at once, TLS handshakes counted", async () => {
  await withCerts(async ({ farm }) => {
    const logs: string[] = [];
    await using s = await listenTls({
      transport: "tcp",
      port: 0,
      secret: SECRET,
      role: "worker",
      tls: farm,
      handlers: { add: (p: { a: number; b: number }) => p.a + p.b },
      peersMax: 1,
      log: (m) => logs.push(m),
    });
    await using peer = await client(s, farm);
    using extra = await Deno.connect({ hostname: "127.0.0.1", port: s.port });
    // Closed before any TLS: the read ends (EOF or reset) without a byte.
    const n = await extra.read(new Uint8Array(16)).catch(() => null);
    assert.equal(n, null);
    await waitFor(() => logs.length > 0, "the server's log");
    assert.match(logs[0], /^Refusing connection from 127\.0\.0\.1:\d+: 1 connections open$/);
    assert.equal(logs.length, 1, logs.join("\n"));
    assert.equal(await peer.call("add", { a: 2, b: 2 }), 4);
  });
});

Deno.test("tls: garbage and truncated TLS records at a TLS port are dropped; it keeps serving", async () => {
  await withCerts(async ({ farm }) => {
    const logs: string[] = [];
    await using s = await server(farm, logs, 500);
    const garbage = (i: number): Uint8Array => {
      const bytes = crypto.getRandomValues(new Uint8Array(1 + (i * 97) % 3000));
      // Every other one starts like a TLS handshake record (type 22, version 3.x).
      if (i % 2 === 0 && bytes.length >= 3) bytes.set([22, 3, i % 4]);
      return bytes;
    };
    await Promise.all(Array.from({ length: 40 }, async (_, i) => {
      using conn = await Deno.connect({ hostname: "127.0.0.1", port: s.port });
      await conn.write(garbage(i)).catch(() => {});
      if (i % 3 === 0) return; // Closed at once, mid-record.
      // The server answers with an alert and closes, or waits for the rest until the deadline.
      await conn.read(new Uint8Array(64)).catch(() => null);
    }));
    assert.equal(s.peers.size, 0);
    // At least every one that waited for an answer is logged.
    await waitFor(() => logs.length >= 26, "the server's log");
    await using peer = await client(s, farm);
    assert.equal(await peer.call("add", { a: 20, b: 22 }), 42);
    assert.ok(
      logs.every((l) => /^Rejected peer 127\.0\.0\.1:\d+: TLS handshake failed: /.test(l)),
      logs.join("\n"),
    );
  });
});

Deno.test("tls: a plain peer on a TLS port, and a TLS peer on a plain port, are refused", async () => {
  await withCerts(async ({ farm }) => {
    const tlsLogs: string[] = [];
    await using tlsServer = await server(farm, tlsLogs);
    await assert.rejects(
      client(tlsServer),
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
    await using plainServer = await server(undefined, plainLogs);
    await rejectsWith(
      client(plainServer, farm),
      new RegExp(`^Cannot connect to 127\\.0\\.0\\.1:${plainServer.port} over TLS: `),
    );
    await waitFor(
      () => plainLogs.some((l) => /^Rejected peer 127\.0\.0\.1:\d+: .*the peer speaks TLS/.test(l)),
      "the plain server's log",
    );
    assert.equal(plainServer.peers.size, 0);
  });
});

Deno.test("tls: the coordinator's page is HTTPS with its certificate, fetched with the farm CA", async () => {
  await withCerts(async ({ dir, farm }) => {
    const logs: string[] = [];
    await using coordinator = await startCoordinator({
      hostname: "127.0.0.1",
      port: 0,
      httpHostname: "127.0.0.1",
      httpPort: 0,
      secret: SECRET,
      tls: farm,
      tokenCommand: "token",
      log: (m) => logs.push(m),
    });
    const url = `https://127.0.0.1:${coordinator.httpPort}/status.json`;
    using withCa = Deno.createHttpClient({ caCerts: farm.caCerts });
    const response = await fetch(url, { client: withCa });
    assert.equal(response.status, 200);
    assert.ok(Array.isArray((await response.json()).workers));
    // Without the farm CA the certificate is not trusted; plain HTTP gets no page.
    await assert.rejects(fetch(url), TypeError);
    await assert.rejects(fetch(url.replace("https:", "http:")));
    // monitor.ts reads it with --tls-ca.
    {
      const out = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          `${ROOT}/monitor.ts`,
          "--url",
          `https://127.0.0.1:${coordinator.httpPort}/`,
          "--tls-ca",
          `${dir}/farm-ca.pem`,
          "--count",
          "1",
        ],
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(out.stdout);
      assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
      assert.match(text, /^termite farm .*0 workers/m);
      assert.doesNotMatch(text, /cannot read/);
    }
  });
});

Deno.test("tls: a certificate and key that do not match, or a port in use, stop the coordinator with one line naming the flags", async () => {
  await withCerts(async ({ dir }) => {
    await Deno.writeFile(`${dir}/secret`, crypto.getRandomValues(new Uint8Array(32)), {
      mode: 0o600,
    });
    const coordinator = async (tls: string[], port = "0") => {
      const out = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          `${ROOT}/coordinator.ts`,
          ...["--secret", `${dir}/secret`, "--host", "127.0.0.1", "--port", port],
          ...["--http-port", "none", "--tls-ca", `${dir}/farm-ca.pem`, ...tls],
        ],
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.equal(out.code, 1);
      return new TextDecoder().decode(out.stderr);
    };
    assert.match(
      await coordinator(["--tls-cert", `${dir}/farm.pem`, "--tls-key", `${dir}/other.key`]),
      /^termite coordinator: Cannot use the TLS certificate and key: the key is not the certificate's \(check --tls-cert and --tls-key\)\n$/,
    );
    using busy = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = busy.addr.port;
    assert.equal(
      await coordinator(
        ["--tls-cert", `${dir}/farm.pem`, "--tls-key", `${dir}/farm.key`],
        String(port),
      ),
      `termite coordinator: Cannot listen on 127.0.0.1:${port} (workers and masters): ` +
        `port ${port} is in use (choose another with --port)\n`,
    );
  });
});

Deno.test("tls: a farm builds with mutual TLS on every link", async () => {
  await withCerts(async ({ dir: certs }) => {
    await Deno.mkdir(`${ROOT}/.cache/test`, { recursive: true });
    const dir = await Deno.makeTempDir({ dir: `${ROOT}/.cache/test`, prefix: "tls-farm-" });
    await Deno.chmod(dir, 0o755);
    const tree = `${dir}/tree`;
    await Deno.mkdir(tree);
    const tls = [
      ...["--tls-ca", `${certs}/farm-ca.pem`],
      ...["--tls-cert", `${certs}/farm.pem`, "--tls-key", `${certs}/farm.key`],
    ];
    const farm = await Farm.start({
      dir: `${dir}/farm`,
      tree,
      workers: 2,
      slotsPerWorker: 2,
      netns: false,
      coordinatorArgs: [...tls, "--http-port", "0", "--http-host", "127.0.0.1"],
      // Without host files the compiler's contents travel: from the master to
      // one worker, then from that worker to the other (peer blobs, over TLS).
      workerArgs: [...tls, "--no-host-files"],
      masterArgs: tls,
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
      // Workers fetched contents from each other, each showing its certificate as a client.
      const built = await farm.status();
      assert.ok(built.peerBlobs.redirected > 0, JSON.stringify(built.peerBlobs));
      for (const w of farm.workers) {
        const log = await Deno.readTextFile(w.log);
        assert.doesNotMatch(log, /cannot reach peer|cannot get blob|sent blob .* other bytes/, log);
      }

      // The coordinator's page is HTTPS, and lists both workers.
      const page = /status page on (https:\/\/127\.0\.0\.1:\d+\/)/.exec(
        await Deno.readTextFile(farm.coordinator.log),
      );
      assert.ok(page, "the coordinator names its https:// page");
      using ca = Deno.createHttpClient({
        caCerts: [await Deno.readTextFile(`${certs}/farm-ca.pem`)],
      });
      const status = await (await fetch(`${page[1]}status.json`, { client: ca })).json();
      assert.equal(status.workers.length, 2, JSON.stringify(status));
      // A worker's /metrics is HTTPS too.
      const metricsUrl = /metrics on (https:\/\/\S+\/metrics),/.exec(
        await Deno.readTextFile(farm.workers[0].log),
      );
      assert.ok(metricsUrl, "the worker names its https:// metrics");
      const workerMetrics = await (await fetch(metricsUrl[1], { client: ca })).text();
      assert.match(workerMetrics, /^termite_worker_jobs_total\{/m);
      // The master links to it as https://.
      const linked = async () =>
        (await (await fetch(`http://127.0.0.1:${farm.statusPort}/status.json`)).json())
          .coordinator?.statusUrl;
      for (let i = 0; i < 100 && await linked() === undefined; i++) {
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.equal(await linked(), page[1]);

      // A master without TLS is refused by the coordinator, which names it.
      // (One with no certificate, or another CA's, is covered above with RpcServer.)
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
