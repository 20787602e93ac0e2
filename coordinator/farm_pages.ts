/**
 * The coordinator's HTTP side: the status page (HTML, `/status.json`,
 * `/metrics`, its scripts) and the drain/stop actions, each checked against
 * a one-time admin token before it is relayed to the worker. The registry
 * (server.ts) answers what the pages show and relays what they ask.
 *
 * @module
 */
import type { Counter, Registry } from "../common/metrics.ts";
import { metricsResponse } from "../common/metrics.ts";
import { htmlResponse, StaticFiles } from "../common/page.ts";
import { errorMessage } from "./_net.ts";
import {
  ADMIN_ACTIONS,
  ADMIN_TOKEN_SKEW_S,
  type AdminAction,
  verifyAdminToken,
} from "./admin_token.ts";
import type { FarmStatus } from "./farm_status.ts";
import { FARM_PAGE_SCRIPTS, renderStatusPage } from "./status_page.ts";
import { WORKER_ID_CHARS_MAX } from "./types.ts";

/** Admin tokens remembered to refuse replays. */
const USED_TOKENS_MAX = 1024;

const SECURITY_HEADERS = {
  "x-content-type-options": "nosniff",
  "cache-control": "no-store",
  "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'",
  "referrer-policy": "no-referrer",
};

/** A plain-text answer with the pages' security headers. */
export function textResponse(status: number, text: string): Response {
  return new Response(text + "\n", {
    status,
    headers: { ...SECURITY_HEADERS, "content-type": "text/plain; charset=utf-8" },
  });
}

function jsonResponse(status: number, value: unknown): Response {
  return new Response(JSON.stringify(value, null, 2) + "\n", {
    status,
    headers: { ...SECURITY_HEADERS, "content-type": "application/json; charset=utf-8" },
  });
}

/** What the pages need of the registry. */
export interface PagesRegistry {
  status(): FarmStatus;
  readonly metrics: Registry;
  /** Relays `action` to worker `id`: false when no such worker; throws when it fails. */
  relay(id: string, action: AdminAction): Promise<boolean>;
}

/** Options of {@linkcode FarmPages}. */
export interface FarmPagesOptions {
  secret: CryptoKey;
  now: () => number;
  log: (message: string) => void;
  /** The token command the page shows, without its --action and --worker. */
  tokenCommand: string;
  /** Counts actions by `action` and `result`. */
  actions: Counter;
}

/** Serves the status page and its actions. */
export class FarmPages {
  readonly #registry: PagesRegistry;
  readonly #secret: CryptoKey;
  readonly #now: () => number;
  readonly #log: (message: string) => void;
  readonly #tokenCommand: string;
  readonly #actions: Counter;
  readonly #usedTokens = new Map<string, number>();
  #pages: StaticFiles | undefined;

  constructor(registry: PagesRegistry, options: FarmPagesOptions) {
    this.#registry = registry;
    this.#secret = options.secret;
    this.#now = options.now;
    this.#log = options.log;
    this.#tokenCommand = options.tokenCommand;
    this.#actions = options.actions;
  }

  /** Loads the status page's scripts; call before serving. */
  async load(): Promise<void> {
    this.#pages = await StaticFiles.load(FARM_PAGE_SCRIPTS);
    if (this.#pages.missing.length > 0) {
      this.#log(
        `The status page will not update itself: cannot read ${this.#pages.missing.join(", ")}`,
      );
    }
  }

  /** Answers one HTTP request. */
  async serve(request: Request): Promise<Response> {
    const url = new URL(request.url);
    const method = request.method;
    const page = url.pathname === "/" || url.pathname === "/status.json" ||
      url.pathname === "/metrics";
    const script = this.#pages?.serve(url.pathname);
    if (page || script !== undefined) {
      if (method !== "GET" && method !== "HEAD") {
        await script?.body?.cancel();
        return textResponse(405, "Method not allowed");
      }
      if (script !== undefined) return script;
      const status = () => this.#registry.status();
      if (url.pathname === "/status.json") return jsonResponse(200, status());
      if (url.pathname === "/metrics") {
        return metricsResponse(this.#registry.metrics, SECURITY_HEADERS);
      }
      return htmlResponse(renderStatusPage(status(), { tokenCommand: this.#tokenCommand }));
    }
    const match = /^\/workers\/([^/]{1,200})\/([a-z]{1,16})$/.exec(url.pathname);
    if (match === null) return textResponse(404, "Not found");
    if (method !== "POST") return textResponse(405, "Method not allowed");
    let id: string;
    try {
      id = decodeURIComponent(match[1]);
    } catch {
      return textResponse(404, "Not found");
    }
    const action = match[2] as AdminAction;
    if (!ADMIN_ACTIONS.includes(action) || id.length > WORKER_ID_CHARS_MAX) {
      return textResponse(404, "Not found");
    }
    return await this.#serveAction(request, id, action);
  }

  async #serveAction(request: Request, id: string, action: AdminAction): Promise<Response> {
    const header = request.headers.get("authorization");
    const nowS = Math.floor(this.#now() / 1000);
    const ts = await verifyAdminToken(header, { secret: this.#secret, action, id, nowS });
    if (ts === undefined) {
      this.#log(`Refusing ${action} of worker ${JSON.stringify(id)}: bad or stale token`);
      this.#actions.inc({ action, result: "refused" });
      return textResponse(403, "Forbidden");
    }
    for (const [token, expiresS] of this.#usedTokens) {
      if (expiresS < nowS) this.#usedTokens.delete(token);
    }
    if (this.#usedTokens.has(header!)) {
      this.#log(`Refusing ${action} of worker ${id}: token replayed`);
      this.#actions.inc({ action, result: "refused" });
      return textResponse(403, "Forbidden");
    }
    if (this.#usedTokens.size >= USED_TOKENS_MAX) return textResponse(429, "Too many requests");
    this.#usedTokens.set(header!, ts + ADMIN_TOKEN_SKEW_S + 1);
    let relayed: boolean;
    try {
      relayed = await this.#registry.relay(id, action);
    } catch (error) {
      const message = errorMessage(error);
      this.#log(`Cannot relay ${action} to worker ${id}: ${message}`);
      this.#actions.inc({ action, result: "failed" });
      return jsonResponse(502, { ok: false, error: `Cannot relay ${action}: ${message}` });
    }
    if (!relayed) {
      this.#actions.inc({ action, result: "unknown_worker" });
      return textResponse(404, "No such worker");
    }
    this.#actions.inc({ action, result: "relayed" });
    return jsonResponse(200, { ok: true });
  }
}
