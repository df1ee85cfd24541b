// The worker's limiter: at most n tasks at once, started in the order they came; a waiter that
// is abandoned never runs and leaves no place taken.
import test from 'node:test';
import assert from 'node:assert/strict';
import { limiter } from '../worker/limiter';

const tick = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('at most n at once, in arrival order, also for callers arriving as a place frees', async () => {
  const limit = limiter(2);
  let running = 0;
  let most = 0;
  const started: number[] = [];
  const task = (i: number) => async () => {
    started.push(i);
    running++;
    most = Math.max(most, running);
    await tick(i % 3);
    running--;
  };
  const first = Array.from({ length: 10 }, (_, i) => limit(task(i)));
  // Each of these arrives right after some task has finished: none may slip past the waiters.
  const late = first.map((p, i) => p.then(() => limit(task(10 + i))));
  await Promise.all([...first, ...late]);
  assert.equal(most, 2);
  assert.deepEqual(started.slice(0, 10), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  assert.equal(started.length, 20);
});

test('a caller arriving between the end of a task and the start of its waiter waits behind that waiter', async () => {
  const limit = limiter(1);
  let running = 0;
  let most = 0;
  const order: string[] = [];
  const counted = (name: string, body: () => Promise<void>) => async () => {
    order.push(name);
    most = Math.max(most, ++running);
    await body();
    running--;
  };
  let finishFirst!: () => void;
  const firstDone = new Promise<void>((r) => (finishFirst = r));
  const first = limit(() => {
    order.push('first');
    most = Math.max(most, ++running);
    void firstDone.then(() => running--);
    return firstDone;
  });
  const waiter = limit(counted('waiter', async () => void (await tick(5))));
  // Hooked on the first task's promise after the limiter is: this caller comes right after the
  // place is released, before the waiter it was handed to has started.
  let late: Promise<void> | undefined;
  void firstDone.then(() => (late = limit(counted('late', async () => undefined))));
  finishFirst();
  await Promise.all([first, waiter]);
  await late;
  assert.deepEqual(order, ['first', 'waiter', 'late']);
  assert.equal(most, 1);
});

test('a waiter abandoned before its turn never runs, and the others still do', async () => {
  const limit = limiter(1);
  let release!: () => void;
  const blocker = limit(() => new Promise<void>((r) => (release = r)));
  const abandon = new AbortController();
  let ran = false;
  const abandoned = limit(async () => void (ran = true), abandon.signal);
  const next = limit(async () => 'next');
  abandon.abort();
  await assert.rejects(abandoned, /abandoned/);
  release();
  await blocker;
  assert.equal(await next, 'next');
  assert.equal(ran, false);
  assert.equal(await limit(async () => 'room left'), 'room left');
});
