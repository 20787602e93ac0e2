/**
 * Emulated hosts on one machine: network namespaces joined to the host by veth
 * pairs, on addresses of their own (10.213.N.0/24: N.1 on the host side, N.2
 * inside). Created and removed by the farm and its tests; traffic stays here.
 */

async function ip(args: string[], options: { check?: boolean } = {}): Promise<string> {
  const out = await new Deno.Command("ip", { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success && options.check !== false) {
    throw new Error(`ip ${args.join(" ")}: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
  return new TextDecoder().decode(out.stdout);
}

export interface Host {
  /** Namespace name. */
  name: string;
  /** Address of the namespace side. */
  address: string;
  /** Address of the host side (reachable from inside). */
  hostAddress: string;
  /** Host-side interface (for cutting the link). */
  hostIf: string;
  /** Command prefix to run inside. */
  exec: string[];
}

/** A free block of `count` host numbers (veth names `tmh<n>` unused). */
export async function freeHostNumbers(count: number): Promise<number> {
  const links = await ip(["-o", "link"]);
  const used = new Set([...links.matchAll(/tm[hn](\d+)/g)].map((m) => Number(m[1])));
  for (let first = 1 + Math.floor(Math.random() * 200);; first = 1 + ((first + count) % 240)) {
    let ok = true;
    for (let i = 0; i < count; i++) if (used.has(first + i) || first + i > 250) ok = false;
    if (ok) return first;
  }
}

/** Creates a namespace `name` with a veth link numbered `n` (1..250). */
export async function createHost(name: string, n: number): Promise<Host> {
  if (!Number.isInteger(n) || n < 1 || n > 250) throw new Error(`Bad host number ${n}`);
  await removeHost(name, n);
  const hostIf = `tmh${n}`, nsIf = `tmn${n}`;
  await ip(["netns", "add", name]);
  await ip(["link", "add", hostIf, "type", "veth", "peer", "name", nsIf]);
  await ip(["link", "set", nsIf, "netns", name]);
  await ip(["addr", "add", `10.213.${n}.1/24`, "dev", hostIf]);
  await ip(["link", "set", hostIf, "up"]);
  await ip(["-n", name, "addr", "add", `10.213.${n}.2/24`, "dev", nsIf]);
  await ip(["-n", name, "link", "set", nsIf, "up"]);
  await ip(["-n", name, "link", "set", "lo", "up"]);
  // Hosts reach each other as on one LAN (peer workers fetch blobs from each
  // other): routed through the host side, forwarding on these links only.
  await ip(["-n", name, "route", "add", "10.213.0.0/16", "via", `10.213.${n}.1`]);
  await Deno.writeTextFile(`/proc/sys/net/ipv4/conf/${hostIf}/forwarding`, "1");
  return {
    name,
    address: `10.213.${n}.2`,
    hostAddress: `10.213.${n}.1`,
    hostIf,
    exec: ["ip", "netns", "exec", name],
  };
}

export async function removeHost(name: string, n: number): Promise<void> {
  await ip(["link", "del", `tmh${n}`], { check: false });
  await ip(["netns", "del", name], { check: false });
}

/** Cuts (or restores) the link of a host. */
export async function setLink(host: Host, up: boolean): Promise<void> {
  await ip(["link", "set", host.hostIf, up ? "up" : "down"]);
}
