// The queue between Execute and the workers. Two implementations share one contract (and one
// test suite): in-process for the embedded server, BullMQ on Redis for many processes.
import type { Digest } from '../cas/digest';
import type { PlatformProperty } from './platform';

export interface QueuedAction {
  operationName: string;
  instanceName: string;
  actionDigest: Digest;
  /** REAPI ExecutionPolicy.priority: lower values run sooner. */
  priority: number;
  platform: PlatformProperty[];
  /** Milliseconds since the epoch. */
  queuedAt: number;
}

/** A worker's hold on one job. Exactly one of complete/release ends it. */
export interface Lease {
  readonly job: QueuedAction;
  /**
   * Set when the queue gave up on the job: it came back from dead workers more often than the
   * queue allows. The taker records this as the operation's failure instead of running the
   * action once more (one that kills every worker it lands on must not take the farm down).
   */
  readonly abandoned?: string;
  /** The job is finished (its outcome is recorded elsewhere); it leaves the queue for good. */
  complete(): Promise<void>;
  /** Hand the job back, untouched, for another worker (draining, infrastructure failure). */
  release(): Promise<void>;
}

export interface ActionQueue {
  enqueue(job: QueuedAction): Promise<void>;
  /**
   * Waits for the most urgent job (lowest priority value, then oldest) this worker can run.
   * Resolves undefined once the signal aborts.
   */
  take(workerPlatform: PlatformProperty[], signal: AbortSignal): Promise<Lease | undefined>;
  /** Removes a job that no worker has taken yet; false if it is not waiting. */
  remove(operationName: string): Promise<boolean>;
  /** Waiting jobs per platform queue. */
  depth(): Promise<Map<string, number>>;
  close(): Promise<void>;
}

/** REAPI leaves the range to the server; this is what Capabilities advertises. */
export const MIN_PRIORITY = -1000;
export const MAX_PRIORITY = 1000;

export function clampPriority(priority: number | null | undefined): number {
  return Math.max(MIN_PRIORITY, Math.min(MAX_PRIORITY, Math.trunc(priority ?? 0)));
}
