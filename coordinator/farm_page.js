/**
 * In the browser, the coordinator's page: live updates, and the drain and
 * stop buttons. An action needs a token made with the farm's secret (the
 * page never sees the secret): the dialog shows the command that prints
 * one, takes it, and posts the action with it.
 *
 * @module
 */

import { startLivePage } from "../common/live_page.js";
import { renderFarm } from "./farm_view.js";

const main = /** @type {HTMLElement} */ (document.getElementById("main"));
const live = /** @type {HTMLElement} */ (document.getElementById("live"));
const dialog = /** @type {HTMLDialogElement} */ (document.getElementById("action"));
const title = /** @type {HTMLElement} */ (document.getElementById("action-title"));
const command = /** @type {HTMLElement} */ (document.getElementById("action-command"));
const token = /** @type {HTMLInputElement} */ (document.getElementById("action-token"));
const result = /** @type {HTMLElement} */ (document.getElementById("action-result"));
const send = /** @type {HTMLButtonElement} */ (document.getElementById("action-send"));
const cancel = /** @type {HTMLButtonElement} */ (document.getElementById("action-cancel"));

/** @type {{action: string, worker: string} | undefined} */
let pending;

const WHAT = {
  drain: "Drain: the worker finishes its jobs and takes no new ones",
  stop: "Stop: the worker shuts down (its jobs are retried elsewhere)",
};

document.addEventListener("click", (event) => {
  const target = /** @type {HTMLElement} */ (event.target);
  const button = target.closest("button[data-action]");
  if (button === null) return;
  const action = button.getAttribute("data-action") ?? "";
  const worker = button.getAttribute("data-worker") ?? "";
  pending = { action, worker };
  title.textContent = `${WHAT[action] ?? action} (worker ${worker})`;
  command.textContent = `${dialog.dataset.tokenCommand} --action ${action} --worker ${worker}`;
  token.value = "";
  result.textContent = "";
  dialog.showModal();
  token.focus();
});

cancel.addEventListener("click", () => dialog.close());

send.addEventListener("click", async () => {
  if (pending === undefined) return;
  const { action, worker } = pending;
  result.textContent = "Sending…";
  try {
    const response = await fetch(
      `/workers/${encodeURIComponent(worker)}/${encodeURIComponent(action)}`,
      { method: "POST", headers: { authorization: token.value.trim() } },
    );
    const text = (await response.text()).trim();
    if (response.ok) {
      result.textContent = `Done: ${action} sent to worker ${worker}.`;
      result.className = "";
    } else if (response.status === 403) {
      result.textContent = "Refused: the token is wrong, older than a minute, made for " +
        "another action or worker, or used already. Make a new one.";
      result.className = "bad";
    } else {
      result.textContent = `Failed (HTTP ${response.status}): ${text}`;
      result.className = "bad";
    }
  } catch (error) {
    result.textContent = `Failed: ${error instanceof Error ? error.message : String(error)}`;
    result.className = "bad";
  }
});

startLivePage({ render: renderFarm, main, live });
