// OperationStore on Redis: every server sharing the Redis sees every operation, and a restarted
// server still answers GetOperation / WaitExecution for operations it never saw.
//
// Layout (prefix "reapi" by default):
//   <prefix>:op:<name>          hash, one field per record property (below) plus "v", a version
//                               bumped by every change; done records expire after an hour.
//   <prefix>:op-events:<name>   pub/sub channel: "U" + the full new record after each change,
//                               "D" when the operation is deleted.
//   <prefix>:dedup:<dedupKey>   string: the unfinished operation that owns this dedup key.
//   <prefix>:ops                zset, all scores 0: operation names in lexical order (list()).
//   <prefix>:ops-expiry         zset: done operation -> when its hash expires, so creations can
//                               prune names whose hash Redis already dropped from <prefix>:ops.
//
// Every state change is one Lua script: the change, the dedup bookkeeping and the PUBLISH
// happen together, so a watcher never sees a change that another reader cannot yet read.
// The scripts build the dedup/operation key names they follow from a prefix (plain Redis; on
// Redis Cluster the prefix would need a hash tag).
import type { Redis } from 'ioredis';
import { OperationPage, OperationRecord, OperationStore, Stage } from './operation-store';
import { closeRedis, connectRedis } from './redis-connection';
import { log } from '../server/log';

export interface RedisOperationStoreOptions {
  /** redis://host:port[/db] */
  url: string;
  /** Key prefix shared by every server of one farm. Default "reapi". */
  prefix?: string;
  /** How long a finished operation stays readable. Default 1 h. */
  keepDoneMs?: number;
}

type Patch = Partial<Omit<OperationRecord, 'name'>>;
type Fields = Map<string, Buffer>;
interface Versioned {
  record: OperationRecord;
  version: number;
}
/** What a watcher's inbox receives: a channel message, or a nudge to re-read after a reconnect. */
type Signal = Buffer | 'resync' | 'closed';

/** Netstring-ish encoding of an HGETALL reply for PUBLISH: binary-safe, decoded by decodeMessage. */
const ENCODE_LUA = `
local function encode(kind, all)
  local parts = { kind }
  for i = 1, #all do parts[#parts + 1] = #all[i] .. ':' .. all[i] end
  return table.concat(parts)
end
`;

/**
 * create / createOrJoin.
 * KEYS: op hash, index zset, expiry zset[, dedup key]
 * ARGV: name, op key prefix, now ms, keep-done ms, join ('1' = createOrJoin), field, value, ...
 * Returns {1} when created, {0, owner's fields} when an unfinished owner holds the dedup key.
 */
const CREATE_LUA = `
local name, opPrefix, now, keep, join = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5] == '1'
if join and #KEYS == 4 then
  local owner = redis.call('GET', KEYS[4])
  if owner then
    local ownerKey = opPrefix .. owner
    if redis.call('HGET', ownerKey, 'done') == '0' then return { 0, redis.call('HGETALL', ownerKey) } end
  end
end
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 100)
if #gone > 0 then
  redis.call('ZREM', KEYS[2], unpack(gone))
  redis.call('ZREM', KEYS[3], unpack(gone))
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', 1, unpack(ARGV, 6))
redis.call('ZADD', KEYS[2], 0, name)
if redis.call('HGET', KEYS[1], 'done') == '1' then
  redis.call('PEXPIRE', KEYS[1], keep)
  redis.call('ZADD', KEYS[3], now + keep, name)
elseif join and #KEYS == 4 then
  redis.call('SET', KEYS[4], name)
end
return { 1 }
`;

/**
 * update: applies the patch, keeps expiry and dedup ownership in step with "done", publishes.
 * KEYS: op hash, expiry zset
 * ARGV: name, channel, now ms, keep-done ms, dedup key prefix, '1' to leave a finished operation
 *       alone, number of set pairs n, n field/value pairs, then fields to delete.
 * Returns the new fields (the untouched ones of a finished operation left alone), or nil when
 * the operation does not exist.
 */
