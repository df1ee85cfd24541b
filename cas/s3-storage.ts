// Blobs and action results as objects in an S3-compatible bucket, shared by every server of a farm.
//
//   <prefix>/instances/<name>/cas/<hash>            blobs
//   <prefix>/instances/<name>/ac/<hash>-<size>      encoded ActionResults
//
// (<name> is the instance name URI-encoded as one segment, '_' for the default instance, as in
// FileStorage.) An object appears only when its PUT or its multipart upload completes, so readers
// never see part of a blob. Partial ByteStream uploads and temporary files stay on local disk,
// in a directory of the server that receives them.
//
// Presence is cached positively only: a blob seen in the bucket stays known for this process
// (blobs are immutable), but a blob not seen is asked again every time, since another server may
// have uploaded it since.
import * as http from 'node:http';
import * as https from 'node:https';
import { promises as fs, createReadStream } from 'node:fs';
import * as path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { status } from '@grpc/grpc-js';
import { Client } from 'minio';
import { ActionCacheStore, BlobStore, ByteRange, Storage } from './blob-store';
import { Digest, digestKey, isEmptyDigest, verifyBlob } from './digest';
import { validateInstanceName } from './resource-name';
import { RpcError } from '../server/rpc-error';

export interface S3Options {
  /** HOST or HOST:PORT of the S3 endpoint. */
  endpoint: string;
  bucket: string;
  /** Key prefix inside the bucket; '' puts `instances/` at the top. */
  prefix: string;
  accessKey: string;
  secretKey: string;
  useSSL: boolean;
  region?: string;
  /** Streams longer than this go up as multipart uploads in parts of this size (min 5 MiB). */
  partBytes?: number;
  /** HEAD requests in flight per FindMissing call. */
  findMissingConcurrency?: number;
  /** Local directory for temporary files and partial ByteStream uploads. */
  localDir: string;
}

export const DEFAULT_PART_BYTES = 16 * 1024 * 1024;
const DEFAULT_FIND_MISSING_CONCURRENCY = 32;
/** Digests remembered as present per instance; the oldest are forgotten beyond this. */
const MAX_KNOWN_PRESENT = 1_000_000;

export class S3Storage implements Storage {
  readonly scratchDir: string;
  readonly uploadsDir: string;
  private readonly bucket: S3Bucket;
  private readonly blobStores = new Map<string, S3BlobStore>();
  private readonly acStores = new Map<string, S3ActionCacheStore>();

  private constructor(private readonly options: S3Options, client: Client) {
    this.scratchDir = path.join(options.localDir, 'tmp');
    this.uploadsDir = path.join(options.localDir, 'uploads');
    this.bucket = new S3Bucket(client, options.bucket);
  }

  /** Connects, checks that the bucket exists, and prepares the local directories. */
  static async open(options: S3Options): Promise<S3Storage> {
    const { host, port } = splitEndpoint(options.endpoint);
    const Agent = options.useSSL ? https.Agent : http.Agent;
    const client = new Client({
      endPoint: host,
      port,
      useSSL: options.useSSL,
      accessKey: options.accessKey,
      secretKey: options.secretKey,
      region: options.region,
      partSize: options.partBytes ?? DEFAULT_PART_BYTES,
      pathStyle: true,
      transportAgent: new Agent({ keepAlive: true, maxSockets: 128 }),
    });
    const storage = new S3Storage(options, client);
    let exists: boolean;
    try {
      exists = await client.bucketExists(options.bucket);
    } catch (err) {
      throw new Error(`S3 at ${storage.describe()}: cannot reach the bucket: ${(err as Error).message}`, { cause: err });
    }
    if (!exists) throw new Error(`S3 at ${storage.describe()}: bucket ${options.bucket} does not exist; create it first`);
    await fs.rm(storage.scratchDir, { recursive: true, force: true });
    await Promise.all([storage.scratchDir, storage.uploadsDir].map((d) => fs.mkdir(d, { recursive: true })));
    return storage;
  }

