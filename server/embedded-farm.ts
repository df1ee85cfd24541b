// The whole farm inside one process, without gRPC: file storage, the action cache, the in-memory
// scheduler and a Docker worker, for a client (reapi-cc) that runs on the machine it builds on.
// The services are the ones `reapi serve` exposes; only the wire is missing, and with it the
// serialization, HTTP/2 framing and a second process's copy of the same work.
import * as path from 'node:path';
import { ActionCacheService } from '../cas/action-cache-service';
import { BlobStore } from '../cas/blob-store';
import { Digest } from '../cas/digest';
import { CasService } from '../cas/cas-service';
import { FileStorage } from '../cas/file-storage';
import { HeldBlobStorage, Release } from '../cas/held-blobs';
import { ExecutionService } from '../scheduler/execution-service';
import { MemoryActionQueue } from '../scheduler/memory-action-queue';
import { MemoryOperationStore } from '../scheduler/memory-operation-store';
import { OperationsService } from '../scheduler/operations-service';
import { dockerAvailable } from '../worker/docker-available';
import { actionsTaken, DockerWorker } from '../worker/docker-worker';
import { DockerImageResolver } from '../worker/image-resolver';
import { claimNumberedWorkDir } from '../worker/work-dir-lock';
import { startEmbeddedWorker } from './embedded-worker';

export interface EmbeddedFarmOptions {
  /** Blobs, action results and the worker directories. */
  dataDir: string;
  /** Actions run at once. */
  concurrency: number;
  /** For actions that name no container image. */
  defaultImage: string;
}

export interface EmbeddedFarm {
  readonly cas: CasService;
  /** The CAS of the default instance, for blobs too large for a batch call. */
  readonly blobs: BlobStore;
  readonly actionCache: ActionCacheService;
  /** How many actions its worker takes from the queue at once (executing and staged). */
  readonly actionsTaken: number;
  /**
   * Keeps an action's own messages (Action, Command, Directories) in memory where the farm's
   * execution finds them, instead of storing them, until the returned release: see
   * HeldBlobStorage. Rejects a blob that does not match its digest, with INVALID_ARGUMENT.
   */
  hold(messages: { digest: Digest; data: Uint8Array }[]): Release;
  /**
   * Execution, with the worker started on first use (a build served from the cache starts no
   * container); when Docker does not answer, the reason no action can run.
   */
  execution(): Promise<ExecutionService | { unavailable: string }>;
  /** CancelOperation: a queued action is dropped, a running one killed; it finishes as CANCELLED. */
  cancel(operationName: string): Promise<void>;
  /** Finishes running actions, removes the worker's containers, releases its directory. */
  close(): Promise<void>;
}

export async function openEmbeddedFarm(opts: EmbeddedFarmOptions): Promise<EmbeddedFarm> {
  const storage = new HeldBlobStorage(await FileStorage.open(opts.dataDir));
  const images = new DockerImageResolver();
  const resolveImage = (name: string) => images.resolve(name);
  const actionCache = new ActionCacheService(storage, { allowClientUpdates: true, resolveImage });
  const operations = new MemoryOperationStore();
  const queue = new MemoryActionQueue();
  const operationsService = new OperationsService(operations, queue);
  let started: Promise<{ execution: ExecutionService; worker: DockerWorker; release(): void } | { unavailable: string }> | undefined;
  const start = async () => {
    if (!(await dockerAvailable())) return { unavailable: 'Docker does not answer on /var/run/docker.sock, so no action can run here' };
    const claim = claimNumberedWorkDir(path.join(opts.dataDir, 'workers'));
    try {
      const worker = await startEmbeddedWorker({
        storage, actionCache, operations, queue, images,
        workDir: claim.dir,
        defaultImage: opts.defaultImage,
        concurrency: opts.concurrency,
        platform: 'OSFamily=Linux',
        strict: false,
      });
      return { execution: new ExecutionService(storage, actionCache, operations, queue), worker, release: claim.release };
    } catch (err) {
      claim.release();
      throw err;
    }
  };
  return {
    cas: new CasService(storage),
    blobs: storage.cas(''),
    actionCache,
    actionsTaken: actionsTaken(opts.concurrency),
    hold: (messages) => storage.hold('', messages),
    async execution() {
      const s = await (started ??= start());
      return 'unavailable' in s ? s : s.execution;
    },
    cancel: (operationName) => operationsService.cancel(operationName),
    async close() {
      const s = started && (await started.catch(() => undefined));
      if (s && !('unavailable' in s)) {
        await s.worker.drain();
        s.release();
      }
      await Promise.allSettled([queue.close(), operations.close()]);
    },
  };
}
