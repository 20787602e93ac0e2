/**
 * The coordinator's HTML status page: the farm, live (coordinator/farm_page.js
 * updates it from `/status.json` every second), with drain and stop buttons.
 *
 * @module
 */

import { pageDocument } from "../common/page.ts";
import { escapeHtml } from "../common/status_view.js";
import type { FarmStatus } from "./farm_status.ts";
import { renderFarm } from "./farm_view.js";

export { escapeHtml };

/** The scripts the page loads, relative to the checkout. */
export const FARM_PAGE_SCRIPTS: readonly string[] = [
  "common/status_view.js",
  "common/live_page.js",
  "coordinator/farm_view.js",
  "coordinator/farm_page.js",
];

/** What the page shows besides the status. */
export interface StatusPageOptions {
  /** The command that prints an action token, without its action and worker id. */
  tokenCommand: string;
}

/** The page as a complete HTML document, its body rendered from `status`. */
export function renderStatusPage(status: FarmStatus, options: StatusPageOptions): string {
  return pageDocument({
    title: "Termite farm",
    nav: [
      { text: "status.json", href: "/status.json" },
      { text: "metrics", href: "/metrics" },
    ],
    main: renderFarm(status),
    script: "/coordinator/farm_page.js",
    after: `<p class="note">Coordinator version ${escapeHtml(status.version)}. Each build tree links
to its master's page (served on the master's host).</p>
<dialog id="action" data-token-command="${escapeHtml(options.tokenCommand)}">
<p id="action-title"></p>
<p>Make a token on a host that holds the farm's secret (it is valid for a minute, once):</p>
<code id="action-command"></code>
<p><label>Token: <input id="action-token" size="60" autocomplete="off"
placeholder="Termite 1700000000:…"></label></p>
<p><button type="button" id="action-send">Send</button>
<button type="button" id="action-cancel">Close</button></p>
<p id="action-result"></p>
</dialog>`,
  });
}
