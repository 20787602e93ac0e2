import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  type CallContext,
  CHUNK_BYTES,
  clientHandshake,
  connect,
  encodeFrame,
  FRAME_BYTES_MAX,
  type Handlers,
  HANDLERS_RUNNING_MAX,
  listen,
  MessageType,
  RpcError,
  type RpcPeer,
  type RpcServer,
  secretFromBytes,
  writeAll,
} from "../rpc/mod.ts";

const SECRET = await secretFromBytes(crypto.getRandomValues(new Uint8Array(32)));

interface Pair {
  server: RpcServer;
  client: RpcPeer;
  logs: string[];
  [Symbol.asyncDispose](): Promise<void>;
}

/** A server on loopback TCP (or a unix socket) and one client connected to it. */
async function pair(
  handlers: Handlers | ((peer: RpcPeer) => Handlers),
  options?: { clientHandlers?: Handlers; path?: string; peersMax?: number },
): Promise<Pair> {
  const logs: string[] = [];
  const log = (message: string) => logs.push(message);
  const server = options?.path === undefined
    ? listen({
      transport: "tcp",
      secret: SECRET,
      role: "worker",
      handlers,
      log,
      peersMax: options?.peersMax,
    })
    : listen({
      transport: "unix",
      path: options.path,
      secret: SECRET,
      role: "worker",
      handlers,
      log,
    });
  try {
    const client = options?.path === undefined
      ? await connect({
        transport: "tcp",
        port: server.port,
        secret: SECRET,
        role: "master",
        handlers: options?.clientHandlers,
        log,
      })
      : await connect({
        transport: "unix",
        path: options.path,
        secret: SECRET,
        role: "master",
        handlers: options?.clientHandlers,
        log,
      });
    return {
      server,
      client,
      logs,
      async [Symbol.asyncDispose]() {
        client.close();
        await client.closed;
        await server.close();
      },
    };
  } catch (error) {
    await server.close();
    throw error;
  }
}

function rpcError(code: string, message?: RegExp | string) {
  return (error: unknown) => {
    assert(error instanceof RpcError, `expected RpcError, got ${error}`);
    assert.equal(error.code, code, error.message);
    if (typeof message === "string") assert.equal(error.message, message);
    else if (message !== undefined) assert.match(error.message, message);
    return true;
  };
}

async function waitFor(condition: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 1000 && !condition(); i++) {
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  assert(condition(), `timed out waiting for ${what}`);
}

function randomBytes(n: number): Uint8Array {
  const bytes = new Uint8Array(n);
  for (let i = 0; i < n; i += 65536) crypto.getRandomValues(bytes.subarray(i, i + 65536));
  return bytes;
}

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** A handler that waits until its call is cancelled and records the abort reason. */
function hangingHandler(started: string[], aborted: string[]) {
  return (params: string, ctx: CallContext) => {
    started.push(params);
    return new Promise((_resolve, reject) => {
      ctx.signal.addEventListener("abort", () => {
        const reason = ctx.signal.reason;
        aborted.push(`${params}:${reason instanceof RpcError ? reason.code : reason}`);
        reject(reason);
      });
    });
  };
}

Deno.test("1,000 concurrent calls on one connection are all in flight at once", async () => {
  const CALLS = 1000;
  let arrived = 0;
  const barrier = Promise.withResolvers<void>();
  await using p = await pair({
    double: async (n: number) => {
      if (++arrived === CALLS) barrier.resolve();
      await barrier.promise; // every handler waits until all 1,000 are running
      return n * 2;
    },
  });
  const results = await Promise.all(
    Array.from({ length: CALLS }, (_, i) => p.client.call<number>("double", i)),
  );
  assert.deepEqual(results, Array.from({ length: CALLS }, (_, i) => i * 2));
  assert.equal(arrived, CALLS);
});

Deno.test("a call past its deadline fails with TIMEOUT and the handler's signal aborts", async () => {
  const started: string[] = [];
  const aborted: string[] = [];
  await using p = await pair({ hang: hangingHandler(started, aborted), echo: (x) => x });
  await assert.rejects(
    p.client.call("hang", "a", { timeoutMs: 100 }),
    rpcError("TIMEOUT", /^Call hang to 127\.0\.0\.1:\d+ timed out after 100 ms$/),
  );
  await waitFor(() => aborted.length === 1, "the handler's abort");
  assert.deepEqual(aborted, ["a:CANCELLED"]);
  assert.equal(await p.client.call("echo", "still fine"), "still fine");
});

