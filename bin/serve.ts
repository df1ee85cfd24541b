// `reapi serve`: the gRPC server, with its scheduler (in-process, or on Redis for a farm of
// several servers and workers) and, by default, a Docker worker in the same process.
import { parseArgs } from 'node:util';
import * as path from 'node:path';
import { openStorageFromFlags, parseBytes } from '../server/storage-config';
import { DEFAULT_CLIENT_LIMITS } from '../cas/limits';
import { ActionQueue } from '../scheduler/action-queue';
import { MemoryActionQueue } from '../scheduler/memory-action-queue';
import { MemoryOperationStore } from '../scheduler/memory-operation-store';
import { OperationStore } from '../scheduler/operation-store';
import { startEmbeddedWorker } from '../server/embedded-worker';
import { DockerWorker } from '../worker/docker-worker';
import { startServer } from '../server/reapi-server';
import { AccessControl } from '../server/auth';
import { TOKENS_FILE_FORMAT, loadTokensFile } from '../server/auth-tokens';
import { log } from '../server/log';
import { dockerAvailable } from '../worker/docker-available';
import { DockerImageResolver } from '../worker/image-resolver';
import type * as MetricsModule from '../server/metrics';
import type * as RedisOperationStoreModule from '../scheduler/redis-operation-store';
import type * as BullMqModule from '../scheduler/bullmq-action-queue';
import { startHttpEndpoints } from '../server/http-endpoints';
import { ReadinessCheck, dockerCheck, redisCheck } from '../server/readiness';
import { METRICS_USAGE, WORKER_OPTIONS, WORKER_USAGE, checkRedis, metricsListen, positiveInteger, queueLockMsFromEnv, redisUrl, stageAhead } from './options';

export const SERVE_USAGE = `  reapi serve [--listen HOST:PORT] [--data DIR] [--storage SPEC | --storage-config FILE] [--redis URL] [--no-ac-updates] [--worker auto|on|off]
              [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]] [--tokens FILE]
              [--max-blob-bytes N] [--write-idle-seconds N] [--max-concurrent-streams N] [--metrics-listen HOST:PORT] [worker options]
      --listen         address to serve gRPC on (default 127.0.0.1:8980; port 0 picks a free port)
      --data           data directory for blobs, action results and the worker (default ./.data);
                       servers sharing one --redis must share this directory too, or one S3 --storage
      --storage        where blobs and action results live (docs/storage.md):
                         file:DIR   files under DIR (default: file:<--data>)
                         s3://ACCESS:SECRET@HOST:PORT/BUCKET/PREFIX[?tier=DIR&tierBytes=N&secure=false]
                                    an S3 bucket shared by a farm's servers; tier: a local disk copy of
                                    at most N bytes (e.g. 20G) in front of it; secure=false: plain http;
                                    without ACCESS:SECRET@, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
      --storage-config JSON file instead of --storage: {"type":"s3","endpoint":"HOST:PORT","bucket",
                       "prefix","accessKey","secretKey","useSSL","tier":{"dir","maxBytes"}}
      --redis          redis://HOST:PORT[/db]: queue and operations live in Redis, shared with other
                       servers and with \`reapi worker\` processes (default: in this process only)
      --no-ac-updates  refuse UpdateActionResult from clients: only results this farm computed are
                       cached (standalone workers store theirs with a token of role "worker", see --tokens)
      --tls-cert, --tls-key
                       PEM certificate chain and private key: serve gRPC over TLS (clients use grpcs://)
      --tls-client-ca  PEM CA certificate(s): mutual TLS, clients must present a certificate signed by it
      --tokens         JSON file of the tokens that may call, each sending "authorization: Bearer <token>";
                       without it every caller may do everything. The file holds hashes, not tokens:
                         ${TOKENS_FILE_FORMAT}
                       token: "sha256:<hex>" of the token (reapi token hash); instances: exact names,
                       "" the default instance, "*" all; updateActionCache: may call UpdateActionResult;
                       execute: may Execute and cancel/delete operations; role "worker" (farm workers):
                       may store results on its instances, even with --no-ac-updates. docs/security.md
      --max-blob-bytes largest blob a client may upload or ask about; larger ones are refused with
                       RESOURCE_EXHAUSTED naming the limit (default 64G; K/M/G/T suffixes)
      --write-idle-seconds
                       a ByteStream Write that sends nothing for this long is cancelled (DEADLINE_EXCEEDED);
                       the bytes received are kept for a resume (default 60)
      --max-concurrent-streams
                       calls one client connection may have open at once; more wait (default 256)
      --worker         run actions in a local Docker worker: auto (if Docker answers), on, off;
                       with --redis and off, the server only schedules
${METRICS_USAGE}
                       /readyz checks Redis (with --redis), storage (the bucket answers, the local
                       directory is writable) and Docker (with a local worker)
    worker options:
${WORKER_USAGE}`;

type Scheduler = { operations: OperationStore; queue: ActionQueue };

