/**
 * RPC throughput over loopback: round trips per second (sequential and with
 * 64 calls in flight), blob transfer MB/s in CHUNK_BYTES chunks, the time of
 * a job-like call (two chunks, then the reply), and handshakes per second;
 * on plain TCP and over mutual TLS (certificates made with openssl, P-256),
 * measured in turns in one run. The server runs in a Web Worker (its own thread and
 * event loop), the client on the main thread, as two processes would.
 *
 * Run alone: `deno run -A bench/rpc_bench.ts [--quick]`.
 */
import {
  connect,
  listen,
  listenTls,
  type RpcPeer,
  type RpcServer,
  secretFromBytes,
  type TlsConfig,
} from "../rpc/mod.ts";

export type BenchResult = { name: string; value: number; unit: string; note?: string };

const MIB = 1024 * 1024;
const SECRET_BYTES = new TextEncoder().encode("rpc bench secret");

interface ServerReady {
  port: number;
  tlsPort: number;
  path: string;
}

/** A CA and a certificate for 127.0.0.1 from it, made with openssl in `dir`. */
async function makeTls(dir: string): Promise<TlsConfig> {
  const run = async (args: string[]) => {
    const out = await new Deno.Command("openssl", { args, cwd: dir, stderr: "piped" }).output();
    if (!out.success) {
      throw new Error(`openssl ${args[0]}: ${new TextDecoder().decode(out.stderr)}`);
    }
  };
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  await run([
    "req",
    "-x509",
    ...ec,
    "-keyout",
    "ca.key",
    "-out",
    "ca.pem",
    "-days",
    "1",
    "-subj",
    "/CN=bench CA",
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign",
  ]);
  await run(["req", ...ec, "-keyout", "host.key", "-out", "host.csr", "-subj", "/CN=127.0.0.1"]);
  await Deno.writeTextFile(
    `${dir}/host.ext`,
    "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
  );
  await run([
    "x509",
    "-req",
    "-in",
    "host.csr",
    "-CA",
    "ca.pem",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-out",
    "host.pem",
    "-days",
    "1",
    "-extfile",
    "host.ext",
  ]);
  return {
    caCerts: [await Deno.readTextFile(`${dir}/ca.pem`)],
    cert: await Deno.readTextFile(`${dir}/host.pem`),
    key: await Deno.readTextFile(`${dir}/host.key`),
  };
}

/** Worker side: serves echo, blob and file methods until told to stop. */
async function serveInWorker(): Promise<void> {
  const scope = globalThis as unknown as {
    postMessage(message: unknown): void;
    onmessage: ((event: MessageEvent) => void) | null;
  };
  // Set before any await: the main thread sends the TLS set-up at once.
  const tlsSent = new Promise<TlsConfig>((resolve) => {
    scope.onmessage = (event) => resolve(event.data);
  });
  const secret = await secretFromBytes(SECRET_BYTES);
  let blob = new Uint8Array(0);
  const handlers = {
    echo: (x: unknown) => x,
    blob: async (bytes: number, ctx: { sendBytes(b: Uint8Array): Promise<void> }) => {
      if (blob.length !== bytes) {
        blob = new Uint8Array(bytes);
        for (let i = 0; i < bytes; i += 65536) crypto.getRandomValues(blob.subarray(i, i + 65536));
      }
      await ctx.sendBytes(blob);
      return bytes;
    },
    file: async (path: string, ctx: { sendFile(p: string): Promise<number> }) =>
      await ctx.sendFile(path),
    // Like a job: output streamed before the reply (Nagle would hold the reply).
    job: async (_: unknown, ctx: { sendChunk(c: unknown): Promise<void> }) => {
      await ctx.sendChunk("output 1");
      await ctx.sendChunk("output 2");
      return 0;
    },
  };
  const dir = await Deno.makeTempDir({ prefix: "rpc_bench_" });
  const tls = await tlsSent;
  const servers: RpcServer[] = [
    listen({ transport: "tcp", secret, role: "worker", handlers }),
    await listenTls({ transport: "tcp", secret, role: "worker", handlers, tls }),
    listen({ transport: "unix", path: `${dir}/bench.sock`, secret, role: "worker", handlers }),
  ];
  scope.onmessage = async () => {
    for (const server of servers) await server.close();
    await Deno.remove(dir, { recursive: true });
    scope.postMessage("stopped");
  };
  scope.postMessage(
    {
      port: servers[0].port,
      tlsPort: servers[1].port,
      path: `${dir}/bench.sock`,
    } satisfies ServerReady,
  );
}

async function sequentialCallsPerS(peer: RpcPeer, calls: number): Promise<number> {
  for (let i = 0; i < 200; i++) await peer.call("echo", i); // warm-up
  const start = performance.now();
  for (let i = 0; i < calls; i++) await peer.call("echo", i);
  return Math.round(calls / ((performance.now() - start) / 1000));
}

async function concurrentCallsPerS(peer: RpcPeer, calls: number, inFlight: number) {
  let next = 0;
  const start = performance.now();
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (next < calls) await peer.call("echo", next++);
    }),
  );
  return Math.round(calls / ((performance.now() - start) / 1000));
}

/** Mean milliseconds of a call that streams two chunks before its reply. */
async function jobCallMs(peer: RpcPeer, calls: number): Promise<number> {
  const call = () => peer.call("job", null, { onChunk: () => {} });
  for (let i = 0; i < 20; i++) await call(); // warm-up
  const start = performance.now();
  for (let i = 0; i < calls; i++) await call();
  return Math.round((performance.now() - start) / calls * 1000) / 1000;
}

