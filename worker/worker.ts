// The worker loop: take an action this worker's platform can run, run it through the pipeline,
// record the outcome, repeat — up to `concurrency` actions at once, staging, executing or
// uploading (the pipeline's executeSlots bound how many execute). drain() stops taking work and
// waits for what is running.
import { status } from '@grpc/grpc-js';
import { rex } from '../apis';
import { Digest, digestKey } from '../cas/digest';
import { ActionQueue, Lease } from '../scheduler/action-queue';
import { encodeResponse } from '../scheduler/operation-proto';
import { OperationStore } from '../scheduler/operation-store';
import { PlatformProperty } from '../scheduler/platform';
import { statusProto } from '../server/grpc-adapter';
import { RpcError } from '../server/rpc-error';
import { log } from '../server/log';
import { PipelineOptions, PipelineOutcome, PipelineRun, runActionPipeline } from './action-pipeline';
import { WorkerObserver, outcomeOf } from './worker-metrics';

/** Where successful results go: the ActionCache, written with the farm's own authority. */
export interface ActionResultSink {
  store(instanceName: string, actionDigest: Digest, result: rex.ActionResult): Promise<unknown>;
}

export interface WorkerOptions {
  pipeline: PipelineOptions;
  platform: PlatformProperty[];
  /** Actions held at once, executing or not. */
  concurrency: number;
  queue: ActionQueue;
  operations: OperationStore;
  results: ActionResultSink;
  /** Told when actions start and finish (metrics). */
  observer?: WorkerObserver;
}

export class Worker {
  private readonly stopTaking = new AbortController();
  private loops: Promise<void>[] = [];
  /** Directories of finished actions being removed (removeInBackground). */
  private readonly removals = new Set<Promise<void>>();

  constructor(private readonly opts: WorkerOptions) {}

  start(): void {
    for (let i = 0; i < this.opts.concurrency; i++) this.loops.push(this.loop());
  }

  /** Takes no new actions, finishes the running ones (and removes their directories). */
  async drain(): Promise<void> {
    this.stopTaking.abort();
    await Promise.all(this.loops);
    await Promise.all(this.removals);
  }

  private async loop(): Promise<void> {
    while (!this.stopTaking.signal.aborted) {
      let lease: Lease | undefined;
      try {
        lease = await this.opts.queue.take(this.opts.platform, this.stopTaking.signal);
        if (!lease) return;
        await this.execute(lease);
      } catch (err) {
        log.error('worker loop error', { worker: this.opts.pipeline.workerName, err });
        if (lease) await lease.release().catch(() => undefined);
        await new Promise((r) => setTimeout(r, 1000)); // don't spin on a broken queue
      }
    }
  }

  private async execute(lease: Lease): Promise<void> {
    const { job } = lease;
    const { operations } = this.opts;
    const current = await operations.startExecuting(job.operationName, this.opts.pipeline.workerName);
    if (!current || current.done) {
      await this.completeLease(lease); // cancelled, deleted or already finished while queued
      return;
    }
    if (lease.abandoned) {
      await this.report(lease, { status: { code: status.ABORTED, message: `the farm gave up on this action: ${lease.abandoned}` }, cacheable: false });
      return;
    }
    log.debug('executing', { operation: job.operationName, action: digestKey(job.actionDigest) });
    const cancel = new AbortController();
    const watching = this.watchForCancel(job.operationName, cancel);
    const { observer } = this.opts;
    observer?.actionStarted();
    let run: PipelineRun | undefined;
    try {
      run = await runActionPipeline(this.opts.pipeline, job.instanceName, job.actionDigest, job.queuedAt, cancel.signal);
    } finally {
      watching.stop();
      observer?.actionFinished(run ? outcomeOf(run.outcome) : 'error', run?.outcome.result?.executionMetadata);
    }
    try {
      await this.report(lease, run.outcome);
    } finally {
      // After the client has its result. The slot and pins before this loop takes another
      // action; the directory's removal may overlap with that action.
      await run.release();
      await this.removeInBackground(run);
    }
  }

  /** Caches a successful result, completes the operation and the lease. */
  private async report(lease: Lease, outcome: PipelineOutcome): Promise<void> {
    const { job } = lease;
    const { operations } = this.opts;
    const { status: st } = outcome;
    if (outcome.result && outcome.cacheable) {
      try {
        await this.opts.results.store(job.instanceName, job.actionDigest, outcome.result);
      } catch (err) {
        // The result is still good for this client; only caching it failed.
        log.warn('could not cache action result', { action: digestKey(job.actionDigest), err });
      }
    }
    if (st.code !== status.OK && st.code !== status.DEADLINE_EXCEEDED) {
      log.info('action failed', { operation: job.operationName, action: digestKey(job.actionDigest), code: status[st.code], message: st.message });
    }
    const response = encodeResponse({
      result: outcome.result,
      cachedResult: false,
      status: statusProto(new RpcError(st.code, st.message, st.missing ?? [])),
    });
    await operations.update(job.operationName, { stage: 'COMPLETED', done: true, response });
    await this.completeLease(lease);
  }

  /**
   * Ends the lease once the operation is done. If that fails (the lease was lost: this process
   * stalled past the lock, or Redis went away), the job may come back, but to a worker that finds
   * its operation finished and completes it without running anything: nothing to undo here.
   */
  private async completeLease(lease: Lease): Promise<void> {
    try {
      await lease.complete();
    } catch (err) {
      log.warn('could not complete the lease of a finished operation', { operation: lease.job.operationName, err });
    }
  }

  /**
   * Starts removing a finished action's directory without waiting for it, but with at most
   * `concurrency` removals pending: a disk too slow to keep up slows the worker down instead
   * of piling up directories.
   */
  private async removeInBackground(run: PipelineRun): Promise<void> {
    while (this.removals.size >= this.opts.concurrency) await Promise.race(this.removals);
    const removal = run.removeDirectory().finally(() => this.removals.delete(removal));
    this.removals.add(removal);
  }

  /** Aborts `cancel` if a client asks CancelOperation while the action runs. */
  private watchForCancel(operationName: string, cancel: AbortController): { stop(): void } {
    const stopWatching = new AbortController();
    (async () => {
      for await (const record of this.opts.operations.watch(operationName, stopWatching.signal)) {
        if (record.cancelRequested) {
          cancel.abort();
          return;
        }
      }
    })().catch((err) => log.warn('lost the watch on an operation; it can no longer be cancelled', { operation: operationName, err }));
    return { stop: () => stopWatching.abort() };
  }
}
