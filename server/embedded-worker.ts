// The local worker `reapi serve` runs beside the server by default: same process, same storage,
// same queue, actions in Docker containers.
import * as os from 'node:os';
import { ActionCacheService } from '../cas/action-cache-service';
import { Storage } from '../cas/blob-store';
import { ActionQueue } from '../scheduler/action-queue';
import { OperationStore } from '../scheduler/operation-store';
import { DockerWorker, WorkerSettings, startDockerWorker } from '../worker/docker-worker';
import { ImageResolver } from '../worker/image-resolver';
import { LocalContentAccess } from '../worker/local-content-access';

export interface EmbeddedWorkerOptions extends WorkerSettings {
  storage: Storage;
  actionCache: ActionCacheService;
  operations: OperationStore;
  queue: ActionQueue;
  images: ImageResolver;
  /** The worker's file cache and action directories. */
  workDir: string;
}

export function startEmbeddedWorker(opts: EmbeddedWorkerOptions): Promise<DockerWorker> {
  return startDockerWorker({
    ...opts,
    name: `${os.hostname()}/embedded`,
    access: new LocalContentAccess(opts.storage),
    // Results of actions this farm ran: stored directly, whatever clients may do.
    results: { store: (instance, digest, result) => opts.actionCache.store(instance, digest, result) },
  });
}
