// ActionQueue on Redis through BullMQ, for many servers and workers sharing one Redis.
//
// Layout (prefix "reapi" by default):
//   <prefix>:<queue>:*        one BullMQ queue per platform queue key (queueKey(platform)); ":" in
//                             the key is written %3A because BullMQ forbids it in queue names.
//                             Waiting jobs are in <prefix>:<queue>:prioritized (zset) and, after a
//                             stalled-job recovery, <prefix>:<queue>:wait (list).
//   <prefix>:queues           hash: queue key -> JSON of its selecting properties. Workers read it
//                             to find every queue they can serve, including ones created later.
//   <prefix>:wake             pub/sub channel; message = queue key that just gained a waiting job.
//
// A job's id is its operation name, so enqueueing the same operation twice is a no-op. Workers
// fetch jobs by hand (Worker.getNextJob without a processor) and hold BullMQ's lock while the
// lease lives, renewing it; a worker that dies stops renewing, and BullMQ's stalled-job checker
// (run by every process that takes from that queue) puts the job back: at-least-once.
//
// Idle workers cost nothing on Redis but a SUBSCRIBE: they sleep until a wake message for a queue
// they satisfy, plus a slow safety refresh (idleRefreshMs) for jobs that reappear without one.
import { randomUUID } from 'node:crypto';
import { Job, Queue, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { log } from '../server/log';
import { ActionQueue, Lease, MIN_PRIORITY, QueuedAction } from './action-queue';
import { PlatformProperty, queueKey, RUN_PROPERTIES, workerSatisfies } from './platform';
import { closeRedis, connectRedis } from './redis-connection';

export interface BullMqActionQueueOptions {
  /** redis://host:port[/db] */
  url: string;
  /** Key prefix shared by every process of one farm. Default "reapi". */
  prefix?: string;
  /** How long a lease survives without renewal (renewed every half of it). Default 30 s. */
  lockDurationMs?: number;
  /** How often the stalled-job checker runs. Default 30 s. */
  stalledIntervalMs?: number;
  /**
   * How often one job may be recovered from a dead worker before BullMQ fails it instead (a job
   * that kills every worker it lands on should not take the farm down). Default 5.
   */
  maxStalledCount?: number;
  /** An idle take() re-checks the queues this often even without a wake message. Default 15 s. */
  idleRefreshMs?: number;
}

interface Waiter {
  platform: PlatformProperty[];
  /** Set by a wake that arrives while the waiter is busy checking, so it checks once more. */
  woken: boolean;
  resume?: () => void;
}

interface HeldLease {
  queue: string;
  token: string;
}

type JobData = QueuedAction;

/**
 * Finds, among several BullMQ queues, the one whose next job is most urgent: the head of each
 * queue is what BullMQ's moveToActive would take (wait list first, then the lowest prioritized
 * score); heads are compared by BullMQ priority, then by timestamp (queuedAt). Read-only, so it
 * needs no atomicity: the take that follows is BullMQ's own atomic moveToActive.
 * KEYS: wait_1, prioritized_1, wait_2, prioritized_2, ...; ARGV: job key prefix of each queue.
 * Returns the 1-based index of the winning queue, 0 when all are empty.
 */
const PEEK_SCRIPT = `
local best, bestPrio, bestTs = 0, 0, 0
for i = 1, #ARGV do
  local id = redis.call('LINDEX', KEYS[2 * i - 1], -1)
  if not id then id = redis.call('ZRANGE', KEYS[2 * i], 0, 0)[1] end
  if id then
    local f = redis.call('HMGET', ARGV[i] .. id, 'priority', 'timestamp')
    local p = tonumber(f[1]) or 0
    local ts = tonumber(f[2]) or 0
    if best == 0 or p < bestPrio or (p == bestPrio and ts < bestTs) then
      best, bestPrio, bestTs = i, p, ts
    end
  end
end
return best
`;

type PeekingRedis = Redis & { reapiPeekQueues(numKeys: number, ...args: string[]): Promise<number> };

export class BullMqActionQueue implements ActionQueue {
  private readonly prefix: string;
  private readonly lockDurationMs: number;
  private readonly stalledIntervalMs: number;
  private readonly maxStalledCount: number;
  private readonly idleRefreshMs: number;
  /** Commands, BullMQ queues and workers (which add their own blocking connections). */
  private readonly client: PeekingRedis;
  /** Only created by a process that takes work. */
  private subscriber?: Redis;
  private listening?: Promise<void>;
  private readonly queues = new Map<string, Queue<JobData>>();
  private readonly workers = new Map<string, Worker<JobData>>();
  /** Queue key -> selecting properties, as read from the registry. */
  private readonly known = new Map<string, PlatformProperty[]>();
  /** Keys this process has written to the registry, so it writes each once. */
  private readonly registered = new Set<string>();
  private readonly waiters = new Set<Waiter>();
  private readonly held = new Map<string, HeldLease>();
  private renewTimer?: NodeJS.Timeout;
  private closed = false;

  constructor(opts: BullMqActionQueueOptions) {
    this.prefix = opts.prefix ?? 'reapi';
    this.lockDurationMs = opts.lockDurationMs ?? 30_000;
    this.stalledIntervalMs = opts.stalledIntervalMs ?? 30_000;
    this.maxStalledCount = opts.maxStalledCount ?? 5;
    this.idleRefreshMs = opts.idleRefreshMs ?? 15_000;
    this.client = connectRedis(opts.url, `${this.prefix}-queue`) as PeekingRedis;
    this.client.on('error', (err) => log.warn('redis (queue) error', { err }));
    this.client.defineCommand('reapiPeekQueues', { lua: PEEK_SCRIPT });
  }

  private get registryKey(): string {
    return `${this.prefix}:queues`;
  }

  private get wakeChannel(): string {
    return `${this.prefix}:wake`;
  }

  async enqueue(job: QueuedAction): Promise<void> {
    const key = queueKey(job.platform);
    if (!this.registered.has(key)) {
      // Registered before the job exists, so whoever hears the wake can already resolve the key.
      await this.client.hset(this.registryKey, key, JSON.stringify(selecting(job.platform)));
      this.registered.add(key);
    }
    await this.queueFor(key).add('action', job, {
      jobId: job.operationName,
      priority: bullPriority(job.priority),
      // BullMQ orders equal priorities by its own counter; the timestamp only breaks ties
      // between queues (see PEEK_SCRIPT), where the REAPI queue time is the fair measure.
      timestamp: job.queuedAt,
      removeOnComplete: true,
      removeOnFail: { count: 1000 },
    });
    await this.client.publish(this.wakeChannel, key);
  }

  async take(workerPlatform: PlatformProperty[], signal: AbortSignal): Promise<Lease | undefined> {
    if (signal.aborted || this.closed) return undefined;
    await this.listen();
    // Registered before the first look, so a job published while we look is not missed.
    const waiter: Waiter = { platform: workerPlatform, woken: true };
    this.waiters.add(waiter);
    try {
      while (!signal.aborted && !this.closed) {
        if (!waiter.woken) await this.sleep(waiter, signal);
        waiter.woken = false;
        if (signal.aborted || this.closed) break;
        const got = await this.tryTake(workerPlatform);
        if (got === 'raced') {
          waiter.woken = true; // another taker won that job; there may be more
          continue;
        }
        if (!got) continue;
        if (signal.aborted || this.closed) {
          await got.release().catch(() => undefined); // the stalled check recovers it otherwise
          break;
        }
        return got;
      }
      return undefined;
    } catch (err) {
      if (this.closed) return undefined; // connections went away under an in-flight take
      throw err;
    } finally {
      this.waiters.delete(waiter);
    }
  }

  async remove(operationName: string): Promise<boolean> {
    const keys = [...(await this.loadRegistry()).keys()];
    if (keys.length === 0) return false;
    const pipeline = this.client.pipeline();
    for (const key of keys) {
      pipeline.zscore(this.bullKey(key, 'prioritized'), operationName);
      pipeline.lpos(this.bullKey(key, 'wait'), operationName);
    }
    const replies = (await pipeline.exec()) ?? [];
    for (let i = 0; i < keys.length; i++) {
      if (replies[2 * i]?.[1] == null && replies[2 * i + 1]?.[1] == null) continue;
      // BullMQ refuses to remove a locked (taken) job, so a take between the check above and
      // this removal makes it answer 0 rather than pull the job from under a worker.
      return (await this.queueFor(keys[i]).remove(operationName)) === 1;
    }
    return false;
  }

  async depth(): Promise<Map<string, number>> {
    const keys = [...(await this.loadRegistry()).keys()];
    const pipeline = this.client.pipeline();
    for (const key of keys) {
      pipeline.llen(this.bullKey(key, 'wait'));
      pipeline.zcard(this.bullKey(key, 'prioritized'));
    }
    const replies = keys.length ? ((await pipeline.exec()) ?? []) : [];
    return new Map(keys.map((key, i) => [key, Number(replies[2 * i]?.[1] ?? 0) + Number(replies[2 * i + 1]?.[1] ?? 0)]));
  }

  /**
   * Stops taking and closes every connection. Leases still held are not handed back: like a
   * crashed worker's, they return to their queue through the stalled-job check.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const waiter of this.waiters) waiter.resume?.();
    this.stopRenewing();
    this.held.clear();
    await Promise.allSettled([...this.workers.values()].map((w) => w.close(true)));
    await Promise.allSettled([...this.queues.values()].map((q) => q.close()));
    await Promise.allSettled([this.subscriber && closeRedis(this.subscriber), closeRedis(this.client)]);
  }

  // --- taking -------------------------------------------------------------------------------

  /** A lease, undefined when nothing waits, 'raced' when the chosen job went to someone else. */
  private async tryTake(workerPlatform: PlatformProperty[]): Promise<Lease | 'raced' | undefined> {
    const keys = [...this.known].filter(([, props]) => workerSatisfies(workerPlatform, props)).map(([key]) => key);
    if (keys.length === 0) return undefined;
    // Every queue this process can serve gets its Worker, and with it a stalled-job checker:
    // a job stuck under a dead worker's lock sits in "active", where no peek would see it.
    for (const k of keys) this.workerFor(k);
    let key = keys[0];
    if (keys.length > 1) {
      const args = keys.flatMap((k) => [this.bullKey(k, 'wait'), this.bullKey(k, 'prioritized')]);
      const best = await this.client.reapiPeekQueues(args.length, ...args, ...keys.map((k) => this.bullKey(k, '')));
      if (best === 0) return undefined;
      key = keys[best - 1];
    }
    const token = randomUUID();
    const job = await this.workerFor(key).getNextJob(token, { block: false });
    if (!job) return keys.length > 1 ? 'raced' : undefined;
    return this.lease(key, job, token);
  }

  private lease(key: string, job: Job<JobData>, token: string): Lease {
    const id = job.id!;
    this.held.set(id, { queue: key, token });
    this.startRenewing();
    let ended = false;
    const end = () => {
      if (ended) throw new Error(`lease on ${id} already ended`);
      ended = true;
      this.held.delete(id);
      if (this.held.size === 0) this.stopRenewing();
    };
    // BullMQ marks a job recovered more than maxStalledCount times and leaves the failing to
    // whoever takes it next (its own processing loop would; getNextJob does not).
    const abandoned = job.deferredFailure && `${job.deferredFailure}: its worker stopped ${job.stalledCounter} times while running it`;
    return {
      job: job.data,
      abandoned,
      complete: async () => {
        end();
        if (abandoned) await job.moveToFailed(new Error(abandoned), token, false);
        else await job.moveToCompleted(null, token, false);
      },
      release: async () => {
        end();
        // Back to the front of its priority (BullMQ re-adds it with counter 0), then wake takers.
        await job.moveToWait(token);
        await this.client.publish(this.wakeChannel, key);
      },
    };
  }

  private sleep(waiter: Waiter, signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener('abort', done);
        waiter.resume = undefined;
        resolve();
      };
      // The safety refresh also re-reads the registry, in case a wake was lost on reconnect.
      const timer = setTimeout(() => {
        waiter.woken = true;
        this.loadRegistry().then(done, done);
      }, this.idleRefreshMs);
      signal.addEventListener('abort', done, { once: true });
      waiter.resume = done;
    });
  }

  /** Subscribes to wake messages and loads the registry, once per process. */
  private listen(): Promise<void> {
    if (this.listening) return this.listening;
    this.listening = (async () => {
      if (this.subscriber) await closeRedis(this.subscriber);
      const sub = this.client.duplicate({ connectionName: `${this.prefix}-queue-sub` });
      this.subscriber = sub;
      sub.on('error', (err) => log.warn('redis (queue subscriber) error', { err }));
      sub.on('message', (_channel: string, key: string) => this.onWake(key));
      // ioredis re-subscribes after a reconnect; wakes sent meanwhile are lost, so look again.
      let first = true;
      sub.on('ready', () => {
        if (first) first = false;
        else this.wakeAll();
      });
      await sub.subscribe(this.wakeChannel);
      await this.loadRegistry();
    })();
    // A failed start (Redis unreachable) must not stick: the next take() tries again.
    this.listening.catch(() => (this.listening = undefined));
    return this.listening;
  }

  private onWake(key: string): void {
    if (this.closed) return;
    const props = this.known.get(key);
    if (props) {
      this.wake(props);
      return;
    }
    this.loadRegistry().then(
      (known) => {
        const loaded = known.get(key);
        if (loaded) this.wake(loaded);
      },
      (err) => {
        if (!this.closed) log.warn('could not read the queue registry', { err });
      },
    );
  }

  private wake(queueProps: PlatformProperty[]): void {
    for (const waiter of this.waiters) {
      if (!workerSatisfies(waiter.platform, queueProps)) continue;
      waiter.woken = true;
      waiter.resume?.();
    }
  }

  private wakeAll(): void {
    for (const waiter of this.waiters) {
      waiter.woken = true;
      waiter.resume?.();
    }
  }

  private async loadRegistry(): Promise<Map<string, PlatformProperty[]>> {
    const entries = await this.client.hgetall(this.registryKey);
    for (const [key, json] of Object.entries(entries)) {
      if (!this.known.has(key)) this.known.set(key, JSON.parse(json) as PlatformProperty[]);
    }
    return this.known;
  }

  // --- locks --------------------------------------------------------------------------------

  /** Renewal runs only while this process holds leases, one batched call per queue. */
  private startRenewing(): void {
    if (this.renewTimer || this.closed) return;
    this.renewTimer = setInterval(() => void this.renew(), this.lockDurationMs / 2);
    this.renewTimer.unref();
  }

  private stopRenewing(): void {
    clearInterval(this.renewTimer);
    this.renewTimer = undefined;
  }

  private async renew(): Promise<void> {
    const byQueue = new Map<string, { ids: string[]; tokens: string[] }>();
    for (const [id, { queue, token }] of this.held) {
      const group = byQueue.get(queue) ?? { ids: [], tokens: [] };
      byQueue.set(queue, group);
      group.ids.push(id);
      group.tokens.push(token);
    }
    for (const [queue, { ids, tokens }] of byQueue) {
      try {
        const lost = await this.workerFor(queue).extendJobLocks(ids, tokens, this.lockDurationMs);
        // The job went back to its queue (this process stalled too long); whoever takes it next
        // finds the operation's state in the OperationStore. Nothing to undo here.
        if (lost.length) log.warn('lost the lock on leased jobs', { queue, jobs: lost });
      } catch (err) {
        log.warn('could not renew job locks', { queue, err });
      }
    }
  }

  // --- BullMQ objects -----------------------------------------------------------------------

  private queueFor(key: string): Queue<JobData> {
    let queue = this.queues.get(key);
    if (!queue) {
      queue = new Queue<JobData>(bullName(key), { connection: this.client, prefix: this.prefix });
      queue.on('error', (err) => log.warn('bullmq queue error', { queue: key, err }));
      this.queues.set(key, queue);
    }
    return queue;
  }

  /** Created the first time this process takes from the queue; it also runs the stalled check. */
  private workerFor(key: string): Worker<JobData> {
    let worker = this.workers.get(key);
    if (!worker) {
      worker = new Worker<JobData>(bullName(key), null, {
        connection: this.client,
        prefix: this.prefix,
        autorun: false,
        lockDuration: this.lockDurationMs,
        stalledInterval: this.stalledIntervalMs,
        maxStalledCount: this.maxStalledCount,
      });
      worker.on('error', (err) => log.warn('bullmq worker error', { queue: key, err }));
      // A recovered job is waiting again; tell idle takers everywhere.
      worker.on('stalled', (jobId) => {
        log.info('recovered a job from a dead worker', { queue: key, job: jobId });
        this.client.publish(this.wakeChannel, key).catch(() => undefined);
      });
      void worker.startStalledCheckTimer();
      this.workers.set(key, worker);
    }
    return worker;
  }

  private bullKey(key: string, suffix: string): string {
    return `${this.prefix}:${bullName(key)}:${suffix}`;
  }
}

/** REAPI priority (lower = sooner, MIN..MAX) to BullMQ priority (1 = most urgent). */
function bullPriority(priority: number): number {
  return priority - MIN_PRIORITY + 1;
}

/** BullMQ forbids ":" in queue names; escaping "%" first keeps the mapping one-to-one. */
function bullName(key: string): string {
  return key.replace(/%/g, '%25').replace(/:/g, '%3A');
}

function selecting(platform: PlatformProperty[]): PlatformProperty[] {
  return platform.filter((p) => !RUN_PROPERTIES.has(p.name));
}
