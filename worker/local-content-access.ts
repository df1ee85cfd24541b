// ContentAccess straight onto the server's own Storage, for the embedded worker.
import { createHash } from 'node:crypto';
import { Stats, createReadStream, promises as fs, lchownSync, statSync } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { Storage } from '../cas/blob-store';
import { Digest, digestKey } from '../cas/digest';
import { tempPath } from '../cas/atomic-file';
import { ContentAccess } from './content-access';

export class LocalContentAccess implements ContentAccess {
  /** The storage's filesystem: only files on it can be moved in. */
  private readonly storageDevice: number;

  constructor(private readonly storage: Storage) {
    this.storageDevice = statSync(storage.scratchDir).dev;
  }

  findMissing(instanceName: string, digests: Digest[]): Promise<Digest[]> {
    return this.storage.cas(instanceName).findMissing(digests);
  }

  read(instanceName: string, digest: Digest): Promise<Buffer | undefined> {
    return this.storage.cas(instanceName).read(digest);
  }

  async fetchToFile(instanceName: string, digest: Digest, path: string): Promise<boolean> {
    const source = await this.storage.cas(instanceName).openRead(digest);
    if (!source) return false;
    await pipeline(source, (await fs.open(path, 'wx')).createWriteStream());
    return true;
  }

  async uploadFile(instanceName: string, digest: Digest, path: string): Promise<void> {
    const cas = this.storage.cas(instanceName);
    if ((await cas.findMissing([digest])).length === 0) return;
    // Copy (not move) into scratch while hashing, so what lands in the CAS is exactly what was
    // verified even if the action's file changes afterwards.
    const tmp = tempPath(this.storage.scratchDir, digest.hash);
    const hash = createHash('sha256');
    let size = 0;
    try {
      await pipeline(
        createReadStream(path),
        async function* (chunks: AsyncIterable<Buffer>) {
          for await (const chunk of chunks) {
            hash.update(chunk);
            size += chunk.length;
            yield chunk;
          }
        },
        (await fs.open(tmp, 'wx')).createWriteStream(),
      );
      const actual = hash.digest('hex');
      if (actual !== digest.hash || size !== digest.sizeBytes) {
        throw new Error(`${path} changed while uploading: now ${actual}/${size}, expected ${digestKey(digest)}`);
      }
      await cas.adoptVerifiedFile(digest, tmp);
    } catch (err) {
      await fs.rm(tmp, { force: true });
      throw err;
    }
  }

  async linkToFile(instanceName: string, digest: Digest, path: string): Promise<boolean> {
    return (await this.storage.cas(instanceName).linkTo?.(digest, path)) ?? false;
  }

  uploadBlob(instanceName: string, digest: Digest, data: Buffer): Promise<void> {
    return this.storage.cas(instanceName).put(digest, data);
  }

  /**
   * Moves the file into the store when it is on the store's filesystem and can be made the
   * server's own (read-only there); copies it otherwise. Moving saves the copy, and on ext4 the
   * creation and deletion of an inode per output, which slow down every later file creation.
   */
  async adoptFile(instanceName: string, digest: Digest, path: string, st: Stats): Promise<void> {
    if (st.dev === this.storageDevice && st.isFile() && st.nlink === 1 && makeOwn(path, st.uid, st.gid)) {
      return this.storage.cas(instanceName).adoptVerifiedFile(digest, path, true);
    }
    await this.uploadFile(instanceName, digest, path);
  }
}

/**
 * Gives the file to this process's user (the action's user owned it); false if it cannot.
 * Synchronous: an inode update of microseconds, cheaper than a thread-pool round trip.
 */
function makeOwn(path: string, uid: number, gid: number): boolean {
  const ownUid = process.getuid?.() ?? uid;
  const ownGid = process.getgid?.() ?? gid;
  if (uid === ownUid && gid === ownGid) return true;
  try {
    lchownSync(path, ownUid, ownGid);
    return true;
  } catch {
    return false;
  }
}
