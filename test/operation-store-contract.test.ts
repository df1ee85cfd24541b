// One OperationStore contract, run against the in-memory store and the Redis one. For Redis,
// every test gets its own key prefix; a "peer" is another store instance on the same Redis (another
// server, or the same server after a restart).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { MemoryOperationStore } from '../scheduler/memory-operation-store';
import { OperationRecord, OperationStore } from '../scheduler/operation-store';
import { RedisOperationStore } from '../scheduler/redis-operation-store';
import { startRedis, TestRedis } from './helpers/redis';

interface StoreSystem {
  store: OperationStore;
  peer(): Promise<OperationStore>;
  close(): Promise<void>;
}

function op(over: Partial<OperationRecord> = {}): OperationRecord {
  return {
    name: `operations/${randomUUID()}`,
    instanceName: 'main',
    actionDigest: { hash: 'b'.repeat(64), sizeBytes: 1234567890123 },
    stage: 'QUEUED',
    done: false,
    queuedAt: Date.now(),
    ...over,
  };
}

const allBytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));

async function collect(iterable: AsyncIterable<OperationRecord>): Promise<OperationRecord[]> {
  const out: OperationRecord[] = [];
  for await (const r of iterable) out.push(r);
  return out;
}

function storeContract(label: string, open: () => Promise<StoreSystem>): void {
  describe(`OperationStore contract: ${label}`, () => {
    async function withSystem(fn: (s: StoreSystem) => Promise<void>): Promise<void> {
      const s = await open();
      try {
        await fn(s);
      } finally {
        await s.close();
      }
    }

    test('create, get, update', () =>
      withSystem(async ({ store, peer }) => {
        const other = await peer();
        const record = op({ dedupKey: 'main\0abc/3' });
        await store.create(record);
        assert.deepEqual(await other.get(record.name), record);
        assert.equal(await store.get('operations/unknown'), undefined);

        const executing = await other.update(record.name, { stage: 'EXECUTING', worker: 'w1' });
        assert.deepEqual(executing, { ...record, stage: 'EXECUTING', worker: 'w1' });
        assert.deepEqual(await store.get(record.name), executing);

        const cleared = await store.update(record.name, { worker: undefined, cancelRequested: true });
        assert.equal(cleared?.worker, undefined);
        assert.equal(cleared?.cancelRequested, true);

        const done = await store.update(record.name, { stage: 'COMPLETED', done: true, response: allBytes });
        assert.equal(done?.done, true);
        assert.ok(Buffer.from(done!.response!).equals(allBytes), 'a response survives byte for byte');
        const read = await other.get(record.name);
        assert.ok(read?.response && Buffer.from(read.response).equals(allBytes));
        assert.equal(read?.stage, 'COMPLETED');
        assert.deepEqual(read?.actionDigest, record.actionDigest);

        assert.equal(await store.update('operations/unknown', { stage: 'EXECUTING' }), undefined);
      }));

    test('startExecuting moves an unfinished operation to EXECUTING and leaves a finished one alone', () =>
      withSystem(async ({ store, peer }) => {
        const other = await peer();
        const record = op();
        await store.create(record);
        const watch = store.watch(record.name, AbortSignal.timeout(10_000))[Symbol.asyncIterator]();
        assert.equal((await watch.next()).value?.stage, 'QUEUED');
        const started = await other.startExecuting(record.name, 'w1');
        assert.deepEqual(started, { ...record, stage: 'EXECUTING', worker: 'w1' });

        const done = await other.update(record.name, { stage: 'COMPLETED', done: true, response: allBytes, worker: 'w1' });
        // A second delivery of the same job, to another worker, after the operation finished.
        const again = await store.startExecuting(record.name, 'w2');
        assert.deepEqual(again, done, 'a finished operation is returned as it was');
        assert.deepEqual(await other.get(record.name), done, 'and stays as it was');
        const seen: OperationRecord[] = [];
        for (let next = await watch.next(); !next.done; next = await watch.next()) seen.push(next.value);
        assert.deepEqual(seen.map((r) => [r.stage, r.worker]), [['EXECUTING', 'w1'], ['COMPLETED', 'w1']]);

        assert.equal(await store.startExecuting('operations/unknown', 'w1'), undefined);
      }));

    test('watch yields the current state, then each change, and ends at done', () =>
      withSystem(async ({ store, peer }) => {
        const other = await peer();
        const record = op();
        await store.create(record);
        const it = other.watch(record.name, AbortSignal.timeout(10_000))[Symbol.asyncIterator]();
        const first = await it.next();
        assert.equal(first.value?.stage, 'QUEUED');
        await store.update(record.name, { stage: 'EXECUTING', worker: 'w' });
        const second = await it.next();
        assert.equal(second.value?.stage, 'EXECUTING');
        assert.equal(second.value?.worker, 'w');
        await store.update(record.name, { stage: 'COMPLETED', done: true, response: allBytes });
        const third = await it.next();
        assert.equal(third.value?.done, true);
        assert.ok(third.value?.response && Buffer.from(third.value.response).equals(allBytes));
        assert.equal((await it.next()).done, true, 'the watch ends after done');

        const late = await collect(other.watch(record.name, AbortSignal.timeout(10_000)));
        assert.deepEqual(late.map((r) => r.stage), ['COMPLETED'], 'watching a done operation yields it once');
        assert.deepEqual(await collect(other.watch('operations/unknown', AbortSignal.timeout(10_000))), []);
      }));

    test('watch loses no update made right as it starts', () =>
      withSystem(async ({ store, peer }) => {
        const other = await peer();
        for (let i = 0; i < 20; i++) {
          const record = op();
          await store.create(record);
          const watching = collect(other.watch(record.name, AbortSignal.timeout(10_000)));
          // Racing the watch's subscribe-and-read: whatever it saw first, it must still end at done.
          await store.update(record.name, { stage: 'EXECUTING' });
          await store.update(record.name, { stage: 'COMPLETED', done: true });
          const seen = await watching;
          assert.equal(seen.at(-1)?.done, true, `round ${i}: ${seen.map((r) => r.stage)}`);
          const order = ['QUEUED', 'EXECUTING', 'COMPLETED'];
          const ranks = seen.map((r) => order.indexOf(r.stage));
          assert.deepEqual(ranks, [...ranks].sort(), 'states never go backwards');
          assert.equal(new Set(ranks).size, ranks.length, 'no state twice');
        }
      }));

    test('aborting ends a watch', () =>
      withSystem(async ({ store }) => {
        const record = op();
        await store.create(record);
        const controller = new AbortController();
        const seen: OperationRecord[] = [];
        const watching = (async () => {
          for await (const r of store.watch(record.name, controller.signal)) seen.push(r);
        })();
        await new Promise((r) => setTimeout(r, 100));
        controller.abort();
        await watching;
        assert.deepEqual(seen.map((r) => r.stage), ['QUEUED']);
      }));

    test('createOrJoin joins an unfinished operation with the same dedupKey, never a finished one', () =>
      withSystem(async ({ store, peer }) => {
        const other = await peer();
        const key = `main\0${randomUUID()}/10`;
        const first = op({ dedupKey: key });
        assert.equal((await store.createOrJoin(first)).name, first.name);
        const second = op({ dedupKey: key });
        const joined = await other.createOrJoin(second);
        assert.equal(joined.name, first.name, 'joins the in-flight operation');
        assert.equal(joined.done, false);
        assert.equal(await store.get(second.name), undefined, 'a joiner creates nothing');

        const unrelated = op({ dedupKey: `main\0${randomUUID()}/10` });
        assert.equal((await other.createOrJoin(unrelated)).name, unrelated.name);
        const noKey = op();
        assert.equal((await other.createOrJoin(noKey)).name, noKey.name);

        await other.update(first.name, { stage: 'COMPLETED', done: true });
        const third = op({ dedupKey: key });
        assert.equal((await store.createOrJoin(third)).name, third.name, 'a finished operation is not joined');
        const fourth = op({ dedupKey: key });
        assert.equal((await other.createOrJoin(fourth)).name, third.name, 'the new owner is joined');

        await store.delete(third.name);
        const fifth = op({ dedupKey: key });
        assert.equal((await store.createOrJoin(fifth)).name, fifth.name, 'a deleted owner releases the key');
      }));

    test('list pages through every operation exactly once', () =>
      withSystem(async ({ store, peer }) => {
        const other = await peer();
        const records = Array.from({ length: 7 }, () => op());
        for (const r of records) await store.create(r);
        await store.update(records[2].name, { stage: 'COMPLETED', done: true });
        const seen: OperationRecord[] = [];
        let token = '';
        let pages = 0;
        do {
          const page = await other.list(3, token);
          assert.ok(page.records.length <= 3);
          seen.push(...page.records);
          token = page.nextPageToken;
          pages++;
        } while (token && pages < 10);
        assert.equal(pages, 3);
        assert.deepEqual(seen.map((r) => r.name).sort(), records.map((r) => r.name).sort());
        assert.equal(seen.find((r) => r.name === records[2].name)?.done, true);
        assert.deepEqual(await other.list(10, ''), { records: [...seen].sort((a, b) => (a.name < b.name ? -1 : 1)), nextPageToken: '' });
      }));

    test('delete removes the operation and ends its watchers', () =>
      withSystem(async ({ store, peer }) => {
        const other = await peer();
        const record = op({ dedupKey: `main\0${randomUUID()}/1` });
        await store.createOrJoin(record);
        const it = other.watch(record.name, AbortSignal.timeout(10_000))[Symbol.asyncIterator]();
        assert.equal((await it.next()).value?.name, record.name);
        assert.equal(await store.delete(record.name), true);
        assert.equal((await it.next()).done, true, 'the watcher ends');
        assert.equal(await other.get(record.name), undefined);
        assert.equal(await other.delete(record.name), false);
        assert.deepEqual((await store.list(10, '')).records, []);
      }));
  });
}

