/**
 * The coordinator's registry: holds the list of live workers, pushes it to
 * subscribed masters, and relays to workers the actions of its status page
 * (served by farm_pages.ts).
 *
 * Workers connect with role "worker" and call "register" every few seconds;
 * masters connect with role "master", call "subscribe" once and then receive
 * "workers" notifications; a master may say who it is with "subscribe"
 * (`{master}`) and "report" its build about once a second, which the status
 * page shows. A worker is dropped when its connection closes or
 * when it has not re-registered within `workerTimeoutMs`. A worker that
 * announces a wildcard host ("0.0.0.0:1232") is listed at the host its
 * connection came from.
 *
 * @module
 */

import {
  type Handlers,
  listenAny,
  type ListenOptions,
  RpcError,
  type RpcPeer,
  type RpcServer,
  type TlsConfig,
  TlsConfigError,
} from "../rpc/mod.ts";
import type { AdminAction } from "./admin_token.ts";
import { FarmPages, textResponse } from "./farm_pages.ts";
import { errorMessage } from "./_net.ts";
import { isLoopbackHost, ListenError, parseHostPort, reachableAddress } from "../common/address.ts";
import { type FarmStatus, farmStatus } from "./farm_status.ts";
import { Registry } from "../common/metrics.ts";
import { type CoordinatorCounters, registerCoordinatorMetrics } from "./metrics.ts";
import {
  type MasterAnnouncement,
  type MasterBuild,
  type RegisterReply,
  type ReportReply,
  validateMasterAnnouncement,
  validateMasterReport,
  validateRegisterParams,
  type WorkerInfo,
  type WorkerList,
  WORKERS_MAX_DEFAULT,
} from "./types.ts";
import { RateWindow } from "../common/rate.ts";

/** Options for {@linkcode startCoordinator}. */
export interface CoordinatorOptions {
  /** Interface for the RPC listener (and the status page unless `httpHostname`); default "0.0.0.0". */
  hostname?: string;
  /** RPC port, 0 = any; default 0. */
  port?: number;
  /** Status page port, 0 = any, undefined = no status page. */
  httpPort?: number;
  httpHostname?: string;
  secret: CryptoKey;
  /** Serve workers and masters over TLS with this certificate and key (plain TCP when undefined). */
  tls?: TlsConfig;
  /** A worker not heard from in this time is dropped; default 30 000. */
  workerTimeoutMs?: number;
  log?: (message: string) => void;
  /** Clock, epoch ms; injectable for tests. */
  now?: () => number;
  /** Most workers listed at once; default 1024. */
  workersMax?: number;
  /** Most masters subscribed at once; default 256. */
  mastersMax?: number;
  /** Shown on the status page and returned to workers; default "dev". */
  version?: string;
  /** Coalesces list changes before pushing them to masters; default 20, 0 = same turn. */
  pushDelayMs?: number;
  /** Time allowed for a worker to answer a relayed action; default 10 000. */
  relayTimeoutMs?: number;
  /**
   * The command the status page shows for making an action token, without
   * its --action and --worker; default "deno run -A token.ts --secret FILE".
   */
  tokenCommand?: string;
}

/** A running coordinator. */
export interface Coordinator extends AsyncDisposable {
  readonly port: number;
  readonly httpPort: number | undefined;
  /** The live workers, sorted by address. */
  workers(): WorkerInfo[];
  /** The masters: those that said who they are, then anonymous subscribers. */
  masters(): MasterView[];
  /** What the status page shows (`/status.json`). */
  status(): FarmStatus;
  /** The Prometheus metrics (`/metrics`). */
  readonly metrics: Registry;
  close(): Promise<void>;
}

export const MASTERS_MAX_DEFAULT = 256;
export const WORKER_TIMEOUT_MS_DEFAULT = 30_000;
const RELAY_TIMEOUT_MS_DEFAULT = 10_000;

interface WorkerEntry {
  info: WorkerInfo;
  peer: RpcPeer;
}

interface Subscriber {
  sending: boolean;
  dirty: boolean;
  /** The master's id, when its "subscribe" said. */
  masterId?: string;
}