Deno.test("calls with different deadlines each time out on their own", async () => {
  const started: string[] = [];
  const aborted: string[] = [];
  const release = Promise.withResolvers<string>();
  await using p = await pair({
    hang: hangingHandler(started, aborted),
    slow: () => release.promise,
  });
  const long = p.client.call("slow", null, { timeoutMs: 60_000 });
  const forever = p.client.call("slow", null, { timeoutMs: Infinity });
  const settled: string[] = [];
  const short = [300, 100, 200].map((timeoutMs) =>
    assert.rejects(
      p.client.call("hang", String(timeoutMs), { timeoutMs }),
      rpcError("TIMEOUT", new RegExp(`timed out after ${timeoutMs} ms$`)),
    ).then(() => void settled.push(String(timeoutMs)))
  );
  await Promise.all(short);
  assert.deepEqual(settled.sort(), ["100", "200", "300"]);
  await waitFor(() => aborted.length === 3, "the handlers' aborts");
  release.resolve("done");
  assert.equal(await long, "done");
  assert.equal(await forever, "done");
});

Deno.test("cancelling a call through its AbortSignal reaches the handler", async () => {
  const started: string[] = [];
  const aborted: string[] = [];
  await using p = await pair({ hang: hangingHandler(started, aborted) });
  const controller = new AbortController();
  const call = p.client.call("hang", "b", { signal: controller.signal });
  await waitFor(() => started.length === 1, "the handler to start");
  controller.abort(new Error("user pressed ^C"));
  await assert.rejects(call, rpcError("CANCELLED", /user pressed \^C/));
  await waitFor(() => aborted.length === 1, "the handler's abort");
  assert.deepEqual(aborted, ["b:CANCELLED"]);
  // An already aborted signal never sends the call.
  await assert.rejects(
    p.client.call("hang", "c", { signal: controller.signal }),
    rpcError("CANCELLED"),
  );
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.deepEqual(started, ["b"]);
});

