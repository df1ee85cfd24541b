// One ActionQueue contract, run against the in-process queue and the BullMQ/Redis one. For Redis,
// every test gets its own key prefix, and "peers" are separate queue objects with their own
// connections: separate processes sharing one Redis, as in a farm.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { ActionQueue, Lease, QueuedAction } from '../scheduler/action-queue';
import { BullMqActionQueue, BullMqActionQueueOptions } from '../scheduler/bullmq-action-queue';
import { MemoryActionQueue } from '../scheduler/memory-action-queue';
import { PlatformProperty, queueKey } from '../scheduler/platform';
import { startRedis, TestRedis } from './helpers/redis';

interface QueueSystem {
  queue: ActionQueue;
  /** Another handle on the same queues: another process for Redis, the same object in memory. */
  peer(): Promise<ActionQueue>;
  close(): Promise<void>;
}

let seq = 0;
function job(over: Partial<QueuedAction> = {}): QueuedAction {
  return {
    operationName: `operations/${randomUUID()}`,
    instanceName: 'main',
    actionDigest: { hash: 'a'.repeat(64), sizeBytes: seq++ },
    priority: 0,
    platform: [],
    queuedAt: Date.now(),
    ...over,
  };
}

const linux: PlatformProperty = { name: 'OSFamily', value: 'linux' };
const gpu: PlatformProperty = { name: 'gpu', value: 'yes' };
const image: PlatformProperty = { name: 'container-image', value: 'docker://ubuntu:24.04' };

async function takeNow(queue: ActionQueue, platform: PlatformProperty[] = []): Promise<Lease> {
  const lease = await queue.take(platform, AbortSignal.timeout(5000));
  assert.ok(lease, 'expected a job');
  return lease;
}

/** Nothing for this worker within `ms`: take() must come back undefined when the signal aborts. */
async function takeNothing(queue: ActionQueue, platform: PlatformProperty[] = [], ms = 300): Promise<void> {
  const lease = await queue.take(platform, AbortSignal.timeout(ms));
  assert.equal(lease?.job.operationName, undefined);
}

async function names(queue: ActionQueue, count: number, platform: PlatformProperty[] = []): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < count; i++) {
    const lease = await takeNow(queue, platform);
    out.push(lease.job.operationName);
    await lease.complete();
  }
  return out;
}

