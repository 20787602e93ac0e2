/** Small helpers shared by the role entry points (flags, durations, signals, the secret). */

import { parseArgs } from "node:util";
import {
  checkKeyPair,
  loadSecret,
  readPemFile,
  SecretError,
  type TlsConfig,
  TlsConfigError,
} from "../rpc/mod.ts";
import { formatHostPort, ListenError, parseHostPort } from "./address.ts";
import { errorMessage } from "./errors.ts";
import { normalizePath } from "./paths.ts";

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

/** One command-line flag of a role: how it reads, its default, one line of help. */
export interface FlagSpec {
  /** "string" flags take a value, "boolean" flags none. */
  type: "string" | "boolean";
  /** The value when the flag is absent (shown by --help). */
  default?: string;
  /** Shown by --help instead of `default`, for a default worked out at start ("the number of CPUs"). */
  defaultText?: string;
  /** What the value looks like in --help: FILE, N, HOST:PORT. */
  value?: string;
  /** May be given more than once. */
  multiple?: boolean;
  /** Must be given (shown by --help; read it with {@linkcode Flags.required}). */
  required?: boolean;
  /** One sentence. */
  help: string;
}

/** The flags of one role, in the order --help lists them. */
export type FlagSpecs = Record<string, FlagSpec>;

/** A flag missing, unknown or with a value that does not parse; the message names the flag. */
export class FlagError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "FlagError";
  }
}

/** The --help text: a usage line, what the role does, then every flag with its default. */
export function helpText(options: { usage: string; about: string; flags: FlagSpecs }): string {
  const rows = Object.entries(options.flags).map(([name, spec]) => {
    const left = `  --${name}${spec.type === "string" ? ` ${spec.value ?? "VALUE"}` : ""}`;
    // A boolean flag is off unless given.
    const shown = spec.defaultText ?? spec.default ?? (spec.type === "boolean" ? "off" : undefined);
    const text = spec.help +
      (spec.required ? " (required)" : shown === undefined ? "" : ` (default: ${shown})`);
    return [left, text];
  });
  rows.push(["  --help", "print this and exit"]);
  const width = Math.min(32, Math.max(...rows.map(([left]) => left.length)) + 2);
  const lines = rows.map(([left, text]) => {
    const wrapped = wrapText(text, HELP_COLUMNS - width).map((line) => " ".repeat(width) + line);
    if (left.length + 2 <= width) wrapped[0] = left.padEnd(width) + wrapped[0].trimStart();
    else wrapped.unshift(left);
    return wrapped.join("\n");
  });
  return `usage: ${options.usage}\n\n${wrapText(options.about, HELP_COLUMNS).join("\n")}\n\n` +
    `flags:\n${lines.join("\n")}`;
}

const HELP_COLUMNS = 100;

/** Splits `text` at spaces into lines of at most `columns` characters (longer words kept whole). */
function wrapText(text: string, columns: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(" ")) {
    if (line !== "" && line.length + 1 + word.length > columns) {
      lines.push(line);
      line = word;
    } else {
      line = line === "" ? word : `${line} ${word}`;
    }
  }
  lines.push(line);
  return lines;
}

/** Parsed flags of one role, read through typed getters that name the flag in their errors. */
export class Flags {
  readonly #specs: FlagSpecs;
  readonly #values: Record<string, string | boolean | string[] | undefined>;
  readonly #cwd: string;

  private constructor(specs: FlagSpecs, values: Record<string, string | boolean | string[]>) {
    this.#specs = specs;
    this.#values = values;
    this.#cwd = Deno.cwd();
  }