const UPDATE_LUA = `${ENCODE_LUA}
local name, channel, now, keep, dedupPrefix, unlessDone, n = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], ARGV[6] == '1', tonumber(ARGV[7])
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if unlessDone and redis.call('HGET', KEYS[1], 'done') == '1' then return redis.call('HGETALL', KEYS[1]) end
if n > 0 then redis.call('HSET', KEYS[1], unpack(ARGV, 8, 7 + 2 * n)) end
if #ARGV > 7 + 2 * n then redis.call('HDEL', KEYS[1], unpack(ARGV, 8 + 2 * n)) end
redis.call('HINCRBY', KEYS[1], 'v', 1)
local ttl = redis.call('PTTL', KEYS[1])
if redis.call('HGET', KEYS[1], 'done') == '1' then
  if ttl < 0 then
    redis.call('PEXPIRE', KEYS[1], keep)
    redis.call('ZADD', KEYS[2], now + keep, name)
    local dk = redis.call('HGET', KEYS[1], 'dedupKey')
    if dk and redis.call('GET', dedupPrefix .. dk) == name then redis.call('DEL', dedupPrefix .. dk) end
  end
elseif ttl >= 0 then
  redis.call('PERSIST', KEYS[1])
  redis.call('ZREM', KEYS[2], name)
end
local all = redis.call('HGETALL', KEYS[1])
redis.call('PUBLISH', channel, encode('U', all))
return all
`;

/**
 * delete. KEYS: op hash, index zset, expiry zset. ARGV: name, channel, dedup key prefix.
 * Returns 1 when it existed.
 */
const DELETE_LUA = `
local name, channel, dedupPrefix = ARGV[1], ARGV[2], ARGV[3]
redis.call('ZREM', KEYS[2], name)
redis.call('ZREM', KEYS[3], name)
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local dk = redis.call('HGET', KEYS[1], 'dedupKey')
if dk and redis.call('GET', dedupPrefix .. dk) == name then redis.call('DEL', dedupPrefix .. dk) end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', channel, 'D')
return 1
`;

type Arg = string | Buffer | number;
type ScriptedRedis = Redis & {
  reapiOpCreateBuffer(numKeys: number, ...args: Arg[]): Promise<[number, Buffer[]?]>;
  reapiOpUpdateBuffer(...args: Arg[]): Promise<Buffer[] | null>;
  reapiOpDelete(...args: Arg[]): Promise<number>;
};

interface Channel {
  listeners: Set<(signal: Signal) => void>;
  ready: Promise<unknown>;
}

export class RedisOperationStore implements OperationStore {
  private readonly prefix: string;
  private readonly keepDoneMs: number;
  private readonly client: ScriptedRedis;
  /** Created by the first watch(); a store that only writes never subscribes. */
  private subscriber?: Redis;
  private readonly channels = new Map<string, Channel>();
  private closed = false;

  constructor(opts: RedisOperationStoreOptions) {
    this.prefix = opts.prefix ?? 'reapi';
    this.keepDoneMs = opts.keepDoneMs ?? 60 * 60 * 1000;
    this.client = connectRedis(opts.url, `${this.prefix}-operations`) as ScriptedRedis;
    this.client.on('error', (err) => log.warn('redis (operations) error', { err }));
    this.client.defineCommand('reapiOpCreate', { lua: CREATE_LUA });
    this.client.defineCommand('reapiOpUpdate', { numberOfKeys: 2, lua: UPDATE_LUA });
    this.client.defineCommand('reapiOpDelete', { numberOfKeys: 3, lua: DELETE_LUA });
  }

  async create(record: OperationRecord): Promise<void> {
    await this.runCreate(record, false);
  }

  async get(name: string): Promise<OperationRecord | undefined> {
    return (await this.read(name))?.record;
  }

  update(name: string, patch: Patch): Promise<OperationRecord | undefined> {
    return this.runUpdate(name, patch, false);
  }

  startExecuting(name: string, worker: string): Promise<OperationRecord | undefined> {
    return this.runUpdate(name, { stage: 'EXECUTING', worker }, true);
  }

  async *watch(name: string, signal: AbortSignal): AsyncIterable<OperationRecord> {
    if (signal.aborted || this.closed) return;
    const inbox: Signal[] = [];
    let notify: (() => void) | undefined;
    // Subscribe before reading, so no change can slip between the read and the subscription;
    // versions drop the messages that the read already includes.
    const stop = await this.listen(this.channel(name), (s) => {
      inbox.push(s);
      notify?.();
    });
    const onAbort = () => notify?.();
    signal.addEventListener('abort', onAbort);
    try {
      const current = await this.read(name);
      if (!current) return;
      yield current.record;
      if (current.record.done) return;
      let version = current.version;
      while (!signal.aborted) {
        const next = inbox.shift();
        if (next === undefined) {
          await new Promise<void>((resolve) => (notify = resolve));
          notify = undefined;
          continue;
        }
        if (next === 'closed') return;
        const change = next === 'resync' ? await this.read(name) : next[0] === 0x55 /* U */ ? decodeMessage(name, next) : undefined;
        if (!change) return; // deleted
        if (change.version <= version) continue;
        version = change.version;
        yield change.record;
        if (change.record.done) return;
      }
    } finally {
      signal.removeEventListener('abort', onAbort);
      stop();
    }
  }