function queueContract(label: string, open: () => Promise<QueueSystem>): void {
  describe(`ActionQueue contract: ${label}`, () => {
    async function withSystem(fn: (s: QueueSystem) => Promise<void>): Promise<void> {
      const s = await open();
      try {
        await fn(s);
      } finally {
        await s.close();
      }
    }

    test('FIFO within one priority', () =>
      withSystem(async ({ queue }) => {
        const jobs = [job(), job(), job(), job()];
        for (const j of jobs) await queue.enqueue(j);
        assert.deepEqual(await names(queue, 4), jobs.map((j) => j.operationName));
      }));

    test('lower priority value runs first, then arrival order', () =>
      withSystem(async ({ queue }) => {
        const late = job({ priority: 5 });
        const urgent = job({ priority: -1000 });
        const normalA = job({ priority: 0 });
        const urgentish = job({ priority: -3 });
        const normalB = job({ priority: 0 });
        const last = job({ priority: 1000 });
        for (const j of [late, urgent, normalA, urgentish, normalB, last]) await queue.enqueue(j);
        assert.deepEqual(await names(queue, 6), [urgent, urgentish, normalA, normalB, late, last].map((j) => j.operationName));
      }));

    test('the most urgent job across every queue the worker satisfies', () =>
      withSystem(async ({ queue }) => {
        const t = Date.now();
        const plain = job({ priority: 0, queuedAt: t });
        const onLinux = job({ priority: -5, platform: [linux], queuedAt: t + 1 });
        const plainUrgent = job({ priority: -10, queuedAt: t + 2 });
        const onLinuxLater = job({ priority: 0, platform: [linux], queuedAt: t + 3 });
        for (const j of [plain, onLinux, plainUrgent, onLinuxLater]) await queue.enqueue(j);
        assert.deepEqual(await names(queue, 4, [linux]), [plainUrgent, onLinux, plain, onLinuxLater].map((j) => j.operationName));
      }));

    test('platform matching: missing property never, extra properties fine, run properties do not select', () =>
      withSystem(async ({ queue, peer }) => {
        const other = await peer();
        const needsGpu = job({ platform: [gpu, linux] });
        await queue.enqueue(needsGpu);
        await takeNothing(other, [linux]);
        await takeNothing(other, []);
        const lease = await takeNow(other, [gpu, linux, { name: 'pool', value: 'big' }]);
        assert.equal(lease.job.operationName, needsGpu.operationName);
        assert.deepEqual(lease.job.platform, needsGpu.platform);
        await lease.complete();

        const withImage = job({ platform: [image, linux] });
        await queue.enqueue(withImage);
        const imaged = await takeNow(other, [linux]);
        assert.equal(imaged.job.operationName, withImage.operationName);
        assert.deepEqual(imaged.job.platform, withImage.platform, 'the job keeps its run properties');
        await imaged.complete();
      }));

    test('take() waits for a job, also one in a queue created after it started', () =>
      withSystem(async ({ queue, peer }) => {
        const other = await peer();
        let settled = false;
        const taking = other.take([linux, gpu], AbortSignal.timeout(10_000)).then((l) => {
          settled = true;
          return l;
        });
        await new Promise((r) => setTimeout(r, 200));
        assert.equal(settled, false, 'take() must wait while nothing is queued');
        const j = job({ platform: [gpu] });
        await queue.enqueue(j);
        const lease = await taking;
        assert.equal(lease?.job.operationName, j.operationName);
        assert.deepEqual(lease?.job.actionDigest, j.actionDigest);
        await lease?.complete();
      }));

    test('aborting the signal makes take() resolve undefined', () =>
      withSystem(async ({ queue }) => {
        const controller = new AbortController();
        const taking = queue.take([], controller.signal);
        await new Promise((r) => setTimeout(r, 100));
        controller.abort();
        assert.equal(await taking, undefined);
        const aborted = new AbortController();
        aborted.abort();
        await queue.enqueue(job());
        assert.equal(await queue.take([], aborted.signal), undefined, 'an aborted signal takes nothing');
      }));

    test('release() hands the job back and another worker gets it', () =>
      withSystem(async ({ queue, peer }) => {
        const other = await peer();
        const first = job();
        const second = job();
        await queue.enqueue(first);
        await queue.enqueue(second);
        const lease = await takeNow(queue);
        assert.equal(lease.job.operationName, first.operationName);
        await lease.release();
        await assert.rejects(lease.complete(), 'a lease ends once');
        const again = await takeNow(other);
        assert.equal(again.job.operationName, first.operationName, 'a released job keeps its place');
        await again.complete();
        assert.deepEqual(await names(other, 1), [second.operationName]);
      }));

    test('release() wakes a worker that is already waiting', () =>
      withSystem(async ({ queue, peer }) => {
        const other = await peer();
        const j = job({ platform: [linux] });
        await queue.enqueue(j);
        const lease = await takeNow(queue, [linux]);
        const waiting = other.take([linux], AbortSignal.timeout(10_000));
        await new Promise((r) => setTimeout(r, 100));
        await lease.release();
        const again = await waiting;
        assert.equal(again?.job.operationName, j.operationName);
        await again?.complete();
      }));

    test('remove() takes out a waiting job only', () =>
      withSystem(async ({ queue, peer }) => {
        const other = await peer();
        const a = job();
        const b = job({ platform: [linux] });
        const c = job();
        for (const j of [a, b, c]) await queue.enqueue(j);
        assert.equal(await other.remove(b.operationName), true);
        assert.equal(await queue.remove(b.operationName), false, 'already removed');
        assert.equal(await queue.remove('operations/unknown'), false);
        const taken = await takeNow(queue, [linux]);
        assert.equal(taken.job.operationName, a.operationName);
        assert.equal(await other.remove(a.operationName), false, 'a taken job is not waiting');
        await taken.complete();
        assert.deepEqual(await names(queue, 1, [linux]), [c.operationName]);
        await takeNothing(queue, [linux]);
      }));

    test('enqueueing the same operation twice queues it once', () =>
      withSystem(async ({ queue, peer }) => {
        const other = await peer();
        const j = job();
        await queue.enqueue(j);
        await other.enqueue({ ...j });
        assert.equal((await queue.depth()).get('default'), 1);
        assert.deepEqual(await names(queue, 1), [j.operationName]);
        await takeNothing(queue);
      }));

    test('depth() counts waiting jobs per platform queue', () =>
      withSystem(async ({ queue, peer }) => {
        const other = await peer();
        await queue.enqueue(job());
        await queue.enqueue(job({ platform: [image] }));
        await queue.enqueue(job({ platform: [linux, image] }));
        await queue.enqueue(job({ platform: [linux, gpu] }));
        const lin = queueKey([linux]);
        const linGpu = queueKey([linux, gpu]);
        assert.deepEqual(Object.fromEntries(await other.depth()), { default: 2, [lin]: 1, [linGpu]: 1 });
        const lease = await takeNow(other, [linux]);
        const after = await queue.depth();
        assert.equal((after.get('default') ?? 0) + (after.get(lin) ?? 0), 2);
        assert.equal(after.get(linGpu), 1);
        await lease.complete();
      }));

    test('concurrent workers never get the same job', () =>
      withSystem(async ({ queue, peer }) => {
        const takers = [queue, await peer(), await peer()];
        const total = 50;
        const seen: string[] = [];
        const stop = new AbortController();
        const loops = takers.map(async (q) => {
          for (;;) {
            const lease = await q.take([], stop.signal);
            if (!lease) return;
            seen.push(lease.job.operationName);
            await lease.complete();
            if (seen.length >= total) stop.abort();
          }
        });
        const jobs = Array.from({ length: total }, () => job());
        for (const j of jobs) await queue.enqueue(j);
        const timer = setTimeout(() => stop.abort(), 20_000);
        await Promise.all(loops);
        clearTimeout(timer);
        assert.equal(seen.length, total, 'each job exactly once');
        assert.deepEqual([...seen].sort(), jobs.map((j) => j.operationName).sort());
      }));
  });
}

