/**
 * In the browser: keeps a status page live by fetching its `/status.json`
 * every second and rendering it into `<main>` with the page's view. Says on
 * the page when updates stop. `<html data-updates>` counts the updates
 * rendered (tests wait on it).
 *
 * @module
 */

/**
 * @param {{
 *   render: (status: any) => string,
 *   main: HTMLElement,
 *   live: HTMLElement,
 *   url?: string,
 *   intervalMs?: number,
 * }} options
 */
export function startLivePage(options) {
  const url = options.url ?? "/status.json";
  const intervalMs = options.intervalMs ?? 1000;
  let updates = 0;
  let lastOkMs = Date.now();
  const tick = async () => {
    try {
      const response = await fetch(url, { cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const status = await response.json();
      options.main.innerHTML = options.render(status);
      lastOkMs = Date.now();
      updates++;
      document.documentElement.dataset.updates = String(updates);
      options.live.textContent = `Live: updated every ${intervalMs / 1000} s, last at ${
        new Date(lastOkMs).toLocaleTimeString()
      }`;
      options.live.className = "";
    } catch (error) {
      const ageS = Math.round((Date.now() - lastOkMs) / 1000);
      options.live.textContent = `Not updating (${
        error instanceof Error ? error.message : String(error)
      }): what you see is ${ageS} s old`;
      options.live.className = "stale";
    } finally {
      setTimeout(tick, intervalMs);
    }
  };
  tick();
}
