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
import { encodeResponse } from './operation-proto';
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
    // A joiner queues a still-QUEUED owner once more: a server that died between recording the
    // operation and queueing it left it with no job, and its clients' retries all join it. A job
    // is named after its operation, so one still waiting or running is not queued twice.
    if (owner.name === record.name || owner.stage === 'QUEUED') {
      await this.queue.enqueue({
        operationName: owner.name,
        instanceName,
        actionDigest,
        priority: clampPriority(req.executionPolicy?.priority),
        platform: loaded.platform,
        queuedAt: owner.queuedAt,
      });
    }
    log.debug(owner.name === record.name ? 'action queued' : 'joined identical in-flight action', { operation: owner.name, action: digestKey(actionDigest) });
    yield* this.operations.watch(owner.name, signal);
  }

  async *waitExecution(req: rex.WaitExecutionRequest, signal: AbortSignal): AsyncGenerator<OperationRecord> {
    if (!(await this.operations.get(req.name))) throw notFound(`operation ${JSON.stringify(req.name)} is unknown (finished operations are kept for an hour)`);
    yield* this.operations.watch(req.name, signal);
  }
}
