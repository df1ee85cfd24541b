// The worker's local content cache: one read-only file per (digest, executable) pair, which
// input roots hardlink instead of copying. Files are owned by the worker (root) and mode 0444
// or 0555, so an action running as another uid can read and execute them but never change
// them, and the next action that links the same file sees pristine content. A worker inside the
// server links plain files from the server's own CAS files (the same read-only inode) instead
// of copying them.
//
//   DIR/ab/<hash>-<size>     plain variant, 0444
//   DIR/ab/<hash>-<size>.x   executable variant, 0555 (a separate inode: hardlinks share modes)
//   DIR/tmp/                 fetches in progress, emptied at start
//
// Eviction is least-recently-used by bytes, and never touches a pinned file: every pin() or
// pinIfPresent() pins, and the caller unpins once the action that linked the file has finished.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { Digest, digestKey, isEmptyDigest } from '../cas/digest';
import { renameIntoPlace, tempPath } from '../cas/atomic-file';
import { failedPrecondition } from '../server/rpc-error';
import { ContentAccess } from './content-access';
import { digestOfFile } from './file-digest';

export const DEFAULT_CACHE_BYTES = 10 * 1024 ** 3;

export interface FileCacheOptions {
  /** Bytes of unpinned files kept; pinned files may push the total above it for a while. */
  maxBytes?: number;
}

export interface FileCacheStats {
  files: number;
  bytes: number;
  pinnedFiles: number;
  /** Blobs fetched from the CAS by this process (copies between variants do not count). */
  fetches: number;
}

/** A cache file its caller has pinned. */
export interface PinnedFile {
  readonly path: string;
  /** The file's inode: an input root still holding it is known unchanged without a stat of the cache file. */
  readonly identity: FileIdentity;
}

interface Entry extends PinnedFile {
  sizeBytes: number;
  pins: number;
}

/** Which inode a cache file is. */
export interface FileIdentity {
  ino: number;
  dev: number;
}

const CACHE_FILE_NAME = /^([0-9a-f]{64})-(\d+)(\.x)?$/;

export class FileCache {
  readonly maxBytes: number;
  /** Cached files by name, least recently used first (Map keeps insertion order). */
  private readonly entries = new Map<string, Entry>();
  private readonly filling = new Map<string, Promise<PinnedFile>>();
  /** Evicted files whose unlink is still running: a refill of the same name waits for it. */
  private readonly removing = new Map<string, Promise<void>>();
  private readonly tmpDir: string;
  private totalBytes = 0;
  private fetches = 0;
  private ready: Promise<void> | undefined;

  constructor(readonly dir: string, private readonly access: ContentAccess, opts: FileCacheOptions = {}) {
    this.dir = path.resolve(dir);
    this.tmpDir = path.join(this.dir, 'tmp');
    this.maxBytes = opts.maxBytes ?? DEFAULT_CACHE_BYTES;
  }

  /** Where the file for this content and mode lives (present only after pin()). */
  pathOf(digest: Digest, executable: boolean): string {
    // Joined by hand: asked for every input of every action, and `dir` is already resolved.
    return `${this.dir}/${digest.hash.slice(0, 2)}/${fileName(digest, executable)}`;
  }

  /**
   * The cache file with this content and mode, fetched from the CAS (its SHA-256 verified) if
   * needed. Concurrent calls for the same file fetch once. The file is pinned: every successful
   * call must be matched by one unpinFile() when the caller stops using it.
   */
  async pin(instanceName: string, digest: Digest, executable: boolean): Promise<PinnedFile> {
    await this.init();
    const name = fileName(digest, executable);
    for (;;) {
      const present = this.pinIfPresent(digest, executable);
      if (present) return present;
      const pending = this.filling.get(name);
      if (pending) {
        // Another caller is fetching it; look again afterwards (it may even have been evicted).
        await pending;
        continue;
      }
      const fill = this.fill(instanceName, digest, executable, name);
      this.filling.set(name, fill);
      try {
        return await fill; // the entry, inserted already pinned once, for this caller
      } finally {
        this.filling.delete(name);
      }
    }
  }

  /**
   * pin() for a file the cache already holds, without a promise: an action's inputs are
   * mostly there already, and a kernel compile has hundreds. Undefined: call pin().
   */
  pinIfPresent(digest: Digest, executable: boolean): PinnedFile | undefined {
    const name = fileName(digest, executable);
    const entry = this.entries.get(name);
    if (!entry) return undefined;
    entry.pins++;
    this.touch(name, entry);
    return entry;
  }

  /** Unpins what pin() or pinIfPresent() gave: a pinned entry stays in the cache, so it is the one to count down. */
  unpinFile(file: PinnedFile): void {
    const entry = file as Entry;
    if (entry.pins === 0) throw new Error(`file cache: unpin of ${entry.path}, which is not pinned`);
    entry.pins--;
    if (entry.pins === 0) this.evict();
  }

  /** Resolves once the files evicted so far are gone from disk (for shutdown and tests). */
  async evictionsSettled(): Promise<void> {
    await Promise.all(this.removing.values());
  }

  stats(): FileCacheStats {
    let pinnedFiles = 0;
    for (const e of this.entries.values()) if (e.pins > 0) pinnedFiles++;
    return { files: this.entries.size, bytes: this.totalBytes, pinnedFiles, fetches: this.fetches };
  }