queueContract('memory', async () => {
  const queue = new MemoryActionQueue();
  return { queue, peer: async () => queue, close: () => queue.close() };
});

let redis: TestRedis | undefined;
before(async () => {
  redis = await startRedis();
});
after(async () => {
  await redis?.stop();
});

/** Short locks and checks so a dead worker's job comes back within a test's patience. */
function redisQueue(prefix: string, more: Partial<BullMqActionQueueOptions>): BullMqActionQueue {
  const opts: BullMqActionQueueOptions = { url: redis!.url, prefix, lockDurationMs: 1000, stalledIntervalMs: 500, idleRefreshMs: 2000, ...more };
  return new BullMqActionQueue(opts);
}

async function openRedisSystem(more: Partial<BullMqActionQueueOptions> = {}): Promise<QueueSystem & { open(): BullMqActionQueue }> {
  const prefix = `t${randomUUID().slice(0, 8)}`;
  const all: BullMqActionQueue[] = [];
  const open = () => {
    const q = redisQueue(prefix, more);
    all.push(q);
    return q;
  };
  return {
    queue: open(),
    open,
    peer: async () => open(),
    close: async () => {
      await Promise.all(all.map((q) => q.close()));
    },
  };
}

queueContract('BullMQ on Redis', openRedisSystem);

describe('BullMqActionQueue only', () => {
  test('a job leased by a worker that died is recovered and handed to another worker', async () => {
    const system = await openRedisSystem();
    try {
      const crashed = system.open();
      const survivor = system.open();
      // A second queue the survivor also serves, so it looks across queues (the stuck job is in
      // neither queue's waiting list until the stalled check moves it back).
      await system.queue.enqueue(job());
      assert.equal((await names(system.queue, 1)).length, 1);
      const j = job({ platform: [linux] });
      await system.queue.enqueue(j);
      const lease = await takeNow(crashed, [linux]);
      assert.equal(lease.job.operationName, j.operationName);
      // Dropping the process's connections without complete()/release(): what SIGKILL leaves.
      await crashed.close();
      const recovered = await survivor.take([linux], AbortSignal.timeout(20_000));
      assert.equal(recovered?.job.operationName, j.operationName);
      await recovered?.complete();
      await takeNothing(survivor, [linux]);
    } finally {
      await system.close();
    }
  });

  test('a job recovered from dead workers more often than allowed comes back abandoned, once', async () => {
    const system = await openRedisSystem({ maxStalledCount: 1 });
    try {
      const j = job();
      await system.queue.enqueue(j);
      for (let death = 1; death <= 2; death++) {
        const doomed = system.open();
        const lease = await doomed.take([], AbortSignal.timeout(20_000));
        assert.equal(lease?.job.operationName, j.operationName, `taken before death ${death}`);
        assert.equal(lease?.abandoned, undefined, `still worth running before death ${death}`);
        await doomed.close();
      }
      const taker = system.open();
      const last = await taker.take([], AbortSignal.timeout(20_000));
      assert.equal(last?.job.operationName, j.operationName);
      assert.match(last?.abandoned ?? '', /stalled more than allowable limit: its worker stopped 2 times/);
      await last?.complete();
      await takeNothing(taker, [], 2500);
      // Failed for good, not back to waiting.
      assert.equal((await system.queue.depth()).get('default'), 0);
    } finally {
      await system.close();
    }
  });

  test('a held lease is renewed, so a long job is not handed out twice', async () => {
    const system = await openRedisSystem();
    try {
      const other = system.open();
      await system.queue.enqueue(job());
      const lease = await takeNow(system.queue);
      // Several lock durations (1 s) and stalled checks (0.5 s) pass while the lease is held.
      await takeNothing(other, [], 3500);
      await lease.complete();
    } finally {
      await system.close();
    }
  });
});
