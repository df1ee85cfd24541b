// Execution.Execute and WaitExecution: cache lookup, de-duplication of identical in-flight
// actions, queueing by platform and priority, and the stream of operation updates.
import { randomUUID } from 'node:crypto';
import { rex } from '../apis';
import { ActionCacheService } from '../cas/action-cache-service';
import { Storage } from '../cas/blob-store';
import { digestKey, validateDigest } from '../cas/digest';
import { requireSha256 } from '../cas/digest-function';
import { validateInstanceName } from '../cas/resource-name';
import { notFound } from '../server/rpc-error';
import { log } from '../server/log';
import { ActionQueue, clampPriority } from './action-queue';
import { loadRecentAction } from './action-loader';
import { cancelledBeforeStart, encodeResponse } from './operation-proto';
import { PlatformProperty } from './platform';
import { OperationRecord, OperationStore } from './operation-store';

export class ExecutionService {
  constructor(
    private readonly storage: Storage,
    private readonly actionCache: ActionCacheService,
    private readonly operations: OperationStore,
    private readonly queue: ActionQueue,
  ) {}

  async *execute(req: rex.ExecuteRequest, signal: AbortSignal): AsyncGenerator<OperationRecord> {
    requireSha256(req.digestFunction);
    const instanceName = validateInstanceName(req.instanceName);
    const actionDigest = validateDigest(req.actionDigest, 'action_digest');
    const cas = this.storage.cas(instanceName);
    const loaded = await loadRecentAction(instanceName, (d) => cas.read(d), actionDigest);
    const cacheable = !loaded.action.doNotCache;

    if (cacheable && !req.skipCacheLookup) {
      const cached = await this.actionCache.lookup(instanceName, actionDigest);
      if (cached) {
        yield {
          name: `operations/${randomUUID()}`,
          instanceName,
          actionDigest,
          stage: 'COMPLETED',
          done: true,
          queuedAt: Date.now(),
          response: encodeResponse({ result: cached, cachedResult: true, status: { code: 0 } }),
        };
        return;
      }
    }

    const record: OperationRecord = {
      name: `operations/${randomUUID()}`,
      instanceName,
      actionDigest,
      stage: 'QUEUED',
      done: false,
      queuedAt: Date.now(),
      // skip_cache_lookup asks for a fresh run: it must not join a run that started earlier.
      dedupKey: cacheable && !req.skipCacheLookup ? `${instanceName}\0${digestKey(actionDigest)}` : undefined,
    };
    const owner = await this.operations.createOrJoin(record);
    // The new operation's job, or the joined one's if its server died before queueing it.
    await this.ensureQueued(owner, clampPriority(req.executionPolicy?.priority), loaded.platform);
    log.debug(owner.name === record.name ? 'action queued' : 'joined identical in-flight action', { operation: owner.name, action: digestKey(actionDigest) });
    yield* this.operations.watch(owner.name, signal);
  }

  async *waitExecution(req: rex.WaitExecutionRequest, signal: AbortSignal): AsyncGenerator<OperationRecord> {
    const record = await this.operations.get(req.name);
    if (!record) throw notFound(`operation ${JSON.stringify(req.name)} is unknown (finished operations are kept for an hour)`);
    // A failure here (the Action gone from the CAS, say) must not break the watch of an operation
    // that is queued after all.
    await this.ensureQueued(record, 0).catch((err) => log.warn('could not check a queued operation for its job', { operation: record.name, err }));
    yield* this.operations.watch(req.name, signal);
  }

  /**
   * Gives a QUEUED operation its job. A new one has none yet; an older one may have none either:
   * its server died between recording it and queueing it, or between taking a cancelled one out
   * of the queue and finishing it. So whoever comes back for an operation (a client retrying
   * Execute joins it; WaitExecution) calls this too: a cancelled one is finished, any other
   * queued. A job is named after its operation, so one still waiting or running is not queued
   * twice.
   */
  private async ensureQueued(record: OperationRecord, priority: number, platform?: PlatformProperty[]): Promise<void> {
    if (record.done || record.stage !== 'QUEUED') return;
    if (record.cancelRequested) {
      await this.operations.update(record.name, cancelledBeforeStart());
      return;
    }
    const { instanceName, actionDigest } = record;
    platform ??= (await loadRecentAction(instanceName, (d) => this.storage.cas(instanceName).read(d), actionDigest)).platform;
    await this.queue.enqueue({ operationName: record.name, instanceName, actionDigest, priority, platform, queuedAt: record.queuedAt });
  }
}
