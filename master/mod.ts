/**
 * The master role: `startMaster(options)` starts the file server, the worker
 * pool, the wrapper socket, the reports to the coordinator and (optionally)
 * a live status page with `/status.json` and `/metrics`.
 *
 * The rooms: `master.ts` (the worker-facing service and one job's path)
 * over `dispatch.ts` (the policy, a state machine) and `worker_pool.ts` (the
 * connections); `remote_run.ts` (one attempt on a worker, `output_hold.ts`)
 * and `local_run.ts` (jobs run here); `local_rules.ts`, `outside.ts`;
 * `tree_sync.ts` over `tree_watcher.ts`; `file_server.ts`, `hash_cache.ts`,
 * `change_log.ts`; results through `result_check.ts`, `apply_stage.ts` and
 * `apply_commit.ts` (`apply.ts`), by descriptor through `beneath.ts`;
 * `wrapper_server.ts`, `stdin_buffer.ts`, `job_log.ts`; `status.ts` and
 * `status_page.ts`; `master_types.ts` the options and counters.
 *
 * @module
 */
import { distrustSocket, SOCKET_NAME } from "../wrapper/client.ts";
import { Master, type MasterOptions } from "./master.ts";
import { WrapperServer } from "./wrapper_server.ts";
import { MasterMonitor } from "./status.ts";
import { BUILD_PAGE_SCRIPTS, renderMasterPage } from "./status_page.ts";
import { type MasterReporter, reportToCoordinator } from "../coordinator/mod.ts";
import { formatHostPort, parseHostPort } from "../common/address.ts";
import { metricsResponse } from "../common/metrics.ts";
import { htmlResponse, PAGE_HEADERS, StaticFiles } from "../common/page.ts";

export { Master, type MasterOptions } from "./master.ts";
export { applyResultSet, ResultSetError, validateResultSet } from "./apply.ts";
export { MasterMonitor, type MasterStatus, type MasterWorkerStatus } from "./status.ts";

export interface StartMasterOptions extends MasterOptions {
  /** The wrapper socket; default `<root>/.termite-socket`. */
  socketPath?: string;
  /** Status page port on 127.0.0.1 (0 = any); none when undefined. */
  statusPort?: number;
  /** Time between reports to the coordinator; default 1000. */
  reportIntervalMs?: number;
}

export interface RunningMaster extends AsyncDisposable {
  readonly master: Master;
  readonly monitor: MasterMonitor;
  readonly socketPath: string;
  readonly statusPort: number | undefined;
  close(): Promise<void>;
}

function jsonResponse(value: unknown): Response {
  return new Response(JSON.stringify(value), {
    headers: { ...PAGE_HEADERS, "content-type": "application/json; charset=utf-8" },
  });
}

function textResponse(status: number, text: string): Response {
  return new Response(text + "\n", {
    status,
    headers: { ...PAGE_HEADERS, "content-type": "text/plain; charset=utf-8" },
  });
}

/** Answers a request to the build's status page (HTML, `/status.json`, `/metrics`, scripts). */
async function serveStatusPage(
  req: Request,
  monitor: MasterMonitor,
  pages: StaticFiles | undefined,
): Promise<Response> {
  const url = new URL(req.url);
  const script = pages?.serve(url.pathname);
  const known = script !== undefined ||
    ["/", "/status.json", "/metrics"].includes(url.pathname);
  if (!known) return textResponse(404, "Not found");
  if (req.method !== "GET" && req.method !== "HEAD") {
    await script?.body?.cancel();
    return textResponse(405, "Method not allowed");
  }
  if (script !== undefined) return script;
  if (url.pathname === "/status.json") return jsonResponse(monitor.status());
  if (url.pathname === "/metrics") return metricsResponse(monitor.metrics, PAGE_HEADERS);
  return htmlResponse(renderMasterPage(monitor.status()));
}

/** Reports the build to `coordinator`; its replies say where the farm's page is. */
function startReports(
  coordinator: string,
  options: StartMasterOptions,
  monitor: MasterMonitor,
  log: (message: string) => void,
): MasterReporter {
  return reportToCoordinator({
    coordinator,
    secret: options.secret,
    tls: options.tls,
    intervalMs: options.reportIntervalMs,
    report: () => monitor.report(),
    onReply: (reply) => {
      if (reply.statusPage === undefined) return;
      // A page on every address is reached at the host this master dials;
      // with TLS (on every member or none) the coordinator serves it over HTTPS.
      const host = reply.statusPage.hostname ?? parseHostPort(coordinator).hostname;
      const scheme = options.tls === undefined ? "http" : "https";
      monitor.coordinator = {
        address: coordinator,
        statusUrl: `${scheme}://${formatHostPort(host, reply.statusPage.port)}/`,
      };
    },
    log,
  });
}

/**
 * Starts a master: the tree's file server and worker pool ({@linkcode Master}),
 * the wrapper socket, the reports to the coordinator, the status page.
 */
export async function startMaster(options: StartMasterOptions): Promise<RunningMaster> {
  const log = options.log ?? ((m: string) => console.error(`termite master: ${m}`));
  const pages = options.statusPort === undefined
    ? undefined
    : await StaticFiles.load(BUILD_PAGE_SCRIPTS);
  if (pages !== undefined && pages.missing.length > 0) {
    log(`the status page will not update itself: cannot read ${pages.missing.join(", ")}`);
  }
  const controlPaths = [...options.controlPaths ?? []];
  if (options.socketPath) controlPaths.push(options.socketPath);
  const master = await Master.start({ ...options, controlPaths, log });
  const monitor = new MasterMonitor(master);
  if (options.coordinator) monitor.coordinator = { address: options.coordinator };
  const socketPath = options.socketPath ?? `${master.root}/${SOCKET_NAME}`;
  let wrappers: WrapperServer;
  try {
    wrappers = await WrapperServer.listen({
      path: socketPath,
      master: monitor.wrapperFacing(),
      log,
    });
  } catch (err) {
    monitor[Symbol.dispose]();
    await master.close();
    throw err;
  }
  const why = distrustSocket(socketPath, Deno.uid() ?? 0);
  if (why !== null) log(`wrappers will refuse the socket ${socketPath}: ${why}`);
  let http: Deno.HttpServer<Deno.NetAddr> | undefined;
  if (options.statusPort !== undefined) {
    try {
      http = Deno.serve({
        hostname: "127.0.0.1",
        port: options.statusPort,
        onListen: () => {},
      }, (req) => serveStatusPage(req, monitor, pages));
    } catch (err) {
      await wrappers.close();
      monitor[Symbol.dispose]();
      await master.close();
      throw err;
    }
    monitor.statusUrl = `http://127.0.0.1:${http.addr.port}/`;
  }
  const reporter = options.coordinator
    ? startReports(options.coordinator, options, monitor, log)
    : undefined;
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    await reporter?.close();
    await wrappers.close();
    await http?.shutdown();
    monitor[Symbol.dispose]();
    await master.close();
  };
  return {
    master,
    monitor,
    socketPath,
    statusPort: http?.addr.port,
    close,
    [Symbol.asyncDispose]: close,
  };
}
