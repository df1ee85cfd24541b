#!/usr/bin/env node
// The reapi command: `reapi serve` runs the server (embedded: filesystem CAS on one machine).
import { parseArgs } from 'node:util';
import * as os from 'node:os';
import * as path from 'node:path';
import { FileStorage } from '../cas/file-storage';
import { MemoryActionQueue } from '../scheduler/memory-action-queue';
import { MemoryOperationStore } from '../scheduler/memory-operation-store';
import { EmbeddedWorker, startEmbeddedWorker } from '../server/embedded-worker';
import { dockerAvailable } from '../worker/docker-available';
import { DockerImageResolver } from '../worker/image-resolver';
import { startServer } from '../server/reapi-server';
import { log } from '../server/log';

const DEFAULT_IMAGE = 'reapi-toolchain:bookworm';

const USAGE = `usage:
  reapi serve [--listen HOST:PORT] [--data DIR] [--no-ac-updates] [--worker auto|on|off] [worker options]
      --listen         address to serve gRPC on (default 127.0.0.1:8980; port 0 picks a free port)
      --data           data directory for blobs, action results and the worker (default ./.data)
      --no-ac-updates  refuse UpdateActionResult: only results this farm computed are cached
      --worker         run actions in a local Docker worker: auto (if Docker answers), on, off
    worker options:
      --image          container image for actions that name none (default ${DEFAULT_IMAGE})
      --concurrency    actions at once (default: number of CPUs)
      --strict         a fresh container for every action instead of warm ones
      --platform       properties this worker offers, name=value,... (default OSFamily=Linux)
environment: REAPI_LOG=debug|info|warn|error (default warn)`;

async function serve(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      listen: { type: 'string', default: '127.0.0.1:8980' },
      data: { type: 'string', default: '.data' },
      'no-ac-updates': { type: 'boolean', default: false },
      worker: { type: 'string', default: 'auto' },
      image: { type: 'string', default: DEFAULT_IMAGE },
      concurrency: { type: 'string', default: String(os.cpus().length) },
      strict: { type: 'boolean', default: false },
      platform: { type: 'string', default: 'OSFamily=Linux' },
    },
  });
  const workerMode = values.worker!;
  if (!['auto', 'on', 'off'].includes(workerMode)) throw new Error(`--worker must be auto, on or off, not ${JSON.stringify(workerMode)}`);
  const concurrency = Number(values.concurrency);
  if (!Number.isInteger(concurrency) || concurrency < 1) throw new Error(`--concurrency must be a positive integer`);
  const withWorker = workerMode === 'on' || (workerMode === 'auto' && (await dockerAvailable()));
  if (workerMode === 'on' && !withWorker) throw new Error('--worker on, but Docker does not answer on /var/run/docker.sock');
  if (workerMode === 'auto' && !withWorker) process.stderr.write('reapi: Docker does not answer; serving the cache only (no remote execution)\n');
  const listen = values.listen!;
  const host = listen.slice(0, listen.lastIndexOf(':'));
  const storage = await FileStorage.open(values.data!);
  const scheduler = withWorker ? { operations: new MemoryOperationStore(), queue: new MemoryActionQueue() } : undefined;
  const images = withWorker ? new DockerImageResolver() : undefined;
  const running = await startServer(listen, {
    storage,
    allowActionCacheUpdates: !values['no-ac-updates'],
    scheduler,
    resolveImage: images && ((name) => images.resolve(name)),
  });
  let worker: EmbeddedWorker | undefined;
  if (scheduler) {
    worker = await startEmbeddedWorker({
      storage,
      actionCache: running.actionCache,
      ...scheduler,
      workDir: path.join(storage.root, 'worker'),
      defaultImage: values.image!,
      concurrency,
      strict: values.strict!,
      platform: values.platform!,
      images: images!,
    });
  }
  const execution = worker ? `, executing in ${values.image} x${concurrency}` : '';
  process.stdout.write(`reapi: listening on ${host}:${running.port} (data ${storage.root}${execution})\n`);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info('shutting down', { signal });
    Promise.all([running.shutdown(), worker?.drain()]).then(() => process.exit(0));
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
}

async function main(): Promise<void> {
  const [command, ...rest] = process.argv.slice(2);
  switch (command) {
    case 'serve':
      return serve(rest);
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE + '\n');
      return;
    default:
      process.stderr.write(`reapi: unknown command ${JSON.stringify(command)}\n${USAGE}\n`);
      process.exitCode = 2;
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`reapi: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
