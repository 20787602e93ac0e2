/**
 * Blobs from peer workers: which worker the master sends a requester to
 * (BlobHolders), and a mirror fetching from a peer over a real socket: an
 * honest peer's bytes are used, a peer sending other bytes, one that does not
 * hold the blob and one that cannot be reached are each refused and the blob
 * fetched from the master, never served wrong. End to end: a cold farm of
 * two workers gets a big input from the master once.
 */
import assert from "node:assert/strict";
import { hashBytes, Store } from "../cas/mod.ts";
import { WorkerMethods } from "../common/protocol.ts";
import type { RequestContext } from "../fuse/types.ts";
import {
  BlobHolders,
  HOLDER_FAILURES_WINDOW_MS,
  HOLDERS_HASHES_MAX,
  HOLDERS_PER_HASH_MAX,
  PEER_BLOB_BYTES_MIN,
  SMALL_BLOB_MASTER_COPIES,
} from "../master/blob_holders.ts";
import { type CallContext, listen, RpcError, secretFromBytes } from "../rpc/mod.ts";
import { DirLink } from "../worker/_mirror_dir_link.ts";
import { MirrorFs } from "../worker/mirror_fs.ts";
import { PeerBlobs } from "../worker/peer_blobs.ts";
import { Farm, ROOT, runIn } from "../farm/mod.ts";

const CTX: RequestContext = { uid: 0, gid: 0, pid: 1, umask: 0o022 };
const BIG = PEER_BLOB_BYTES_MIN;

Deno.test("BlobHolders: sends a requester to another live holder, in turn; a small blob after two", () => {
  const holders = new BlobHolders();
  const live = new Set(["w1:1", "w2:1", "w3:1"]);
  const isLive = (a: string) => live.has(a);
  holders.sending("small", BIG - 1, "w1:1");
  assert.equal(holders.holderFor("small", "w2:1", isLive), undefined, "small: the master sends it");
  holders.sending("small", BIG - 1, "w2:1");
  assert.equal(SMALL_BLOB_MASTER_COPIES, 2);
  assert.equal(holders.holderFor("small", "w3:1", isLive), "w1:1", "then from those it sent it to");
  assert.equal(holders.holderFor("small", "w3:1", isLive), "w2:1");
  assert.equal(holders.holderFor("h", "w2:1", isLive), undefined, "nobody holds it yet");
  holders.sending("h", BIG, "w1:1");
  assert.equal(holders.holderFor("h", "w1:1", isLive), undefined, "never to itself");
  assert.equal(holders.holderFor("h", "w2:1", isLive), "w1:1");
  holders.sending("h", BIG, "w2:1");
  const picks = [0, 1, 2, 3].map(() => holders.holderFor("h", "w3:1", isLive));
  assert.deepEqual(new Set(picks), new Set(["w1:1", "w2:1"]), `taken in turn: ${picks}`);
  live.delete("w1:1");
  assert.equal(holders.holderFor("h", "w3:1", isLive), "w2:1", "only connected workers");
  holders.failed("h", "w2:1");
  assert.equal(holders.holderFor("h", "w3:1", isLive), undefined, "one that failed is dropped");
  assert.equal(holders.stats.redirected, 8);
  assert.equal(holders.stats.redirectedBytes, 6 * BIG + 2 * (BIG - 1));

  for (let i = 0; i < HOLDERS_PER_HASH_MAX + 2; i++) holders.sending("x", BIG, `w${i}:1`);
  const all = new Set<string>();
  for (let i = 0; i < 10; i++) {
    const at = holders.holderFor("x", "other:1", () => true);
    if (at !== undefined) all.add(at);
  }
  assert.equal(all.size, HOLDERS_PER_HASH_MAX, "holders per hash are bounded");
  for (let i = 0; i < HOLDERS_HASHES_MAX + 10; i++) holders.sending(`k${i}`, BIG, "w1:1");
  assert.equal(holders.size, HOLDERS_HASHES_MAX, "hashes remembered are bounded");
  assert.equal(holders.holderFor("k0", "w2:1", () => true), undefined, "the oldest forgotten");
});

