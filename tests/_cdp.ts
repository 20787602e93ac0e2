/**
 * Headless Chromium driven over the DevTools protocol from Deno (a
 * websocket, no npm package): open a page, evaluate script in it, wait for
 * the DOM, take a screenshot. Started with the flags this machine needs (no
 * sandbox as root, no background networking) and a fresh profile.
 */
import { chromiumPath } from "./_tools.ts";

interface Pending {
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
}

/** A page (a target attached with a flat session). */
export class Page {
  readonly #browser: Browser;
  readonly #sessionId: string;

  constructor(browser: Browser, sessionId: string) {
    this.#browser = browser;
    this.#sessionId = sessionId;
  }

  send<T = Record<string, unknown>>(method: string, params: object = {}): Promise<T> {
    return this.#browser.send<T>(method, params, this.#sessionId);
  }

  /** The value of `expression` (awaited when a promise); throws what the page threw. */
  async evaluate<T>(expression: string): Promise<T> {
    const reply = await this.send<{
      result: { value?: unknown };
      exceptionDetails?: { text: string; exception?: { description?: string } };
    }>("Runtime.evaluate", { expression, returnByValue: true, awaitPromise: true });
    if (reply.exceptionDetails) {
      const d = reply.exceptionDetails;
      throw new Error(`Page threw: ${d.exception?.description ?? d.text}`);
    }
    return reply.result.value as T;
  }

  /** Polls `expression` until it is truthy; fails after `limitMs` with `what`. */
  async waitFor(expression: string, what: string, limitMs = 30_000): Promise<void> {
    const deadline = Date.now() + limitMs;
    for (;;) {
      if (await this.evaluate<boolean>(`Boolean(${expression})`)) return;
      if (Date.now() > deadline) {
        const text = await this.evaluate<string>("document.body?.innerText ?? ''");
        throw new Error(`Timed out waiting for ${what}; the page says:\n${text.slice(0, 3000)}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  /** A PNG of the whole page, written to `path`. */
  async screenshot(path: string): Promise<void> {
    const { data } = await this.send<{ data: string }>("Page.captureScreenshot", {
      format: "png",
      captureBeyondViewport: true,
    });
    const bin = atob(data);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    await Deno.writeFile(path, bytes);
  }
}

/** A headless Chromium with a fresh profile; close() ends it and removes the profile. */
export class Browser implements AsyncDisposable {
  readonly #child: Deno.ChildProcess;
  readonly #profile: string;
  readonly #socket: WebSocket;
  readonly #pending = new Map<number, Pending>();
  readonly #stderr: Promise<string>;
  readonly #closed: Promise<void>;
  /** Messages the pages logged to their console, and their exceptions. */
  readonly console: string[] = [];
  #id = 0;

  private constructor(
    child: Deno.ChildProcess,
    profile: string,
    socket: WebSocket,
    stderr: Promise<string>,
  ) {
    this.#child = child;
    this.#profile = profile;
    this.#socket = socket;
    this.#stderr = stderr;
    this.#closed = new Promise((resolve) => socket.addEventListener("close", () => resolve()));
    socket.addEventListener("message", (event) => {
      const message = JSON.parse(String(event.data));
      if (message.id !== undefined) {
        const pending = this.#pending.get(message.id);
        this.#pending.delete(message.id);
        if (message.error) pending?.reject(new Error(`CDP: ${message.error.message}`));
        else pending?.resolve(message.result);
      } else if (message.method === "Runtime.consoleAPICalled") {
        const args = message.params.args.map((a: { value?: unknown }) => String(a.value));
        this.console.push(`${message.params.type}: ${args.join(" ")}`);
      } else if (message.method === "Runtime.exceptionThrown") {
        const d = message.params.exceptionDetails;
        this.console.push(`exception: ${d.exception?.description ?? d.text}`);
      }
    });
    socket.addEventListener("close", () => {
      for (const p of this.#pending.values()) p.reject(new Error("CDP: browser gone"));
      this.#pending.clear();
    });
  }

  static async launch(): Promise<Browser> {
    const profile = await Deno.makeTempDir({ prefix: "termite-chromium-" });
    const child = new Deno.Command(chromiumPath(), {
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        `--user-data-dir=${profile}`,
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        "--window-size=1400,900",
        "about:blank",
      ],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const stderr = (async () => {
      let text = "";
      for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
        if (text.length < 100_000) text += chunk;
      }
      return text;
    })();
    const portFile = `${profile}/DevToolsActivePort`;
    const deadline = Date.now() + 30_000;
    let lines: string[] = [];
    while (lines.length < 2) {
      try {
        lines = (await Deno.readTextFile(portFile)).trim().split("\n");
      } catch {
        // Not yet written.
      }
      if (lines.length >= 2) break;
      if (Date.now() > deadline) {
        child.kill("SIGKILL");
        await child.status;
        throw new Error(`Chromium did not start:\n${(await stderr).slice(-3000)}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const socket = new WebSocket(`ws://127.0.0.1:${lines[0]}${lines[1]}`);
    await new Promise<void>((resolve, reject) => {
      socket.addEventListener("open", () => resolve(), { once: true });
      socket.addEventListener("error", () => reject(new Error("Cannot reach DevTools")), {
        once: true,
      });
    });
    return new Browser(child, profile, socket, stderr);
  }

  send<T>(method: string, params: object = {}, sessionId?: string): Promise<T> {
    const id = ++this.#id;
    const promise = new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
    });
    this.#socket.send(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }));
    return promise;
  }

  /** Opens `url` in a new tab and waits for its load event. */
  async open(url: string): Promise<Page> {
    const { targetId } = await this.send<{ targetId: string }>("Target.createTarget", {
      url: "about:blank",
    });
    const { sessionId } = await this.send<{ sessionId: string }>("Target.attachToTarget", {
      targetId,
      flatten: true,
    });
    const page = new Page(this, sessionId);
    await page.send("Page.enable");
    await page.send("Runtime.enable");
    await page.send("Emulation.setDeviceMetricsOverride", {
      width: 1400,
      height: 900,
      deviceScaleFactor: 1,
      mobile: false,
    });
    await page.send("Page.navigate", { url });
    await page.waitFor("document.readyState === 'complete'", `${url} to load`);
    return page;
  }

  async close(): Promise<void> {
    let grace: ReturnType<typeof setTimeout> | undefined;
    try {
      await Promise.race([
        this.send("Browser.close"),
        new Promise((resolve) => grace = setTimeout(resolve, 5000)),
      ]);
    } catch {
      // Gone already.
    } finally {
      clearTimeout(grace);
    }
    if (this.#socket.readyState === WebSocket.OPEN) this.#socket.close();
    await this.#closed;
    const timer = setTimeout(() => {
      try {
        this.#child.kill("SIGKILL");
      } catch {
        // Gone.
      }
    }, 10_000);
    await this.#child.status;
    clearTimeout(timer);
    await this.#stderr;
    await Deno.remove(this.#profile, { recursive: true }).catch(() => {});
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
