/**
 * The master's HTML status page: its build, live (master/build_page.js
 * updates it from `/status.json` every second).
 *
 * @module
 */

import { pageDocument } from "../common/page.ts";
import type { MasterStatus } from "./status.ts";
import { renderBuild } from "./build_view.js";

/** The scripts the page loads, relative to the checkout. */
export const BUILD_PAGE_SCRIPTS: readonly string[] = [
  "common/status_view.js",
  "common/live_page.js",
  "master/build_view.js",
  "master/build_page.js",
];

/** The page as a complete HTML document. */
export function renderMasterPage(status: MasterStatus): string {
  const nav = [
    { text: "status.json", href: "/status.json" },
    { text: "metrics", href: "/metrics" },
  ];
  if (status.coordinator?.statusUrl) {
    nav.unshift({ text: "the farm (coordinator)", href: status.coordinator.statusUrl });
  }
  return pageDocument({
    title: `Termite master: ${status.root}`,
    nav,
    main: renderBuild(status),
    script: "/master/build_page.js",
  });
}