  /**
   * Parses `args` against `specs` (plus --help).
   *
   * @throws {FlagError} for an unknown flag, a missing value or a stray argument.
   */
  static parse(args: string[], specs: FlagSpecs): Flags {
    const options: Record<string, { type: "string" | "boolean"; multiple?: boolean }> = {
      help: { type: "boolean" },
    };
    for (const [name, spec] of Object.entries(specs)) {
      options[name] = spec.multiple ? { type: spec.type, multiple: true } : { type: spec.type };
    }
    try {
      const { values } = parseArgs({ args, options, strict: true, allowPositionals: false });
      return new Flags(specs, values as Record<string, string | boolean | string[]>);
    } catch (error) {
      const code = (error as { code?: unknown }).code;
      if (typeof code !== "string" || !code.startsWith("ERR_PARSE_ARGS_")) throw error;
      const message = (error as Error).message.replaceAll("\n", " ")
        .replace(/^Unknown option/, "Unknown flag")
        .replace(/^Option /, "Flag ");
      throw new FlagError(`${message} (see --help)`, { cause: error });
    }
  }

  /** --help was given. */
  get help(): boolean {
    return this.#values.help === true;
  }

  #spec(name: string): FlagSpec {
    const spec = this.#specs[name];
    if (spec === undefined) throw new TypeError(`No flag --${name} declared`);
    return spec;
  }

  /** The value given, else the default; undefined when neither. */
  string(name: string): string | undefined {
    const spec = this.#spec(name);
    const value = this.#values[name];
    return typeof value === "string" ? value : spec.default;
  }

  /** Like {@linkcode string}, but a missing value is an error saying what the flag is for. */
  required(name: string): string {
    const value = this.string(name);
    if (value === undefined || value === "") {
      throw new FlagError(`--${name} is required: ${this.#spec(name).help}`);
    }
    return value;
  }

  boolean(name: string): boolean {
    this.#spec(name);
    return this.#values[name] === true;
  }

  /** Every value of a `multiple` flag, undefined when not given. */
  list(name: string): string[] | undefined {
    this.#spec(name);
    const value = this.#values[name];
    return Array.isArray(value) ? value : undefined;
  }

  #parse<T>(name: string, parse: (text: string) => T): T | undefined {
    const text = this.string(name);
    if (text === undefined) return undefined;
    try {
      return parse(text);
    } catch (error) {
      throw new FlagError(`Bad --${name} ${JSON.stringify(text)}: ${(error as Error).message}`, {
        cause: error,
      });
    }
  }

  /** A whole number in `min..max`. */
  integer(name: string, range: { min: number; max: number }): number | undefined {
    return this.#parse(name, (text) => {
      const n = /^\d+$/.test(text) ? Number(text) : NaN;
      if (!Number.isSafeInteger(n) || n < range.min || n > range.max) {
        throw new Error(`want a whole number in ${range.min}..${range.max}`);
      }
      return n;
    });
  }

  /** A TCP port, 0 (any free port) to 65535. */
  port(name: string): number | undefined {
    return this.#parse(name, (text) => {
      const n = /^\d{1,5}$/.test(text) ? Number(text) : NaN;
      if (!(n >= 0 && n <= 65535)) throw new Error("want a port number, 0..65535");
      return n;
    });
  }

  durationMs(name: string): number | undefined {
    return this.#parse(name, parseDurationMs);
  }

  bytes(name: string): number | undefined {
    return this.#parse(name, parseBytes);
  }

  /** A "host:port" address, checked. */
  hostPort(name: string): string | undefined {
    return this.#parse(name, (text) => {
      parseHostPort(text);
      return text;
    });
  }

  /**
   * A file or directory, made absolute against the directory the role
   * started in (so that messages name the file that was really meant).
   */
  path(name: string): string | undefined {
    const text = this.string(name);
    if (text === undefined) return undefined;
    return resolvePath(this.#cwd, text);
  }
}

/** `path` made absolute against `cwd` ("." and ".." segments removed). */
export function resolvePath(cwd: string, path: string): string {
  return normalizePath(path.startsWith("/") ? path : `${cwd}/${path}`);
}

/**
 * Parses a role's flags; prints --help (exit 0) or a flag error (exit 1)
 * prefixed with the role's name. Entry points only.
 */
