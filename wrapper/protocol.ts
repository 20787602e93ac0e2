/**
 * The wrapper ↔ master protocol over the master's unix socket.
 *
 * The wrapper starts once per compile, so this file has no dependencies: a frame
 * is a u32 big-endian length, one type byte, then the payload (`length` counts
 * the type byte and the payload). JSON for the request and the exit, raw bytes
 * for the streams. The socket is mode 0700: only the master's user can connect.
 */

export const WRAPPER_PROTOCOL_VERSION = 1;
export const WRAPPER_FRAME_BYTES_MAX = 1 << 20;

/** Frame types. */
export const FrameType = {
  /** Wrapper → master: the request (JSON `WrapperRequest`). */
  request: 0x52, // R
  /** Wrapper → master: stdin bytes; an empty payload is end of input. */
  stdin: 0x49, // I
  /** Wrapper → master: cancel the job (^C). */
  cancel: 0x43, // C
  /** Master → wrapper: stdout bytes. */
  stdout: 0x4f, // O
  /** Master → wrapper: stderr bytes. */
  stderr: 0x45, // E
  /** Master → wrapper: the job ended (JSON `WrapperExit`). */
  exit: 0x58, // X
  /**
   * Client → master, instead of a request: how many jobs the farm can run at
   * once now; the master answers with one such frame (JSON `FarmSlots`).
   */
  slots: 0x53, // S
} as const;

/** The jobs a master can run at once: on its workers, and here. */
export interface FarmSlots {
  remote: number;
  local: number;
}

export interface WrapperRequest {
  version: number;
  argv: string[];
  cwd: string;
  env: Record<string, string>;
  /** Whether stdin frames follow (stdin is a pipe or a file). */
  stdin: boolean;
  /** Set by the shell wrapper: argv is `[shell, "-c", script]`. */
  shell?: boolean;
  /**
   * PATH as the wrapper was given it (`env.PATH` has the wrapper's directory
   * taken out): for commands the master's local rules run (a recursive make).
   */
  localPath?: string;
}

/**
 * Checks a decoded request frame: the request, normalised (`stdin` and
 * `shell` true or false), or why it is refused. The one validation of the
 * message, made by the master.
 */
export function checkWrapperRequest(raw: unknown): WrapperRequest | string {
  const r = raw as WrapperRequest;
  if (typeof r !== "object" || r === null) return "request is not an object";
  if (r.version !== WRAPPER_PROTOCOL_VERSION) {
    return `wrapper protocol version mismatch: master speaks ${WRAPPER_PROTOCOL_VERSION}, wrapper speaks ${r.version}`;
  }
  if (!Array.isArray(r.argv) || r.argv.length === 0 || r.argv.some((a) => typeof a !== "string")) {
    return "bad argv";
  }
  if (typeof r.cwd !== "string" || !r.cwd.startsWith("/")) return "bad cwd";
  if (typeof r.env !== "object" || r.env === null) return "bad env";
  for (const v of Object.values(r.env)) if (typeof v !== "string") return "bad env";
  if (r.localPath !== undefined && typeof r.localPath !== "string") return "bad localPath";
  return {
    version: r.version,
    argv: r.argv,
    cwd: r.cwd,
    env: r.env,
    stdin: r.stdin === true,
    shell: r.shell === true,
    localPath: r.localPath,
  };
}

export interface WrapperExit {
  code: number;
  /** A message for the user when the master could not run the job. */
  error?: string;
}

export class WrapperProtocolError extends Error {
  override name = "WrapperProtocolError";
}

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder();

/** Encodes one frame. */
export function encodeWrapperFrame(type: number, payload: Uint8Array | string): Uint8Array {
  const body = typeof payload === "string" ? textEncoder.encode(payload) : payload;
  if (body.length + 1 > WRAPPER_FRAME_BYTES_MAX) {
    throw new WrapperProtocolError(`Frame too large: ${body.length + 1} bytes`);
  }
  const frame = new Uint8Array(5 + body.length);
  new DataView(frame.buffer).setUint32(0, body.length + 1);
  frame[4] = type;
  frame.set(body, 5);
  return frame;
}

export interface WrapperFrame {
  type: number;
  payload: Uint8Array;
}

/** Reads frames from a connection; `null` at a clean end of stream. */
export class WrapperFrameReader {
  #conn: { read(p: Uint8Array): Promise<number | null> };
  /** Grown to fit a larger frame; a request with its environment fits at first. */
  #buf = new Uint8Array(16 * 1024);
  #start = 0;
  #end = 0;

  constructor(conn: { read(p: Uint8Array): Promise<number | null> }) {
    this.#conn = conn;
  }

  async #fill(bytes: number): Promise<boolean> {
    while (this.#end - this.#start < bytes) {
      if (this.#buf.length - this.#start < bytes) {
        const size = Math.max(this.#buf.length, bytes);
        const next = new Uint8Array(size);
        next.set(this.#buf.subarray(this.#start, this.#end));
        this.#end -= this.#start;
        this.#start = 0;
        this.#buf = next;
      }
      const n = await this.#conn.read(this.#buf.subarray(this.#end));
      if (n === null) return false;
      this.#end += n;
    }
    return true;
  }

  async read(): Promise<WrapperFrame | null> {
    if (!await this.#fill(4)) {
      if (this.#end > this.#start) throw new WrapperProtocolError("Truncated frame header");
      return null;
    }
    const length = new DataView(this.#buf.buffer, this.#start, 4).getUint32(0);
    if (length < 1 || length > WRAPPER_FRAME_BYTES_MAX) {
      throw new WrapperProtocolError(`Bad frame length: ${length}`);
    }
    if (!await this.#fill(4 + length)) throw new WrapperProtocolError("Truncated frame");
    const type = this.#buf[this.#start + 4];
    const payload = this.#buf.slice(this.#start + 5, this.#start + 4 + length);
    this.#start += 4 + length;
    if (this.#start === this.#end) this.#start = this.#end = 0;
    return { type, payload };
  }
}

export function decodeJson<T>(payload: Uint8Array): T {
  return JSON.parse(textDecoder.decode(payload)) as T;
}

/** Writes all of `data`. */
export async function writeAll(
  conn: { write(p: Uint8Array): Promise<number> },
  data: Uint8Array,
): Promise<void> {
  let off = 0;
  while (off < data.length) off += await conn.write(data.subarray(off));
}
