// The embedded default backend: blobs and action results as files under one data directory.
//
//   DATA/tmp/                              temporary files, emptied at start
//   DATA/uploads/                          partial ByteStream uploads, kept across restarts
//   DATA/instances/<name>/cas/ab/<hash>    blobs, sharded by the first two hex digits; 0444, or
//                                          0440 when taken over from an action (see linkTo)
//   DATA/instances/<name>/ac/ab/<hash>-<size>  encoded ActionResults
//
// Blob files are immutable once renamed into place, so an in-memory index of what is known to
// be present is always right for this process; anything not in it is checked on disk, never
// assumed absent: another process (a second server on the same directory) may have added it.
import { promises as fs, readFileSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { ActionCacheStore, BlobStore, ByteRange, Storage } from './blob-store';
import { Digest, SHA256_EMPTY, isEmptyDigest, verifyBlob } from './digest';
import { renameIntoPlace, sealFile, writeFileAtomic } from './atomic-file';
import { openFileRange, readBlobFile } from './file-range';
import { validateInstanceName } from './resource-name';

export class FileStorage implements Storage {
  readonly scratchDir: string;
  readonly uploadsDir: string;
  private readonly instancesDir: string;
  private readonly blobStores = new Map<string, FileBlobStore>();
  private readonly acStores = new Map<string, FileActionCacheStore>();

  private constructor(readonly root: string) {
    this.scratchDir = path.join(root, 'tmp');
    this.uploadsDir = path.join(root, 'uploads');
    this.instancesDir = path.join(root, 'instances');
  }

  static async open(root: string): Promise<FileStorage> {
    const storage = new FileStorage(path.resolve(root));
    // Leftovers in tmp/ are writes a crash interrupted: never visible, safe to drop.
    await fs.rm(storage.scratchDir, { recursive: true, force: true });
    await Promise.all([storage.scratchDir, storage.uploadsDir, storage.instancesDir].map((d) => fs.mkdir(d, { recursive: true })));
    return storage;
  }

  cas(instanceName: string): BlobStore {
    let store = this.blobStores.get(instanceName);
    if (!store) {
      store = new FileBlobStore(path.join(this.instanceDir(instanceName), 'cas'), this.scratchDir);
      this.blobStores.set(instanceName, store);
    }
    return store;
  }

  actionCache(instanceName: string): ActionCacheStore {
    let store = this.acStores.get(instanceName);
    if (!store) {
      store = new FileActionCacheStore(path.join(this.instanceDir(instanceName), 'ac'), this.scratchDir);
      this.acStores.set(instanceName, store);
    }
    return store;
  }

  private instanceDir(instanceName: string): string {
    validateInstanceName(instanceName);
    // One directory level per instance, whatever slashes the name has; '_' cannot clash with an
    // encoded name because encodeURIComponent never yields a bare '_'.
    return path.join(this.instancesDir, instanceName === '' ? '_' : encodeURIComponent(instanceName));
  }
}

/** Blobs the store wrote itself. */
const OWN_MODE = 0o444;
/** Blobs taken over from finished actions: read-only too, and told apart so linkTo() never lends them out. */
const FROM_ACTION_MODE = 0o440;

export class FileBlobStore implements BlobStore {
  /** hash -> size of blobs known to be on disk. */
  private readonly present = new Map<string, number>();

  constructor(private readonly dir: string, private readonly scratchDir: string) {}

  private pathOf(d: Digest): string {
    return path.join(this.dir, d.hash.slice(0, 2), d.hash);
  }

  private isPresent(d: Digest): boolean {
    if (isEmptyDigest(d)) return true;
    if (this.present.get(d.hash) === d.sizeBytes) return true;
    try {
      // Synchronous stat on purpose: for FindMissingBlobs of thousands of digests it is several
      // times faster than a thread-pool round trip per file, and each call is microseconds.
      const st = statSync(this.pathOf(d), { throwIfNoEntry: false });
      if (st && st.size === d.sizeBytes) {
        this.present.set(d.hash, d.sizeBytes);
        return true;
      }
    } catch {
      // An unreadable path counts as missing; the client will upload it again.
    }
    return false;
  }

  async findMissing(digests: Digest[]): Promise<Digest[]> {
    return digests.filter((d) => !this.isPresent(d));
  }

  async read(d: Digest): Promise<Buffer | undefined> {
    if (isEmptyDigest(d)) return Buffer.alloc(0);
    if (!this.isPresent(d)) return undefined;
    try {
      return await readBlobFile(this.pathOf(d), d.sizeBytes);
    } catch (err) {
      return this.forgetIfGone(d, err);
    }
  }

  async openRead(d: Digest, range: ByteRange = { offset: 0 }): Promise<Readable | undefined> {
    if (!this.isPresent(d)) return undefined;
    try {
      return await openFileRange(this.pathOf(d), d.sizeBytes, range);
    } catch (err) {
      return this.forgetIfGone(d, err);
    }
  }

  async put(d: Digest, data: Buffer): Promise<void> {
    verifyBlob(d, data);
    if (this.isPresent(d)) return;
    await writeFileAtomic(this.pathOf(d), data, this.scratchDir);
    this.present.set(d.hash, d.sizeBytes);
  }

  async adoptVerifiedFile(d: Digest, file: string, fromAction = false): Promise<void> {
    if (this.isPresent(d) || d.hash === SHA256_EMPTY) {
      await fs.rm(file, { force: true });
      return;
    }
    await sealFile(file, fromAction ? FROM_ACTION_MODE : OWN_MODE);
    renameIntoPlace(file, this.pathOf(d));
    this.present.set(d.hash, d.sizeBytes);
  }

  async linkTo(d: Digest, target: string): Promise<boolean> {
    if (isEmptyDigest(d) || !this.isPresent(d)) return false;
    try {
      if (((await fs.lstat(this.pathOf(d))).mode & 0o7777) !== OWN_MODE) return false; // an action's file, or not ours
      await fs.link(this.pathOf(d), target);
      return true;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') this.present.delete(d.hash); // gone since (or the target's directory is missing: asked again next time)
      if (code === 'ENOENT' || code === 'EXDEV' || code === 'EMLINK' || code === 'EPERM') return false;
      throw err;
    }
  }

  private forgetIfGone(d: Digest, err: unknown): undefined {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    this.present.delete(d.hash);
    return undefined;
  }
}

class FileActionCacheStore implements ActionCacheStore {
  constructor(private readonly dir: string, private readonly scratchDir: string) {}

  private pathOf(d: Digest): string {
    return path.join(this.dir, d.hash.slice(0, 2), `${d.hash}-${d.sizeBytes}`);
  }

  async get(actionDigest: Digest): Promise<Buffer | undefined> {
    try {
      // Synchronous, as small blobs are (SMALL_FILE_BYTES): an encoded ActionResult is a few
      // hundred bytes, and most lookups of a cold build end at once in ENOENT.
      return readFileSync(this.pathOf(actionDigest));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  async put(actionDigest: Digest, encodedResult: Buffer): Promise<void> {
    await writeFileAtomic(this.pathOf(actionDigest), encodedResult, this.scratchDir);
  }
}
