// `reapi serve`: the gRPC server, with its scheduler (in-process, or on Redis for a farm of
// several servers and workers) and, by default, a Docker worker in the same process.
import { parseArgs } from 'node:util';
import * as path from 'node:path';
import { FileStorage } from '../cas/file-storage';
import { ActionQueue } from '../scheduler/action-queue';
import { BullMqActionQueue } from '../scheduler/bullmq-action-queue';
import { MemoryActionQueue } from '../scheduler/memory-action-queue';
import { MemoryOperationStore } from '../scheduler/memory-operation-store';
import { OperationStore } from '../scheduler/operation-store';
import { RedisOperationStore } from '../scheduler/redis-operation-store';
import { startEmbeddedWorker } from '../server/embedded-worker';
import { DockerWorker } from '../worker/docker-worker';
import { startServer } from '../server/reapi-server';
import { log } from '../server/log';
import { dockerAvailable } from '../worker/docker-available';
import { DockerImageResolver } from '../worker/image-resolver';
import { WORKER_OPTIONS, WORKER_USAGE, checkRedis, positiveInteger, queueLockMsFromEnv, redisUrl } from './options';

export const SERVE_USAGE = `  reapi serve [--listen HOST:PORT] [--data DIR] [--redis URL] [--no-ac-updates] [--worker auto|on|off] [worker options]
      --listen         address to serve gRPC on (default 127.0.0.1:8980; port 0 picks a free port)
      --data           data directory for blobs, action results and the worker (default ./.data);
                       servers sharing one --redis must share this directory too
      --redis          redis://HOST:PORT[/db]: queue and operations live in Redis, shared with other
                       servers and with \`reapi worker\` processes (default: in this process only)
      --no-ac-updates  refuse UpdateActionResult: only results this farm computed are cached
                       (standalone workers store results with UpdateActionResult: not with this yet)
      --worker         run actions in a local Docker worker: auto (if Docker answers), on, off;
                       with --redis and off, the server only schedules
    worker options:
${WORKER_USAGE}`;

type Scheduler = { operations: OperationStore; queue: ActionQueue };

export async function serve(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      listen: { type: 'string', default: '127.0.0.1:8980' },
      data: { type: 'string', default: '.data' },
      redis: { type: 'string' },
      'no-ac-updates': { type: 'boolean', default: false },
      worker: { type: 'string', default: 'auto' },
      ...WORKER_OPTIONS,
    },
  });
  const workerMode = values.worker;
  if (!['auto', 'on', 'off'].includes(workerMode)) throw new Error(`--worker must be auto, on or off, not ${JSON.stringify(workerMode)}`);
  const concurrency = positiveInteger(values.concurrency, '--concurrency');
  const redis = values.redis === undefined ? undefined : redisUrl(values.redis);
  const withWorker = workerMode === 'on' || (workerMode === 'auto' && (await dockerAvailable()));
  if (workerMode === 'on' && !withWorker) throw new Error('--worker on, but Docker does not answer on /var/run/docker.sock');
  if (workerMode === 'auto' && !withWorker) {
    process.stderr.write(
      redis
        ? 'reapi: Docker does not answer; scheduling for the workers on Redis only (no local worker)\n'
        : 'reapi: Docker does not answer; serving the cache only (no remote execution)\n',
    );
  }
  if (redis) await checkRedis(redis);

  const listen = values.listen;
  const host = listen.slice(0, listen.lastIndexOf(':'));
  const storage = await FileStorage.open(values.data);
  const scheduler = redis ? redisScheduler(redis) : withWorker ? memoryScheduler() : undefined;
  // Image IDs are looked up in this host's Docker, which only means something when actions run here.
  const images = withWorker ? new DockerImageResolver() : undefined;
  const running = await startServer(listen, {
    storage,
    allowActionCacheUpdates: !values['no-ac-updates'],
    scheduler,
    resolveImage: images && ((name) => images.resolve(name)),
  });
  let worker: DockerWorker | undefined;
  if (scheduler && images) {
    worker = await startEmbeddedWorker({
      storage,
      actionCache: running.actionCache,
      ...scheduler,
      workDir: path.join(storage.root, 'worker'),
      defaultImage: values.image,
      concurrency,
      strict: values.strict,
      platform: values.platform,
      images,
    });
  }
  const execution = worker ? `, executing in ${values.image} x${concurrency}` : '';
  const queue = redis ? `, queue on ${redis}` : '';
  process.stdout.write(`reapi: listening on ${host}:${running.port} (data ${storage.root}${queue}${execution})\n`);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info('shutting down', { signal });
    Promise.all([running.shutdown(), worker?.drain()])
      .then(() => Promise.allSettled([scheduler?.queue.close(), scheduler?.operations.close()]))
      .then(() => process.exit(0));
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
}

function memoryScheduler(): Scheduler {
  return { operations: new MemoryOperationStore(), queue: new MemoryActionQueue() };
}

function redisScheduler(url: string): Scheduler {
  const lockMs = queueLockMsFromEnv();
  return {
    operations: new RedisOperationStore({ url }),
    queue: new BullMqActionQueue({ url, lockDurationMs: lockMs, stalledIntervalMs: lockMs }),
  };
}