/** A master that said who it is, over one or more connections. */
interface MasterEntry {
  info: MasterAnnouncement;
  /** Where its latest connection came from. */
  remoteAddr: string;
  peers: Set<RpcPeer>;
  firstSeenMs: number;
  /** Its last "report", epoch ms; 0 before any. */
  lastReportMs: number;
  build?: MasterBuild;
  rate: RateWindow;
}

/** A master as the status page lists it. */
export interface MasterView extends Partial<MasterAnnouncement> {
  /** Where its connection comes from. */
  remoteAddr: string;
  /** Watches the worker list. */
  subscribed: boolean;
  firstSeenMs?: number;
  lastReportMs?: number;
  jobsPerSecond?: number;
  build?: MasterBuild;
}

function sameExceptContact(a: WorkerInfo, b: WorkerInfo): boolean {
  return a.address === b.address && a.hostname === b.hostname && a.slots === b.slots &&
    a.jobsRunning === b.jobsRunning && a.load === b.load && a.version === b.version &&
    a.draining === b.draining;
}

class CoordinatorImpl implements Coordinator {
  readonly #secret: CryptoKey;
  readonly #log: (message: string) => void;
  readonly #now: () => number;
  readonly #workerTimeoutMs: number;
  readonly #workersMax: number;
  readonly #mastersMax: number;
  readonly #version: string;
  readonly #pushDelayMs: number;
  readonly #relayTimeoutMs: number;
  readonly #workers = new Map<string, WorkerEntry>();
  readonly #subscribers = new Map<RpcPeer, Subscriber>();
  readonly #masters = new Map<string, MasterEntry>();
  readonly #trackedPeers = new WeakSet<RpcPeer>();
  #seq = 0;
  readonly metrics = new Registry();
  readonly #counters: CoordinatorCounters;
  readonly pages: FarmPages;
  #pushTimer: ReturnType<typeof setTimeout> | undefined;
  #pushPending = false;
  #sweepTimer: ReturnType<typeof setInterval> | undefined;
  #rpc: RpcServer | undefined;
  #http: Deno.HttpServer<Deno.NetAddr> | undefined;
  #closing: Promise<void> | undefined;

