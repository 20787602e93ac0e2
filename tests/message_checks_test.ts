/** Each message type's one validation, beside its schema. */
import assert from "node:assert/strict";
import { isJobParams } from "../common/protocol.ts";
import { checkWrapperRequest, WRAPPER_PROTOCOL_VERSION } from "../wrapper/protocol.ts";

const request = {
  version: WRAPPER_PROTOCOL_VERSION,
  argv: ["cc", "-c", "x.c"],
  cwd: "/src",
  env: { PATH: "/usr/bin" },
  stdin: true,
};

Deno.test("checkWrapperRequest() returns the request normalised, stdin and shell as booleans", () => {
  assert.deepEqual(checkWrapperRequest(request), {
    ...request,
    shell: false,
    localPath: undefined,
  });
  const r = checkWrapperRequest({ ...request, stdin: "yes", shell: 1 });
  assert.ok(typeof r !== "string");
  assert.equal(r.stdin, false);
  assert.equal(r.shell, false);
});

Deno.test("checkWrapperRequest() names what is wrong with a bad request", () => {
  assert.equal(checkWrapperRequest(null), "request is not an object");
  assert.match(String(checkWrapperRequest({ ...request, version: -1 })), /version mismatch/);
  assert.equal(checkWrapperRequest({ ...request, argv: [] }), "bad argv");
  assert.equal(checkWrapperRequest({ ...request, argv: ["cc", 1] }), "bad argv");
  assert.equal(checkWrapperRequest({ ...request, cwd: "src" }), "bad cwd");
  assert.equal(checkWrapperRequest({ ...request, env: { A: 1 } }), "bad env");
  assert.equal(checkWrapperRequest({ ...request, localPath: 3 }), "bad localPath");
});

Deno.test("isJobParams() takes a command with a job id and refuses anything else", () => {
  const params = { jobId: "j1", argv: ["cc"], cwd: "/src", env: {}, stdin: false };
  assert.ok(isJobParams(params));
  assert.ok(!isJobParams(null));
  assert.ok(!isJobParams({ ...params, argv: [] }));
  assert.ok(!isJobParams({ ...params, argv: [1] }));
  assert.ok(!isJobParams({ ...params, cwd: 1 }));
  assert.ok(!isJobParams({ ...params, jobId: undefined }));
});
