// Blobs held in this process's memory, in front of a durable Storage, for a client in the same
// process (reapi-cc's embedded farm) to hand over the messages that describe its actions.
//
// An Action, its Command and its Directory messages are read only while the action is queued and
// staged; a cached result names its outputs, never them. Stored as durable files they were two
// thirds of the files a cold kernel build added to the store (5,700 of 8,500), and every edit
// adds a new set for each object it touches. Held blobs are never written: a holder keeps them
// until it releases them (its action has run); released ones stay, up to a byte budget, for the
// next actions that share them. After a restart they are missing, and a client uploads them again,
// as it must whenever a CAS lacks a blob.
import { Readable } from 'node:stream';
import { ActionCacheStore, BlobStore, ByteRange, Storage } from './blob-store';
import { Digest, verifyBlob } from './digest';

/** Released blobs kept for reuse: a cold kernel build's messages are ~16 MB in all. */
const DEFAULT_MAX_RELEASED_BYTES = 128 * 1024 * 1024;

/** Ends one hold: the blobs stay only as long as the budget for released blobs allows. */
export type Release = () => void;

export class HeldBlobStorage implements Storage {
  private readonly stores = new Map<string, HeldBlobStore>();

  /**
   * `maxReleasedBytes`: for each instance name, the most kept of blobs no holder needs any more;
   * past it the least recently held go first. Blobs still held count against it but never go.
   */
  constructor(private readonly durable: Storage, private readonly maxReleasedBytes = DEFAULT_MAX_RELEASED_BYTES) {}

  get scratchDir(): string {
    return this.durable.scratchDir;
  }

  get uploadsDir(): string {
    return this.durable.uploadsDir;
  }

  /**
   * Keeps the blobs (verified, INVALID_ARGUMENT if one does not match its digest) until the
   * returned release; holding the same blob twice needs two releases.
   */
  hold(instanceName: string, blobs: { digest: Digest; data: Uint8Array }[]): Release {
    return this.store(instanceName).hold(blobs);
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
      store = new HeldBlobStore(this.durable.cas(instanceName), this.maxReleasedBytes);
      this.stores.set(instanceName, store);
    }
    return store;
  }
}

/** One instance's blobs: the held ones first, then the durable store. Writes go to the durable store. */
class HeldBlobStore implements BlobStore {
  /**
   * hash -> the bytes and how many holds have not ended, least recently held first: dropped from
   * the front. Keyed by hash alone, so a lookup builds no string.
   */
  private readonly held = new Map<string, { data: Buffer; holds: number }>();
  private heldBytes = 0;

  constructor(private readonly durable: BlobStore, private readonly maxReleasedBytes: number) {}

  hold(blobs: { digest: Digest; data: Uint8Array }[]): Release {
    for (const b of blobs) {
      if (!this.entry(b.digest)) verifyBlob(b.digest, b.data); // all checked before any is held
    }
    const entries = blobs.map((b) => this.holdOne(b.digest, b.data));
    this.dropReleased();
    let released = false;
    return () => {
      if (released) return;
      released = true;
      for (const e of entries) e.holds--;
      this.dropReleased();
    };
  }

  private holdOne(digest: Digest, data: Uint8Array): { data: Buffer; holds: number } {
    let e = this.entry(digest);
    if (e) {
      this.held.delete(digest.hash); // to the back: most recently held
    } else {
      // A copy: a slice would keep its whole parent buffer alive.
      const copy = Buffer.allocUnsafeSlow(data.length);
      copy.set(data);
      this.forget(digest.hash);
      e = { data: copy, holds: 0 };
      this.heldBytes += copy.length;
    }
    e.holds++;
    this.held.set(digest.hash, e);
    return e;
  }

  private dropReleased(): void {
    if (this.heldBytes <= this.maxReleasedBytes) return;
    for (const [hash, e] of this.held) {
      if (e.holds > 0) continue;
      this.forget(hash);
      if (this.heldBytes <= this.maxReleasedBytes) return;
    }
  }

  private entry(digest: Digest): { data: Buffer; holds: number } | undefined {
    const e = this.held.get(digest.hash);
    return e?.data.length === digest.sizeBytes ? e : undefined;
  }

  private heldBlob(digest: Digest): Buffer | undefined {
    return this.entry(digest)?.data;
  }

  private forget(hash: string): void {
    const e = this.held.get(hash);
    if (!e) return;
    this.held.delete(hash);
    this.heldBytes -= e.data.length;
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
