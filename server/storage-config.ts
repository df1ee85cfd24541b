// Chooses the storage topology from one flag or one small JSON file:
//
//   --storage file:DIR                      blobs and action results under DIR (the default: --data)
//   --storage s3://ACCESS:SECRET@HOST[:PORT]/BUCKET[/PREFIX][?tier=DIR&tierBytes=N&secure=false&region=R&partBytes=N]
//   --storage-config FILE                   { "type": "s3", "endpoint", "bucket", "prefix", "accessKey",
//                                             "secretKey", "useSSL", "region", "partBytes",
//                                             "tier": { "dir", "maxBytes" } }  or  { "type": "file", "dir" }
//
// Credentials left out come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, so they need not
// appear on a command line. Sizes take a K/M/G/T suffix (powers of 1024).
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { Storage } from '../cas/blob-store';
import { FileStorage } from '../cas/file-storage';
import type * as DiskTierModule from '../cas/disk-tier';
import type * as S3Module from '../cas/s3-storage';
import type { S3Storage } from '../cas/s3-storage';
import type * as TieredModule from '../cas/tiered-storage';
import { checkWritable } from './readiness';

export interface FileStorageSpec {
  type: 'file';
  dir: string;
}

export interface S3StorageSpec {
  type: 's3';
  /** HOST or HOST:PORT */
  endpoint: string;
  bucket: string;
  prefix?: string;
  accessKey?: string;
  secretKey?: string;
  /** https (default) or plain http. */
  useSSL?: boolean;
  region?: string;
  partBytes?: number;
  /** A local disk tier in front of S3: a bounded, least-recently-used copy of blobs. */
  tier?: { dir: string; maxBytes: number };
}

export type StorageSpec = FileStorageSpec | S3StorageSpec;

export interface OpenedStorage {
  storage: Storage;
  /** For the start-up line: where blobs live, without secrets. */
  description: string;
  /** /readyz: throws, saying why, unless the local directory is writable and the bucket (if any) answers. */
  checkReachable(): Promise<void>;
}

/** Parses a --storage flag value. */
export function parseStorageFlag(flag: string): StorageSpec {
  if (flag.startsWith('file:')) {
    const dir = flag.slice('file:'.length).replace(/^\/\/(?=\/)/, ''); // file:DIR or file:///abs
    if (dir === '') throw new Error('--storage file:DIR needs a directory');
    return { type: 'file', dir };
  }
  if (!flag.startsWith('s3://')) throw new Error(`--storage ${JSON.stringify(redact(flag))}: expected file:DIR or s3://ACCESS:SECRET@HOST:PORT/BUCKET/PREFIX`);
  let url: URL;
  try {
    url = new URL(flag);
  } catch {
    throw new Error(`--storage ${JSON.stringify(redact(flag))} is not a valid URL`);
  }
  const [bucket, ...prefix] = url.pathname.replace(/^\/+/, '').split('/').map(decodeURIComponent);
  if (!url.host || !bucket) throw new Error(`--storage ${redact(flag)}: needs s3://HOST[:PORT]/BUCKET[/PREFIX]`);
  const q = url.searchParams;
  for (const name of q.keys()) {
    if (!['tier', 'tierBytes', 'secure', 'region', 'partBytes'].includes(name)) {
      throw new Error(`--storage ${redact(flag)}: unknown parameter ${JSON.stringify(name)} (known: tier, tierBytes, secure, region, partBytes)`);
    }
  }
  const secure = q.get('secure');
  if (secure !== null && secure !== 'true' && secure !== 'false') throw new Error(`--storage: secure must be true or false, not ${JSON.stringify(secure)}`);
  const tierDir = q.get('tier');
  const tierBytes = q.get('tierBytes');
  if ((tierDir === null) !== (tierBytes === null)) throw new Error('--storage: tier=DIR and tierBytes=N go together');
  const spec: S3StorageSpec = {
    type: 's3',
    endpoint: url.host,
    bucket,
    prefix: prefix.join('/'),
    accessKey: url.username ? decodeURIComponent(url.username) : undefined,
    secretKey: url.password ? decodeURIComponent(url.password) : undefined,
    useSSL: secure !== 'false',
    region: q.get('region') ?? undefined,
    partBytes: q.has('partBytes') ? parseBytes(q.get('partBytes')!, 'partBytes') : undefined,
    tier: tierDir !== null ? { dir: tierDir, maxBytes: parseBytes(tierBytes!, 'tierBytes') } : undefined,
  };
  return spec;
}