storeContract('memory', async () => {
  const store = new MemoryOperationStore();
  return { store, peer: async () => store, close: () => store.close() };
});

let redis: TestRedis | undefined;
before(async () => {
  redis = await startRedis();
});
after(async () => {
  await redis?.stop();
});

async function openRedisSystem(keepDoneMs?: number): Promise<StoreSystem> {
  const prefix = `t${randomUUID().slice(0, 8)}`;
  const all: RedisOperationStore[] = [];
  const open = () => {
    const s = new RedisOperationStore({ url: redis!.url, prefix, keepDoneMs });
    all.push(s);
    return s;
  };
  return {
    store: open(),
    peer: async () => open(),
    close: async () => {
      await Promise.all(all.map((s) => s.close()));
    },
  };
}

storeContract('Redis', () => openRedisSystem());

describe('RedisOperationStore only', () => {
  test('a restarted server sees every operation and follows updates made by another', async () => {
    const system = await openRedisSystem();
    try {
      const { store } = system;
      const queued = op();
      const running = op({ dedupKey: `main\0${randomUUID()}/5` });
      const finished = op();
      for (const r of [queued, running, finished]) await store.createOrJoin(r);
      await store.update(running.name, { stage: 'EXECUTING', worker: 'w1' });
      await store.update(finished.name, { stage: 'COMPLETED', done: true, response: allBytes });
      await store.close();

      const restarted = await system.peer();
      assert.equal((await restarted.get(queued.name))?.stage, 'QUEUED');
      assert.equal((await restarted.get(running.name))?.worker, 'w1');
      assert.ok((await restarted.get(finished.name))?.response?.equals(allBytes));
      assert.equal((await restarted.createOrJoin(op({ dedupKey: running.dedupKey }))).name, running.name, 'dedup survives');

      const otherServer = await system.peer();
      const watching = collect(restarted.watch(running.name, AbortSignal.timeout(10_000)));
      // The first state arrives only once the watch has subscribed; then the other server writes.
      await new Promise((r) => setTimeout(r, 50));
      await otherServer.update(running.name, { stage: 'COMPLETED', done: true, response: allBytes });
      const seen = await watching;
      assert.equal(seen.at(-1)?.done, true);
      assert.ok(seen.at(-1)?.response?.equals(allBytes));
    } finally {
      await system.close();
    }
  });

  test('finished operations expire, unfinished ones do not', async () => {
    const system = await openRedisSystem(300);
    try {
      const { store } = system;
      const finished = op();
      const open = op();
      await store.create(finished);
      await store.create(open);
      await store.update(finished.name, { stage: 'COMPLETED', done: true });
      await new Promise((r) => setTimeout(r, 600));
      assert.equal(await store.get(finished.name), undefined);
      assert.equal((await store.get(open.name))?.stage, 'QUEUED');
      assert.deepEqual((await store.list(10, '')).records.map((r) => r.name), [open.name]);
    } finally {
      await system.close();
    }
  });
});
