/**
 * HTML output of the status pages. `escapeHtml` is defined once, in
 * `status_view.js`, because the browser runs that file too.
 *
 * @module
 */

export { escapeHtml } from "./status_view.js";