/** Reads a --storage-config JSON file; relative directories are relative to the file. */
export async function readStorageConfig(file: string): Promise<StorageSpec> {
  let raw: unknown;
  try {
    raw = JSON.parse(await fs.readFile(file, 'utf8'));
  } catch (err) {
    throw new Error(`--storage-config ${file}: ${(err as Error).message}`);
  }
  const base = path.dirname(path.resolve(file));
  const where = `--storage-config ${file}`;
  const c = object(raw, where);
  if (c.type === 'file') return { type: 'file', dir: path.resolve(base, string(c.dir, `${where}: dir`)) };
  if (c.type !== 's3') throw new Error(`${where}: "type" must be "s3" or "file"`);
  const tier = c.tier === undefined ? undefined : object(c.tier, `${where}: tier`);
  return {
    type: 's3',
    endpoint: string(c.endpoint, `${where}: endpoint`).replace(/^https?:\/\//, ''),
    bucket: string(c.bucket, `${where}: bucket`),
    prefix: optional(c.prefix, string, `${where}: prefix`),
    accessKey: optional(c.accessKey, string, `${where}: accessKey`),
    secretKey: optional(c.secretKey, string, `${where}: secretKey`),
    useSSL: optional(c.useSSL, boolean, `${where}: useSSL`) ?? !String(c.endpoint).startsWith('http://'),
    region: optional(c.region, string, `${where}: region`),
    partBytes: optional(c.partBytes, bytes, `${where}: partBytes`),
    tier: tier && { dir: path.resolve(base, string(tier.dir, `${where}: tier.dir`)), maxBytes: bytes(tier.maxBytes, `${where}: tier.maxBytes`) },
  };
}

/** Opens the storage a spec describes. dataDir holds an S3 server's local files when it has no tier. */
export async function openStorage(spec: StorageSpec, opts: { dataDir: string }): Promise<OpenedStorage> {
  if (spec.type === 'file') {
    const storage = await FileStorage.open(spec.dir);
    return { storage, description: `data ${storage.root}`, checkReachable: () => checkWritable(storage.scratchDir) };
  }
  const accessKey = spec.accessKey ?? process.env.AWS_ACCESS_KEY_ID;
  const secretKey = spec.secretKey ?? process.env.AWS_SECRET_ACCESS_KEY;
  if (!accessKey || !secretKey) throw new Error(`S3 storage at ${spec.endpoint}: no credentials (give ACCESS:SECRET@ or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)`);
  // Required only here: the S3 client is a large module a file-storage server never loads.
  const { S3Storage } = require('../cas/s3-storage') as typeof S3Module;
  const s3 = await S3Storage.open({
    endpoint: spec.endpoint,
    bucket: spec.bucket,
    prefix: spec.prefix ?? '',
    accessKey,
    secretKey,
    useSSL: spec.useSSL ?? true,
    region: spec.region,
    partBytes: spec.partBytes,
    localDir: spec.tier?.dir ?? path.resolve(opts.dataDir),
  });
  if (!spec.tier) return { storage: s3, description: `blobs in ${s3.describe()}`, checkReachable: () => reachable(s3, s3.scratchDir) };
  const { DiskTier } = require('../cas/disk-tier') as typeof DiskTierModule;
  const { TieredStorage } = require('../cas/tiered-storage') as typeof TieredModule;
  const tier = await DiskTier.open(spec.tier.dir, spec.tier.maxBytes);
  const storage = new TieredStorage(tier, s3);
  return {
    storage,
    description: `blobs in ${s3.describe()}, local tier ${tier.root} (${spec.tier.maxBytes} bytes)`,
    checkReachable: () => reachable(s3, storage.scratchDir),
  };
}

async function reachable(s3: S3Storage, localDir: string): Promise<void> {
  await Promise.all([s3.checkBucket(), checkWritable(localDir)]);
}

/** "123", "64K", "10M", "2G", "1T" (also "10MiB", "10MB": all powers of 1024) -> bytes. */
export function parseBytes(text: string, what: string): number {
  const m = /^(\d+)\s*([kmgt]?)(i?b)?$/i.exec(text.trim());
  const n = m ? Number(m[1]) * 1024 ** ' kmgt'.indexOf((m[2] || ' ').toLowerCase()) : NaN;
  if (!Number.isSafeInteger(n) || n <= 0) throw new Error(`${what} must be a positive size like 1048576, 512M or 20G, not ${JSON.stringify(text)}`);
  return n;
}

function redact(flag: string): string {
  return flag.replace(/\/\/[^@/]*@/, '//***@');
}

function object(v: unknown, what: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error(`${what} must be a JSON object`);
  return v as Record<string, unknown>;
}

function string(v: unknown, what: string): string {
  if (typeof v !== 'string' || v === '') throw new Error(`${what} must be a non-empty string`);
  return v;
}

function boolean(v: unknown, what: string): boolean {
  if (typeof v !== 'boolean') throw new Error(`${what} must be true or false`);
  return v;
}

function bytes(v: unknown, what: string): number {
  if (typeof v === 'number') return parseBytes(String(v), what);
  if (typeof v === 'string') return parseBytes(v, what);
  throw new Error(`${what} must be a size in bytes`);
}

function optional<T>(v: unknown, parse: (v: unknown, what: string) => T, what: string): T | undefined {
  return v === undefined || v === null ? undefined : parse(v, what);
}

/** The storage `reapi serve` flags choose: --storage-config, else --storage, else file:--data. */
export async function openStorageFromFlags(flags: { storage?: string; storageConfig?: string; data: string }): Promise<OpenedStorage> {
  if (flags.storage !== undefined && flags.storageConfig !== undefined) throw new Error('give --storage or --storage-config, not both');
  const spec =
    flags.storageConfig !== undefined
      ? await readStorageConfig(flags.storageConfig)
      : parseStorageFlag(flags.storage ?? `file:${flags.data}`);
  return openStorage(spec, { dataDir: flags.data });
}
