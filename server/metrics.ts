// The Prometheus metrics of a reapi process, in its own registry (prom-client): what a server
// serves (gRPC calls, bytes, cache lookups, queue depth) and what a worker runs (actions by
// outcome, stage durations, running actions). A process registers the parts it has: a server
// with an embedded worker both, `reapi worker` only the worker's.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { rex } from '../apis';
import { ActionQueue } from '../scheduler/action-queue';
import { log } from './log';
import { ACTION_OUTCOMES, ActionOutcome, WorkerObserver } from '../worker/worker-metrics';

/** How long a scrape waits for the queue depth (a Redis that is down must not hang /metrics). */
const DEPTH_TIMEOUT_MS = 2000;

export type ByteDirection = 'in' | 'out';
export type BytePath = 'bytestream' | 'batch';
export type LookupResult = 'hit' | 'miss';
export type Stage = 'queued' | 'fetch' | 'slot_wait' | 'execute' | 'upload';

/** The stages of ExecutedActionMetadata, each as the pair of timestamps that bound it. */
const STAGES: [Stage, keyof rex.ExecutedActionMetadata.$Properties, keyof rex.ExecutedActionMetadata.$Properties][] = [
  ['queued', 'queuedTimestamp', 'workerStartTimestamp'],
  ['fetch', 'inputFetchStartTimestamp', 'inputFetchCompletedTimestamp'],
  // Staged ahead, waiting for an execute slot (--stage-ahead): near zero means slots wait for inputs.
  ['slot_wait', 'inputFetchCompletedTimestamp', 'executionStartTimestamp'],
  ['execute', 'executionStartTimestamp', 'executionCompletedTimestamp'],
  ['upload', 'outputUploadStartTimestamp', 'outputUploadCompletedTimestamp'],
];

/** Seconds: sub-second stages (cached inputs) up to hours-long actions. */
const STAGE_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 10800];

export class Metrics {
  readonly registry = new Registry();

  /** With the process's own metrics (CPU, memory, event loop: process_*, nodejs_*). */
  constructor() {
    collectDefaultMetrics({ register: this.registry });
  }

  /** The text /metrics answers with. */
  scrape(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}

/** What a gRPC server counts. */
export class ServerMetrics {
  private readonly grpcRequests: Counter<'method' | 'code'>;
  private readonly bytes: Counter<'direction' | 'path'>;
  private readonly lookups: Counter<'result'>;

  constructor(private readonly metrics: Metrics) {
    const registers = [metrics.registry];
    this.grpcRequests = new Counter({
      name: 'reapi_grpc_requests_total',
      help: 'gRPC calls served, by method (e.g. GetActionResult) and final status code (e.g. OK, NOT_FOUND).',
      labelNames: ['method', 'code'],
      registers,
    });
    this.bytes = new Counter({
      name: 'reapi_bytes_total',
      help: 'Blob bytes received (in) and sent (out), over ByteStream Read/Write or BatchUpdateBlobs/BatchReadBlobs.',
      labelNames: ['direction', 'path'],
      registers,
    });
    this.lookups = new Counter({
      name: 'reapi_action_cache_lookups_total',
      help: "ActionCache lookups (GetActionResult and Execute's own lookup) by result: hit, or miss (absent or incomplete).",
      labelNames: ['result'],
      registers,
    });
    for (const direction of ['in', 'out'] as const) for (const path of ['bytestream', 'batch'] as const) this.bytes.inc({ direction, path }, 0);
    for (const result of ['hit', 'miss'] as const) this.lookups.inc({ result }, 0);
  }

  grpcRequest(method: string, code: string): void {
    this.grpcRequests.inc({ method, code });
  }

  transferred(direction: ByteDirection, path: BytePath, bytes: number): void {
    if (bytes > 0) this.bytes.inc({ direction, path }, bytes);
  }

  actionCacheLookup(result: LookupResult): void {
    this.lookups.inc({ result });
  }