Deno.test("BlobHolders: a holder that failed peers three times is named to no one for a while", () => {
  let now = 1_000_000;
  const holders = new BlobHolders({ now: () => now });
  const live = () => true;
  for (const hash of ["h1", "h2", "h3", "h4"]) holders.sending(hash, BIG, "bad:1");
  holders.sending("h4", BIG, "good:1");
  holders.failed("h1", "bad:1");
  holders.failed("h2", "bad:1");
  assert.equal(holders.holderFor("h3", "w:1", live), "bad:1", "two failures: still named");
  holders.failed("h3", "bad:1");
  assert.equal(holders.holderFor("h4", "w:1", live), "good:1", "three: skipped");
  assert.equal(holders.holderFor("h4", "w:1", live), "good:1");
  holders.sending("h5", BIG, "bad:1");
  assert.equal(holders.holderFor("h5", "w:1", live), undefined, "the master sends it");
  now += HOLDER_FAILURES_WINDOW_MS + 1;
  assert.equal(holders.holderFor("h5", "w:1", live), "bad:1", "named again after the window");
});

/** How a test peer answers `blob.get`. */
type PeerMode = "honest" | "liar" | "empty";

/** A mirror whose master sends it to a peer worker on a real socket; the peer serves `mode`. */
async function withPeer(
  mode: PeerMode | "unreachable",
  fn: (
    t: { fs: MirrorFs; link: DirLink; peers: PeerBlobs; store: Store; bytes: Uint8Array },
  ) => Promise<void>,
  size = BIG * 2,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "peer_blobs_test_" });
  const bytes = new Uint8Array(size);
  for (let at = 0; at < bytes.length; at += 65_536) {
    crypto.getRandomValues(bytes.subarray(at, at + 65_536));
  }
  await Deno.mkdir(`${dir}/tree/src`, { recursive: true });
  await Deno.writeFile(`${dir}/tree/src/big.bin`, bytes);
  const secret = await secretFromBytes(crypto.getRandomValues(new Uint8Array(32)));
  const server = listen({
    transport: "tcp",
    secret,
    role: "worker",
    handlers: {
      [WorkerMethods.blobGet]: async (_params: { hash: unknown }, ctx: CallContext) => {
        if (mode === "empty") throw new RpcError("ENOENT", "No blob here");
        const sent = mode === "liar" ? bytes.map((b, i) => i === 7 ? b ^ 1 : b) : bytes;
        await ctx.sendChunk(sent);
        return { size: sent.length };
      },
    },
    log: () => {},
  });
  const link = new DirLink({ root: `${dir}/tree` });
  const port = mode === "unreachable" ? await closedPort() : server.port;
  link.peer = `127.0.0.1:${port}`;
  const store = await Store.open({ dir: `${dir}/store`, bytesMax: 64 * 1024 * 1024 });
  const logged: string[] = [];
  const peers = new PeerBlobs({ secret, log: (m) => logged.push(m) });
  const fs = new MirrorFs({ link, store, peers, writableRoot: "/src" });
  try {
    await fn({ fs, link, peers, store, bytes });
  } finally {
    await fs.close();
    peers.close();
    await server.close();
    store.close();
    await store.settle();
    await Deno.remove(dir, { recursive: true });
  }
}

/** A TCP port nothing listens on. */
async function closedPort(): Promise<number> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  await Promise.resolve();
  return port;
}

/** Reads /src/big.bin through the mirror's handlers: the stored blob it is answered from. */
async function readBig(fs: MirrorFs, store: Store): Promise<Uint8Array> {
  const src = await fs.lookup(1n, "src", CTX);
  assert.ok(typeof src !== "number");
  const big = await fs.lookup(BigInt(src.ino), "big.bin", CTX);
  assert.ok(typeof big !== "number");
  const reply = await fs.read!(BigInt(big.ino), 0, 4096, 0, CTX);
  assert.ok(typeof reply !== "number", `read failed: errno ${reply}`);
  const all: Uint8Array[] = [];
  for (const entry of Deno.readDirSync(`${store.dir}`)) {
    if (entry.name.length !== 2) continue;
    for (const blob of Deno.readDirSync(`${store.dir}/${entry.name}`)) {
      all.push(await Deno.readFile(`${store.dir}/${entry.name}/${blob.name}`));
    }
  }
  assert.equal(all.length, 1, "one blob stored");
  return all[0];
}

Deno.test("a mirror sent to an honest peer stores the peer's bytes; the master sends none", async () => {
  await withPeer("honest", async ({ fs, link, peers, store, bytes }) => {
    assert.deepEqual(await readBig(fs, store), bytes);
    assert.equal(link.calls.blob, 1, "one request to the master");
    assert.deepEqual(link.failedPeers, [undefined]);
    assert.equal(peers.stats.fetched, 1);
    assert.equal(peers.stats.bytes, bytes.length);
    assert.equal(fs.stats.blobBytes, bytes.length);
    assert.equal(peers.triedFrom(await hashBytes(bytes)), undefined, "forgotten once settled");
  });
});

