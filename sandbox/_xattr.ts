/** Reads extended attributes through libc (Deno has no xattr API). */
import { cString } from "../common/c_string.ts";
import { loadLibc } from "../common/libc.ts";

const SYMBOLS = {
  /** ssize_t lgetxattr(const char *path, const char *name, void *value, size_t size) */
  lgetxattr: { parameters: ["buffer", "buffer", "buffer", "usize"], result: "isize" },
} as const satisfies Deno.ForeignLibraryInterface;

/** A handle on libc's `lgetxattr`; close it when done. */
export class XattrReader {
  #lib: Deno.DynamicLibrary<typeof SYMBOLS>;
  #value = new Uint8Array(256);

  constructor() {
    this.#lib = loadLibc(SYMBOLS);
  }

  /** Returns the attribute's bytes (up to 256), or `null` when absent or unreadable. */
  get(path: string, name: string): Uint8Array | null {
    const n = Number(
      this.#lib.symbols.lgetxattr(
        cString(path),
        cString(name),
        this.#value,
        BigInt(this.#value.length),
      ),
    );
    return n < 0 ? null : this.#value.slice(0, n);
  }

  close(): void {
    this.#lib.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
