/**
 * The tree watcher says which paths it covers: those whose every later
 * change it will report (the master reads the others again while young).
 */
import assert from "node:assert/strict";
import { TreeWatcher } from "../master/tree_watcher.ts";

Deno.test("TreeWatcher.covers(): paths in watched directories, a directory once it is watched itself, nothing once closed", async () => {
  const root = await Deno.realPath(await Deno.makeTempDir({ prefix: "termite-tw-" }));
  await Deno.mkdir(`${root}/src`);
  const watcher = TreeWatcher.start({ root, skip: (dir) => dir.startsWith(`${root}/.skip`) });
  const seen = new Set<string>();
  const reading = (async () => {
    for await (const event of watcher) for (const p of event.paths) seen.add(p);
  })();
  try {
    assert.ok(watcher.covers(root, true), "the root");
    assert.ok(watcher.covers(`${root}/src`, true));
    assert.ok(watcher.covers(`${root}/src/a.o`, false), "a file, existing or not");
    assert.ok(watcher.covers(`${root}/link`, false), "a symlink is a name in its directory");
    assert.ok(!watcher.covers(`${root}/src/sub/a.o`, false), "no such directory watched");
    assert.ok(!watcher.covers(`${root}/src/sub`, true), "a directory not watched itself");
    assert.ok(!watcher.covers(`/usr/include/stdio.h`, false), "outside the tree");
    assert.ok(!watcher.covers(root.slice(0, root.lastIndexOf("/")), true), "the root's parent");
    await Deno.mkdir(`${root}/.skip`);
    await Deno.mkdir(`${root}/src/sub`);
    for (let i = 0; i < 200 && !seen.has(`${root}/src/sub`); i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.ok(watcher.covers(`${root}/src/sub`, true), "watched once its creation is read");
    assert.ok(watcher.covers(`${root}/src/sub/a.o`, false));
    assert.ok(!watcher.covers(`${root}/.skip/x`, false), "a skipped directory is not watched");
    await watcher.close();
    await reading;
    assert.ok(!watcher.covers(`${root}/src/a.o`, false), "closed: nothing is reported");
  } finally {
    await watcher.close();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("TreeWatcher.watchOf(): a new id once a directory is made again or moved back, or events were lost", async () => {
  const root = await Deno.realPath(await Deno.makeTempDir({ prefix: "termite-tw-" }));
  await Deno.mkdir(`${root}/src`);
  await Deno.mkdir(`${root}/obj`);
  const watcher = TreeWatcher.start({ root, queueMax: 1_000 });
  const seen: string[] = [];
  const reading = (async () => {
    for await (const event of watcher) {
      seen.push(...event.paths, ...(event.kind === "rescan" ? ["rescan"] : []));
    }
  })();
  const settle = async (what: string) => {
    for (let i = 0; i < 200 && !seen.includes(what); i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.ok(seen.includes(what), `no event for ${what}`);
  };
  try {
    const first = watcher.watchOf(`${root}/src`);
    assert.ok(first !== null);
    assert.equal(watcher.watchOf(`${root}/none`), null);
    await Deno.writeTextFile(`${root}/src/a.c`, "");
    await settle(`${root}/src/a.c`);
    assert.equal(watcher.watchOf(`${root}/src`), first, "a change inside keeps the watch");
    await Deno.remove(`${root}/src`, { recursive: true });
    await Deno.mkdir(`${root}/src`);
    await Deno.writeTextFile(`${root}/src/made-again`, "");
    await settle(`${root}/src/made-again`);
    const second = watcher.watchOf(`${root}/src`);
    assert.ok(second !== null && second !== first, "made again: watched anew");
    await Deno.rename(`${root}/src`, `${root}/away`);
    await Deno.rename(`${root}/away`, `${root}/src`);
    await Deno.writeTextFile(`${root}/src/back`, "");
    await settle(`${root}/src/back`);
    const third = watcher.watchOf(`${root}/src`);
    assert.ok(third !== null && third !== second, "moved away and back: watched anew");
  } finally {
    await watcher.close();
    await reading;
  }
  // A reader that falls behind loses events: every id changes.
  const slow = TreeWatcher.start({ root, queueMax: 1 });
  try {
    const before = slow.watchOf(`${root}/obj`);
    for (let i = 0; i < 20; i++) {
      await Deno.writeTextFile(`${root}/obj/f${i}`, "");
      await new Promise((r) => setTimeout(r, 5));
    }
    let after = slow.watchOf(`${root}/obj`);
    for (let i = 0; i < 200 && after === before; i++) {
      await new Promise((r) => setTimeout(r, 10));
      after = slow.watchOf(`${root}/obj`);
    }
    assert.ok(after !== null && after !== before, "events lost: a new id");
  } finally {
    await slow.close();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("TreeWatcher.drain(): every change made before it is reported within the call, to onEvent, a new directory's contents too; false once closed", async () => {
  const root = await Deno.realPath(await Deno.makeTempDir({ prefix: "termite-tw-" }));
  await Deno.mkdir(`${root}/src`);
  const seen: string[] = [];
  let rescans = 0;
  const watcher = TreeWatcher.start({
    root,
    onEvent: (event) => {
      if (event.kind === "rescan") rescans++;
      seen.push(...event.paths);
    },
  });
  try {
    assert.ok(watcher.drain(), "nothing queued yet");
    assert.equal(seen.length, 0);
    // Made by another process, then drained without yielding to the event loop.
    const sh = new Deno.Command("sh", {
      args: ["-c", "echo x > src/a.c && mkdir -p obj/sub && echo y > obj/sub/b.o && rm src/a.c"],
      cwd: root,
    }).outputSync();
    assert.ok(sh.success);
    assert.ok(watcher.drain());
    for (const p of ["src/a.c", "obj", "obj/sub", "obj/sub/b.o"]) {
      assert.ok(seen.includes(`${root}/${p}`), `${p} reported: ${seen.join(", ")}`);
    }
    assert.ok(watcher.covers(`${root}/obj/sub/b.o`, false), "the new directories are watched");
    seen.length = 0;
    Deno.writeTextFileSync(`${root}/obj/sub/c.o`, "z");
    assert.ok(watcher.drain());
    assert.deepEqual([...new Set(seen)], [`${root}/obj/sub/c.o`]);
    assert.equal(rescans, 0);
    await watcher.close();
    assert.ok(!watcher.drain(), "closed: nothing can be read");
  } finally {
    await watcher.close();
    await Deno.remove(root, { recursive: true });
  }
});
