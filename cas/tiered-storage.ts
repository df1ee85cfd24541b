// A fast local tier in front of a slow shared one (a DiskTier before S3): a BlobStore made of two
// BlobStores, for servers and workers alike.
//
// - Reads take the local copy, or fetch the blob from the slow tier into the fast one, verifying
//   it on the way in, and serve it from there.
// - Writes go to the slow tier first: a write counts once the slow tier has it. The local copy is
//   made after, and failing to make it fails nothing.
// - FindMissing asks the slow tier only about what the fast tier lacks: every local blob was in
//   the slow tier before it was here.
// - The ActionCache goes straight to the slow tier: it is small and must be shared.
// Temporary files and partial uploads live on the fast tier's disk, so a finished upload becomes
// a local blob by rename.
import { Hash, createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { Readable, Transform, TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { status } from '@grpc/grpc-js';
import { ActionCacheStore, BlobStore, ByteRange, Storage } from './blob-store';
import { Digest, digestKey, isEmptyDigest, verifyBlob } from './digest';
import { tempPath } from './atomic-file';
import { RpcError } from '../server/rpc-error';
import { log } from '../server/log';

/**
 * What a fast tier offers: blobs per instance, on the local disk that also holds scratch files,
 * and optionally the most it can hold (blobs larger than that bypass it).
 */
export type FastTier = Pick<Storage, 'cas' | 'scratchDir' | 'uploadsDir'> & { readonly maxBytes?: number };

export class TieredStorage implements Storage {
  private readonly stores = new Map<string, TieredBlobStore>();

  constructor(private readonly fast: FastTier, private readonly slow: Storage) {}

  get scratchDir(): string {
    return this.fast.scratchDir;
  }

  get uploadsDir(): string {
    return this.fast.uploadsDir;
  }

  cas(instanceName: string): BlobStore {
    let store = this.stores.get(instanceName);
    if (!store) {
      store = new TieredBlobStore(this.fast.cas(instanceName), this.slow.cas(instanceName), this.fast.scratchDir, this.fast.maxBytes ?? Infinity);
      this.stores.set(instanceName, store);
    }
    return store;
  }

  actionCache(instanceName: string): ActionCacheStore {
    return this.slow.actionCache(instanceName);
  }
}

export class TieredBlobStore implements BlobStore {
  /** Fetches from the slow tier in progress, so concurrent readers of one blob share one download. */
  private readonly fetching = new Map<string, Promise<boolean>>();

  constructor(
    private readonly fast: BlobStore,
    private readonly slow: BlobStore,
    private readonly scratchDir: string,
    /** Blobs larger than this never go into the fast tier. */
    private readonly fastMaxBytes = Infinity,
  ) {}

  async findMissing(digests: Digest[]): Promise<Digest[]> {
    const notLocal = await this.fast.findMissing(digests);
    return notLocal.length === 0 ? [] : this.slow.findMissing(notLocal);
  }

  async read(d: Digest): Promise<Buffer | undefined> {
    const local = await this.fast.read(d);
    if (local) return local;
    const data = await this.slow.read(d);
    if (!data) return undefined;
    try {
      verifyBlob(d, data);
    } catch (err) {
      throw corrupt(d, err);
    }
    await this.keepCopy(d, data);
    return data;
  }

  async openRead(d: Digest, range?: ByteRange): Promise<Readable | undefined> {
    if (d.sizeBytes > this.fastMaxBytes) return this.slow.openRead(d, range);
    const local = await this.fast.openRead(d, range);
    if (local) return local;
    if (!(await this.fetch(d))) return undefined;
    // Evicted again already by other blobs coming in: read the slow tier directly.
    return (await this.fast.openRead(d, range)) ?? this.slow.openRead(d, range);
  }

  async put(d: Digest, data: Buffer): Promise<void> {
    if ((await this.fast.findMissing([d])).length === 0) {
      verifyBlob(d, data); // held already, but wrong data is still refused
      return;
    }
    await this.slow.put(d, data); // verifies
    await this.keepCopy(d, data);
  }

  async adoptVerifiedFile(d: Digest, file: string): Promise<void> {
    if (d.sizeBytes > this.fastMaxBytes) return this.slow.adoptVerifiedFile(d, file);
    if ((await this.fast.findMissing([d])).length === 0) {
      await fs.rm(file, { force: true });
      return;
    }
    // The slow tier consumes a second name of the same file; the fast tier then takes the first.
    const forSlow = tempPath(this.scratchDir, d.hash);
    await fs.link(file, forSlow).catch(() => fs.copyFile(file, forSlow));
    try {
      await this.slow.adoptVerifiedFile(d, forSlow);
    } finally {
      await fs.rm(forSlow, { force: true });
    }
    await this.fast.adoptVerifiedFile(d, file).catch(async (err) => {
      await fs.rm(file, { force: true });
      log.warn('tiered storage: stored in the slow tier, but no local copy', { digest: digestKey(d), err });
    });
  }

  /** Puts already-verified data into the fast tier, without hashing it again. Never fails. */
  private async keepCopy(d: Digest, data: Buffer): Promise<void> {
    if (isEmptyDigest(d) || d.sizeBytes > this.fastMaxBytes) return;
    const tmp = tempPath(this.scratchDir, d.hash);
    try {
      await fs.writeFile(tmp, data, { flag: 'wx' });
      await this.fast.adoptVerifiedFile(d, tmp);
    } catch (err) {
      await fs.rm(tmp, { force: true });
      log.warn('tiered storage: could not keep a local copy', { digest: digestKey(d), err });
    }
  }

  /** Copies a blob from the slow tier into the fast one, verified; false if the slow tier lacks it. */
  private fetch(d: Digest): Promise<boolean> {
    const key = digestKey(d);
    let pending = this.fetching.get(key);
    if (!pending) {
      pending = this.download(d).finally(() => this.fetching.delete(key));
      this.fetching.set(key, pending);
    }
    return pending;
  }

  private async download(d: Digest): Promise<boolean> {
    const source = await this.slow.openRead(d);
    if (!source) return false;
    const tmp = tempPath(this.scratchDir, d.hash);
    try {
      const check = new Verifying(d);
      await pipeline(source, check, (await fs.open(tmp, 'wx')).createWriteStream());
      check.verify();
      await this.fast.adoptVerifiedFile(d, tmp);
      return true;
    } catch (err) {
      await fs.rm(tmp, { force: true });
      throw err instanceof RpcError ? err : new RpcError(status.UNAVAILABLE, `fetching blob ${digestKey(d)} into the local tier: ${(err as Error).message}`);
    }
  }
}

function corrupt(d: Digest, err: unknown): RpcError {
  return new RpcError(status.DATA_LOSS, `blob ${digestKey(d)} in the slow tier does not match its digest: ${(err as Error).message}`);
}

/** Hashes and counts a blob as it streams past; verify() once it has ended. */
class Verifying extends Transform {
  private readonly hash: Hash = createHash('sha256');
  private size = 0;

  constructor(private readonly digest: Digest) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.size += chunk.length;
    if (this.size > this.digest.sizeBytes) {
      done(corrupt(this.digest, new Error(`more than ${this.digest.sizeBytes} bytes`)));
      return;
    }
    this.hash.update(chunk);
    done(null, chunk);
  }

  verify(): void {
    const actual = this.hash.digest('hex');
    if (this.size !== this.digest.sizeBytes || actual !== this.digest.hash) {
      throw corrupt(this.digest, new Error(`got ${actual}/${this.size}`));
    }
  }
}