  async createOrJoin(record: OperationRecord): Promise<OperationRecord> {
    return this.runCreate(record, true);
  }

  async list(pageSize: number, pageToken: string): Promise<OperationPage> {
    const size = Math.max(1, Math.trunc(pageSize));
    const names = await this.client.zrangebylex(this.indexKey, pageToken ? `(${pageToken}` : '-', '+', 'LIMIT', 0, size + 1);
    const page = names.slice(0, size);
    const pipeline = this.client.pipeline();
    for (const name of page) pipeline.hgetallBuffer(this.opKey(name));
    const replies = page.length ? ((await pipeline.exec()) ?? []) : [];
    const records: OperationRecord[] = [];
    const expired: string[] = [];
    page.forEach((name, i) => {
      const fields = replies[i]?.[1] as Record<string, Buffer> | undefined;
      if (fields && Object.keys(fields).length) records.push(decode(name, new Map(Object.entries(fields))).record);
      else expired.push(name);
    });
    // Names whose hash expired before a creation pruned them: drop them now we saw them.
    if (expired.length) await this.client.zrem(this.indexKey, ...expired);
    return { records, nextPageToken: names.length > size ? page[page.length - 1] : '' };
  }

  async delete(name: string): Promise<boolean> {
    const deleted = await this.client.reapiOpDelete(this.opKey(name), this.indexKey, this.expiryKey, name, this.channel(name), this.dedupPrefix);
    return deleted === 1;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const channel of this.channels.values()) for (const listener of channel.listeners) listener('closed');
    this.channels.clear();
    await Promise.allSettled([this.subscriber && closeRedis(this.subscriber), closeRedis(this.client)]);
  }

  // --- internals ----------------------------------------------------------------------------

  private async runCreate(record: OperationRecord, join: boolean): Promise<OperationRecord> {
    const { set } = toFields(record);
    const keys = [this.opKey(record.name), this.indexKey, this.expiryKey];
    if (record.dedupKey) keys.push(this.dedupPrefix + record.dedupKey);
    const [created, owner] = await this.client.reapiOpCreateBuffer(
      keys.length,
      ...keys,
      record.name,
      this.opKey(''),
      Date.now(),
      this.keepDoneMs,
      join ? '1' : '0',
      'name',
      record.name,
      ...set,
    );
    if (created === 1 || !owner) return { ...record };
    const fields = pairs(owner);
    return decode(fields.get('name')?.toString() ?? '', fields).record;
  }

  private async runUpdate(name: string, patch: Patch, unlessDone: boolean): Promise<OperationRecord | undefined> {
    const { set, del } = toFields(patch);
    const reply = await this.client.reapiOpUpdateBuffer(
      this.opKey(name),
      this.expiryKey,
      name,
      this.channel(name),
      Date.now(),
      this.keepDoneMs,
      this.dedupPrefix,
      unlessDone ? '1' : '0',
      set.length / 2,
      ...set,
      ...del,
    );
    return reply ? decode(name, pairs(reply)).record : undefined;
  }

  private async read(name: string): Promise<Versioned | undefined> {
    const fields = await this.client.hgetallBuffer(this.opKey(name));
    return Object.keys(fields).length ? decode(name, new Map(Object.entries(fields))) : undefined;
  }

  /** Adds a listener on a channel; resolves once Redis confirmed the subscription. */
  private async listen(channelName: string, listener: (signal: Signal) => void): Promise<() => void> {
    const sub = this.ensureSubscriber();
    let channel = this.channels.get(channelName);
    if (!channel) {
      channel = { listeners: new Set(), ready: sub.subscribe(channelName) };
      this.channels.set(channelName, channel);
    }
    const entry = channel;
    entry.listeners.add(listener);
    const stop = () => {
      entry.listeners.delete(listener);
      if (entry.listeners.size > 0 || this.channels.get(channelName) !== entry) return;
      this.channels.delete(channelName);
      // A later listen() on this channel sends SUBSCRIBE after this UNSUBSCRIBE on the same
      // connection, so it ends up subscribed.
      if (!this.closed) sub.unsubscribe(channelName).catch(() => undefined);
    };
    try {
      await entry.ready;
    } catch (err) {
      stop();
      throw err;
    }
    return stop;
  }

  private ensureSubscriber(): Redis {
    if (this.subscriber) return this.subscriber;
    const sub = this.client.duplicate({ connectionName: `${this.prefix}-operations-sub` });
    sub.on('error', (err) => log.warn('redis (operations subscriber) error', { err }));
    sub.on('messageBuffer', (channel: Buffer, message: Buffer) => {
      const entry = this.channels.get(channel.toString());
      if (entry) for (const listener of entry.listeners) listener(message);
    });
    // Messages published while the connection was down are lost (ioredis re-subscribes on its
    // own): every watcher re-reads the record instead.
    let first = true;
    sub.on('ready', () => {
      if (first) first = false;
      else for (const entry of this.channels.values()) for (const listener of entry.listeners) listener('resync');
    });
    this.subscriber = sub;
    return sub;
  }

  private opKey(name: string): string {
    return `${this.prefix}:op:${name}`;
  }

  private channel(name: string): string {
    return `${this.prefix}:op-events:${name}`;
  }

  private get dedupPrefix(): string {
    return `${this.prefix}:dedup:`;
  }

  private get indexKey(): string {
    return `${this.prefix}:ops`;
  }

  private get expiryKey(): string {
    return `${this.prefix}:ops-expiry`;
  }
}

