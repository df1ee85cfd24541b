// File digests remembered across runs: (path, size, mtime, inode, mode) -> SHA-256, so a warm
// rebuild stats its inputs instead of reading them. Like ccache's and git's index, a file
// modified within the last couple of seconds is hashed but not remembered: a later write in the
// same mtime tick would otherwise go unnoticed. That window is also why mtime is kept as
// milliseconds (a double, exact to a fraction of a microsecond) rather than nanoseconds: stat
// calls are the cost of a warm check, and one with BigInt fields costs half as much again.
import { createHash } from 'node:crypto';
import { promises as fs, Stats, statSync } from 'node:fs';
import * as path from 'node:path';
import { readBlobFile } from '../cas/file-range';

export interface FileDigest {
  hash: string;
  sizeBytes: number;
  executable: boolean;
}

interface Entry {
  size: number;
  mtimeMs: number;
  ino: number;
  mode: number;
  hash: string;
}

/**
 * stat() of a file, by its path relative to the working directory where it is under it: the
 * kernel then walks three or four components instead of eight (a warm scan makes hundreds of
 * these calls per object). Node keeps process.cwd() until a chdir, so asking is cheap.
 */
export function statFile(absPath: string): Stats | undefined {
  const cwd = process.cwd();
  const relative = absPath.length > cwd.length + 1 && absPath.startsWith(cwd) && absPath[cwd.length] === '/' ? absPath.slice(cwd.length + 1) : absPath;
  return statSync(relative, { throwIfNoEntry: false });
}

/** A file changed this recently could change again within the same timestamp tick. */
export const RACY_WINDOW_MS = 2000;

export class DigestCache {
  private entries = new Map<string, Entry>();
  private dirty = false;
  /** Bytes read and hashed in this process: what the cache did not save. */
  hashedBytes = 0;

  private constructor(private readonly file: string | undefined) {}

  static async open(file: string | undefined): Promise<DigestCache> {
    const cache = new DigestCache(file);
    if (file) {
      try {
        const saved = JSON.parse(await fs.readFile(file, 'utf8')) as Record<string, Entry>;
        cache.entries = new Map(Object.entries(saved));
      } catch {
        // No cache yet, or a damaged one: start empty, it only costs hashing.
      }
    }
    return cache;
  }

  /**
   * The remembered digest when the file's stat still matches, else undefined (unknown, changed or
   * gone: ask digest()). Synchronous: a warm build checks ~470 files per object, and one stat call
   * costs a few microseconds where a promise round trip through the thread pool costs tens.
   */
  known(absPath: string): FileDigest | undefined {
    const known = this.entries.get(absPath);
    if (!known) return undefined;
    let st: Stats | undefined;
    try {
      st = statFile(absPath);
    } catch {
      return undefined;
    }
    if (!st || st.size !== known.size || st.mtimeMs !== known.mtimeMs || st.ino !== known.ino || st.mode !== known.mode) return undefined;
    if ((st.mode & 0o170000) !== 0o100000) return undefined;
    return { hash: known.hash, sizeBytes: known.size, executable: (known.mode & 0o111) !== 0 };
  }

  /** Digest of a regular file (symlinks followed), or undefined if it is not one. */
  async digest(absPath: string): Promise<FileDigest | undefined> {
    const cached = this.known(absPath);
    if (cached) return cached;
    // Synchronous, like known(): most calls here are for words of a recipe that are no file at
    // all, and a failed stat through the thread pool costs a rejected promise as well.
    const st = statFile(absPath);
    if (!st || !st.isFile()) return undefined;
    const { size, mtimeMs, ino, mode } = st;
    const executable = (mode & 0o111) !== 0;
    // A file too new to be remembered (a tool just rebuilt, say) is asked for by many objects
    // at once: one read serves all callers that see it unchanged meanwhile.
    const identity = `${size}/${mtimeMs}/${st.ctimeMs}/${ino}/${mode}`;
    const pending = this.hashing.get(absPath);
    if (pending && pending.identity === identity) return pending.result;
    const result = this.hash(absPath, { size, mtimeMs, ino, mode }, executable).finally(() => {
      if (this.hashing.get(absPath)?.result === result) this.hashing.delete(absPath);
    });
    this.hashing.set(absPath, { identity, result });
    return result;
  }

  private readonly hashing = new Map<string, { identity: string; result: Promise<FileDigest | undefined> }>();

  private async hash(absPath: string, stat: Omit<Entry, 'hash'>, executable: boolean): Promise<FileDigest | undefined> {
    let data: Buffer;
    try {
      data = await readBlobFile(absPath, stat.size);
    } catch {
      return undefined;
    }
    this.hashedBytes += data.length;
    const hash = createHash('sha256').update(data).digest('hex');
    if (Date.now() - stat.mtimeMs > RACY_WINDOW_MS && data.length === stat.size) {
      this.entries.set(absPath, { ...stat, hash });
      this.dirty = true;
    } else {
      this.entries.delete(absPath);
    }
    return { hash, sizeBytes: data.length, executable };
  }

  /** Writes the cache atomically (temp file + rename); concurrent writers each win whole. */
  async save(): Promise<void> {
    if (!this.file || !this.dirty) return;
    await fs.mkdir(path.dirname(this.file), { recursive: true });
    const tmp = `${this.file}.${process.pid}.tmp`;
    await fs.writeFile(tmp, JSON.stringify(Object.fromEntries(this.entries)));
    await fs.rename(tmp, this.file);
    this.dirty = false;
  }
}
