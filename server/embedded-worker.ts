// The local worker `reapi serve` runs beside the server by default: same process, same storage,
// in-process queue, actions in Docker containers.
import * as os from 'node:os';
import * as path from 'node:path';
import { promises as fs } from 'node:fs';
import { ActionCacheService } from '../cas/action-cache-service';
import { Storage } from '../cas/blob-store';
import { ActionQueue } from '../scheduler/action-queue';
import { OperationStore } from '../scheduler/operation-store';
import { parseProperties } from '../scheduler/platform';
import { FileCache } from '../worker/file-cache';
import { LocalContentAccess } from '../worker/local-content-access';
import { createDockerSandbox } from '../worker/sandbox/sandbox';
import { Worker } from '../worker/worker';
import { ImageResolver } from '../worker/image-resolver';

export interface EmbeddedWorkerOptions {
  storage: Storage;
  actionCache: ActionCacheService;
  operations: OperationStore;
  queue: ActionQueue;
  /** Directory for the worker's file cache and action directories. */
  workDir: string;
  defaultImage: string;
  concurrency: number;
  strict: boolean;
  platform: string;
  images: ImageResolver;
}

export interface EmbeddedWorker {
  drain(): Promise<void>;
}

export const ACTION_UID = 1000;
export const ACTION_GID = 1000;

export async function startEmbeddedWorker(opts: EmbeddedWorkerOptions): Promise<EmbeddedWorker> {
  const actionsDir = path.join(opts.workDir, 'actions');
  const cacheDir = path.join(opts.workDir, 'cache');
  await fs.rm(actionsDir, { recursive: true, force: true }); // leftovers of a killed run
  // Traversable but not listable: an action cannot discover its neighbours' (random) directories.
  await fs.mkdir(actionsDir, { recursive: true, mode: 0o711 });
  await fs.chmod(actionsDir, 0o711);
  await fs.mkdir(cacheDir, { recursive: true });
  const access = new LocalContentAccess(opts.storage);
  const sandbox = await createDockerSandbox({ execRoot: actionsDir, strict: opts.strict, maxContainersPerImage: opts.concurrency, user: `${ACTION_UID}:${ACTION_GID}` });
  const worker = new Worker({
    pipeline: {
      workerName: `${os.hostname()}/embedded`,
      access,
      cache: new FileCache(cacheDir, access),
      sandbox,
      actionsDir,
      defaultImage: opts.defaultImage,
      uid: ACTION_UID,
      gid: ACTION_GID,
      defaultTimeoutMs: 15 * 60_000,
      maxTimeoutMs: 3 * 60 * 60_000,
      images: opts.images,
    },
    platform: parseProperties(opts.platform),
    concurrency: opts.concurrency,
    queue: opts.queue,
    operations: opts.operations,
    results: { store: (instance, digest, result) => opts.actionCache.store(instance, digest, result) },
  });
  worker.start();
  return {
    async drain() {
      await worker.drain();
      await sandbox.close();
    },
  };
}