// --- record <-> hash fields -------------------------------------------------------------------

/** Fields to set (flat field/value list) and to delete (properties explicitly set to undefined). */
function toFields(patch: Patch): { set: (string | Buffer)[]; del: string[] } {
  const set: (string | Buffer)[] = [];
  const del: string[] = [];
  const put = (field: string, present: boolean, value: string | Buffer | undefined) => {
    if (!present) return;
    if (value === undefined) del.push(field);
    else set.push(field, value);
  };
  const has = (k: keyof Patch) => Object.prototype.hasOwnProperty.call(patch, k);
  put('instanceName', has('instanceName'), patch.instanceName);
  put('digest', has('actionDigest'), patch.actionDigest && `${patch.actionDigest.hash}/${patch.actionDigest.sizeBytes}`);
  put('stage', has('stage'), patch.stage);
  put('done', has('done'), patch.done === undefined ? undefined : patch.done ? '1' : '0');
  put('response', has('response'), patch.response && Buffer.from(patch.response));
  put('dedupKey', has('dedupKey'), patch.dedupKey);
  put('queuedAt', has('queuedAt'), patch.queuedAt === undefined ? undefined : String(patch.queuedAt));
  put('worker', has('worker'), patch.worker);
  put('cancelRequested', has('cancelRequested'), patch.cancelRequested === undefined ? undefined : patch.cancelRequested ? '1' : '0');
  return { set, del };
}

function decode(name: string, f: Fields): Versioned {
  const text = (k: string) => f.get(k)?.toString();
  const [hash = '', size = '0'] = (text('digest') ?? '').split('/');
  const record: OperationRecord = {
    name,
    instanceName: text('instanceName') ?? '',
    actionDigest: { hash, sizeBytes: Number(size) },
    stage: (text('stage') ?? 'QUEUED') as Stage,
    done: text('done') === '1',
    queuedAt: Number(text('queuedAt') ?? 0),
  };
  const response = f.get('response');
  if (response) record.response = response;
  const dedupKey = text('dedupKey');
  if (dedupKey !== undefined) record.dedupKey = dedupKey;
  const worker = text('worker');
  if (worker !== undefined) record.worker = worker;
  const cancel = text('cancelRequested');
  if (cancel !== undefined) record.cancelRequested = cancel === '1';
  return { record, version: Number(text('v') ?? 0) };
}

/** A flat HGETALL reply as a map. */
function pairs(flat: Buffer[]): Fields {
  const fields: Fields = new Map();
  for (let i = 0; i + 1 < flat.length; i += 2) fields.set(flat[i].toString(), flat[i + 1]);
  return fields;
}

/** Parses "U" + (len ":" bytes)* as published by UPDATE_LUA. */
function decodeMessage(name: string, message: Buffer): Versioned {
  const flat: Buffer[] = [];
  let at = 1;
  while (at < message.length) {
    const colon = message.indexOf(0x3a, at);
    const length = Number(message.toString('latin1', at, colon));
    flat.push(message.subarray(colon + 1, colon + 1 + length));
    at = colon + 1 + length;
  }
  return decode(name, pairs(flat));
}
