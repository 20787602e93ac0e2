/**
 * termite token: makes the token the coordinator's status page asks for to
 * drain or stop a worker (an HMAC with the farm's secret, valid for a
 * minute, once), or sends the action with it.
 *
 *   deno run -A token.ts --secret /etc/termite/secret --action drain --worker ID
 *   deno run -A token.ts --secret ... --action stop --worker ID --post http://127.0.0.1:1231/
 *   (--tls-ca FILE for an https:// page: the farm's CA)
 */
import { ADMIN_ACTIONS, type AdminAction, adminToken } from "./coordinator/admin_token.ts";
import { WORKER_ID_CHARS_MAX } from "./coordinator/types.ts";
import {
  type FlagSpecs,
  loadPageClient,
  loadSecretFile,
  pageCaFlagSpecs,
  parseRoleFlags,
  runRole,
} from "./common/cli.ts";

const FLAGS: FlagSpecs = {
  secret: {
    type: "string",
    value: "FILE",
    default: "secret.txt",
    help: "the farm's shared secret (the coordinator's --secret)",
  },
  action: {
    type: "string",
    value: ADMIN_ACTIONS.join("|"),
    required: true,
    help: "drain: the worker finishes its jobs and takes no new ones; stop: it shuts down",
  },
  worker: {
    type: "string",
    value: "ID",
    required: true,
    help: "the worker's id (on the status page and in /status.json)",
  },
  post: {
    type: "string",
    value: "URL",
    defaultText: "none: print the token",
    help: "send the action to the coordinator's status page at URL instead of printing the token",
  },
  ...pageCaFlagSpecs(),
};

const flags = parseRoleFlags("token", Deno.args, {
  usage: "deno run -A token.ts --secret FILE --action drain|stop --worker ID [--post URL]",
  about: "Makes the token for a drain or stop on the coordinator's status page (valid for a " +
    "minute, once), or sends the action with it.",
  flags: FLAGS,
});
await runRole("token", [], async () => {
  const action = flags.required("action") as AdminAction;
  if (!ADMIN_ACTIONS.includes(action)) {
    throw new Error(`Flag --action is ${action}, want ${ADMIN_ACTIONS.join(" or ")}`);
  }
  const worker = flags.required("worker");
  if (worker.length > WORKER_ID_CHARS_MAX || !/^[A-Za-z0-9_.-]+$/.test(worker)) {
    throw new Error(`Flag --worker is not a worker id: ${JSON.stringify(worker)}`);
  }
  const secret = await loadSecretFile(flags.path("secret")!);
  const token = await adminToken(secret, action, worker);
  const post = flags.string("post");
  if (post === undefined) {
    console.log(token);
  } else {
    const url = new URL(
      `workers/${encodeURIComponent(worker)}/${action}`,
      post.replace(/\/?$/, "/"),
    );
    const client = await loadPageClient(flags);
    let response: Response;
    let text: string;
    try {
      response = await fetch(url, { method: "POST", headers: { authorization: token }, client });
      text = (await response.text()).trim();
    } finally {
      client?.close();
    }
    if (!response.ok) throw new Error(`${url} answered ${response.status}: ${text}`);
    console.log(`termite token: ${action} sent to worker ${worker}`);
  }
});
