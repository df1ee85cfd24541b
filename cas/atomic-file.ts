// Crash-safe file creation: write to a private temporary name, fsync, then rename into place.
// A reader therefore sees either nothing or the complete, durable content, never a torn file.
import { randomBytes } from 'node:crypto';
import { closeSync, fchmodSync, fdatasync, mkdirSync, openSync, renameSync, rmSync, writeFile, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';

const fdatasyncAsync = promisify(fdatasync);
const writeFdAsync = promisify(writeFile);

/**
 * Stored files up to this size are read and written with synchronous calls: each is microseconds
 * of page-cache work, where the promise API makes each a thread-pool round trip with its
 * context switches. Only the flush to disk, which can take milliseconds, stays off the event
 * loop. (An Action, a Command or an ActionResult is a few hundred bytes.)
 */
export const SMALL_FILE_BYTES = 64 * 1024;

/**
 * A name no other writer uses: this process's pid and random tag, and a counter. Random bytes
 * once, not per file: a cold kernel build names ~10,000 temporary files, and asking for them
 * each time cost 0.1 s of CPU. The tag keeps a reused pid from meeting a dead process's leftovers.
 */
const processTag = `${process.pid}.${randomBytes(6).toString('hex')}`;
let tempSeq = 0;

export function tempPath(dir: string, hint: string): string {
  return path.join(dir, `${hint.slice(0, 16)}.${processTag}.${++tempSeq}.tmp`);
}

export async function writeFileAtomic(finalPath: string, data: Uint8Array, tmpDir: string): Promise<void> {
  const tmp = tempPath(tmpDir, path.basename(finalPath));
  const fd = openSync(tmp, 'wx', 0o444);
  try {
    if (data.length <= SMALL_FILE_BYTES) writeFileSync(fd, data);
    else await writeFdAsync(fd, data);
    await fdatasyncAsync(fd);
  } catch (err) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw err;
  }
  closeSync(fd);
  renameIntoPlace(tmp, finalPath);
}

/**
 * Gives a finished file its final mode and makes its content durable, before renameIntoPlace
 * makes it visible: a torn file must never be served under its digest.
 */
export async function sealFile(file: string, mode: number): Promise<void> {
  const fd = openSync(file, 'r');
  try {
    fchmodSync(fd, mode);
    await fdatasyncAsync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Moves a finished temporary file to its final name, creating the parent directory if needed.
 * Synchronous whatever the file's size: a rename only touches directory entries.
 */
export function renameIntoPlace(tmp: string, finalPath: string): void {
  try {
    renameSync(tmp, finalPath);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    mkdirSync(path.dirname(finalPath), { recursive: true });
    renameSync(tmp, finalPath);
  }
}
