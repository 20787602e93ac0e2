/**
 * The master role: `startMaster(options)` starts the file server, the worker
 * pool, the wrapper socket and (optionally) a status page.
 *
 * @module
 */
import { distrustSocket, SOCKET_NAME } from "../wrapper/client.ts";
import { Master, type MasterOptions } from "./master.ts";
import { WrapperServer } from "./wrapper_server.ts";

export { Master, type MasterOptions } from "./master.ts";
export { applyResultSet, ResultSetError, validateResultSet } from "./apply.ts";

export interface StartMasterOptions extends MasterOptions {
  /** The wrapper socket; default `<root>/.termite-socket`. */
  socketPath?: string;
  /** Status page port on 127.0.0.1 (0 = any); none when undefined. */
  statusPort?: number;
}

export interface RunningMaster extends AsyncDisposable {
  readonly master: Master;
  readonly socketPath: string;
  readonly statusPort: number | undefined;
  close(): Promise<void>;
}

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** What the status page shows, as JSON. */
export type MasterStatus = ReturnType<typeof masterStatus>;

// deno-lint-ignore explicit-module-boundary-types
export function masterStatus(master: Master) {
  const hashes = master.fileServer.hashCache.stats;
  return {
    root: master.root,
    jobs: master.stats,
    workers: master.workers.map((w) => ({
      address: w.address,
      slots: w.slots,
      running: w.running,
      done: w.jobsDone,
      failed: w.jobsFailed,
    })),
    files: master.fileServer.stats,
    hashCache: {
      entries: master.fileServer.hashCache.size,
      hits: hashes.hits,
      misses: hashes.misses,
      hitRate: hashes.hits + hashes.misses === 0 ? 0 : hashes.hits / (hashes.hits + hashes.misses),
      bytesHashed: hashes.bytesHashed,
    },
    changeLogSeq: master.changeLog.seq,
  };
}

function statusHtml(status: ReturnType<typeof masterStatus>): string {
  const rows = status.workers.map((w) =>
    `<tr><td>${
      escapeHtml(w.address)
    }</td><td>${w.slots}</td><td>${w.running}</td><td>${w.done}</td><td>${w.failed}</td></tr>`
  ).join("");
  return `<!doctype html><meta charset="utf-8"><title>termite master</title>
<h1>termite master: ${escapeHtml(status.root)}</h1>
<pre>${
    escapeHtml(
      JSON.stringify(
        { jobs: status.jobs, hashCache: status.hashCache, files: status.files },
        null,
        2,
      ),
    )
  }</pre>
<table border="1"><tr><th>worker</th><th>slots</th><th>running</th><th>done</th><th>failed</th></tr>${rows}</table>`;
}

export async function startMaster(options: StartMasterOptions): Promise<RunningMaster> {
  const log = options.log ?? ((m: string) => console.error(`termite master: ${m}`));
  const master = await Master.start({ ...options, log });
  const socketPath = options.socketPath ?? `${master.root}/${SOCKET_NAME}`;
  let wrappers: WrapperServer;
  try {
    wrappers = await WrapperServer.listen({ path: socketPath, master, log });
  } catch (err) {
    await master.close();
    throw err;
  }
  const why = distrustSocket(socketPath, Deno.uid() ?? 0);
  if (why !== null) log(`wrappers will refuse the socket ${socketPath}: ${why}`);
  let http: Deno.HttpServer | undefined;
  if (options.statusPort !== undefined) {
    http = Deno.serve({
      hostname: "127.0.0.1",
      port: options.statusPort,
      onListen: () => {},
    }, (req) => {
      const url = new URL(req.url);
      const status = masterStatus(master);
      if (url.pathname === "/status.json") return Response.json(status);
      if (url.pathname === "/") {
        return new Response(statusHtml(status), { headers: { "content-type": "text/html" } });
      }
      return new Response("not found", { status: 404 });
    });
  }
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    await wrappers.close();
    await http?.shutdown();
    await master.close();
  };
  return {
    master,
    socketPath,
    statusPort: http ? (http.addr as Deno.NetAddr).port : undefined,
    close,
    [Symbol.asyncDispose]: close,
  };
}
