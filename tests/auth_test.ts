import assert from "node:assert/strict";
import {
  AuthError,
  clientHandshake,
  computeProof,
  connect,
  decodeBody,
  encodeFrame,
  type FrameConn,
  FrameReader,
  HANDSHAKE_MAGIC,
  listen,
  loadSecret,
  MessageType,
  newChallenge,
  PROTOCOL_VERSION,
  type RpcServer,
  SecretError,
  secretFromBytes,
  serverHandshake,
  timingSafeEqual,
  writeAll,
} from "../rpc/mod.ts";

const SECRET = await secretFromBytes(new TextEncoder().encode("right secret"));
const WRONG = await secretFromBytes(new TextEncoder().encode("wrong secret"));

interface TestServer {
  server: RpcServer;
  logs: string[];
  calls: string[];
}

function startServer(options?: { handshakeTimeoutMs?: number }): TestServer {
  const logs: string[] = [];
  const calls: string[] = [];
  const server = listen({
    transport: "tcp",
    port: 0,
    secret: SECRET,
    role: "coordinator",
    log: (message) => logs.push(message),
    handshakeTimeoutMs: options?.handshakeTimeoutMs,
    handlers: {
      whoami: (_params, ctx) => ctx.peer.peerRole,
      touch: (params: string) => {
        calls.push(params);
        return true;
      },
    },
  });
  return { server, logs, calls };
}

/** Reads and decodes frames until the peer closes; fails after `timeoutMs`. */
async function readUntilClosed(conn: Deno.Conn, timeoutMs = 10_000): Promise<unknown[]> {
  const reader = new FrameReader(conn);
  const messages: unknown[] = [];
  let expired = false;
  const timer = setTimeout(() => {
    expired = true;
    conn.close();
  }, timeoutMs);
  try {
    for (;;) {
      let body: Uint8Array | undefined;
      while ((body = reader.take()) !== undefined) messages.push(decodeBody(body));
      if (!(await reader.fill())) break;
    }
  } catch (error) {
    if (!(error instanceof Deno.errors.ConnectionReset)) throw error;
  } finally {
    clearTimeout(timer);
  }
  assert.equal(expired, false, "the server did not close the connection");
  return messages;
}

/** Wraps a conn, recording everything written. */
function recording(conn: Deno.Conn): { conn: FrameConn; written: Uint8Array[] } {
  const written: Uint8Array[] = [];
  return {
    written,
    conn: {
      read: (p) => conn.read(p),
      write: (p) => {
        written.push(p.slice());
        return conn.write(p);
      },
      close: () => conn.close(),
    },
  };
}

async function waitFor(condition: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 500 && !condition(); i++) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  assert(condition(), `timed out waiting for ${what}`);
}

Deno.test("peers with the right secret authenticate and learn each other's role", async () => {
  const { server, logs } = startServer();
  try {
    await using peer = await connect({
      transport: "tcp",
      port: server.port,
      secret: SECRET,
      role: "worker",
    });
    assert.equal(peer.peerRole, "coordinator");
    assert.equal(await peer.call("whoami"), "worker");
    assert.equal(server.peers.size, 1);
    assert.equal([...server.peers][0].peerRole, "worker");
  } finally {
    await server.close();
  }
  assert.deepEqual(logs, []);
});

Deno.test("a peer with the wrong secret is refused and logged; others are still served", async () => {
  const { server, logs } = startServer();
  try {
    await assert.rejects(
      connect({ transport: "tcp", port: server.port, secret: WRONG, role: "worker" }),
      (error: Error) => {
        assert(error instanceof AuthError);
        assert.match(error.message, /HMAC mismatch/);
        return true;
      },
    );
    await waitFor(() => logs.length > 0, "the server's log");
    assert.match(logs[0], /^Rejected peer 127\.0\.0\.1:\d+: /);
    assert.equal(server.peers.size, 0);
    await using good = await connect({
      transport: "tcp",
      port: server.port,
      secret: SECRET,
      role: "master",
    });
    assert.equal(await good.call("whoami"), "master");
  } finally {
    await server.close();
  }
});

Deno.test("a server with the wrong secret is refused by the client", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepted = (async () => {
    using conn = await listener.accept();
    await assert.rejects(
      serverHandshake(conn, { secret: WRONG, role: "coordinator" }),
      AuthError,
    );
  })();
  try {
    await assert.rejects(
      connect({ transport: "tcp", port: listener.addr.port, secret: SECRET, role: "worker" }),
      /Cannot verify peer: HMAC mismatch/,
    );
  } finally {
    await accepted;
    listener.close();
  }
});