  /** Resolves when the bucket answers (readiness); otherwise throws, naming it. */
  async checkBucket(): Promise<void> {
    let exists: boolean;
    try {
      exists = await this.bucket.exists();
    } catch (err) {
      throw new Error(`S3 at ${this.describe()}: cannot reach the bucket: ${(err as Error).message}`, { cause: err });
    }
    if (!exists) throw new Error(`S3 at ${this.describe()}: bucket ${this.options.bucket} does not exist`);
  }

  /** s3://HOST:PORT/BUCKET/PREFIX, without credentials. */
  describe(): string {
    const scheme = this.options.useSSL ? 's3' : 's3+http';
    return `${scheme}://${this.options.endpoint}/${this.options.bucket}/${this.options.prefix}`;
  }

  cas(instanceName: string): BlobStore {
    let store = this.blobStores.get(instanceName);
    if (!store) {
      store = new S3BlobStore(this.bucket, this.instanceKey(instanceName) + '/cas/', this.options.findMissingConcurrency ?? DEFAULT_FIND_MISSING_CONCURRENCY);
      this.blobStores.set(instanceName, store);
    }
    return store;
  }

  actionCache(instanceName: string): ActionCacheStore {
    let store = this.acStores.get(instanceName);
    if (!store) {
      store = new S3ActionCacheStore(this.bucket, this.instanceKey(instanceName) + '/ac/');
      this.acStores.set(instanceName, store);
    }
    return store;
  }

  private instanceKey(instanceName: string): string {
    validateInstanceName(instanceName);
    const prefix = this.options.prefix.replace(/^\/+|\/+$/g, '');
    const instance = instanceName === '' ? '_' : encodeURIComponent(instanceName);
    return `${prefix === '' ? '' : prefix + '/'}instances/${instance}`;
  }
}

/** The minio calls this storage makes, each failure turned into an error naming bucket and key. */
class S3Bucket {
  constructor(private readonly client: Client, readonly name: string) {}

  exists(): Promise<boolean> {
    return this.client.bucketExists(this.name);
  }

  /** The object's size, or undefined if there is no such object. */
  async size(key: string): Promise<number | undefined> {
    try {
      return (await this.client.statObject(this.name, key)).size;
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw this.failed('HEAD', key, err);
    }
  }

  /** A stream of the object from offset (limit bytes, or to the end), or undefined if absent. */
  async open(key: string, offset: number, limit?: number): Promise<Readable | undefined> {
    try {
      const stream = await this.client.getPartialObject(this.name, key, offset, limit);
      // A failure mid-stream still names the object it was reading.
      const out = new PassThrough({ highWaterMark: 1 << 20 });
      stream.once('error', (err) => out.destroy(this.failed('GET', key, err)));
      out.once('close', () => stream.destroy());
      return stream.pipe(out);
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw this.failed('GET', key, err);
    }
  }

  async get(key: string): Promise<Buffer | undefined> {
    const stream = await this.open(key, 0);
    if (!stream) return undefined;
    const chunks: Buffer[] = [];
    for await (const chunk of stream) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks);
  }

  /** Uploads a buffer, or a stream of exactly `size` bytes (multipart beyond the part size). */
  async put(key: string, data: Buffer | Readable, size: number): Promise<void> {
    try {
      await this.client.putObject(this.name, key, data, size, { 'Content-Type': 'application/octet-stream' });
    } catch (err) {
      throw this.failed('PUT', key, err);
    }
  }

  failed(op: string, key: string, err: unknown): RpcError {
    const e = err as { code?: string; message?: string };
    const code = e.code ? ` (${e.code})` : '';
    // UNAVAILABLE: the client may retry; the store, not the request, is at fault.
    return new RpcError(status.UNAVAILABLE, `S3 ${op} s3://${this.name}/${key} failed${code}: ${e.message ?? String(err)}`);
  }
}

function isNotFound(err: unknown): boolean {
  const code = (err as { code?: string }).code;
  return code === 'NotFound' || code === 'NoSuchKey';
}