  /**
   * reapi_queue_waiting_actions{queue}, read from the queue at every scrape. Each server of a
   * farm reports the same Redis. When the queue does not answer in time the gauge has no series
   * (rather than stale ones), and /readyz names the cause.
   */
  watchQueue(queue: ActionQueue): void {
    let pending: Promise<Map<string, number>> | undefined; // one depth() in flight, however often scraped
    new Gauge({
      name: 'reapi_queue_waiting_actions',
      help: 'Actions waiting for a worker, per platform queue (the sorted selecting platform properties, or "default").',
      labelNames: ['queue'],
      registers: [this.metrics.registry],
      async collect() {
        this.reset();
        pending ??= queue.depth().finally(() => (pending = undefined));
        pending.catch(() => undefined); // a late rejection after the timeout below is not unhandled
        let timer: NodeJS.Timeout | undefined;
        try {
          const depth = await Promise.race([
            pending,
            new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no answer within ${DEPTH_TIMEOUT_MS} ms`)), DEPTH_TIMEOUT_MS))),
          ]);
          for (const [key, waiting] of depth) this.set({ queue: key }, waiting);
        } catch (err) {
          log.debug('queue depth unavailable for /metrics', { err });
        } finally {
          clearTimeout(timer);
        }
      },
    });
  }
}

/** What a worker counts; handed to the worker as its observer. */
export class WorkerMetrics implements WorkerObserver {
  private readonly actions: Counter<'outcome'>;
  private readonly stages: Histogram<'stage'>;
  private readonly running: Gauge;

  constructor(metrics: Metrics) {
    const registers = [metrics.registry];
    this.actions = new Counter({
      name: 'reapi_actions_total',
      help: 'Actions this worker ran, by outcome: ok, nonzero_exit, timeout, cancelled, error (could not run).',
      labelNames: ['outcome'],
      registers,
    });
    this.stages = new Histogram({
      name: 'reapi_action_stage_seconds',
      help: 'Time per stage of an action, from its ExecutedActionMetadata: queued (until a worker took it), fetch (inputs), slot_wait (inputs staged, waiting for an execute slot), execute, upload (outputs).',
      labelNames: ['stage'],
      buckets: STAGE_BUCKETS,
      registers,
    });
    this.running = new Gauge({
      name: 'reapi_running_actions',
      help: 'Actions this worker holds now: staging inputs or waiting for an execute slot (--stage-ahead), executing (--concurrency), or uploading outputs.',
      registers,
    });
    for (const outcome of ACTION_OUTCOMES) this.actions.inc({ outcome }, 0);
    for (const [stage] of STAGES) this.stages.zero({ stage });
  }

  actionStarted(): void {
    this.running.inc();
  }

  actionFinished(outcome: ActionOutcome, metadata: rex.ExecutedActionMetadata.$Properties | null | undefined): void {
    this.running.dec();
    this.actions.inc({ outcome });
    for (const [stage, seconds] of stageSeconds(metadata)) this.stages.observe({ stage }, seconds);
  }
}

/** The stages whose both timestamps are present, with their durations in seconds. */
export function stageSeconds(metadata: rex.ExecutedActionMetadata.$Properties | null | undefined): [Stage, number][] {
  if (!metadata) return [];
  const durations: [Stage, number][] = [];
  for (const [stage, from, to] of STAGES) {
    const start = seconds(metadata[from] as TimestampLike);
    const end = seconds(metadata[to] as TimestampLike);
    if (start !== undefined && end !== undefined) durations.push([stage, Math.max(0, end - start)]);
  }
  return durations;
}

type TimestampLike = { seconds?: number | { toNumber(): number } | null; nanos?: number | null } | null | undefined;

function seconds(ts: TimestampLike): number | undefined {
  if (!ts) return undefined;
  const s = typeof ts.seconds === 'object' && ts.seconds !== null ? ts.seconds.toNumber() : Number(ts.seconds ?? 0);
  return s + (ts.nanos ?? 0) / 1e9;
}