export function parseRoleFlags(
  role: string,
  args: string[],
  help: { usage: string; about: string; flags: FlagSpecs },
): Flags {
  let flags: Flags;
  try {
    flags = Flags.parse(args, help.flags);
  } catch (error) {
    if (args.includes("--help")) {
      console.log(helpText(help));
      Deno.exit(0);
    }
    die(`termite ${role}: ${(error as Error).message}`);
  }
  if (flags.help) {
    console.log(helpText(help));
    Deno.exit(0);
  }
  return flags;
}

/** The `--secret` flag of the farm's roles (`role` names who starts in the directory). */
export function secretFlag(role: string): FlagSpec {
  return {
    type: "string",
    value: "FILE",
    default: "secret.txt",
    help: "the farm's shared secret: at least 16 bytes, mode 0600, the same file on every " +
      `host; a relative path is taken from the directory the ${role} starts in`,
  };
}

/**
 * A port a role listens on, the flag that chose it and (if any) the flag
 * that chose its address, for {@linkcode startErrorMessage}.
 */
export interface PortFlag {
  flag: string;
  hostFlag?: string;
  hostname: string;
  port: number;
}

/**
 * Runs a role's start-up and life (entry points only): an error ends the
 * process with `termite ROLE: message`, naming the flag of a port in
 * `ports` (filled in as they are read) that could not be listened on.
 */
export async function runRole(
  role: string,
  ports: PortFlag[],
  body: () => Promise<void>,
): Promise<void> {
  try {
    await body();
  } catch (error) {
    die(`termite ${role}: ${startErrorMessage(error, ports)}`);
  }
}

/** The `onSecretMismatch` of a worker or master: exits naming both ends (entry points only). */
export function dieOnSecretMismatch(
  role: string,
  coordinator: string | undefined,
  secretPath: string,
): () => never {
  return () =>
    die(
      `termite ${role}: the coordinator at ${coordinator} holds another secret than ` +
        `${secretPath}: use the same secret file on every host`,
    );
}

/** Fewest bytes a secret file may hold: shorter ones are guessable. */
export const SECRET_BYTES_MIN = 16;

/**
 * Loads the farm's secret from `path` (absolute), refusing one shorter than
 * {@linkcode SECRET_BYTES_MIN} bytes (trailing whitespace not counted).
 *
 * @throws {SecretError} naming the file.
 */
export async function loadSecretFile(path: string): Promise<CryptoKey> {
  // loadSecret checks the file (exists, regular, private, not too large) first.
  const key = await loadSecret(path);
  const bytes = await Deno.readFile(path);
  let end = bytes.length;
  while (end > 0 && /\s/.test(String.fromCharCode(bytes[end - 1]))) end--;
  bytes.fill(0);
  if (end < SECRET_BYTES_MIN) {
    throw new SecretError(
      `Secret file ${path} holds ${end} bytes, fewer than ${SECRET_BYTES_MIN}: make one with ` +
        `\`head -c 32 /dev/urandom > ${path} && chmod 600 ${path}\``,
    );
  }
  return key;
}

/** The effective user id (Deno.uid() is the real one). */
export function effectiveUid(): number {
  const status = Deno.readTextFileSync("/proc/self/status");
  const m = /^Uid:\s+\d+\s+(\d+)/m.exec(status);
  return m ? Number(m[1]) : Deno.uid() ?? -1;
}

/**
 * A start-up failure as one line for the user: a port in use names the
 * address and the flag that chose it; an address that cannot be listened on
 * names its host flag; a certificate TLS cannot use names the TLS flags.
 */
export function startErrorMessage(error: unknown, ports: PortFlag[] = []): string {
  if (error instanceof ListenError) {
    const p = ports.find((p) => p.port === error.port && p.hostname === error.hostname);
    // A port in use is the port's fault; anything else (no such address) the host's.
    if (p === undefined) return error.message;
    if (error.cause instanceof Deno.errors.AddrInUse || p.hostFlag === undefined) {
      return `${error.message} (choose another with ${p.flag})`;
    }
    return `${error.message} (check ${p.hostFlag})`;
  }
  if (error instanceof TlsConfigError) return `${error.message} (check --tls-cert and --tls-key)`;
  if (error instanceof Deno.errors.AddrInUse && ports.length === 1) {
    const p = ports[0];
    return `Cannot listen on ${formatHostPort(p.hostname, p.port)}: port ${p.port} is in use ` +
      `(choose another with ${p.flag})`;
  }
  return errorMessage(error);
}

