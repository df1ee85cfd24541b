// Option parsing and start-up checks shared by `reapi serve` and `reapi worker`.
import * as os from 'node:os';
import { connectRedis } from '../scheduler/redis-connection';
import { parseListenAddress } from '../server/http-endpoints';
import type { SandboxMode } from '../worker/docker-worker';
import { DEFAULT_MAX_ACTION_OUTPUT_BYTES } from '../cas/limits';

export const DEFAULT_IMAGE = 'reapi-toolchain:bookworm';

/**
 * Actions executing at once: one per CPU, plus two. Part of every action was not computing but
 * waiting: staging its inputs, starting it in its container, syncing its outputs and result to
 * disk (measured on small actions: more than half of a slot's time). Two extra slots kept the
 * CPUs busy through those waits, without overcommitting memory the way doubling would on a large
 * machine running big compiles. Staging and syncing no longer hold a slot (--stage-ahead); the
 * two stay until small actions are measured again without them.
 */
export const DEFAULT_CONCURRENCY = os.cpus().length + 2;

/** The options of a Docker worker, the same for the embedded one and `reapi worker`. */
export const WORKER_OPTIONS = {
  image: { type: 'string', default: DEFAULT_IMAGE },
  concurrency: { type: 'string', default: String(DEFAULT_CONCURRENCY) },
  'stage-ahead': { type: 'string' },
  strict: { type: 'boolean', default: false },
  platform: { type: 'string', default: 'OSFamily=Linux' },
  'max-output-bytes': { type: 'string', default: String(DEFAULT_MAX_ACTION_OUTPUT_BYTES) },
  'allow-network': { type: 'boolean', default: false },
} as const;

export const WORKER_USAGE = `      --image          container image for actions that name none (default ${DEFAULT_IMAGE})
      --concurrency    actions executing at once (default: number of CPUs + 2)
      --stage-ahead    actions taken beyond those, their inputs staged while the others run, so
                       each starts as soon as a slot frees (default: half of --concurrency,
                       rounded up; 0 stages each action only when a slot is free)
      --strict         a fresh container for every action instead of warm ones
      --platform       properties this worker offers, name=value,... (default OSFamily=Linux)
      --max-output-bytes
                       an action whose stdout or stderr grows past this is killed and fails with
                       RESOURCE_EXHAUSTED (default 1G; K/M/G/T suffixes)
      --allow-network  actions whose platform says dockerNetwork=standard get a network (Docker's
                       bridge); without this flag they are refused with FAILED_PRECONDITION`;

/** --metrics-listen, the same for `reapi serve` and `reapi worker`. */
export const METRICS_USAGE = `      --metrics-listen HOST:PORT
                       serve HTTP for Prometheus and probes (default: off; port 0 picks a free port):
                       /metrics, /healthz (alive), /readyz (503 naming the dependency that does not answer)`;

/** The --metrics-listen value, checked for shape before anything starts. */
export function metricsListen(value: string | undefined): string | undefined {
  if (value !== undefined) parseListenAddress(value);
  return value;
}

export const ENVIRONMENT_USAGE = `environment:
  REAPI_LOG=debug|info|warn|error   log threshold (default warn)
  REAPI_TOKEN=TOKEN                 reapi worker: its token, when there is no --token-file
  REAPI_QUEUE_LOCK_MS=N             with Redis: how long a taken action stays locked to a worker that
                                    stopped renewing (crashed) before another worker gets it, and how
                                    often workers look for such actions (default 30000; tests lower it).
                                    Give every process of a farm the same value: the check is paced
                                    farm-wide, by whichever process ran it last`;

/** `reapi worker --sandbox`: where actions run. */
export const SANDBOX_USAGE = `      --sandbox        docker: each action in a container of its image, through Docker (default);
                       process: directly in this worker's own container, e.g. a Kubernetes pod of
                       the worker-in-pod image, as a uid per slot; needs root, no Docker; actions
                       must name --image (or none)
      --sandbox-uid    process: slot i runs actions as uid UID+i (default 1000); whatever else runs
                       as these uids in this PID namespace is killed after every action`;

export function sandboxMode(value: string | undefined): SandboxMode {
  if (value === 'docker' || value === 'process') return value;
  throw new Error(`--sandbox must be docker or process, not ${JSON.stringify(value)}`);
}

export function positiveInteger(value: string | undefined, what: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${what} must be a positive integer, not ${JSON.stringify(value)}`);
  return n;
}

/** --stage-ahead: undefined for the default, else a count that may be 0. */
export function stageAhead(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === '' || !Number.isInteger(n) || n < 0) throw new Error(`--stage-ahead must be 0 or a positive integer, not ${JSON.stringify(value)}`);
  return n;
}

/** REAPI_QUEUE_LOCK_MS, if set. */
export function queueLockMsFromEnv(): number | undefined {
  const text = process.env.REAPI_QUEUE_LOCK_MS;
  return text ? positiveInteger(text, 'REAPI_QUEUE_LOCK_MS') : undefined;
}

/** redis://HOST:PORT[/db], checked for shape. */
export function redisUrl(value: string): string {
  if (!/^rediss?:\/\/[^/]+(\/\d+)?$/.test(value)) throw new Error(`--redis ${JSON.stringify(value)} is not redis://HOST:PORT[/db]`);
  return value;
}

/**
 * One PING with a short timeout. The queue and the operation store wait forever for Redis (right
 * for a running farm); at start, a wrong address should be an error, not a silent hang.
 */
export async function checkRedis(url: string): Promise<void> {
  const client = connectRedis(url, 'reapi-start-check', { lazyConnect: true, connectTimeout: 5000, maxRetriesPerRequest: 0, retryStrategy: () => null });
  let cause: Error | undefined; // connect() only says "Connection is closed"; the event says why
  client.on('error', (err: Error) => (cause ??= err));
  try {
    await client.connect();
    await client.ping();
  } catch (err) {
    throw new Error(`Redis at ${url} does not answer: ${(cause ?? (err as Error)).message}`);
  } finally {
    client.disconnect();
  }
}
