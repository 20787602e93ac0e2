/** Small helpers shared by the role entry points (flags, durations, signals). */

/** Parses "30s", "5m", "250ms", "1h" or a plain number of seconds into ms. */
export function parseDurationMs(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim());
  if (!m) throw new Error(`Cannot parse duration ${JSON.stringify(text)}: use e.g. 30s, 5m, 250ms`);
  const n = Number(m[1]);
  const unit = m[2] ?? "s";
  return Math.round(n * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[unit]!);
}

/** Parses "64M", "8G", "1024" (bytes) into bytes. */
export function parseBytes(text: string): number {
  const m = /^(\d+(?:\.\d+)?)([KMGT]i?B?)?$/i.exec(text.trim());
  if (!m) throw new Error(`Cannot parse size ${JSON.stringify(text)}: use e.g. 512M, 8G`);
  const unit = (m[2] ?? "").toUpperCase()[0];
  const scale = unit ? 1024 ** ("KMGT".indexOf(unit) + 1) : 1;
  return Math.round(Number(m[1]) * scale);
}

/** Resolves once SIGINT or SIGTERM arrives; listeners removed after. */
export function untilSignal(): Promise<Deno.Signal> {
  return new Promise((resolve) => {
    const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
    const handlers = signals.map((sig) => {
      const h = () => {
        signals.forEach((s, i) => Deno.removeSignalListener(s, handlers[i]));
        resolve(sig);
      };
      Deno.addSignalListener(sig, h);
      return h;
    });
  });
}

/** Prints an error for the user and exits (entry points only). */
export function die(message: string): never {
  console.error(message);
  Deno.exit(1);
}

export function defaultCacheDir(role: string): string {
  const base = Deno.env.get("XDG_CACHE_HOME") ?? `${Deno.env.get("HOME") ?? "/var/tmp"}/.cache`;
  return `${base}/termite/${role}`;
}
