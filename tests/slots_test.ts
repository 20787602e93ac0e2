/**
 * A worker's slots shared by several masters: taken per job, given back at
 * its end, and split in turn between the masters that wait.
 */
import assert from "node:assert/strict";
import { FairSlots, SlotsFullError } from "../worker/slots.ts";

const tick = () => new Promise((r) => setTimeout(r, 0));

Deno.test("FairSlots gives free slots to waiting masters in turn, whatever their queue lengths", async () => {
  const slots = new FairSlots({ slots: 2, waitingMax: 100 });
  const order: string[] = [];
  const releases: (() => void)[] = [];
  const take = (master: string, n: number) => {
    for (let i = 0; i < n; i++) {
      slots.acquire(master).then((release) => {
        order.push(master);
        releases.push(release);
      });
    }
  };
  take("a", 10); // a greedy build fills the worker and queues 8 more
  await tick();
  take("b", 3); // a second build arrives
  await tick();
  assert.deepEqual(order, ["a", "a"]);
  assert.equal(slots.waiting, 11);
  for (let i = 0; i < 8; i++) {
    releases.shift()!();
    await tick();
  }
  assert.deepEqual(order, ["a", "a", "a", "b", "a", "b", "a", "b", "a", "a"]);
  assert.equal(slots.busy, 2);
  assert.deepEqual(Object.fromEntries(slots.running), { a: 2 });
  while (releases.length > 0) {
    releases.shift()!();
    await tick();
  }
  assert.equal(slots.busy, 0);
  assert.equal(slots.running.size, 0, "an idle master holds no slot");
});

Deno.test("FairSlots: a released slot is given back once; an aborted waiter leaves the queue", async () => {
  const slots = new FairSlots({ slots: 1, waitingMax: 100 });
  const release = await slots.acquire("a");
  const abort = new AbortController();
  const waiting = slots.acquire("b", abort.signal);
  const next = slots.acquire("c");
  assert.equal(slots.waiting, 2);
  abort.abort(new Error("cancelled"));
  await assert.rejects(waiting, /cancelled/);
  assert.equal(slots.waiting, 1);
  release();
  release(); // twice: no second slot appears
  const releaseC = await next;
  assert.equal(slots.busy, 1);
  releaseC();
  assert.equal(slots.busy, 0);
});

Deno.test("FairSlots refuses past its queue bound and follows a resize", async () => {
  const slots = new FairSlots({ slots: 1, waitingMax: 2 });
  const first = await slots.acquire("a");
  const w1 = slots.acquire("a");
  const w2 = slots.acquire("b");
  await assert.rejects(slots.acquire("c"), SlotsFullError);
  slots.resize(3); // both waiters get a slot at once
  const [r1, r2] = await Promise.all([w1, w2]);
  assert.equal(slots.busy, 3);
  slots.resize(0); // drained: running jobs finish, nothing new starts
  first();
  r1();
  r2();
  let started = false;
  const late = slots.acquire("a").then((r) => {
    started = true;
    return r;
  });
  await tick();
  assert.equal(started, false);
  slots.resize(1);
  (await late)();
});

Deno.test("FairSlots: a drained worker rejects the waiting jobs and lets running ones finish", async () => {
  const slots = new FairSlots({ slots: 1, waitingMax: 10 });
  const release = await slots.acquire("a");
  const waiting = [slots.acquire("a"), slots.acquire("b")];
  slots.resize(0);
  slots.rejectWaiting(() => new Error("draining"));
  for (const w of waiting) await assert.rejects(w, /draining/);
  assert.equal(slots.waiting, 0);
  assert.equal(slots.busy, 1);
  release();
  assert.equal(slots.busy, 0);
  const late = slots.acquire("c");
  let granted = false;
  late.then(() => granted = true, () => {});
  await tick();
  assert.equal(granted, false, "no slot is granted while drained");
  slots.rejectWaiting(() => new Error("gone"));
  await assert.rejects(late, /gone/);
});
