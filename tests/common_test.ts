/** The small helpers in common/ that every role shares. */
import assert from "node:assert/strict";
import { cString } from "../common/c_string.ts";
import { errorMessage } from "../common/errors.ts";
import { HASH_PATTERN, isHash } from "../common/hash.ts";
import { escapeHtml } from "../common/html.ts";
import { baseName, isInside, joinPath, normalizePath, parentOf } from "../common/paths.ts";

Deno.test("normalizePath() drops '.', empty parts and resolves '..' never above '/'", () => {
  assert.equal(normalizePath("/"), "/");
  assert.equal(normalizePath("//usr/./include//"), "/usr/include");
  assert.equal(normalizePath("/usr/include/../lib"), "/usr/lib");
  assert.equal(normalizePath("/../../etc"), "/etc");
  assert.equal(normalizePath("tmp/x"), "/tmp/x");
});

Deno.test("parentOf(), baseName() and joinPath() take normalised paths apart and back", () => {
  assert.equal(parentOf("/"), "/");
  assert.equal(parentOf("/usr"), "/");
  assert.equal(parentOf("/usr/include/stdio.h"), "/usr/include");
  assert.equal(baseName("/"), "");
  assert.equal(baseName("/usr/include/stdio.h"), "stdio.h");
  assert.equal(joinPath("/", "usr"), "/usr");
  assert.equal(joinPath("/usr", "lib"), "/usr/lib");
  for (const path of ["/usr", "/usr/include/stdio.h"]) {
    assert.equal(joinPath(parentOf(path), baseName(path)), path);
  }
});

Deno.test("isInside() holds for the root itself and below it, not for a shared prefix", () => {
  assert.ok(isInside("/src", "/src"));
  assert.ok(isInside("/src/a/b.c", "/src"));
  assert.ok(!isInside("/srcx", "/src"));
  assert.ok(!isInside("/", "/src"));
  assert.ok(isInside("/anything", "/"));
  assert.ok(isInside("/", "/"));
});

Deno.test("cString() is NUL-terminated and at least 128 bytes", () => {
  const short = cString("abc");
  assert.equal(short.length, 128);
  assert.deepEqual([...short.subarray(0, 4)], [97, 98, 99, 0]);
  const long = cString("é".repeat(100));
  assert.equal(long.length, 201);
  assert.equal(long[200], 0);
});

Deno.test("errorMessage() gives the message of an Error and the text of anything else", () => {
  assert.equal(errorMessage(new TypeError("bad")), "bad");
  assert.equal(errorMessage("plain"), "plain");
  assert.equal(errorMessage(42), "42");
  assert.equal(errorMessage(undefined), "undefined");
});

Deno.test("escapeHtml() escapes the five characters that matter in content and attributes", () => {
  assert.equal(
    escapeHtml(`<a href="x">Tom & 'Jerry'</a>`),
    "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;",
  );
  assert.equal(escapeHtml("plain"), "plain");
});

Deno.test("isHash() accepts exactly 64 lowercase hex characters", () => {
  const hash = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
  assert.ok(isHash(hash));
  assert.ok(HASH_PATTERN.test(hash));
  assert.ok(!isHash(hash.toUpperCase()));
  assert.ok(!isHash(hash.slice(1)));
  assert.ok(!isHash(hash + "0"));
  assert.ok(!isHash(`../${hash.slice(3)}`));
});
