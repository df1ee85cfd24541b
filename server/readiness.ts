// What /readyz asks: is each dependency this process needs reachable right now? A check throws,
// with a message naming what is wrong, when it is not. Health checks that pass while Redis is
// down send traffic to a process that cannot do anything with it.
import { once } from 'node:events';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Redis } from 'ioredis';
import { connectRedis } from '../scheduler/redis-connection';
import { pingDocker } from '../worker/docker-available';

/** The longest one check may take; a Kubernetes probe (timeoutSeconds: 3) waits a little longer. */
export const CHECK_TIMEOUT_MS = 2000;

export interface ReadinessCheck {
  /** Names the dependency in /readyz's answer: redis, storage, docker, server, workdir. */
  readonly name: string;
  check(): Promise<void>;
  /** Lets go of connections the check holds. */
  close?(): Promise<void>;
}

export interface ReadinessReport {
  ready: boolean;
  /** The checks that failed, by name. */
  failing: string[];
  /** Each check: "ok", or why it failed. */
  checks: Record<string, string>;
}

/** Runs every check at once, each bounded by CHECK_TIMEOUT_MS. */
export async function runChecks(checks: readonly ReadinessCheck[], timeoutMs = CHECK_TIMEOUT_MS): Promise<ReadinessReport> {
  const results = await Promise.all(checks.map((c) => withTimeout(c.check(), timeoutMs).then(() => 'ok', (err: unknown) => errorMessage(err))));
  const report: ReadinessReport = { ready: true, failing: [], checks: {} };
  checks.forEach((c, i) => {
    report.checks[c.name] = results[i];
    if (results[i] !== 'ok') report.failing.push(c.name);
  });
  report.ready = report.failing.length === 0;
  return report;
}

/**
 * PING on a connection of its own that never queues commands: while Redis is away the check
 * fails at once (the queue's connections wait for Redis instead), and it recovers by itself
 * when Redis is back.
 */
export function redisCheck(url: string): ReadinessCheck {
  let lastError: Error | undefined;
  let client: Redis | undefined;
  const connection = () => {
    if (!client) {
      client = connectRedis(url, 'reapi-readiness', { enableOfflineQueue: false, maxRetriesPerRequest: 0, retryStrategy: (times) => Math.min(200 * times, 1000) });
      client.on('error', (err: Error) => (lastError = err));
      client.on('ready', () => (lastError = undefined));
    }
    return client;
  };
  return {
    name: 'redis',
    async check() {
      const redis = connection();
      if (redis.status !== 'ready') {
        // Starting up or reconnecting: give it the check's time to get there.
        const ready = once(redis, 'ready');
        ready.catch(() => undefined);
        await withTimeout(ready, CHECK_TIMEOUT_MS - 200).catch(() => {
          throw new Error(`Redis at ${url} is not connected${lastError ? `: ${lastError.message}` : ''}`);
        });
      }
      await redis.ping();
    },
    async close() {
      client?.disconnect();
    },
  };
}

/** A directory this process writes to (a worker's work dir) can be written. */
export function writableDirCheck(name: string, dir: string): ReadinessCheck {
  return { name, check: () => checkWritable(dir) };
}

/** Creates and removes a file in dir: the disk is there, mounted and writable (not full, not read-only). */
export async function checkWritable(dir: string): Promise<void> {
  const probe = path.join(dir, `.readyz-${process.pid}`);
  try {
    await fs.writeFile(probe, 'ok');
    await fs.rm(probe, { force: true });
  } catch (err) {
    throw new Error(`${dir} is not writable: ${errorMessage(err)}`);
  }
}

/** The Docker engine that runs this process's actions answers a ping. */
export function dockerCheck(socketPath?: string): ReadinessCheck {
  return { name: 'docker', check: () => pingDocker(socketPath) };
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
