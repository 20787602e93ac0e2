/**
 * In the browser, the master's page: live updates from `/status.json`.
 *
 * @module
 */

import { startLivePage } from "../common/live_page.js";
import { renderBuild } from "./build_view.js";

startLivePage({
  render: renderBuild,
  main: /** @type {HTMLElement} */ (document.getElementById("main")),
  live: /** @type {HTMLElement} */ (document.getElementById("live")),
});