export class S3BlobStore implements BlobStore {
  /** hash -> size of blobs known to be in the bucket, oldest first. */
  private readonly present = new Map<string, number>();

  constructor(private readonly bucket: S3Bucket, private readonly keyPrefix: string, private readonly concurrency: number) {}

  private keyOf(d: Digest): string {
    return this.keyPrefix + d.hash;
  }

  private remember(d: Digest): void {
    this.present.delete(d.hash);
    this.present.set(d.hash, d.sizeBytes);
    if (this.present.size > MAX_KNOWN_PRESENT) this.present.delete(this.present.keys().next().value!);
  }

  private async isPresent(d: Digest): Promise<boolean> {
    if (isEmptyDigest(d) || this.present.get(d.hash) === d.sizeBytes) return true;
    // Same hash, other size: a different (absent) blob, like in FileBlobStore.
    const size = await this.bucket.size(this.keyOf(d));
    if (size !== d.sizeBytes) return false;
    this.remember(d);
    return true;
  }

  async findMissing(digests: Digest[]): Promise<Digest[]> {
    const present = await mapLimit(digests, this.concurrency, (d) => this.isPresent(d));
    return digests.filter((_, i) => !present[i]);
  }

  async read(d: Digest): Promise<Buffer | undefined> {
    if (isEmptyDigest(d)) return Buffer.alloc(0);
    const data = await this.bucket.get(this.keyOf(d));
    if (!data || data.length !== d.sizeBytes) return undefined;
    this.remember(d);
    return data;
  }

  async openRead(d: Digest, range: ByteRange = { offset: 0 }): Promise<Readable | undefined> {
    if (!(await this.isPresent(d))) return undefined;
    const end = range.limit === undefined ? d.sizeBytes : Math.min(d.sizeBytes, range.offset + range.limit);
    if (d.sizeBytes === 0 || range.offset >= end) return Readable.from([]);
    return this.bucket.open(this.keyOf(d), range.offset, end - range.offset);
  }

  async put(d: Digest, data: Buffer): Promise<void> {
    verifyBlob(d, data);
    if (isEmptyDigest(d) || this.present.get(d.hash) === d.sizeBytes) return;
    await this.bucket.put(this.keyOf(d), data, data.length);
    this.remember(d);
  }

  async adoptVerifiedFile(d: Digest, file: string): Promise<void> {
    try {
      if (isEmptyDigest(d) || this.present.get(d.hash) === d.sizeBytes) return;
      const st = await fs.stat(file);
      if (st.size !== d.sizeBytes) throw new Error(`blob ${digestKey(d)}: ${file} has ${st.size} bytes, digest says ${d.sizeBytes}`);
      await this.bucket.put(this.keyOf(d), createReadStream(file, { highWaterMark: 1 << 20 }), d.sizeBytes);
      this.remember(d);
    } finally {
      await fs.rm(file, { force: true });
    }
  }
}

class S3ActionCacheStore implements ActionCacheStore {
  constructor(private readonly bucket: S3Bucket, private readonly keyPrefix: string) {}

  private keyOf(d: Digest): string {
    return `${this.keyPrefix}${d.hash}-${d.sizeBytes}`;
  }

  get(actionDigest: Digest): Promise<Buffer | undefined> {
    return this.bucket.get(this.keyOf(actionDigest));
  }

  put(actionDigest: Digest, encodedResult: Buffer): Promise<void> {
    return this.bucket.put(this.keyOf(actionDigest), encodedResult, encodedResult.length);
  }
}

function splitEndpoint(endpoint: string): { host: string; port?: number } {
  const m = /^(\[[^\]]+\]|[^:/]+)(?::(\d+))?$/.exec(endpoint);
  if (!m) throw new Error(`S3 endpoint ${JSON.stringify(endpoint)} is not HOST or HOST:PORT`);
  return { host: m[1].replace(/^\[|\]$/g, ''), port: m[2] === undefined ? undefined : Number(m[2]) };
}

/** Runs fn over items with at most `limit` calls in flight; results in input order. */
async function mapLimit<T, R>(items: T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const lane = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
  return results;
}