  constructor(options: CoordinatorOptions) {
    this.#secret = options.secret;
    this.#log = options.log ?? (() => {});
    this.#now = options.now ?? Date.now;
    this.#workerTimeoutMs = options.workerTimeoutMs ?? WORKER_TIMEOUT_MS_DEFAULT;
    this.#workersMax = options.workersMax ?? WORKERS_MAX_DEFAULT;
    this.#mastersMax = options.mastersMax ?? MASTERS_MAX_DEFAULT;
    this.#version = options.version ?? "dev";
    this.#pushDelayMs = options.pushDelayMs ?? 20;
    this.#relayTimeoutMs = options.relayTimeoutMs ?? RELAY_TIMEOUT_MS_DEFAULT;
    this.#counters = registerCoordinatorMetrics(this.metrics, {
      workers: () => [...this.#workers.values()].map((e) => e.info),
      status: () => this.status(),
      masters: () => this.masters(),
    });
    this.pages = new FarmPages(this, {
      secret: this.#secret,
      now: this.#now,
      log: this.#log,
      tokenCommand: options.tokenCommand ?? "deno run -A token.ts --secret FILE",
      actions: this.#counters.actions,
    });
  }

  status(): FarmStatus {
    return farmStatus(this.workers(), this.masters(), {
      version: this.#version,
      nowMs: this.#now(),
    });
  }

  get port(): number {
    return this.#rpc!.port;
  }

  get httpPort(): number | undefined {
    return this.#http?.addr.port;
  }

  async start(options: CoordinatorOptions): Promise<void> {
    const hostname = options.hostname ?? "0.0.0.0";
    const port = options.port ?? 0;
    const rpcOptions: ListenOptions = {
      transport: "tcp",
      hostname,
      port,
      secret: this.#secret,
      tls: options.tls,
      role: "coordinator",
      handlers: (peer) => this.#handlersFor(peer),
      log: (m) => this.#log(m),
      peersMax: this.#workersMax + this.#mastersMax + 16,
    };
    try {
      this.#rpc = await listenAny(rpcOptions);
    } catch (error) {
      if (error instanceof TlsConfigError) throw error;
      throw new ListenError("workers and masters", hostname, port, { cause: error });
    }
    const sweepMs = Math.max(10, Math.min(1000, Math.floor(this.#workerTimeoutMs / 4)));
    this.#sweepTimer = setInterval(() => this.#sweep(), sweepMs);
    if (options.httpPort !== undefined) {
      const httpHostname = options.httpHostname ?? hostname;
      try {
        this.#http = Deno.serve({
          hostname: httpHostname,
          port: options.httpPort,
          // With a certificate, the page is HTTPS too: TLS on every TCP link.
          ...(options.tls?.cert !== undefined && options.tls.key !== undefined
            ? { cert: options.tls.cert, key: options.tls.key }
            : {}),
          onListen: () => {},
          onError: (error) => {
            this.#log(`Status page failed: ${errorMessage(error)}`);
            return textResponse(500, "Internal error");
          },
        }, (request) => this.pages.serve(request));
      } catch (error) {
        clearInterval(this.#sweepTimer);
        void this.#rpc.close();
        throw new ListenError("status page", httpHostname, options.httpPort, { cause: error });
      }
    }
  }

  workers(): WorkerInfo[] {
    return [...this.#workers.values()]
      .map((e) => ({ ...e.info }))
      .sort((a, b) => a.address < b.address ? -1 : a.address > b.address ? 1 : 0);
  }

  masters(): MasterView[] {
    const nowMs = this.#now();
    const named: MasterView[] = [...this.#masters.values()].map((e) => ({
      ...e.info,
      remoteAddr: e.remoteAddr,
      subscribed: [...e.peers].some((p) => this.#subscribers.has(p)),
      firstSeenMs: e.firstSeenMs,
      ...(e.lastReportMs === 0 ? {} : {
        lastReportMs: e.lastReportMs,
        jobsPerSecond: e.rate.perSecond(nowMs),
        build: e.build,
      }),
    })).sort((a, b) => (a.root ?? "").localeCompare(b.root ?? "") || a.id!.localeCompare(b.id!));
    const anonymous: MasterView[] = [...this.#subscribers]
      .filter(([, sub]) => sub.masterId === undefined)
      .map(([peer]) => ({ remoteAddr: peer.remoteAddr, subscribed: true }));
    return [...named, ...anonymous];
  }

  #list(): WorkerList {
    return { seq: this.#seq, workers: this.workers() };
  }

  #handlersFor(peer: RpcPeer): Handlers {
    switch (peer.peerRole) {
      case "worker":
        return { register: (params: unknown) => this.#register(peer, params) };
      case "master":
        return {
          subscribe: (params: unknown) => this.#subscribe(peer, params),
          workers: () => this.#list(),
          report: (params: unknown) => this.#report(peer, params),
        };
      default:
        return {};
    }
  }

  #track(peer: RpcPeer): void {
    if (this.#trackedPeers.has(peer)) return;
    this.#trackedPeers.add(peer);
    const onClosed = () => this.#peerClosed(peer);
    peer.closed.then(onClosed, onClosed);
  }

  #register(peer: RpcPeer, params: unknown): RegisterReply {
    let clean;
    try {
      clean = validateRegisterParams(params);
    } catch (error) {
      const message = errorMessage(error);
      this.#log(`Refusing registration from ${peer.remoteAddr}: ${message}`);
      throw new RpcError("BAD_REQUEST", message, { cause: error });
    }
    const existing = this.#workers.get(clean.id);
    if (existing === undefined && this.#workers.size >= this.#workersMax) {
      this.#log(`Refusing registration of ${clean.address}: ${this.#workersMax} workers listed`);
      throw new RpcError(
        "LIMIT",
        `Cannot register worker: ${this.#workersMax} workers already listed`,
      );
    }
    this.#track(peer);
    // A worker bound to every address announces "0.0.0.0:port": masters dial
    // the address its connection came from instead.
    const address = reachableAddress(clean.address, peer.remoteAddr);
    const info: WorkerInfo = {
      id: clean.id,
      address,
      hostname: clean.hostname,
      slots: clean.slots,
      jobsRunning: clean.jobsRunning,
      load: clean.load,
      version: clean.version,
      lastContactMs: this.#now(),
      draining: clean.draining === true || existing?.info.draining === true,
    };
    if (existing === undefined) {
      this.#log(
        `Worker ${info.id} registered: ${info.address} (${info.hostname}, ${info.slots} slots)` +
          (address === clean.address ? "" : `; it announced ${clean.address}`),
      );
      if (address !== clean.address && isLoopbackHost(parseHostPort(address).hostname)) {
        this.#log(
          `Worker ${info.id} is listed at ${address}, a loopback address: masters on other ` +
            `hosts cannot reach it (start it with --advertise HOST:PORT)`,
        );
      }
    } else if (existing.peer !== peer) {
      this.#log(`Worker ${info.id} re-registered over a new connection from ${peer.remoteAddr}`);
    }
    this.#workers.set(info.id, { info, peer });
    this.#counters.registrations.inc();
    if (existing === undefined || !sameExceptContact(existing.info, info)) this.#changed();
    return { version: this.#version, draining: info.draining };
  }

  #subscribe(peer: RpcPeer, params: unknown): WorkerList {
    if (!this.#subscribers.has(peer)) {
      if (this.#subscribers.size >= this.#mastersMax) {
        this.#log(`Refusing subscription from ${peer.remoteAddr}: ${this.#mastersMax} masters`);
        throw new RpcError(
          "LIMIT",
          `Cannot subscribe: ${this.#mastersMax} masters already subscribed`,
        );
      }
      this.#track(peer);
      const sub: Subscriber = { sending: false, dirty: false };
      this.#subscribers.set(peer, sub);
      // Older masters send no params: they are listed by address.
      const said = (params as { master?: unknown } | undefined)?.master;
      let info: MasterAnnouncement | undefined;
      if (said !== undefined) {
        try {
          info = validateMasterAnnouncement(said);
        } catch (error) {
          // The worker list matters more than the page: subscribe anyway.
          this.#log(`Listing master ${peer.remoteAddr} by address: ${errorMessage(error)}`);
        }
      }
      if (info !== undefined && this.#noteMaster(peer, info) !== undefined) sub.masterId = info.id;
      this.#log(
        `Master ${peer.remoteAddr} subscribed` + (info ? ` (${info.id}, ${info.root})` : ""),
      );
    }
    return this.#list();
  }

  /** Records who a master is; undefined when `mastersMax` masters are listed. */
  #noteMaster(peer: RpcPeer, info: MasterAnnouncement): MasterEntry | undefined {
    let entry = this.#masters.get(info.id);
    if (entry === undefined) {
      if (this.#masters.size >= this.#mastersMax) return undefined;
      entry = {
        info,
        remoteAddr: peer.remoteAddr,
        peers: new Set(),
        firstSeenMs: this.#now(),
        lastReportMs: 0,
        rate: new RateWindow(),
      };
      this.#masters.set(info.id, entry);
    }
    entry.info = info;
    entry.remoteAddr = peer.remoteAddr;
    entry.peers.add(peer);
    this.#track(peer);
    return entry;
  }

  #report(peer: RpcPeer, params: unknown): ReportReply {
    let report;
    try {
      report = validateMasterReport(params, this.#workersMax);
    } catch (error) {
      const message = errorMessage(error);
      this.#log(`Refusing report from ${peer.remoteAddr}: ${message}`);
      throw new RpcError("BAD_REQUEST", message, { cause: error });
    }
    const entry = this.#noteMaster(peer, report.master);
    if (entry === undefined) {
      throw new RpcError("LIMIT", `Cannot list master: ${this.#mastersMax} masters listed`);
    }
    const nowMs = this.#now();
    if (entry.lastReportMs === 0) {
      this.#log(
        `Master ${report.master.id} reports from ${peer.remoteAddr}: ${report.master.root}`,
      );
    }
    entry.lastReportMs = nowMs;
    entry.build = report.build;
    entry.rate.add(nowMs, report.build.jobsFinished);
    this.#counters.reports.inc();
    const reply: ReportReply = { version: this.#version };
    const http = this.#http?.addr;
    if (http !== undefined) {
      const wildcard = http.hostname === "0.0.0.0" || http.hostname === "::";
      reply.statusPage = { hostname: wildcard ? null : http.hostname, port: http.port };
    }
    return reply;
  }

  #peerClosed(peer: RpcPeer): void {
    if (this.#subscribers.delete(peer)) this.#log(`Master ${peer.remoteAddr} left`);
    for (const [id, entry] of this.#masters) {
      if (entry.peers.delete(peer) && entry.peers.size === 0) this.#masters.delete(id);
    }
    let dropped = false;
    for (const [id, entry] of this.#workers) {
      if (entry.peer !== peer) continue;
      this.#workers.delete(id);
      this.#log(`Worker ${id} dropped: connection closed`);
      this.#counters.dropped.inc({ reason: "closed" });
      dropped = true;
    }
    if (dropped) this.#changed();
  }

  #sweep(): void {
    const nowMs = this.#now();
    let dropped = false;
    for (const [id, entry] of this.#workers) {
      if (nowMs - entry.info.lastContactMs <= this.#workerTimeoutMs) continue;
      this.#workers.delete(id);
      this.#log(`Worker ${id} dropped: not heard from in ${this.#workerTimeoutMs} ms`);
      this.#counters.dropped.inc({ reason: "silent" });
      dropped = true;
      // A worker that stopped registering but keeps its connection is stuck;
      // closing makes a healthy one reconnect and register afresh.
      entry.peer.close();
    }
    if (dropped) this.#changed();
  }

  #changed(): void {
    this.#seq++;
    if (this.#pushPending || this.#closing !== undefined) return;
    this.#pushPending = true;
    const pushAll = () => {
      this.#pushTimer = undefined;
      this.#pushPending = false;
      if (this.#closing !== undefined) return;
      for (const [peer, sub] of this.#subscribers) this.#push(peer, sub);
    };
    // A 0 ms timer still costs a millisecond or two; a microtask coalesces
    // the changes of one turn at no cost.
    if (this.#pushDelayMs <= 0) queueMicrotask(pushAll);
    else this.#pushTimer = setTimeout(pushAll, this.#pushDelayMs);
  }

  /** Sends the current list to one master, at most one notification in flight. */
  #push(peer: RpcPeer, sub: Subscriber): void {
    if (sub.sending) {
      sub.dirty = true;
      return;
    }
    sub.sending = true;
    sub.dirty = false;
    this.#counters.pushes.inc();
    peer.notify("workers", this.#list()).then(
      () => {
        sub.sending = false;
        if (sub.dirty && this.#subscribers.get(peer) === sub) this.#push(peer, sub);
      },
      (error) => {
        sub.sending = false;
        this.#log(`Cannot push worker list to ${peer.remoteAddr}: ${errorMessage(error)}`);
        peer.close();
      },
    );
  }

  /**
   * Relays a status page's `action` to worker `id`: false when no such
   * worker is listed; throws when the worker does not answer it.
   */
  async relay(id: string, action: AdminAction): Promise<boolean> {
    const entry = this.#workers.get(id);
    if (entry === undefined) return false;
    this.#log(`Relaying ${action} to worker ${id} (${entry.info.address})`);
    await entry.peer.call(action, {}, { timeoutMs: this.#relayTimeoutMs });
    if (action === "drain") {
      const current = this.#workers.get(id);
      if (current !== undefined && !current.info.draining) {
        current.info = { ...current.info, draining: true };
        this.#changed();
      }
    }
    return true;
  }

  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    clearInterval(this.#sweepTimer);
    clearTimeout(this.#pushTimer);
    this.#pushTimer = undefined;
    const closes: Promise<void>[] = [];
    if (this.#rpc !== undefined) closes.push(this.#rpc.close());
    if (this.#http !== undefined) closes.push(this.#http.shutdown());
    await Promise.all(closes);
    this.#workers.clear();
    this.#subscribers.clear();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

export { WORKERS_MAX_DEFAULT };

/**
 * Starts a coordinator: an RPC listener for workers and masters and, when
 * `httpPort` is given, a status page. Logs nothing on start: the caller says
 * where it listens, once.
 *
 * @throws {ListenError} when a port cannot be bound, naming it.
 */
export async function startCoordinator(options: CoordinatorOptions): Promise<Coordinator> {
  const coordinator = new CoordinatorImpl(options);
  if (options.httpPort !== undefined) await coordinator.pages.load();
  await coordinator.start(options);
  return coordinator;
}
