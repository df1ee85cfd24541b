// The storage contracts every backend implements (filesystem now, S3 and tiers later).
// Each instance name gets its own BlobStore and ActionCacheStore: instance names are namespaces.
import type { Readable } from 'node:stream';
import type { Digest } from './digest';

export interface ByteRange {
  offset: number;
  /** Bytes to read from offset; undefined reads to the end. */
  limit?: number;
}

export interface BlobStore {
  /** The digests among these that the store does not hold. */
  findMissing(digests: Digest[]): Promise<Digest[]>;
  /** The whole blob, or undefined if absent. For blobs small enough to hold in memory. */
  read(digest: Digest): Promise<Buffer | undefined>;
  /** A stream over the blob (or a range of it), or undefined if absent. */
  openRead(digest: Digest, range?: ByteRange): Promise<Readable | undefined>;
  /** Stores data after checking it against the digest; INVALID_ARGUMENT if it does not match. */
  put(digest: Digest, data: Buffer): Promise<void>;
  /**
   * Takes ownership of a local file whose content the caller has already verified against the
   * digest while streaming it in (so large uploads are hashed exactly once). The file must be
   * on the same filesystem as the storage's scratch directory; it is moved or consumed.
   * `fromAction`: the file is a finished action's own output (see linkTo).
   */
  adoptVerifiedFile(digest: Digest, path: string, fromAction?: boolean): Promise<void>;
  /**
   * Makes `target` (which must not exist) another name of the stored blob's own read-only file,
   * where the store keeps one on the target's filesystem; false otherwise (nothing was made).
   * Never for a file taken over from an action: it may carry extended attributes the action set,
   * which must not reach other actions through a shared inode.
   */
  linkTo?(digest: Digest, target: string): Promise<boolean>;
}

export interface ActionCacheStore {
  /** The encoded ActionResult stored for this action digest, or undefined. */
  get(actionDigest: Digest): Promise<Buffer | undefined>;
  put(actionDigest: Digest, encodedResult: Buffer): Promise<void>;
}

export interface Storage {
  cas(instanceName: string): BlobStore;
  actionCache(instanceName: string): ActionCacheStore;
  /** A directory for temporary files, on the same filesystem as blobs. */
  readonly scratchDir: string;
  /** A directory for partial ByteStream uploads that survive a restart, on the same filesystem. */
  readonly uploadsDir: string;
}
