/**
 * The coordinator role: a registry of live workers with a status page, plus
 * the client sides used by workers ({@linkcode registerWorker}) and masters
 * ({@linkcode watchWorkers}).
 *
 * The rooms: `server.ts` the registry (RPC handlers, sweeping, pushing the
 * list, relaying actions); `farm_pages.ts` its HTTP side (status page,
 * actions checked against `admin_token.ts`); `metrics.ts` its metrics;
 * `farm_status.ts` what the page shows, rendered by `status_page.ts` and the
 * browser's `farm_view.js`; `types.ts` the messages and their validation;
 * `registration.ts`, `watch.ts` and `report.ts` the workers' and masters'
 * client sides over `_reconnect.ts`.
 *
 * @module
 */

export {
  type Coordinator,
  type CoordinatorOptions,
  MASTERS_MAX_DEFAULT,
  type MasterView,
  startCoordinator,
  WORKER_TIMEOUT_MS_DEFAULT,
  WORKERS_MAX_DEFAULT,
} from "./server.ts";
export {
  REGISTER_INTERVAL_MS_DEFAULT,
  registerWorker,
  type WorkerRegistration,
  type WorkerRegistrationOptions,
} from "./registration.ts";
export { watchWorkers, type WorkerWatch, type WorkerWatchOptions } from "./watch.ts";
export {
  type MasterReporter,
  type MasterReporterOptions,
  REPORT_INTERVAL_MS_DEFAULT,
  reportToCoordinator,
} from "./report.ts";
export {
  ADMIN_ACTIONS,
  ADMIN_TOKEN_SKEW_S,
  type AdminAction,
  adminToken,
  verifyAdminToken,
} from "./admin_token.ts";
export {
  InvalidWorkerInfoError,
  type MasterAnnouncement,
  type MasterBuild,
  type MasterJobReport,
  type MasterReport,
  type MasterWorkerReport,
  type RegisterParams,
  type RegisterReply,
  type ReportReply,
  validateMasterAnnouncement,
  validateMasterReport,
  validateRegisterParams,
  type WorkerInfo,
  type WorkerList,
} from "./types.ts";
export { escapeHtml, renderStatusPage } from "./status_page.ts";
export {
  type FarmStatus,
  farmStatus,
  type FarmTotals,
  type FarmWorker,
  type WorkerMasterJobs,
} from "./farm_status.ts";
export { AddressError, formatHostPort, parseHostPort } from "../common/address.ts";
