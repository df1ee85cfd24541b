// In-process ActionQueue for the embedded server: per-platform queues ordered by priority then
// arrival, with waiting workers handed a job the moment one they can run arrives.
import { ActionQueue, Lease, QueuedAction } from './action-queue';
import { PlatformProperty, queueKey, workerSatisfies } from './platform';

interface Entry {
  job: QueuedAction;
  seq: number;
}

interface Waiter {
  platform: PlatformProperty[];
  deliver(lease: Lease): void;
}

export class MemoryActionQueue implements ActionQueue {
  private readonly queues = new Map<string, Entry[]>();
  private readonly waiters: Waiter[] = [];
  /** Operations queued or leased: enqueueing one again is a no-op, as with BullMQ's job ids. */
  private readonly live = new Set<string>();
  private seq = 0;
  private closed = false;

  async enqueue(job: QueuedAction): Promise<void> {
    if (this.live.has(job.operationName)) return;
    this.live.add(job.operationName);
    this.insert({ job, seq: this.seq++ });
  }

  async take(workerPlatform: PlatformProperty[], signal: AbortSignal): Promise<Lease | undefined> {
    if (signal.aborted || this.closed) return undefined;
    const entry = this.popBest(workerPlatform);
    if (entry) return this.lease(entry);
    return new Promise((resolve) => {
      const waiter: Waiter = {
        platform: workerPlatform,
        deliver: (lease) => {
          signal.removeEventListener('abort', onAbort);
          resolve(lease);
        },
      };
      const onAbort = () => {
        const at = this.waiters.indexOf(waiter);
        if (at >= 0) this.waiters.splice(at, 1);
        resolve(undefined);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(waiter);
    });
  }

  async remove(operationName: string): Promise<boolean> {
    for (const entries of this.queues.values()) {
      const at = entries.findIndex((e) => e.job.operationName === operationName);
      if (at >= 0) {
        entries.splice(at, 1);
        this.live.delete(operationName);
        return true;
      }
    }
    return false;
  }

  async depth(): Promise<Map<string, number>> {
    return new Map([...this.queues].map(([key, entries]) => [key, entries.length]));
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  private insert(entry: Entry): void {
    const waiterAt = this.waiters.findIndex((w) => workerSatisfies(w.platform, entry.job.platform));
    if (waiterAt >= 0) {
      const [waiter] = this.waiters.splice(waiterAt, 1);
      waiter.deliver(this.lease(entry));
      return;
    }
    const key = queueKey(entry.job.platform);
    const entries = this.queues.get(key) ?? [];
    this.queues.set(key, entries);
    // Binary search keeps each queue sorted by (priority, seq) without re-sorting.
    let lo = 0;
    let hi = entries.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (before(entries[mid], entry)) lo = mid + 1;
      else hi = mid;
    }
    entries.splice(lo, 0, entry);
  }

  private popBest(workerPlatform: PlatformProperty[]): Entry | undefined {
    let best: Entry[] | undefined;
    for (const entries of this.queues.values()) {
      if (entries.length === 0 || !workerSatisfies(workerPlatform, entries[0].job.platform)) continue;
      if (!best || before(entries[0], best[0])) best = entries;
    }
    return best?.shift();
  }

  private lease(entry: Entry): Lease {
    let ended = false;
    const end = () => {
      if (ended) throw new Error(`lease on ${entry.job.operationName} already ended`);
      ended = true;
    };
    return {
      job: entry.job,
      complete: async () => {
        end();
        this.live.delete(entry.job.operationName);
      },
      release: async () => {
        end();
        this.insert(entry); // keeps its original seq: a handed-back job does not lose its place
      },
    };
  }
}

function before(a: Entry, b: Entry): boolean {
  return a.job.priority !== b.job.priority ? a.job.priority < b.job.priority : a.seq < b.seq;
}