Deno.test("a recorded client handshake replayed to the server is refused", async () => {
  const { server, logs, calls } = startServer();
  try {
    const first = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
    const recorder = recording(first);
    await clientHandshake(recorder.conn, { secret: SECRET, role: "worker" });
    first.close();
    assert.equal(recorder.written.length, 2); // hello, proof

    using replay = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
    for (const frame of recorder.written) await writeAll(replay, frame);
    // A request the attacker hopes to have served; it must never run.
    await writeAll(replay, encodeFrame([MessageType.REQUEST, 1, "touch", "replayed"]));
    const received = await readUntilClosed(replay);
    assert.equal(received.length, 2); // server hello, refusal
    assert.deepEqual(received[1], { e: "authentication failed" });
    await waitFor(() => logs.some((l) => /replayed handshake/.test(l)), "the rejection");
    assert.deepEqual(calls, []);
  } finally {
    await server.close();
  }
});

Deno.test("a client refuses a server that reflects its challenge", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  // A fake server that echoes the client's challenge and proof fields back.
  const echo = (async () => {
    using conn = await listener.accept();
    const reader = new FrameReader(conn);
    let body: Uint8Array | undefined;
    while ((body = reader.take()) === undefined) await reader.fill();
    const hello = decodeBody(body) as { c: Uint8Array };
    // Its "proof" is a server proof over (client challenge, client challenge): the best a
    // reflector without the secret could hope the client would accept.
    await writeAll(
      conn,
      encodeFrame({
        m: HANDSHAKE_MAGIC,
        v: PROTOCOL_VERSION,
        r: "coordinator",
        c: hello.c,
        p: await computeProof(SECRET, {
          side: "server",
          role: "coordinator",
          own: hello.c,
          peer: hello.c,
        }),
      }),
    );
    await readUntilClosed(conn);
  })();
  try {
    await assert.rejects(
      connect({ transport: "tcp", port: listener.addr.port, secret: SECRET, role: "worker" }),
      /it reflected our challenge/,
    );
  } finally {
    await echo;
    listener.close();
  }
});

Deno.test("a server refuses its own proof reflected back as the client's", async () => {
  const { server, logs, calls } = startServer();
  try {
    using conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
    await writeAll(
      conn,
      encodeFrame({ m: HANDSHAKE_MAGIC, v: PROTOCOL_VERSION, r: "worker", c: newChallenge() }),
    );
    const reader = new FrameReader(conn);
    let body: Uint8Array | undefined;
    while ((body = reader.take()) === undefined) await reader.fill();
    const hello = decodeBody(body) as { p: Uint8Array };
    await writeAll(conn, encodeFrame({ p: hello.p }));
    await writeAll(conn, encodeFrame([MessageType.REQUEST, 0, "touch", "reflected"]));
    const rest = await readUntilClosed(conn);
    assert.deepEqual(rest, [{ e: "authentication failed" }]);
    await waitFor(() => logs.some((l) => /HMAC mismatch/.test(l)), "the rejection");
    assert.deepEqual(calls, []);
  } finally {
    await server.close();
  }
});

Deno.test("proofs depend on side, role, key and challenge order", async () => {
  const a = newChallenge();
  const b = newChallenge();
  const base = { side: "client", role: "worker", own: a, peer: b } as const;
  const proof = await computeProof(SECRET, base);
  assert.equal(proof.length, 32);
  assert(timingSafeEqual(proof, await computeProof(SECRET, base)));
  const variants = [
    computeProof(SECRET, { ...base, side: "server" }),
    computeProof(SECRET, { ...base, role: "master" }),
    computeProof(SECRET, { ...base, own: b, peer: a }),
    computeProof(WRONG, base),
  ];
  for (const variant of await Promise.all(variants)) assert(!timingSafeEqual(proof, variant));
  assert(!timingSafeEqual(proof, proof.subarray(1)));
});

Deno.test("a client that stalls mid-handshake is dropped at the deadline", async () => {
  const { server, logs, calls } = startServer({ handshakeTimeoutMs: 200 });
  try {
    using conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
    const hello = encodeFrame({
      m: HANDSHAKE_MAGIC,
      v: PROTOCOL_VERSION,
      r: "worker",
      c: newChallenge(),
    });
    await writeAll(conn, hello.subarray(0, 10)); // then nothing
    assert.deepEqual(await readUntilClosed(conn), []);
    await waitFor(() => logs.length > 0, "the log");
    assert.match(logs[0], /Handshake timed out after 200 ms/);
    assert.deepEqual(calls, []);
    // A client that stalls after the hello (never sends its proof) is dropped too.
    using second = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
    await writeAll(second, hello);
    assert.equal((await readUntilClosed(second)).length, 1);
  } finally {
    await server.close();
  }
});

