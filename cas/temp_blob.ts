/**
 * A blob being written into the store: a temp file in the store's tmp dir,
 * hashed as it is filled, renamed into place by the store once verified.
 *
 * @module
 */

import { createHash, type Hash } from "node:crypto";
import { CasError, ioError } from "./errors.ts";

/** Buffer that coalesces small fetcher chunks into fewer writes. */
const WRITE_BUFFER_BYTES = 256 * 1024;
/** Its size for the first chunk of a blob (then doubled as needed). */
const WRITE_BUFFER_MIN_BYTES = 16 * 1024;

/** Where a {@linkcode TempBlob} goes and how large it may grow. */
export interface TempOptions {
  storeDir: string;
  tmpDir: string;
  blobBytesMax: number;
}

/** A temp file in the store's tmp dir being filled and hashed. */
export class TempBlob {
  readonly path: string;
  committed = false;
  readonly #storeDir: string;
  readonly #blobBytesMax: number;
  #file: Deno.FsFile | undefined;
  #hasher: Hash = createHash("sha256");
  #buffer: Uint8Array | undefined;
  #fill = 0;
  #size = 0;
  #busy = false;

  private constructor(options: TempOptions, path: string, file: Deno.FsFile) {
    this.#storeDir = options.storeDir;
    this.#blobBytesMax = options.blobBytesMax;
    this.path = path;
    this.#file = file;
  }

  static async create(options: TempOptions): Promise<TempBlob> {
    const path = `${options.tmpDir}/${crypto.randomUUID()}`;
    try {
      const file = await Deno.open(path, { write: true, createNew: true });
      return new TempBlob(options, path, file);
    } catch (error) {
      throw ioError(`Cannot create temp file in store ${options.storeDir}`, error);
    }
  }

  async write(chunk: Uint8Array): Promise<void> {
    if (this.#file === undefined) {
      throw new CasError("IO", `Cannot write blob to store ${this.#storeDir}: sink is closed`);
    }
    if (this.#busy) throw new Error("BlobSink.write() called before the previous write settled");
    if (this.#size + chunk.length > this.#blobBytesMax) {
      throw new CasError(
        "LIMIT",
        `Cannot write blob to store ${this.#storeDir}: more than blobBytesMax ${this.#blobBytesMax} bytes`,
      );
    }
    this.#hasher.update(chunk);
    this.#size += chunk.length;
    this.#busy = true;
    try {
      if (this.#fill + chunk.length < WRITE_BUFFER_BYTES) {
        this.#buffer = this.#room(this.#fill + chunk.length);
        this.#buffer.set(chunk, this.#fill);
        this.#fill += chunk.length;
        return;
      }
      await this.#flush();
      await this.#writeAll(chunk);
    } finally {
      this.#busy = false;
    }
  }

  /** The SHA-256 (hex) of the bytes written so far; the file stays open. */
  digest(): string {
    if (this.#busy) throw new Error("BlobSink.digest() called before the previous write settled");
    return this.#hasher.copy().digest("hex");
  }

  /** Forgets every byte written so far: the file is emptied, the hash begins again. */
  async restart(): Promise<void> {
    const file = this.#file;
    if (file === undefined) throw new CasError("IO", "Cannot restart blob: temp file closed");
    if (this.#busy) throw new Error("BlobSink.restart() called before the previous write settled");
    this.#busy = true;
    try {
      this.#fill = 0;
      this.#size = 0;
      this.#hasher = createHash("sha256");
      await file.truncate(0);
      await file.seek(0, Deno.SeekMode.Start);
    } catch (error) {
      throw ioError(`Cannot restart blob in store ${this.#storeDir}`, error);
    } finally {
      this.#busy = false;
    }
  }

  /** Flushes and closes the file; returns the content's hash and size. */
  async finish(): Promise<{ hash: string; size: number }> {
    if (this.#busy) throw new Error("BlobSink.write() still pending when the fetch finished");
    await this.#flush();
    this.#file?.close();
    this.#file = undefined;
    return { hash: this.#hasher.digest("hex"), size: this.#size };
  }

  /** Closes the file and removes it unless committed; never throws or rejects. */
  discard(): Promise<void> {
    try {
      this.#file?.close();
    } catch {
      // already closed
    }
    this.#file = undefined;
    if (this.committed) return Promise.resolve();
    // Asynchronous (see Store.#exclusive); a leftover is removed at the next open.
    return Deno.remove(this.path).catch(() => {});
  }

  /**
   * The buffer, with room for `bytes`: it starts at the first chunk's size
   * (a small blob, most of a toolchain's, takes no 256 KiB buffer of its own)
   * and grows by doubling up to {@link WRITE_BUFFER_BYTES}.
   */
  #room(bytes: number): Uint8Array {
    const buffer = this.#buffer;
    if (buffer !== undefined && buffer.length >= bytes) return buffer;
    let length = Math.max(WRITE_BUFFER_MIN_BYTES, buffer?.length ?? 0);
    while (length < bytes) length *= 2;
    const grown = new Uint8Array(Math.min(WRITE_BUFFER_BYTES, length));
    if (buffer !== undefined) grown.set(buffer.subarray(0, this.#fill));
    return grown;
  }

  async #flush(): Promise<void> {
    if (this.#fill === 0 || this.#buffer === undefined) return;
    const fill = this.#fill;
    this.#fill = 0;
    await this.#writeAll(this.#buffer.subarray(0, fill));
  }

  async #writeAll(bytes: Uint8Array): Promise<void> {
    const file = this.#file;
    if (file === undefined) throw new CasError("IO", "Cannot write blob: temp file closed");
    try {
      let offset = 0;
      while (offset < bytes.length) offset += await file.write(bytes.subarray(offset));
    } catch (error) {
      throw ioError(`Cannot write blob to store ${this.#storeDir}`, error);
    }
  }
}
