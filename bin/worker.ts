// `reapi worker`: a standalone Docker worker of a farm. It takes actions from the farm's Redis
// and talks to a reapi server for blobs and results; SIGTERM/SIGINT drain it.
import { parseArgs } from 'node:util';
import * as os from 'node:os';
import * as path from 'node:path';
import { log } from '../server/log';
import { dockerAvailable } from '../worker/docker-available';
import { startStandaloneWorker } from '../worker/standalone-worker';
import { WORKER_OPTIONS, WORKER_USAGE, checkRedis, positiveInteger, queueLockMsFromEnv, redisUrl } from './options';

export const WORKER_COMMAND_USAGE = `  reapi worker --server grpc://HOST:PORT --redis redis://HOST:PORT [--work-dir DIR] [--name NAME] [worker options]
      --server         a reapi server of the farm: blobs are read and written there, results stored there
      --redis          the farm's Redis, where servers queue actions
      --work-dir       file cache and action directories, one per worker (default ./.worker)
      --name           how operations and results name this worker (default HOSTNAME/worker-PID)
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
      ...WORKER_OPTIONS,
    },
  });
  if (!values.server) throw new Error('--server grpc://HOST:PORT is required');
  if (!values.redis) throw new Error('--redis redis://HOST:PORT is required');
  const redis = redisUrl(values.redis);
  const concurrency = positiveInteger(values.concurrency, '--concurrency');
  if (!(await dockerAvailable())) throw new Error('Docker does not answer on /var/run/docker.sock; a worker needs it to run actions');
  await checkRedis(redis);

  const running = await startStandaloneWorker({
    server: values.server,
    redis,
    name: values.name,
    workDir: path.resolve(values['work-dir']),
    defaultImage: values.image,
    concurrency,
    strict: values.strict,
    platform: values.platform,
    queueLockMs: queueLockMsFromEnv(),
  });
  process.stdout.write(`reapi worker: ${values.name} taking actions for ${values.platform} from ${redis}\n`);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info('draining: finishing running actions, taking no new ones', { signal });
    running.drain().then(
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
