// Scheduler throughput end to end, without running anything: a producer does what Execute does
// (createOrJoin the operation, enqueue it) and 4 takers do what a worker does around a no-op
// action (take, update EXECUTING, update COMPLETED with a response, complete the lease).
// BullMqActionQueue + RedisOperationStore on a real Redis (REDIS_URL, or a private redis-server),
// each taker with its own connections as if it were its own process; then the in-memory pair as
// the baseline. Run: npm run build && node dist/bench/scheduler-throughput.js
// Env: BENCH_JOBS (default 5000), BENCH_TAKERS (4), BENCH_PRODUCERS (8 concurrent Execute calls).
import { randomUUID } from 'node:crypto';
import { ActionQueue, QueuedAction } from '../scheduler/action-queue';
import { BullMqActionQueue } from '../scheduler/bullmq-action-queue';
import { MemoryActionQueue } from '../scheduler/memory-action-queue';
import { MemoryOperationStore } from '../scheduler/memory-operation-store';
import { OperationRecord, OperationStore } from '../scheduler/operation-store';
import { RedisOperationStore } from '../scheduler/redis-operation-store';
import { startRedis } from '../test/helpers/redis';

const JOBS = Number(process.env.BENCH_JOBS ?? 5000);
const TAKERS = Number(process.env.BENCH_TAKERS ?? 4);
const PRODUCERS = Number(process.env.BENCH_PRODUCERS ?? 8);
const RESPONSE = Buffer.alloc(200, 7); // about an encoded ExecuteResponse with a small result

interface Side {
  queue: ActionQueue;
  operations: OperationStore;
}

interface System {
  producer: Side;
  takers: Side[];
  close(): Promise<void>;
}

async function run(label: string, system: System): Promise<number> {
  const stop = new AbortController();
  let completed = 0;
  let finish!: () => void;
  const allDone = new Promise<void>((resolve) => (finish = resolve));
  const takers = system.takers.map(async ({ queue, operations }, i) => {
    for (;;) {
      const lease = await queue.take([], stop.signal);
      if (!lease) return;
      const name = lease.job.operationName;
      await operations.update(name, { stage: 'EXECUTING', worker: `taker-${i}` });
      await operations.update(name, { stage: 'COMPLETED', done: true, response: RESPONSE });
      await lease.complete();
      if (++completed === JOBS) finish();
    }
  });

  const started = process.hrtime.bigint();
  let next = 0;
  const producers = Array.from({ length: PRODUCERS }, async () => {
    while (next < JOBS) {
      const i = next++;
      const record: OperationRecord = {
        name: `operations/${randomUUID()}`,
        instanceName: 'bench',
        actionDigest: { hash: i.toString(16).padStart(64, '0'), sizeBytes: 100 + i },
        stage: 'QUEUED',
        done: false,
        queuedAt: Date.now(),
        dedupKey: `bench\0${i}`,
      };
      const owner = await system.producer.operations.createOrJoin(record);
      const job: QueuedAction = {
        operationName: owner.name,
        instanceName: record.instanceName,
        actionDigest: record.actionDigest,
        priority: 0,
        platform: [{ name: 'container-image', value: 'docker://bench' }],
        queuedAt: record.queuedAt,
      };
      await system.producer.queue.enqueue(job);
    }
  });
  await Promise.all(producers);
  const producedMs = Number(process.hrtime.bigint() - started) / 1e6;
  await allDone;
  const elapsedMs = Number(process.hrtime.bigint() - started) / 1e6;
  stop.abort();
  await Promise.all(takers);
  await system.close();
  const rate = JOBS / (elapsedMs / 1000);
  console.log(
    `${label.padEnd(28)} ${JOBS} jobs, ${TAKERS} takers: ${rate.toFixed(0).padStart(6)} jobs/s end to end ` +
      `(${elapsedMs.toFixed(0)} ms; all enqueued after ${producedMs.toFixed(0)} ms)`,
  );
  return rate;
}

async function main(): Promise<void> {
  const own = process.env.REDIS_URL ? undefined : await startRedis();
  const url = process.env.REDIS_URL ?? own!.url;
  try {
    const prefix = `bench${randomUUID().slice(0, 8)}`;
    const side = (): Side => ({
      queue: new BullMqActionQueue({ url, prefix }),
      operations: new RedisOperationStore({ url, prefix }),
    });
    const redisSides = [side(), ...Array.from({ length: TAKERS }, side)];
    const redisRate = await run('BullMQ + Redis', {
      producer: redisSides[0],
      takers: redisSides.slice(1),
      close: async () => {
        await Promise.all(redisSides.flatMap((s) => [s.queue.close(), s.operations.close()]));
      },
    });

    const memory: Side = { queue: new MemoryActionQueue(), operations: new MemoryOperationStore() };
    const memoryRate = await run('memory (baseline)', {
      producer: memory,
      takers: Array.from({ length: TAKERS }, () => memory),
      close: async () => {
        await memory.queue.close();
        await memory.operations.close();
      },
    });
    console.log(`scheduler: Redis/memory throughput ratio ${(redisRate / memoryRate).toFixed(3)} (goal: Redis >= 1000 jobs/s)`);
  } finally {
    await own?.stop();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
