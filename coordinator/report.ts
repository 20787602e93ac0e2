/**
 * Master side of the status reports: about once a second the master tells
 * the coordinator who it is and how its build goes, for the coordinator's
 * status page. A connection of its own, kept up with backoff; a coordinator
 * that predates reports (NO_METHOD) is left alone after one log line.
 *
 * @module
 */

import { RpcError, type TlsConfig } from "../rpc/mod.ts";
import { errorMessage, sleep } from "./_net.ts";
import { keepConnected } from "./_reconnect.ts";
import type { MasterReport, ReportReply } from "./types.ts";

/** Options for {@linkcode reportToCoordinator}. */
export interface MasterReporterOptions {
  /** The coordinator's "host:port". */
  coordinator: string;
  secret: CryptoKey;
  /** TLS around the connection (plain TCP when undefined). */
  tls?: TlsConfig;
  /** Called before each report for fresh figures. */
  report: () => MasterReport;
  /** Time between reports; default 1000. */
  intervalMs?: number;
  /** Called with each reply (the coordinator's version and status page). */
  onReply?: (reply: ReportReply) => void;
  log?: (message: string) => void;
  /** First reconnect delay; doubles up to `backoffMaxMs`. Default 100. */
  backoffMinMs?: number;
  /** Default 5000. */
  backoffMaxMs?: number;
  /** Time allowed to connect and for each call; default 10 000. */
  timeoutMs?: number;
}

/** A running report loop. */
export interface MasterReporter extends AsyncDisposable {
  close(): Promise<void>;
  /** The last reply, once one came. */
  readonly lastReply: ReportReply | undefined;
}

export const REPORT_INTERVAL_MS_DEFAULT = 1000;

class MasterReporterImpl implements MasterReporter {
  readonly #abort = new AbortController();
  readonly #loop: Promise<void>;
  #lastReply: ReportReply | undefined;

  constructor(options: MasterReporterOptions) {
    const log = options.log ?? (() => {});
    const intervalMs = options.intervalMs ?? REPORT_INTERVAL_MS_DEFAULT;
    const timeoutMs = options.timeoutMs ?? 10_000;
    this.#loop = keepConnected({
      coordinator: options.coordinator,
      secret: options.secret,
      tls: options.tls,
      role: "master",
      handlers: {},
      signal: this.#abort.signal,
      failure: "Cannot report to",
      log,
      backoffMinMs: options.backoffMinMs,
      backoffMaxMs: options.backoffMaxMs,
      timeoutMs,
      session: async (peer, session, healthy) => {
        while (!session.aborted) {
          let reply: ReportReply;
          try {
            reply = await peer.call<ReportReply>("report", options.report(), {
              timeoutMs,
              signal: session,
            });
          } catch (error) {
            if (error instanceof RpcError && error.code === "NO_METHOD") {
              log(
                `The coordinator ${options.coordinator} takes no reports (an older version): ` +
                  `this master is not on its page`,
              );
              this.#abort.abort();
              return;
            }
            throw error;
          }
          healthy();
          this.#lastReply = reply;
          try {
            options.onReply?.(reply);
          } catch (error) {
            log(`Report reply callback failed: ${errorMessage(error)}`);
          }
          await sleep(intervalMs, session);
        }
      },
    });
  }

  get lastReply(): ReportReply | undefined {
    return this.#lastReply;
  }

  async close(): Promise<void> {
    this.#abort.abort();
    await this.#loop;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * Reports a master's build to the coordinator until closed.
 *
 * @throws {AddressError} when `options.coordinator` is not "host:port".
 */
export function reportToCoordinator(options: MasterReporterOptions): MasterReporter {
  return new MasterReporterImpl(options);
}
