// One place that decides how reapi talks to Redis, so the queue and the operation store behave
// the same on a flaky network: commands wait for a reconnect instead of failing after a few
// retries (BullMQ requires maxRetriesPerRequest=null on the connections its workers use).
import type { Redis, RedisOptions } from 'ioredis';

export function connectRedis(url: string, connectionName: string, extra: RedisOptions = {}): Redis {
  // Required on first use: a server without --redis never loads the client (startup time).
  const { Redis: RedisClient } = require('ioredis') as typeof import('ioredis');
  return new RedisClient(url, {
    connectionName,
    maxRetriesPerRequest: null,
    // Reconnect quickly at first, then back off; never give up (the server keeps running).
    retryStrategy: (times) => Math.min(100 * times, 2000),
    ...extra,
  });
}

/** Ends a connection without waiting for a server that may already be gone. */
export async function closeRedis(client: Redis): Promise<void> {
  if (client.status === 'end') return;
  try {
    await client.quit();
  } catch {
    client.disconnect();
  }
}