// Big blobs, and small ones (a header: sent to a peer once two workers hold it).
for (const [what, size] of [["big", BIG * 2], ["small", 3_000]] as const) {
  for (const mode of ["liar", "empty", "unreachable"] as const) {
    Deno.test(`a mirror sent to a peer that is ${mode} gets the ${what} blob from the master, never wrong bytes`, async () => {
      await withPeer(mode, async ({ fs, link, peers, store, bytes }) => {
        assert.deepEqual(await readBig(fs, store), bytes);
        assert.equal(link.calls.blob, 2, "sent to the peer, then asked again");
        assert.deepEqual(link.failedPeers, [undefined, link.peer], "the master is told who failed");
        assert.equal(peers.stats.corrupt, mode === "liar" ? 1 : 0);
        assert.equal(peers.stats.failed, mode === "liar" ? 0 : 1);
      }, size);
    });
  }
}

Deno.test("PeerBlobs: a peer that cannot be reached is not dialled again for a while", async () => {
  const secret = await secretFromBytes(crypto.getRandomValues(new Uint8Array(32)));
  const logged: string[] = [];
  const peers = new PeerBlobs({ secret, log: (m) => logged.push(m) });
  const address = `127.0.0.1:${await closedPort()}`;
  const sink = { write: () => Promise.resolve() };
  const signal = new AbortController().signal;
  try {
    await assert.rejects(peers.fetch(address, "a".repeat(64), sink, signal));
    assert.equal(peers.stats.failed, 1);
    assert.equal(peers.stats.skipped, 0);
    await assert.rejects(peers.fetch(address, "b".repeat(64), sink, signal), /a moment ago/);
    await assert.rejects(peers.fetch(address, "c".repeat(64), sink, signal), /a moment ago/);
    assert.equal(peers.stats.skipped, 2, "not dialled again");
    assert.equal(
      logged.filter((m) => m.includes("cannot reach peer")).length,
      1,
      logged.join("\n"),
    );
  } finally {
    peers.close();
  }
});

Deno.test("e2e: a cold farm of two workers gets a big input from the master once, the other copy from a peer", async () => {
  await Deno.mkdir(`${ROOT}/.cache/test`, { recursive: true });
  const dir = await Deno.makeTempDir({ dir: `${ROOT}/.cache/test`, prefix: "peer-" });
  await Deno.chmod(dir, 0o755);
  const tree = `${dir}/tree`;
  await Deno.mkdir(tree, { recursive: true });
  const size = 4 * 1024 * 1024;
  const bytes = new Uint8Array(size);
  for (let at = 0; at < size; at += 65_536) crypto.getRandomValues(bytes.subarray(at, at + 65_536));
  await Deno.writeFile(`${tree}/big.bin`, bytes);
  const expected = await hashBytes(bytes);
  try {
    await using farm = await Farm.start({
      dir: `${dir}/farm`,
      tree,
      workers: 2,
      slotsPerWorker: 2,
    });
    await farm.waitForWorkers(2);
    const sh = `${farm.binDir}/termite-sh`;
    // Four jobs at once on 2 x 2 slots: both workers read big.bin, cold.
    const runs = await Promise.all(
      [0, 1, 2, 3].map((i) =>
        runIn(tree, [sh, "-c", `sleep 0.5; sha256sum big.bin > out.${i}`], farm.env)
      ),
    );
    for (const r of runs) assert.equal(r.code, 0, r.stderr);
    for (const i of [0, 1, 2, 3]) {
      assert.equal((await Deno.readTextFile(`${tree}/out.${i}`)).split(" ")[0], expected);
    }
    const status = await farm.status();
    const workers = Object.values(status.jobs.perWorker);
    assert.equal(status.jobs.jobsRemote, 4);
    assert.equal(workers.filter((w) => w.done > 0).length, 2, "both workers ran jobs");
    const received = workers.reduce((sum, w) => sum + (w.mirror?.blobBytes ?? 0), 0);
    const served = status.files.blobBytes;
    console.log(
      `workers received ${received} bytes, the master sent ${served}; ` +
        `${status.peerBlobs.redirected} blobs (${status.peerBlobs.redirectedBytes} bytes) from peers`,
    );
    assert.ok(status.peerBlobs.redirected >= 1, "a worker was sent to its peer");
    assert.ok(received - served >= size, "big.bin crossed from the master once");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