export async function serve(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      listen: { type: 'string', default: '127.0.0.1:8980' },
      data: { type: 'string', default: '.data' },
      storage: { type: 'string' },
      'storage-config': { type: 'string' },
      redis: { type: 'string' },
      'no-ac-updates': { type: 'boolean', default: false },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      'tls-client-ca': { type: 'string' },
      tokens: { type: 'string' },
      'max-blob-bytes': { type: 'string', default: String(DEFAULT_CLIENT_LIMITS.maxBlobBytes) },
      'write-idle-seconds': { type: 'string', default: String(DEFAULT_CLIENT_LIMITS.writeIdleMs / 1000) },
      'max-concurrent-streams': { type: 'string', default: String(DEFAULT_CLIENT_LIMITS.maxConcurrentStreams) },
      worker: { type: 'string', default: 'auto' },
      'metrics-listen': { type: 'string' },
      ...WORKER_OPTIONS,
    },
  });
  const workerMode = values.worker;
  if (!['auto', 'on', 'off'].includes(workerMode)) throw new Error(`--worker must be auto, on or off, not ${JSON.stringify(workerMode)}`);
  const concurrency = positiveInteger(values.concurrency, '--concurrency');
  const ahead = stageAhead(values['stage-ahead']);
  const maxOutputBytes = parseBytes(values['max-output-bytes'], '--max-output-bytes');
  const limits = {
    maxBlobBytes: parseBytes(values['max-blob-bytes'], '--max-blob-bytes'),
    writeIdleMs: positiveInteger(values['write-idle-seconds'], '--write-idle-seconds') * 1000,
    maxConcurrentStreams: positiveInteger(values['max-concurrent-streams'], '--max-concurrent-streams'),
  };
  const redis = values.redis === undefined ? undefined : redisUrl(values.redis);
  const metricsAddress = metricsListen(values['metrics-listen']);
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
  const tls = tlsFiles(values['tls-cert'], values['tls-key'], values['tls-client-ca']);
  const access = values.tokens === undefined ? AccessControl.open() : AccessControl.withTokens(loadTokensFile(values.tokens));
  if (access.requiresTokens && !tls) {
    process.stderr.write('reapi: --tokens without --tls-cert: tokens travel in plain text; use this only on a network you trust\n');
  }

  const listen = values.listen;
  const host = listen.slice(0, listen.lastIndexOf(':'));
  const { storage, description: storageDescription, checkReachable } = await openStorageFromFlags({ storage: values.storage, storageConfig: values['storage-config'], data: values.data });
  const scheduler = redis ? redisScheduler(redis) : withWorker ? memoryScheduler() : undefined;
  // Image IDs are looked up in this host's Docker, which only means something when actions run here.
  const images = withWorker ? new DockerImageResolver() : undefined;
  // Required only with --metrics-listen (like the Redis and S3 clients): startup time.
  const metricsModule = metricsAddress === undefined ? undefined : (require('../server/metrics') as typeof MetricsModule);
  const metrics = metricsModule && new metricsModule.Metrics();
  const running = await startServer(listen, {
    metrics: metrics && metricsModule && new metricsModule.ServerMetrics(metrics),
    storage,
    allowActionCacheUpdates: !values['no-ac-updates'],
    access,
    tls,
    scheduler,
    resolveImage: images && ((name) => images.resolve(name)),
    limits,
  });
  let worker: DockerWorker | undefined;
  if (scheduler && images) {
    worker = await startEmbeddedWorker({
      storage,
      actionCache: running.actionCache,
      ...scheduler,
      workDir: path.join(path.resolve(values.data), 'worker'),
      defaultImage: values.image,
      concurrency,
      stageAhead: ahead,
      maxOutputBytes,
      allowNetwork: values['allow-network'],
      strict: values.strict,
      platform: values.platform,
      images,
      observer: metrics && metricsModule && new metricsModule.WorkerMetrics(metrics),
    });
  }
  const checks: ReadinessCheck[] = [{ name: 'storage', check: checkReachable }];
  if (redis) checks.push(redisCheck(redis));
  if (worker) checks.push(dockerCheck());
  const endpoints = metrics && metricsAddress !== undefined ? await startHttpEndpoints(metricsAddress, { metrics, checks }) : undefined;
  const execution = worker ? `, executing in ${values.image} x${concurrency}` : '';
  const queue = redis ? `, queue on ${redis}` : '';
  const trust = `${tls ? (tls.clientCa ? ', mutual TLS' : ', TLS') : ''}${access.requiresTokens ? ', tokens required' : ''}`;
  const metricsOn = endpoints ? `, metrics on ${endpoints.address}` : '';
  process.stdout.write(`reapi: listening on ${host}:${running.port} (${storageDescription}${queue}${execution}${trust})${metricsOn}\n`);
  process.stdout.write(bazelHint(`${tls ? 'grpcs' : 'grpc'}://${host}:${running.port}`, worker ? values.image : undefined, access.requiresTokens));
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info('shutting down', { signal });
    Promise.all([running.shutdown(), worker?.drain()])
      .then(() => endpoints?.close())
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
  // Required only with --redis: BullMQ and the Redis client take long to load.
  const { RedisOperationStore } = require('../scheduler/redis-operation-store') as typeof RedisOperationStoreModule;
  const { BullMqActionQueue } = require('../scheduler/bullmq-action-queue') as typeof BullMqModule;
  return {
    operations: new RedisOperationStore({ url }),
    queue: new BullMqActionQueue({ url, lockDurationMs: lockMs, stalledIntervalMs: lockMs }),
  };
}

function tlsFiles(cert: string | undefined, key: string | undefined, clientCa: string | undefined) {
  if ((cert === undefined) !== (key === undefined)) throw new Error('--tls-cert and --tls-key go together');
  if (cert === undefined || key === undefined) {
    if (clientCa !== undefined) throw new Error('--tls-client-ca needs --tls-cert and --tls-key');
    return undefined;
  }
  return { cert, key, clientCa };
}

/** How to point Bazel at this server: printed once at start, so `make run` tells the next step. */
function bazelHint(address: string, image: string | undefined, tokens: boolean): string {
  const header = tokens ? ' --remote_header=Authorization="Bearer $TOKEN"' : '';
  const lines = [`reapi: point Bazel at it with`, `  bazel build --remote_cache=${address}${header} //...`];
  if (image) {
    lines.push(`  bazel build --remote_executor=${address}${header} --remote_default_exec_properties=container-image=docker://${image} //...`);
  }
  return lines.join('\n') + '\n';
}
