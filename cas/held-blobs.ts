// Blobs held in this process's memory, in front of a durable Storage, for a client in the same
// process (reapi-cc's embedded farm) to hand over the messages that describe its actions.
//
// An Action, its Command and its Directory messages are read only while the action is queued and
// staged; a cached result names its outputs, never them. Stored as durable files they were two
// thirds of the files a cold kernel build added to the store (5,700 of 8,500), each created,
// flushed and renamed on the cores that compile. Held blobs are never written: after eviction or a
// restart they are missing, and a client uploads them again, as it must whenever a CAS lacks one.
import { Readable } from 'node:stream';
import { ActionCacheStore, BlobStore, ByteRange, Storage } from './blob-store';
import { Digest, verifyBlob } from './digest';

/** Far above what one build has in flight: a cold kernel build's messages are ~16 MB in all. */
const DEFAULT_MAX_HELD_BYTES = 128 * 1024 * 1024;

export class HeldBlobStorage implements Storage {
  private readonly stores = new Map<string, HeldBlobStore>();

  /** `maxBytes`: the most held for one instance name; past it the oldest holds are dropped. */
  constructor(private readonly durable: Storage, private readonly maxBytes = DEFAULT_MAX_HELD_BYTES) {}

  get scratchDir(): string {
    return this.durable.scratchDir;
  }

  get uploadsDir(): string {
    return this.durable.uploadsDir;
  }

  hold(instanceName: string, digest: Digest, data: Uint8Array): void {
    this.store(instanceName).hold(digest, data);
  }

  cas(instanceName: string): BlobStore {
    return this.store(instanceName);
  }

  actionCache(instanceName: string): ActionCacheStore {
    return this.durable.actionCache(instanceName);
  }

  private store(instanceName: string): HeldBlobStore {
    let store = this.stores.get(instanceName);
    if (!store) {
      store = new HeldBlobStore(this.durable.cas(instanceName), this.maxBytes);
      this.stores.set(instanceName, store);
    }
    return store;
  }
}

/** One instance's blobs: the held ones first, then the durable store. Writes go to the durable store. */
class HeldBlobStore implements BlobStore {
  /** hash -> bytes, oldest hold first: evicted from the front. Keyed by hash alone, so a lookup builds no string. */
  private readonly held = new Map<string, Buffer>();
  private heldBytes = 0;

  constructor(private readonly durable: BlobStore, private readonly maxBytes: number) {}

  /**
   * Keeps a verified copy of the blob (a slice would keep its whole parent buffer alive). Holding
   * one again only makes it the newest.
   */
  hold(digest: Digest, data: Uint8Array): void {
    const known = this.heldBlob(digest);
    if (known) {
      this.held.delete(digest.hash);
      this.held.set(digest.hash, known);
      return;
    }
    verifyBlob(digest, data);
    const copy = Buffer.allocUnsafeSlow(data.length);
    copy.set(data);
    this.forget(digest.hash);
    this.held.set(digest.hash, copy);
    this.heldBytes += copy.length;
    for (const oldest of this.held.keys()) {
      if (this.heldBytes <= this.maxBytes) break;
      this.forget(oldest);
    }
  }

  private heldBlob(digest: Digest): Buffer | undefined {
    const data = this.held.get(digest.hash);
    return data?.length === digest.sizeBytes ? data : undefined;
  }

  private forget(hash: string): void {
    const data = this.held.get(hash);
    if (!data) return;
    this.held.delete(hash);
    this.heldBytes -= data.length;
  }

  findMissing(digests: Digest[]): Promise<Digest[]> {
    return this.durable.findMissing(this.held.size ? digests.filter((d) => !this.heldBlob(d)) : digests);
  }

  async read(digest: Digest): Promise<Buffer | undefined> {
    return this.heldBlob(digest) ?? this.durable.read(digest);
  }

  async openRead(digest: Digest, range: ByteRange = { offset: 0 }): Promise<Readable | undefined> {
    const held = this.heldBlob(digest);
    if (!held) return this.durable.openRead(digest, range);
    const end = range.limit === undefined ? held.length : range.offset + range.limit;
    return Readable.from([held.subarray(range.offset, end)]);
  }

  put(digest: Digest, data: Buffer): Promise<void> {
    return this.durable.put(digest, data);
  }

  adoptVerifiedFile(digest: Digest, path: string, fromAction?: boolean): Promise<void> {
    return this.durable.adoptVerifiedFile(digest, path, fromAction);
  }

  /** Only durable blobs have a file to link; the caller writes a held one out itself. */
  async linkTo(digest: Digest, target: string): Promise<boolean> {
    return (await this.durable.linkTo?.(digest, target)) ?? false;
  }
}