/**
 * The TLS flags of a role (coordinator, worker, master): `--tls-ca` turns
 * TLS on, and then `--tls-cert` and `--tls-key` are required: every member
 * shows its certificate, as server and as client. `https` names what the
 * role serves over HTTPS with it (its help says so).
 */
export function tlsFlagSpecs(https?: string): FlagSpecs {
  return {
    "tls-ca": {
      type: "string",
      value: "FILE",
      defaultText: "none: plain TCP",
      help: "talk mutual TLS on every farm link: every member's certificate is checked " +
        "against this CA (PEM), a server's also against the address dialled; the same on every host",
    },
    "tls-cert": {
      type: "string",
      value: "FILE",
      defaultText: "none; required with --tls-ca",
      help: "this host's certificate (PEM, from the --tls-ca CA, for serverAuth and clientAuth; " +
        "a coordinator's or worker's names the address peers dial)" +
        (https === undefined ? "" : `; ${https} is then HTTPS`),
    },
    "tls-key": {
      type: "string",
      value: "FILE",
      defaultText: "none; required with --tls-ca",
      help: "the certificate's private key (PEM, mode 0600)",
    },
  };
}

/**
 * Reads the files named by the TLS flags ({@linkcode tlsFlagSpecs});
 * undefined without `--tls-ca`.
 *
 * @throws {FlagError} naming the flag: a file missing or unusable, a flag
 *   without the others it needs.
 */
export async function loadTlsFlags(flags: Flags): Promise<TlsConfig | undefined> {
  const ca = flags.path("tls-ca");
  const cert = flags.path("tls-cert");
  const key = flags.path("tls-key");
  if (ca === undefined) {
    if (cert !== undefined || key !== undefined) {
      throw new FlagError(
        `--${cert !== undefined ? "tls-cert" : "tls-key"} needs --tls-ca: TLS is on only with a CA`,
      );
    }
    return undefined;
  }
  if (cert === undefined || key === undefined) {
    const missing = cert === undefined ? "tls-cert" : "tls-key";
    throw new FlagError(
      `--${missing} is required with --tls-ca: ${tlsFlagSpecs()[missing].help}`,
    );
  }
  const read = async (flag: string, path: string, kind: "CERTIFICATE" | "PRIVATE KEY") => {
    try {
      return await readPemFile(path, kind);
    } catch (error) {
      throw new FlagError(`Bad --${flag}: ${(error as Error).message}`, { cause: error });
    }
  };
  const config = {
    caCerts: [await read("tls-ca", ca, "CERTIFICATE")],
    cert: await read("tls-cert", cert, "CERTIFICATE"),
    key: await read("tls-key", key, "PRIVATE KEY"),
  };
  checkKeyPair(config.cert, config.key); // A TlsConfigError names both flags.
  return config;
}

/** `--tls-ca` of a page client (monitor, token): the CA an https:// page is checked against. */
export function pageCaFlagSpecs(): FlagSpecs {
  return {
    "tls-ca": {
      type: "string",
      value: "FILE",
      defaultText: "none: the system's CAs",
      help: "check an https:// page's certificate against this CA (PEM): the farm's --tls-ca",
    },
  };
}

/**
 * The fetch client for pages: one trusting `--tls-ca` ({@linkcode pageCaFlagSpecs}),
 * undefined (fetch's default) without it.
 *
 * @throws {FlagError} naming the flag when its file cannot be used.
 */
export async function loadPageClient(flags: Flags): Promise<Deno.HttpClient | undefined> {
  const ca = flags.path("tls-ca");
  if (ca === undefined) return undefined;
  try {
    return Deno.createHttpClient({ caCerts: [await readPemFile(ca, "CERTIFICATE")] });
  } catch (error) {
    throw new FlagError(`Bad --tls-ca: ${errorMessage(error)}`, { cause: error });
  }
}