Deno.test("when the peer process dies mid-call, the caller gets CLOSED, not a hang", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const script = `${dir}/child.ts`;
    await Deno.writeTextFile(
      script,
      `import { listen, secretFromBytes } from ${
        JSON.stringify(import.meta.resolve("../rpc/mod.ts"))
      };
const secret = await secretFromBytes(new TextEncoder().encode("child secret"));
const server = listen({ transport: "tcp", secret, role: "worker",
  handlers: { hang: () => new Promise(() => {}), ping: () => "pong" } });
console.log(server.port);`,
    );
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--config", new URL("../deno.json", import.meta.url).pathname, script],
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    try {
      const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
      let output = "";
      while (!output.includes("\n")) {
        const { value, done } = await reader.read();
        if (done) break;
        output += value;
      }
      const port = Number(output.trim());
      assert(port > 0, `child printed ${JSON.stringify(output)}`);
      await using peer = await connect({
        transport: "tcp",
        port,
        secret: await secretFromBytes(new TextEncoder().encode("child secret")),
        role: "master",
      });
      assert.equal(await peer.call("ping"), "pong");
      const calls = [peer.call("hang", null), peer.call("hang", null, { timeoutMs: 60_000 })];
      await new Promise((resolve) => setTimeout(resolve, 50));
      child.kill("SIGKILL");
      for (const call of calls) await assert.rejects(call, rpcError("CLOSED"));
      await peer.closed;
      await assert.rejects(peer.call("ping"), rpcError("CLOSED"));
      await reader.cancel();
    } finally {
      try {
        child.kill("SIGKILL");
      } catch {
        // Already dead.
      }
      await child.status;
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("closing either end rejects pending calls with CLOSED and aborts handlers", async () => {
  const started: string[] = [];
  const aborted: string[] = [];
  {
    await using p = await pair({ hang: hangingHandler(started, aborted) });
    const call = p.client.call("hang", "server-closes");
    await waitFor(() => started.length === 1, "the handler");
    await p.server.close();
    await assert.rejects(call, rpcError("CLOSED"));
    await p.client.closed;
    assert.deepEqual(aborted, ["server-closes:CLOSED"]);
  }
  {
    await using p = await pair({ hang: hangingHandler(started, aborted) });
    const call = p.client.call("hang", "client-closes");
    await waitFor(() => started.length === 2, "the handler");
    p.client.close();
    p.client.close(); // idempotent
    await assert.rejects(call, rpcError("CLOSED"));
    await waitFor(() => aborted.length === 2, "the handler's abort");
    assert.equal(aborted[1], "client-closes:CLOSED");
    await assert.rejects(p.client.notify("hang", "x"), rpcError("CLOSED"));
  }
});

Deno.test("error codes and messages cross the wire", async () => {
  await using p = await pair({
    missing: (path: string) => {
      throw new RpcError("ENOENT", `No such file: ${path}`);
    },
    denied: async () => {
      await Promise.resolve();
      throw new RpcError("EACCES", "Permission denied: /root");
    },
    buggy: () => {
      throw new TypeError("Cannot read properties of undefined");
    },
    weird: () => {
      throw "a string";
    },
    unencodable: () => () => {},
    huge: () => "x".repeat(FRAME_BYTES_MAX),
    ok: () => undefined,
  });
  await assert.rejects(p.client.call("missing", "/a"), rpcError("ENOENT", "No such file: /a"));
  await assert.rejects(p.client.call("denied"), rpcError("EACCES", "Permission denied: /root"));
  await assert.rejects(
    p.client.call("buggy"),
    rpcError("INTERNAL", "Cannot read properties of undefined"),
  );
  await assert.rejects(p.client.call("weird"), rpcError("INTERNAL", "a string"));
  await assert.rejects(
    p.client.call("unencodable"),
    rpcError("INTERNAL", /Cannot send the result/),
  );
  await assert.rejects(p.client.call("huge"), rpcError("LIMIT", /Frame too large/));
  await assert.rejects(p.client.call("nope"), rpcError("NO_METHOD", "No such method: nope"));
  for (const method of ["constructor", "toString", "__proto__", "hasOwnProperty"]) {
    await assert.rejects(p.client.call(method), rpcError("NO_METHOD"));
  }
  await assert.rejects(
    p.client.call("ok", "y".repeat(FRAME_BYTES_MAX)),
    rpcError("LIMIT", /Cannot send ok: Frame too large/),
  );
  await assert.rejects(p.client.call("ok", 10n ** 30n), rpcError("BAD_REQUEST"));
  assert.equal(await p.client.call("ok"), null);
  assert.deepEqual(p.logs, []);
});

Deno.test("a multi-MiB blob streams in chunks with its SHA-256 intact", async () => {
  const blob = randomBytes(8 * 1024 * 1024 + 12345);
  const dir = await Deno.makeTempDir();
  const path = `${dir}/blob`;
  const fileBlob = randomBytes(5 * 1024 * 1024 + 7);
  await Deno.writeFile(path, fileBlob);
  try {
    await using p = await pair({
      bytes: async (_params, ctx) => {
        await ctx.sendBytes(blob);
        return blob.length;
      },
      file: async (name: string, ctx) => await ctx.sendFile(`${dir}/${name}`),
      values: async (count: number, ctx) => {
        for (let i = 0; i < count; i++) await ctx.sendChunk({ i });
        return "done";
      },
    });
    for (const [method, expected] of [["bytes", blob], ["file", fileBlob]] as const) {
      const hash = createHash("sha256");
      const sizes: number[] = [];
      let chunks = 0;
      const total = await p.client.call<number>(method, "blob", {
        onChunk: async (chunk) => {
          assert(chunk instanceof Uint8Array);
          sizes.push(chunk.length);
          hash.update(chunk);
          // A slow consumer now and then: the reader waits, the sender feels backpressure.
          if (++chunks % 8 === 0) await new Promise((resolve) => setTimeout(resolve, 5));
        },
      });
      assert.equal(total, expected.length);
      assert.equal(hash.digest("hex"), sha256(expected));
      assert(sizes.every((size) => size <= CHUNK_BYTES));
      assert.equal(sizes.length, Math.ceil(expected.length / CHUNK_BYTES));
    }
    const values: unknown[] = [];
    assert.equal(
      await p.client.call("values", 100, { onChunk: (c) => void values.push(c) }),
      "done",
    );
    assert.deepEqual(values, Array.from({ length: 100 }, (_, i) => ({ i })));
    await assert.rejects(p.client.call("file", "missing"), rpcError("ENOENT", /no such file/));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("sendFile() of small, empty and chunk-sized files: every byte, in as few chunks", async () => {
  // The first chunk is sized to the file: a file that is a chunk and a byte takes two.
  const dir = await Deno.makeTempDir();
  try {
    await using p = await pair({
      file: async (name: string, ctx) => await ctx.sendFile(`${dir}/${name}`),
    });
    for (const size of [0, 1, 300, CHUNK_BYTES - 1, CHUNK_BYTES, CHUNK_BYTES + 1]) {
      const bytes = randomBytes(size);
      await Deno.writeFile(`${dir}/f${size}`, bytes);
      const chunks: Uint8Array[] = [];
      const total = await p.client.call<number>("file", `f${size}`, {
        onChunk: (chunk) => void chunks.push((chunk as Uint8Array).slice()),
      });
      assert.equal(total, size);
      assert.equal(chunks.length, Math.ceil(size / CHUNK_BYTES), `${size} bytes`);
      const got = new Uint8Array(size);
      let at = 0;
      for (const chunk of chunks) {
        got.set(chunk, at);
        at += chunk.length;
      }
      assert.deepEqual(got, bytes);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an onChunk that throws fails the call and cancels the sender", async () => {
  const aborted: string[] = [];
  await using p = await pair({
    stream: async (_params, ctx: CallContext) => {
      try {
        for (let i = 0; i < 10_000; i++) await ctx.sendChunk(new Uint8Array(1024));
      } catch (error) {
        aborted.push((error as RpcError).code);
        throw error;
      }
    },
  });
  let seen = 0;
  await assert.rejects(
    p.client.call("stream", null, {
      onChunk: () => {
        if (++seen === 3) throw new Error("disk full");
      },
    }),
    /disk full/,
  );
  await waitFor(() => aborted.length === 1, "the sender to stop");
  assert.deepEqual(aborted, ["CANCELLED"]);
});

Deno.test("both sides call each other on one connection", async () => {
  const serverSeen: string[] = [];
  await using p = await pair(
    (peer) => ({
      greet: async (name: string) => {
        serverSeen.push(peer.peerRole);
        // Call back into the client while the client's call is in flight.
        const title = await peer.call<string>("title", name);
        return `hello ${title} ${name}`;
      },
    }),
    { clientHandlers: { title: (name: string) => (name === "ada" ? "countess" : "dr") } },
  );
  const greetings = await Promise.all(
    ["ada", "alan", "grace"].map((name) => p.client.call("greet", name)),
  );
  assert.deepEqual(greetings, ["hello countess ada", "hello dr alan", "hello dr grace"]);
  assert.deepEqual(serverSeen, ["master", "master", "master"]);
  const [serverPeer] = p.server.peers;
  assert.equal(await serverPeer.call("title", "ada"), "countess");
});

Deno.test("notify() runs the handler without a reply", async () => {
  const seen: unknown[] = [];
  await using p = await pair({
    note: (params) => {
      seen.push(params);
      return "ignored";
    },
    fail: () => {
      throw new Error("boom");
    },
  });
  await p.client.notify("note", { a: 1 });
  await p.client.notify("fail");
  await p.client.notify("unknown");
  await waitFor(() => seen.length === 1 && p.logs.length === 2, "the notifications");
  assert.deepEqual(seen, [{ a: 1 }]);
  assert.match(p.logs[0], /Notification fail from .* failed: boom/);
  assert.match(p.logs[1], /unknown method unknown/);
});

Deno.test("a running notification handler's signal aborts when the connection closes", async () => {
  const aborted: string[] = [];
  let started = false;
  await using p = await pair({
    watch: (_params, ctx: CallContext) => {
      started = true;
      return new Promise<void>((resolve) => {
        ctx.signal.addEventListener("abort", () => {
          aborted.push((ctx.signal.reason as RpcError).code);
          resolve();
        });
      });
    },
  });
  await p.client.notify("watch");
  await waitFor(() => started, "the handler");
  p.client.close();
  await waitFor(() => aborted.length === 1, "the abort");
  assert.deepEqual(aborted, ["CLOSED"]);
});

Deno.test("handlers beyond the in-flight limit get LIMIT", async () => {
  const release = Promise.withResolvers<void>();
  let running = 0;
  await using p = await pair({
    wait: async () => {
      running++;
      await release.promise;
      return "released";
    },
  });
  const EXTRA = 5;
  const calls = Array.from(
    { length: HANDLERS_RUNNING_MAX + EXTRA },
    () => p.client.call("wait").then((v) => v, (e: RpcError) => e.code),
  );
  await waitFor(() => running === HANDLERS_RUNNING_MAX, "the handlers");
  release.resolve();
  const results = await Promise.all(calls);
  assert.equal(results.filter((r) => r === "released").length, HANDLERS_RUNNING_MAX);
  assert.equal(results.filter((r) => r === "LIMIT").length, EXTRA);
});

Deno.test("a unix socket carries calls and chunks, and is removed on close", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/termite.sock`;
  try {
    const blob = randomBytes(3 * CHUNK_BYTES + 1);
    {
      await using p = await pair({
        add: ({ a, b }: { a: number; b: number }) => a + b,
        blob: async (_params, ctx) => await ctx.sendBytes(blob),
      }, { path });
      assert.equal(p.client.remoteAddr, "unix");
      assert.equal(p.client.peerRole, "worker");
      assert.equal(await p.client.call("add", { a: 2, b: 3 }), 5);
      const hash = createHash("sha256");
      await p.client.call("blob", null, { onChunk: (c) => void hash.update(c as Uint8Array) });
      assert.equal(hash.digest("hex"), sha256(blob));
    }
    await assert.rejects(Deno.stat(path), Deno.errors.NotFound);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a server refuses connections beyond peersMax", async () => {
  await using p = await pair({ ping: () => "pong" }, { peersMax: 1 });
  await assert.rejects(
    connect({ transport: "tcp", port: p.server.port, secret: SECRET, role: "master" }),
    /closed the connection during the handshake|reset/,
  );
  await waitFor(() => p.logs.length === 1, "the log");
  assert.match(p.logs[0], /Refusing connection from .*: 1 connections open/);
  assert.equal(await p.client.call("ping"), "pong");
});

Deno.test("a bad frame from an authenticated peer drops only that peer", async () => {
  const touched: string[] = [];
  await using p = await pair({
    touch: (x: string) => void touched.push(x),
  });
  using conn = await Deno.connect({ hostname: "127.0.0.1", port: p.server.port });
  const { reader } = await clientHandshake(conn, { secret: SECRET, role: "master" });
  await writeAll(conn, encodeFrame([MessageType.REQUEST, 0, "touch", "good"]));
  await writeAll(conn, encodeFrame({ not: "a message" }));
  await writeAll(conn, encodeFrame([MessageType.REQUEST, 0, "touch", "after the bad frame"]));
  assert.equal(reader.take(), undefined);
  assert.equal(await reader.fill(), false); // the server hung up
  await waitFor(() => p.logs.length === 1, "the log");
  assert.match(
    p.logs[0],
    /^Dropping peer 127\.0\.0\.1:\d+ \(master\): bad frame: Malformed message/,
  );
  assert.deepEqual(touched, ["good"]);
  assert.equal(await p.client.call("touch", "client"), null);
  assert.deepEqual(touched, ["good", "client"]);
});

Deno.test("connect() reports an unreachable server as UNAVAILABLE", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  listener.close();
  await assert.rejects(
    connect({ transport: "tcp", port, secret: SECRET, role: "master" }),
    rpcError("UNAVAILABLE", /Cannot connect to 127\.0\.0\.1:\d+/),
  );
});