Deno.test("connect() fails with AuthError when the server stalls", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const silent = (async () => {
    using conn = await listener.accept();
    await readUntilClosed(conn); // say nothing until the client gives up
  })();
  try {
    await assert.rejects(
      connect({
        transport: "tcp",
        port: listener.addr.port,
        secret: SECRET,
        role: "worker",
        timeoutMs: 200,
      }),
      (error: Error) => {
        assert(error instanceof AuthError);
        assert.match(error.message, /Handshake timed out after \d+ ms/);
        return true;
      },
    );
  } finally {
    await silent;
    listener.close();
  }
});

Deno.test("a version mismatch is refused with a message naming both versions", async () => {
  const { server, logs } = startServer();
  try {
    using conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
    await assert.rejects(
      clientHandshake(conn, { secret: SECRET, role: "worker", version: 2 }),
      (error: Error) => {
        assert(error instanceof AuthError);
        assert.equal(error.message, "Protocol version mismatch: we speak 2, peer speaks 1");
        return true;
      },
    );
    await waitFor(() => logs.length > 0, "the log");
    assert.match(logs[0], /Protocol version mismatch: we speak 1, peer speaks 2$/);
  } finally {
    await server.close();
  }

  // And from the client's side, against a server speaking version 2.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const newer = (async () => {
    using conn = await listener.accept();
    await assert.rejects(
      serverHandshake(conn, { secret: SECRET, role: "coordinator", version: 2 }),
      /we speak 2, peer speaks 1/,
    );
  })();
  try {
    await assert.rejects(
      connect({ transport: "tcp", port: listener.addr.port, secret: SECRET, role: "worker" }),
      /Protocol version mismatch: we speak 1, peer speaks 2/,
    );
  } finally {
    await newer;
    listener.close();
  }
});

Deno.test("a peer that is not a termite peer is dropped without a reply", async () => {
  const { server, logs } = startServer();
  try {
    using conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
    await writeAll(conn, new TextEncoder().encode("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert.deepEqual(await readUntilClosed(conn), []);
    await waitFor(() => logs.length > 0, "the log");
    assert.match(logs[0], /Rejected peer .*Frame too large/);
  } finally {
    await server.close();
  }
});

async function withSecretFile(
  contents: string,
  mode: number,
  check: (path: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/secret`;
    await Deno.writeTextFile(path, contents);
    await Deno.chmod(path, mode);
    await check(path);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("loadSecret() accepts a private file and ignores a trailing newline", async () => {
  await withSecretFile("right secret\n", 0o600, async (path) => {
    const key = await loadSecret(path);
    const a = newChallenge();
    const proof = { side: "client", role: "worker", own: a, peer: a } as const;
    assert(timingSafeEqual(await computeProof(key, proof), await computeProof(SECRET, proof)));
  });
  await withSecretFile("right secret", 0o400, async (path) => {
    await loadSecret(path);
  });
});

Deno.test("loadSecret() refuses a file others can read, naming path and mode", async () => {
  for (const mode of [0o644, 0o640, 0o604, 0o660]) {
    await withSecretFile("s3cret", mode, async (path) => {
      await assert.rejects(loadSecret(path), (error: Error) => {
        assert(error instanceof SecretError);
        assert(error.message.includes(path), error.message);
        assert(error.message.includes(`0${mode.toString(8)}`), error.message);
        assert(error.message.includes("chmod 600"), error.message);
        return true;
      });
    });
  }
});

Deno.test("loadSecret() refuses an empty or missing file", async () => {
  for (const contents of ["", "\n", "  \r\n"]) {
    await withSecretFile(contents, 0o600, async (path) => {
      await assert.rejects(loadSecret(path), (error: Error) => {
        assert(error instanceof SecretError);
        assert.equal(error.message, `Secret file ${path} is empty`);
        return true;
      });
    });
  }
  await assert.rejects(loadSecret("/nonexistent/termite-secret"), (error: Error) => {
    assert(error instanceof SecretError);
    assert.match(error.message, /\/nonexistent\/termite-secret: no such file/);
    return true;
  });
  await assert.rejects(secretFromBytes(new Uint8Array(0)), SecretError);
});

Deno.test("authentication is not bound to addresses: IPv6 loopback works too", async () => {
  const logs: string[] = [];
  const server = listen({
    transport: "tcp",
    hostname: "::1",
    secret: SECRET,
    role: "coordinator",
    log: (message) => logs.push(message),
    handlers: { whoami: (_params, ctx) => `${ctx.peer.peerRole}@${ctx.peer.remoteAddr}` },
  });
  try {
    await using peer = await connect({
      transport: "tcp",
      hostname: "::1",
      port: server.port,
      secret: SECRET,
      role: "worker",
    });
    assert.equal(peer.remoteAddr, `[::1]:${server.port}`);
    assert.match(await peer.call<string>("whoami"), /^worker@\[::1\]:\d+$/);
  } finally {
    await server.close();
  }
  assert.deepEqual(logs, []);
});
