// `reapi worker`: a standalone Docker worker of a farm. It takes actions from the farm's Redis
// and talks to a reapi server for blobs and results; SIGTERM/SIGINT drain it.
import { parseArgs } from 'node:util';
import { readFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { log } from '../server/log';
import { parseBytes } from '../server/storage-config';
import { dockerAvailable } from '../worker/docker-available';
import { startStandaloneWorker } from '../worker/standalone-worker';
import type * as MetricsModule from '../server/metrics';
import { startHttpEndpoints } from '../server/http-endpoints';
import { ReadinessCheck, dockerCheck, redisCheck, writableDirCheck } from '../server/readiness';
import {
  METRICS_USAGE,
  SANDBOX_USAGE,
  WORKER_OPTIONS,
  WORKER_USAGE,
  checkRedis,
  metricsListen,
  positiveInteger,
  queueLockMsFromEnv,
  redisUrl,
  sandboxMode,
  stageAhead,
} from './options';

export const WORKER_COMMAND_USAGE = `  reapi worker --server grpc[s]://HOST:PORT --redis redis://HOST:PORT [--work-dir DIR] [--name NAME]
               [--tls-ca FILE] [--tls-client-cert FILE --tls-client-key FILE] [--token-file FILE]
               [--sandbox docker|process] [--metrics-listen HOST:PORT] [worker options]
      --server         a reapi server of the farm: blobs are read and written there, results stored there;
                       grpcs:// for a server with --tls-cert
      --tls-ca         PEM CA certificate to trust for a grpcs:// server (default: the system's roots)
      --tls-client-cert, --tls-client-key
                       PEM certificate and key this worker presents to a server with --tls-client-ca
      --token-file     file holding the worker's token (default: env REAPI_TOKEN), sent on every call;
                       in the server's tokens file with "role": "worker", it lets the worker store
                       results even when the server refuses clients' results (--no-ac-updates)
      --redis          the farm's Redis, where servers queue actions
      --work-dir       file cache and action directories, one per worker (default ./.worker)
      --name           how operations and results name this worker (default HOSTNAME/worker-PID)
${SANDBOX_USAGE}
${METRICS_USAGE}
                       /readyz checks the server, Redis, the work dir and, with --sandbox docker, Docker
    worker options:
${WORKER_USAGE}
    SIGTERM or SIGINT: take nothing new, finish the running actions, exit 0`;

export async function worker(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      server: { type: 'string' },
      redis: { type: 'string' },
      'work-dir': { type: 'string', default: '.worker' },
      name: { type: 'string', default: `${os.hostname()}/worker-${process.pid}` },
      'tls-ca': { type: 'string' },
      'tls-client-cert': { type: 'string' },
      'tls-client-key': { type: 'string' },
      'token-file': { type: 'string' },
      sandbox: { type: 'string', default: 'docker' },
      'sandbox-uid': { type: 'string' },
      'metrics-listen': { type: 'string' },
      ...WORKER_OPTIONS,
    },
  });
  if (!values.server) throw new Error('--server grpc://HOST:PORT or grpcs://HOST:PORT is required');
  if (!values.redis) throw new Error('--redis redis://HOST:PORT is required');
  const redis = redisUrl(values.redis);
  const metricsAddress = metricsListen(values['metrics-listen']);
  const concurrency = positiveInteger(values.concurrency, '--concurrency');
  const ahead = stageAhead(values['stage-ahead']);
  const token = workerToken(values['token-file']);
  const sandbox = sandboxMode(values.sandbox);
  if (sandbox === 'docker' && !(await dockerAvailable())) {
    throw new Error('Docker does not answer on /var/run/docker.sock; a worker needs it to run actions (or --sandbox process)');
  }
  if (sandbox === 'process' && process.getuid?.() !== 0) throw new Error('--sandbox process needs root: it runs each action as an unprivileged uid');
  if (values['sandbox-uid'] !== undefined && sandbox !== 'process') throw new Error('--sandbox-uid only applies to --sandbox process');
  const actionUid = values['sandbox-uid'] === undefined ? undefined : positiveInteger(values['sandbox-uid'], '--sandbox-uid');
  await checkRedis(redis);

  // Required only with --metrics-listen: prom-client takes long to load.
  const metricsModule = metricsAddress === undefined ? undefined : (require('../server/metrics') as typeof MetricsModule);
  const metrics = metricsModule && new metricsModule.Metrics();
  const workDir = path.resolve(values['work-dir']);
  const running = await startStandaloneWorker({
    server: values.server,
    tls: { ca: values['tls-ca'], clientCert: values['tls-client-cert'], clientKey: values['tls-client-key'] },
    token,
    redis,
    name: values.name,
    workDir,
    defaultImage: values.image,
    concurrency,
    stageAhead: ahead,
    maxOutputBytes: parseBytes(values['max-output-bytes'], '--max-output-bytes'),
    strict: values.strict,
    allowNetwork: values['allow-network'],
    platform: values.platform,
    sandbox,
    actionUid,
    queueLockMs: queueLockMsFromEnv(),
    observer: metrics && metricsModule && new metricsModule.WorkerMetrics(metrics),
  });
  const checks: ReadinessCheck[] = [{ name: 'server', check: () => running.checkServer() }, redisCheck(redis), writableDirCheck('workdir', workDir)];
  if (sandbox === 'docker') checks.push(dockerCheck());
  const endpoints = metrics && metricsAddress !== undefined ? await startHttpEndpoints(metricsAddress, { metrics, checks }) : undefined;
  const metricsOn = endpoints ? `, metrics on ${endpoints.address}` : '';
  process.stdout.write(`reapi worker: ${values.name} taking actions for ${values.platform} from ${redis}${metricsOn}\n`);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info('draining: finishing running actions, taking no new ones', { signal });
    running
      .drain()
      .then(() => endpoints?.close())
      .then(
        () => process.exit(0),
        (err: unknown) => {
          log.error('drain failed', { err });
          process.exit(1);
        },
      );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
}

/** The token from --token-file, else REAPI_TOKEN; a file's trailing newline is not part of it. */
function workerToken(file: string | undefined): string | undefined {
  let token: string | undefined;
  let source = 'REAPI_TOKEN';
  if (file !== undefined) {
    source = `--token-file ${file}`;
    try {
      token = readFileSync(file, 'utf8').trim();
    } catch (err) {
      throw new Error(`${source}: ${(err as Error).message}`);
    }
  } else {
    token = process.env.REAPI_TOKEN?.trim() || undefined;
  }
  // It goes into an HTTP/2 header as "Bearer <token>".
  if (token !== undefined && !/^[\x21-\x7e]+$/.test(token)) throw new Error(`${source}: a token is one word of printable ASCII`);
  return token;
}
