// How a worker reaches the CAS: directly (embedded, same process as the storage) or over gRPC
// (a standalone worker). Everything in worker/ talks to this interface only.
import type { Stats } from 'node:fs';
import type { Digest } from '../cas/digest';

export interface ContentAccess {
  findMissing(instanceName: string, digests: Digest[]): Promise<Digest[]>;
  /** A whole small blob (Directory, Command, Action protos); undefined if absent. */
  read(instanceName: string, digest: Digest): Promise<Buffer | undefined>;
  /** Streams a blob into a new file at `path`, verifying its digest; false if absent. */
  fetchToFile(instanceName: string, digest: Digest, path: string): Promise<boolean>;
  /** Uploads a local file whose digest the caller computed. The file is left in place. */
  uploadFile(instanceName: string, digest: Digest, path: string): Promise<void>;
  uploadBlob(instanceName: string, digest: Digest, data: Buffer): Promise<void>;
  /**
   * Stores a file nothing will write or read under its path again (an output of a finished
   * action), whose digest and stat the caller took: the store may take the file itself rather
   * than copy it, and the path may be gone afterwards. Only where storage is local.
   */
  adoptFile?(instanceName: string, digest: Digest, path: string, stat: Stats): Promise<void>;
  /**
   * Makes `path` (which must not exist) a hard link to the stored blob's own read-only file,
   * where storage is local and on that filesystem; false otherwise (then fetch it).
   */
  linkToFile?(instanceName: string, digest: Digest, path: string): Promise<boolean>;
}