async function blobMBPerS(peer: RpcPeer, method: string, params: unknown, bytes: number) {
  let received = 0;
  const start = performance.now();
  await peer.call(method, params, {
    onChunk: (chunk) => {
      received += (chunk as Uint8Array).length;
    },
    timeoutMs: 120_000,
  });
  const ms = performance.now() - start;
  if (received !== bytes) throw new Error(`Received ${received} of ${bytes} bytes`);
  return Math.round(bytes / MIB / (ms / 1000));
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

export async function run(options: { quick: boolean }): Promise<BenchResult[]> {
  const results: BenchResult[] = [];
  const secret = await secretFromBytes(SECRET_BYTES);
  const dir = await Deno.makeTempDir({ prefix: "rpc_bench_file_" });
  const tls = await makeTls(dir);
  const worker = new Worker(import.meta.url, { type: "module" });
  worker.postMessage(tls);
  const ready = await new Promise<ServerReady>((resolve) => {
    worker.onmessage = (event) => resolve(event.data);
  });
  try {
    const calls = options.quick ? 5_000 : 50_000;
    const repeats = options.quick ? 1 : 3;
    const blobBytes = (options.quick ? 16 : 64) * MIB;
    const note = "server in a Web Worker, loopback";
    {
      const links = [
        { name: "tcp", port: ready.port, tls: undefined },
        { name: "tls", port: ready.tlsPort, tls },
      ];
      const peers = await Promise.all(
        links.map((l) =>
          connect({ transport: "tcp", port: l.port, secret, role: "master", tls: l.tls })
        ),
      );
      const m = links.map(() => ({
        seq: [] as number[],
        par: [] as number[],
        blob: [] as number[],
        file: [] as number[],
        job: [] as number[],
      }));
      const path = `${dir}/blob.bin`;
      const data = new Uint8Array(blobBytes);
      for (let i = 0; i < data.length; i += 65536) {
        crypto.getRandomValues(data.subarray(i, i + 65536));
      }
      await Deno.writeFile(path, data);
      for (const peer of peers) await blobMBPerS(peer, "blob", blobBytes, blobBytes); // warm-up
      // In turns, so that both links see the same machine load.
      for (let r = 0; r < repeats; r++) {
        for (const [i, peer] of peers.entries()) {
          m[i].seq.push(await sequentialCallsPerS(peer, calls));
          m[i].par.push(await concurrentCallsPerS(peer, calls * 4, 64));
          m[i].blob.push(await blobMBPerS(peer, "blob", blobBytes, blobBytes));
          m[i].file.push(await blobMBPerS(peer, "file", path, blobBytes));
          m[i].job.push(await jobCallMs(peer, options.quick ? 100 : 500));
        }
      }
      for (const peer of peers) {
        peer.close();
        await peer.closed;
      }
      for (const [i, { name }] of links.entries()) {
        results.push(
          {
            name: `rpc ${name} round trips, sequential`,
            value: median(m[i].seq),
            unit: "calls/s",
            note,
          },
          {
            name: `rpc ${name} round trips, 64 in flight`,
            value: median(m[i].par),
            unit: "calls/s",
            note,
          },
          {
            name: `rpc ${name} blob ${blobBytes / MIB} MiB from memory`,
            value: median(m[i].blob),
            unit: "MB/s",
            note: "sendBytes, 256 KiB chunks",
          },
          {
            name: `rpc ${name} blob ${blobBytes / MIB} MiB from a file`,
            value: median(m[i].file),
            unit: "MB/s",
            note: "sendFile, page-cached file",
          },
          {
            name: `rpc ${name} job-like call (2 chunks, then the reply)`,
            value: median(m[i].job),
            unit: "ms",
            note: "sequential; Nagle's algorithm would add ~40 ms",
          },
        );
      }
    }
    {
      await using peer = await connect({
        transport: "unix",
        path: ready.path,
        secret,
        role: "master",
      });
      const seq: number[] = [];
      for (let r = 0; r < repeats; r++) seq.push(await sequentialCallsPerS(peer, calls));
      results.push({
        name: "rpc unix round trips, sequential",
        value: median(seq),
        unit: "calls/s",
        note,
      });
    }
    {
      const handshakes = options.quick ? 200 : 1000;
      const links = [
        { name: "", port: ready.port, tls: undefined },
        { name: " over TLS", port: ready.tlsPort, tls },
      ];
      for (const link of links) {
        const start = performance.now();
        for (let i = 0; i < handshakes; i++) {
          const peer = await connect({
            transport: "tcp",
            port: link.port,
            secret,
            role: "master",
            tls: link.tls,
          });
          peer.close();
          await peer.closed;
        }
        results.push({
          name: `rpc connect + handshake${link.name}`,
          value: Math.round(handshakes / ((performance.now() - start) / 1000)),
          unit: "conn/s",
          note: "HMAC-SHA256 challenge-response, sequential" +
            (link.tls ? ", TLS, P-256 certificate" : ""),
        });
      }
    }
  } finally {
    worker.postMessage("stop");
    await new Promise<void>((resolve) => {
      worker.onmessage = () => resolve();
    });
    worker.terminate();
    await Deno.remove(dir, { recursive: true });
  }
  return results;
}

if (import.meta.main) {
  if ("WorkerGlobalScope" in globalThis) {
    await serveInWorker();
  } else {
    const results = await run({ quick: Deno.args.includes("--quick") });
    for (const r of results) {
      console.log(
        `${r.name.padEnd(44)} ${String(r.value).padStart(10)} ${r.unit.padEnd(8)} ${r.note ?? ""}`,
      );
    }
  }
}
