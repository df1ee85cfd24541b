// A bounded local copy of blobs, for the fast side of a TieredStorage: blob files on this
// machine's disk, the least recently used evicted once they add up to more than maxBytes.
//
//   DIR/tmp/                                      temporary files, emptied at start
//   DIR/uploads/                                  partial ByteStream uploads
//   DIR/instances/<name>/cas/ab/<hash>-<size>     blobs
//
// It only ever holds copies (the slow tier has every blob first), so evicting one loses nothing.
// One process owns a tier directory: its index of files and their sizes is kept in memory, rebuilt
// from the directory at start (least recently written first: reads are not recorded on disk).
// A reader that has a blob open keeps reading it if it is evicted meanwhile (POSIX unlink).
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { BlobStore, ByteRange, Storage } from './blob-store';
import { Digest, isEmptyDigest, verifyBlob } from './digest';
import { renameIntoPlace, sealFile, writeFileAtomic } from './atomic-file';
import { openFileRange, readBlobFile } from './file-range';
import { validateInstanceName } from './resource-name';
import { log } from '../server/log';

const BLOB_NAME = /^[0-9a-f]{64}-(\d+)$/;

export class DiskTier implements Pick<Storage, 'cas' | 'scratchDir' | 'uploadsDir'> {
  readonly scratchDir: string;
  readonly uploadsDir: string;
  private readonly instancesDir: string;
  private readonly stores = new Map<string, DiskTierBlobStore>();
  /** Blob file path -> bytes, least recently used first. */
  private readonly files = new Map<string, number>();
  private bytes = 0;

  private constructor(readonly root: string, readonly maxBytes: number) {
    this.scratchDir = path.join(root, 'tmp');
    this.uploadsDir = path.join(root, 'uploads');
    this.instancesDir = path.join(root, 'instances');
  }

  static async open(root: string, maxBytes: number): Promise<DiskTier> {
    if (!Number.isSafeInteger(maxBytes) || maxBytes <= 0) throw new Error(`disk tier ${root}: maxBytes must be a positive integer, not ${maxBytes}`);
    const tier = new DiskTier(path.resolve(root), maxBytes);
    await fs.rm(tier.scratchDir, { recursive: true, force: true });
    await Promise.all([tier.scratchDir, tier.uploadsDir, tier.instancesDir].map((d) => fs.mkdir(d, { recursive: true })));
    await tier.loadIndex();
    await tier.evict();
    return tier;
  }

  /** Bytes of blobs held now. */
  get usedBytes(): number {
    return this.bytes;
  }

  cas(instanceName: string): BlobStore {
    let store = this.stores.get(instanceName);
    if (!store) {
      validateInstanceName(instanceName);
      const dir = path.join(this.instancesDir, instanceName === '' ? '_' : encodeURIComponent(instanceName), 'cas');
      store = new DiskTierBlobStore(this, dir);
      this.stores.set(instanceName, store);
    }
    return store;
  }

  has(file: string): boolean {
    return this.files.has(file);
  }

  /** Marks a held blob as just used. */
  touch(file: string): void {
    const size = this.files.get(file);
    if (size === undefined) return;
    this.files.delete(file);
    this.files.set(file, size);
  }

  /** Records a blob file now in place, then evicts down to the bound. */
  async added(file: string, size: number): Promise<void> {
    this.forget(file);
    this.files.set(file, size);
    this.bytes += size;
    await this.evict();
  }

  forget(file: string): void {
    const size = this.files.get(file);
    if (size === undefined) return;
    this.files.delete(file);
    this.bytes -= size;
  }

  private async evict(): Promise<void> {
    while (this.bytes > this.maxBytes) {
      const [file, size] = this.files.entries().next().value!;
      this.files.delete(file);
      this.bytes -= size;
      await fs.rm(file, { force: true }).catch((err) => log.warn('disk tier: could not evict a blob', { file, err }));
    }
  }

  private async loadIndex(): Promise<void> {
    const found: { file: string; size: number; mtimeMs: number }[] = [];
    for (const instance of await fs.readdir(this.instancesDir)) {
      const casDir = path.join(this.instancesDir, instance, 'cas');
      for (const shard of await fs.readdir(casDir).catch(() => [] as string[])) {
        for (const name of await fs.readdir(path.join(casDir, shard)).catch(() => [] as string[])) {
          const file = path.join(casDir, shard, name);
          const st = await fs.stat(file).catch(() => undefined);
          const m = BLOB_NAME.exec(name);
          if (st && m && st.isFile() && st.size === Number(m[1])) found.push({ file, size: st.size, mtimeMs: st.mtimeMs });
          else await fs.rm(file, { force: true, recursive: true }); // torn or foreign: a copy, safe to drop
        }
      }
    }
    found.sort((a, b) => a.mtimeMs - b.mtimeMs);
    for (const { file, size } of found) {
      this.files.set(file, size);
      this.bytes += size;
    }
  }
}

class DiskTierBlobStore implements BlobStore {
  constructor(private readonly tier: DiskTier, private readonly dir: string) {}

  private pathOf(d: Digest): string {
    return path.join(this.dir, d.hash.slice(0, 2), `${d.hash}-${d.sizeBytes}`);
  }

  private holds(d: Digest): boolean {
    return isEmptyDigest(d) || this.tier.has(this.pathOf(d));
  }

  async findMissing(digests: Digest[]): Promise<Digest[]> {
    return digests.filter((d) => !this.holds(d));
  }

  async read(d: Digest): Promise<Buffer | undefined> {
    if (isEmptyDigest(d)) return Buffer.alloc(0);
    const file = this.pathOf(d);
    if (!this.tier.has(file)) return undefined;
    try {
      const data = await readBlobFile(file, d.sizeBytes);
      this.tier.touch(file);
      return data;
    } catch (err) {
      return this.goneIfMissing(file, err);
    }
  }

  async openRead(d: Digest, range: ByteRange = { offset: 0 }): Promise<Readable | undefined> {
    if (!this.holds(d)) return undefined;
    const file = this.pathOf(d);
    try {
      const stream = await openFileRange(file, d.sizeBytes, range);
      this.tier.touch(file);
      return stream;
    } catch (err) {
      return this.goneIfMissing(file, err);
    }
  }

  async put(d: Digest, data: Buffer): Promise<void> {
    verifyBlob(d, data);
    if (this.holds(d)) return this.tier.touch(this.pathOf(d));
    await writeFileAtomic(this.pathOf(d), data, this.tier.scratchDir);
    await this.tier.added(this.pathOf(d), d.sizeBytes);
  }

  async adoptVerifiedFile(d: Digest, file: string): Promise<void> {
    if (this.holds(d)) {
      await fs.rm(file, { force: true });
      return this.tier.touch(this.pathOf(d));
    }
    await sealFile(file, 0o444);
    renameIntoPlace(file, this.pathOf(d));
    await this.tier.added(this.pathOf(d), d.sizeBytes);
  }

  private goneIfMissing(file: string, err: unknown): undefined {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    this.tier.forget(file);
    return undefined;
  }
}
