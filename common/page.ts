/**
 * What the coordinator's and the master's status pages share on the server:
 * the HTML document around a page body, the response headers (a strict
 * content security policy: scripts only from the page's own origin, no
 * inline script), and the page scripts served from this checkout.
 *
 * @module
 */

import { escapeHtml, PAGE_STYLE } from "./status_view.js";

/** Headers on every status-page response. */
export const PAGE_HEADERS: Readonly<Record<string, string>> = {
  "x-content-type-options": "nosniff",
  "cache-control": "no-store",
  "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; " +
    "script-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; " +
    "frame-ancestors 'none'",
  "referrer-policy": "no-referrer",
};

/** What {@linkcode pageDocument} puts around a body. */
export interface PageDocumentOptions {
  title: string;
  /** Links under the title: text → URL. */
  nav: readonly { text: string; href: string }[];
  /** The first rendering of `<main>` (markup, escaped by the view). */
  main: string;
  /** The page's script, a module served by {@linkcode StaticFiles}. */
  script: string;
  /** Markup after `<main>` (dialogs). */
  after?: string;
}

/** A complete HTML document: the first paint is whole without scripts. */
export function pageDocument(options: PageDocumentOptions): string {
  const nav = options.nav.map((l) => `<a href="${escapeHtml(l.href)}">${escapeHtml(l.text)}</a>`)
    .join("");
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(options.title)}</title>
<style>${PAGE_STYLE}</style>
<script type="module" src="${escapeHtml(options.script)}"></script>
</head>
<body>
<h1>${escapeHtml(options.title)}</h1>
<nav>${nav}</nav>
<p id="live">Not live: this page updates itself with JavaScript; without it, reload.</p>
<main id="main">
${options.main}
</main>
${options.after ?? ""}
</body>
</html>
`;
}

/** An HTML page response with {@linkcode PAGE_HEADERS}. */
export function htmlResponse(html: string): Response {
  return new Response(html, {
    headers: { ...PAGE_HEADERS, "content-type": "text/html; charset=utf-8" },
  });
}

const ROOT = new URL("..", import.meta.url);

/**
 * The page scripts, read once from this checkout and served at their path
 * in it ("/common/status_view.js"), so that their relative imports resolve
 * the same in the browser as in Deno.
 */
export class StaticFiles {
  readonly #files = new Map<string, string>();
  readonly missing: string[] = [];

  private constructor() {}

  /** Loads `paths` (relative to the checkout); a missing one is noted, not fatal. */
  static async load(paths: readonly string[]): Promise<StaticFiles> {
    const files = new StaticFiles();
    for (const path of paths) {
      try {
        files.#files.set(`/${path}`, await Deno.readTextFile(new URL(path, ROOT)));
      } catch {
        files.missing.push(path);
      }
    }
    return files;
  }

  /** The response for `pathname`, or undefined when it is not one of the files. */
  serve(pathname: string): Response | undefined {
    const text = this.#files.get(pathname);
    if (text === undefined) return undefined;
    return new Response(text, {
      headers: { ...PAGE_HEADERS, "content-type": "text/javascript; charset=utf-8" },
    });
  }
}
