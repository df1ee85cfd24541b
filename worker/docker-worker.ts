// Assembles a Worker that runs actions in Docker: its directories, its sandbox and its pipeline.
// The embedded worker (inside `reapi serve`) and the standalone one (`reapi worker`) differ only
// in how they reach the CAS, where results go, and which queue they serve. A standalone worker
// may instead run actions as plain processes in its own container (sandbox "process", for
// Kubernetes pods without Docker): same pipeline, another sandbox.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { ActionQueue } from '../scheduler/action-queue';
import { DEFAULT_MAX_ACTION_OUTPUT_BYTES } from '../cas/limits';
import { OperationStore } from '../scheduler/operation-store';
import { parseProperties } from '../scheduler/platform';
import { ContentAccess } from './content-access';
import { FileCache } from './file-cache';
import { ImageResolver } from './image-resolver';
import { limiter } from './limiter';
import { createProcessSandbox } from './sandbox/process-sandbox';
import { Sandbox, createDockerSandbox } from './sandbox/sandbox';
import { ActionResultSink, Worker } from './worker';
import { WorkerObserver } from './worker-metrics';

/** The user actions run as, on every worker, so results never depend on where they ran. */
export const ACTION_UID = 1000;
export const ACTION_GID = 1000;

/** docker: a container per action (warm or strict); process: a uid per slot in this very container. */
export type SandboxMode = 'docker' | 'process';

/** Process mode has no Docker to ask for image IDs: actions run in the pod's image, named by --image. */
export const NO_IMAGE_IDS: ImageResolver = { resolve: async () => undefined };

/** What the operator chooses for a worker: the same flags on `reapi serve` and `reapi worker`. */
export interface WorkerSettings {
  /** The image for actions that name none. */
  defaultImage: string;
  /** Actions executing at once. */
  concurrency: number;
  /**
   * Actions taken beyond those, whose inputs are staged while the others execute (default:
   * half of concurrency, rounded up). Each holds a container, and its queue lease, meanwhile.
   */
  stageAhead?: number;
  /** An action whose stdout or stderr grows past this is killed (default DEFAULT_MAX_ACTION_OUTPUT_BYTES). */
  maxOutputBytes?: number;
  /** A fresh container per action instead of warm ones. */
  strict: boolean;
  /** Properties this worker offers: name=value,... */
  platform: string;
  /** Whether actions may ask for a network (dockerNetwork=standard); refused otherwise. */
  allowNetwork?: boolean;
  /** Default docker. In process mode slot i runs its actions as uid ACTION_UID + i. */
  sandbox?: SandboxMode;
  /** Process mode: the first slot's uid (default ACTION_UID); each uid must be used by nothing else. */
  actionUid?: number;
  /** Told when actions start and finish (metrics). */
  observer?: WorkerObserver;
}

export interface DockerWorkerOptions extends WorkerSettings {
  /** Shows up in operations and ExecutedActionMetadata.worker. */
  name: string;
  /** The worker's file cache and action directories (one filesystem: inputs are hardlinked). */
  workDir: string;
  access: ContentAccess;
  results: ActionResultSink;
  queue: ActionQueue;
  operations: OperationStore;
  images: ImageResolver;
}

export interface DockerWorker {
  /** Takes nothing new, finishes the running actions, removes the containers. */
  drain(): Promise<void>;
}

/**
 * Half as many again as execute: enough that slots finishing close together each find an action
 * staged (a cold kernel build, one staged for two slots: 2.8 slot-seconds idle, 229 executing).
 */
function defaultStageAhead(concurrency: number): number {
  return Math.ceil(concurrency / 2);
}

/** How many actions a worker takes from the queue at once: executing, and staged ahead. */
export function actionsTaken(concurrency: number, stageAhead?: number): number {
  return concurrency + (stageAhead ?? defaultStageAhead(concurrency));
}

export async function startDockerWorker(opts: DockerWorkerOptions): Promise<DockerWorker> {
  const platform = parseProperties(opts.platform);
  // Every action taken holds a container (or process slot) from staging to its last output.
  const held = actionsTaken(opts.concurrency, opts.stageAhead);
  const actionsDir = path.join(opts.workDir, 'actions');
  const cacheDir = path.join(opts.workDir, 'cache');
  // Traversable but not listable: an action cannot discover its neighbours' (random) directories.
  await fs.mkdir(actionsDir, { recursive: true, mode: 0o711 });
  await fs.chmod(actionsDir, 0o711);
  await fs.mkdir(cacheDir, { recursive: true });
  // Process mode: actions reach their directories by path as another uid, through the work dir.
  if (opts.sandbox === 'process') await fs.chmod(opts.workDir, ((await fs.stat(opts.workDir)).mode & 0o7777) | 0o011);
  // The sandbox first: it removes containers a killed predecessor left running, which may still
  // be writing into their action directories; then those directories can go.
  const sandbox: Sandbox =
    opts.sandbox === 'process'
      ? await createProcessSandbox({ execRoot: actionsDir, image: opts.defaultImage, slots: held, firstUid: opts.actionUid ?? ACTION_UID, gid: ACTION_GID })
      : await createDockerSandbox({
          execRoot: actionsDir,
          strict: opts.strict,
          maxContainersPerImage: held,
          user: `${ACTION_UID}:${ACTION_GID}`,
        });
  for (const name of await fs.readdir(actionsDir)) await fs.rm(path.join(actionsDir, name), { recursive: true, force: true });

  const worker = new Worker({
    pipeline: {
      workerName: opts.name,
      access: opts.access,
      cache: new FileCache(cacheDir, opts.access),
      sandbox,
      actionsDir,
      defaultImage: opts.defaultImage,
      uid: ACTION_UID,
      gid: ACTION_GID,
      defaultTimeoutMs: 15 * 60_000,
      maxTimeoutMs: 3 * 60 * 60_000,
      maxOutputBytes: opts.maxOutputBytes ?? DEFAULT_MAX_ACTION_OUTPUT_BYTES,
      allowNetwork: opts.allowNetwork ?? false,
      images: opts.images,
      executeSlots: limiter(opts.concurrency),
    },
    platform,
    concurrency: held,
    queue: opts.queue,
    operations: opts.operations,
    results: opts.results,
    observer: opts.observer,
  });
  worker.start();
  return {
    async drain() {
      await worker.drain();
      await sandbox.close();
    },
  };
}
