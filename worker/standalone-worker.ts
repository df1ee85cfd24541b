// A worker in its own process (`reapi worker`): takes actions from the farm's Redis queue, reaches
// the CAS and the ActionCache of a reapi server over gRPC, and runs actions in Docker containers
// with the same pipeline as the embedded worker.
import * as grpc from '@grpc/grpc-js';
import * as path from 'node:path';
import { promises as fs } from 'node:fs';
import { BullMqActionQueue } from '../scheduler/bullmq-action-queue';
import { RedisOperationStore } from '../scheduler/redis-operation-store';
import { unary } from '../apis/services';
import { NO_IMAGE_IDS, WorkerSettings, startDockerWorker } from './docker-worker';
import { DockerImageResolver } from './image-resolver';
import { RemoteActionCache } from './remote-action-cache';
import { RemoteContentAccess } from './remote-content-access';
import { ClientTlsFiles } from '../server/tls';
import { ServerClients, connectToServer } from './server-connection';
import { lockWorkDir } from './work-dir-lock';

const SERVER_CHECK_MS = 10_000;
const SERVER_PING_MS = 1500;

export interface StandaloneWorkerOptions extends WorkerSettings {
  /** grpc://HOST:PORT or grpcs://HOST:PORT (TLS) of a reapi server of the farm. */
  server: string;
  /** For grpcs://: the CA to trust and, for mutual TLS, this worker's certificate. */
  tls?: ClientTlsFiles;
  /** The worker's token, sent on every call; the server knows it with the role "worker". */
  token?: string;
  /** redis://HOST:PORT[/db] shared by the farm's servers and workers. */
  redis: string;
  /** Shows up in operations and ExecutedActionMetadata.worker. */
  name: string;
  /** Directory for the worker's file cache and action directories. */
  workDir: string;
  /** Lease lifetime without renewal; also how often dead workers' jobs are looked for. */
  queueLockMs?: number;
}

export interface StandaloneWorker {
  /** Takes nothing new, finishes the running actions, then lets go of every connection. */
  drain(): Promise<void>;
  /** /readyz: throws, saying why, unless the server answers on the worker's connection. */
  checkServer(): Promise<void>;
}

export async function startStandaloneWorker(opts: StandaloneWorkerOptions): Promise<StandaloneWorker> {
  const server = connectToServer(opts.server, { tls: opts.tls, token: opts.token });
  await checkServer(server, opts.server);
  const access = new RemoteContentAccess(server);

  await fs.mkdir(opts.workDir, { recursive: true });
  claimWorkDir(opts.workDir);
  const queue = new BullMqActionQueue({ url: opts.redis, lockDurationMs: opts.queueLockMs, stalledIntervalMs: opts.queueLockMs });
  const operations = new RedisOperationStore({ url: opts.redis });
  const worker = await startDockerWorker({
    ...opts,
    access,
    results: new RemoteActionCache(server),
    queue,
    operations,
    // In process mode there is no Docker to ask: the pod's image is the only one, by name.
    images: opts.sandbox === 'process' ? NO_IMAGE_IDS : new DockerImageResolver(),
  });
  return {
    checkServer: () => pingServer(server, opts.server),
    async drain() {
      await worker.drain();
      await Promise.allSettled([queue.close(), operations.close()]);
      server.close();
      await fs.rm(path.join(opts.workDir, 'worker.pid'), { force: true });
    },
  };
}

/** Fails at start, naming the address, rather than failing every action later. */
async function checkServer(server: ServerClients, url: string): Promise<void> {
  try {
    // waitForReady: a server still starting up (same deployment) gets a few seconds.
    const metadata = new grpc.Metadata();
    metadata.setOptions({ waitForReady: true });
    await unary(server.caps, 'GetCapabilities', {}, metadata, { deadline: Date.now() + SERVER_CHECK_MS });
  } catch (err) {
    const e = err as grpc.ServiceError;
    // The token is valid, it just does not cover the default instance: the server answers.
    if (e.code === grpc.status.PERMISSION_DENIED) return;
    server.close();
    if (e.code === grpc.status.UNAUTHENTICATED) throw new Error(`reapi server ${url} does not accept this worker: ${e.details}`);
    throw new Error(`reapi server ${url} does not answer: ${e.details ?? e.message}`);
  }
}

/** One GetCapabilities, without waiting for a connection that is down. */
async function pingServer(server: ServerClients, url: string): Promise<void> {
  try {
    await unary(server.caps, 'GetCapabilities', {}, new grpc.Metadata(), { deadline: Date.now() + SERVER_PING_MS });
  } catch (err) {
    const e = err as grpc.ServiceError;
    if (e.code === grpc.status.PERMISSION_DENIED) return; // it answers; the token just does not cover ""
    throw new Error(`reapi server ${url} does not answer: ${e.details ?? e.message}`);
  }
}

/** Refuses to start a second live worker on one work dir (worker/work-dir-lock.ts says why). */
function claimWorkDir(workDir: string): void {
  const lock = lockWorkDir(path.join(workDir, 'worker.pid'));
  if ('heldBy' in lock) throw new Error(`work dir ${workDir} is in use by the worker with pid ${lock.heldBy}; give each worker its own --work-dir`);
}