  /** Readies the directory once, adopting the complete files a previous run left behind. */
  private init(): Promise<void> {
    this.ready ??= this.adoptExisting();
    return this.ready;
  }

  private async adoptExisting(): Promise<void> {
    await fs.mkdir(this.dir, { recursive: true, mode: 0o700 });
    await fs.rm(this.tmpDir, { recursive: true, force: true }); // fetches a crash interrupted
    await fs.mkdir(this.tmpDir);
    const found: { name: string; path: string; sizeBytes: number; mtimeMs: number; identity: FileIdentity }[] = [];
    for (const shard of await fs.readdir(this.dir)) {
      if (!/^[0-9a-f]{2}$/.test(shard)) continue;
      const shardDir = path.join(this.dir, shard);
      for (const name of await fs.readdir(shardDir)) {
        const file = path.join(shardDir, name);
        const match = CACHE_FILE_NAME.exec(name);
        const st = await fs.lstat(file);
        const expectedMode = match?.[3] ? 0o555 : 0o444;
        // Files are renamed into place only once complete and verified, so a name whose size and
        // mode match is trusted; anything else is debris and goes.
        if (match && match[1].startsWith(shard) && st.isFile() && st.size === Number(match[2]) && (st.mode & 0o7777) === expectedMode) {
          found.push({ name, path: file, sizeBytes: st.size, mtimeMs: st.mtimeMs, identity: { ino: st.ino, dev: st.dev } });
        } else {
          await fs.rm(file, { recursive: true, force: true });
        }
      }
    }
    // Oldest fetch first approximates least recently used for files from an earlier run.
    found.sort((a, b) => a.mtimeMs - b.mtimeMs);
    for (const f of found) {
      this.entries.set(f.name, { path: f.path, sizeBytes: f.sizeBytes, pins: 0, identity: f.identity });
      this.totalBytes += f.sizeBytes;
    }
    this.evict();
  }

  private async fill(instanceName: string, digest: Digest, executable: boolean, name: string): Promise<PinnedFile> {
    await this.removing.get(name);
    const tmp = tempPath(this.tmpDir, digest.hash);
    const file = this.pathOf(digest, executable);
    let linked = false;
    let identity: FileIdentity;
    try {
      const otherName = fileName(digest, !executable);
      const other = this.entries.get(otherName);
      if (isEmptyDigest(digest)) {
        await fs.writeFile(tmp, '', { flag: 'wx' });
      } else if (other) {
        // The other mode's file already holds verified content: a local copy beats a fetch.
        other.pins++;
        try {
          await fs.copyFile(other.path, tmp, fs.constants.COPYFILE_EXCL | fs.constants.COPYFILE_FICLONE);
        } finally {
          this.unpinFile(other);
        }
      } else {
        // The CAS's own file where possible: the cache then keeps no second copy of what the
        // server holds, and nothing is written.
        linked = !executable && ((await this.access.linkToFile?.(instanceName, digest, tmp)) ?? false);
        if (!linked && !(await this.access.fetchToFile(instanceName, digest, tmp))) {
          throw failedPrecondition(`input file ${digestKey(digest)} is not in the CAS`, [digestKey(digest)]);
        }
        this.fetches++;
        // Checked before the file gets its final name, so a cache file is always right: the
        // remote CAS path may not verify what it streams. A linked file is the local CAS's
        // own, verified against its digest when it was stored: hashing it again would read
        // every input byte of a cold build once more.
        if (!linked) await verifyFileContent(tmp, digest);
      }
      if (!linked) await fs.chmod(tmp, executable ? 0o555 : 0o444);
      const st = await fs.lstat(tmp);
      identity = { ino: st.ino, dev: st.dev };
      renameIntoPlace(tmp, file);
    } catch (err) {
      await fs.rm(tmp, { force: true });
      throw err;
    }
    const entry: Entry = { path: file, sizeBytes: digest.sizeBytes, pins: 1, identity };
    this.entries.set(name, entry);
    this.totalBytes += digest.sizeBytes;
    this.evict();
    return entry;
  }

  private touch(name: string, entry: Entry): void {
    this.entries.delete(name);
    this.entries.set(name, entry);
  }

  /** Drops least recently used unpinned files until the total fits. */
  private evict(): void {
    if (this.totalBytes <= this.maxBytes) return;
    for (const [name, entry] of this.entries) {
      if (this.totalBytes <= this.maxBytes) break;
      if (entry.pins > 0) continue;
      this.entries.delete(name);
      this.totalBytes -= entry.sizeBytes;
      // Links already made into action directories keep their data; only the cache name goes.
      const removal = fs.rm(entry.path, { force: true }).catch(() => undefined).finally(() => this.removing.delete(name));
      this.removing.set(name, removal);
    }
  }
}

function fileName(digest: Digest, executable: boolean): string {
  return `${digest.hash}-${digest.sizeBytes}${executable ? '.x' : ''}`;
}

/** Hashes a fetched file; the fetch just wrote it, so this reads from the page cache. */
async function verifyFileContent(file: string, expected: Digest): Promise<void> {
  const actual = await digestOfFile(file);
  if (actual.hash !== expected.hash || actual.sizeBytes !== expected.sizeBytes) {
    throw new Error(`input file ${digestKey(expected)}: the CAS returned content ${digestKey(actual)}; refusing to cache it`);
  }
}
