/**
 * TCP_NODELAY for a connection made by `Deno.connectTls`, whose `TlsConn`
 * has no `setNoDelay` (Deno 2.9): its socket is found by its ports in
 * /proc/net/tcp{,6}, its descriptor by that socket's inode in /proc/self/fd,
 * and the option set with setsockopt(2) through FFI. Without it Nagle's
 * algorithm holds a reply written after a chunk (or after TLS's session
 * ticket) until the peer's delayed ACK: about 40 ms per call that streams.
 *
 * @module
 */

import { concatBytes } from "../common/bytes.ts";
import { loadLibc } from "../common/libc.ts";

const SYMBOLS = {
  setsockopt: {
    parameters: [
      "i32", // int sockfd
      "i32", // int level
      "i32", // int optname
      "buffer", // const void *optval
      "u32", // socklen_t optlen
    ],
    result: "i32",
  },
} as const satisfies Deno.ForeignLibraryInterface;

const IPPROTO_TCP = 6;
const TCP_NODELAY = 1;
/** Bytes of /proc/net/tcp{,6} read at most (a line per socket of the network namespace). */
const PROC_NET_BYTES_MAX = 64 * 2 ** 20;

/** A /proc file's text, up to `max` bytes (their stat says size 0, so it is read in chunks). */
function readProcText(path: string, max: number): string {
  using file = Deno.openSync(path, { read: true });
  const chunks: Uint8Array[] = [];
  let total = 0;
  const buffer = new Uint8Array(64 * 1024);
  while (total < max) {
    const n = file.readSync(buffer);
    if (n === null || n === 0) break;
    chunks.push(buffer.slice(0, n));
    total += n;
  }
  return new TextDecoder().decode(concatBytes(chunks));
}

/** The inode of the TCP socket from `localPort` to `remotePort`, from /proc/net/tcp{,6}. */
function socketInode(localPort: number, remotePort: number): string | undefined {
  const hex = (port: number) => port.toString(16).toUpperCase().padStart(4, "0");
  const local = `:${hex(localPort)}`;
  const remote = `:${hex(remotePort)}`;
  for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text: string;
    try {
      text = readProcText(table, PROC_NET_BYTES_MAX);
    } catch {
      continue;
    }
    for (const line of text.split("\n").slice(1)) {
      // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
      const f = line.trim().split(/\s+/);
      if (f.length > 9 && f[1].endsWith(local) && f[2].endsWith(remote)) return f[9];
    }
  }
  return undefined;
}

/** This process's descriptor of socket `inode`. */
function fdOf(inode: string): number | undefined {
  const target = `socket:[${inode}]`;
  for (const entry of Deno.readDirSync("/proc/self/fd")) {
    try {
      if (Deno.readLinkSync(`/proc/self/fd/${entry.name}`) === target) return Number(entry.name);
    } catch {
      // Closed meanwhile.
    }
  }
  return undefined;
}

/**
 * Sets TCP_NODELAY on the socket of `conn` (a TLS connection); false when
 * it cannot (no FFI, no /proc, the socket gone).
 */
export function setTlsNoDelay(conn: Deno.TlsConn): boolean {
  let inode: string | undefined;
  let fd: number | undefined;
  try {
    inode = socketInode(conn.localAddr.port, conn.remoteAddr.port);
    fd = inode === undefined ? undefined : fdOf(inode);
  } catch {
    return false; // No /proc.
  }
  if (fd === undefined) return false;
  // Opened per connection (once per peer), so that nothing stays loaded.
  let libc: Deno.DynamicLibrary<typeof SYMBOLS>;
  try {
    libc = loadLibc(SYMBOLS);
  } catch {
    return false; // No FFI permission, or no glibc: Nagle stays on.
  }
  try {
    return libc.symbols.setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, new Int32Array([1]), 4) === 0;
  } finally {
    libc.close();
  }
}
