// Crash-safe file creation: write to a private temporary name, fsync, then rename into place.
// A reader therefore sees either nothing or the complete, durable content, never a torn file.
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';

export function tempPath(dir: string, hint: string): string {
  return path.join(dir, `${hint.slice(0, 16)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
}

export async function writeFileAtomic(finalPath: string, data: Uint8Array, tmpDir: string): Promise<void> {
  const tmp = tempPath(tmpDir, path.basename(finalPath));
  const handle = await fs.open(tmp, 'wx', 0o444);
  try {
    await handle.writeFile(data);
    await handle.datasync();
  } catch (err) {
    await handle.close().catch(() => undefined);
    await fs.rm(tmp, { force: true });
    throw err;
  }
  await handle.close();
  await renameIntoPlace(tmp, finalPath);
}

/** Moves a finished temporary file to its final name, creating the parent directory if needed. */
export async function renameIntoPlace(tmp: string, finalPath: string): Promise<void> {
  try {
    await fs.rename(tmp, finalPath);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    await fs.mkdir(path.dirname(finalPath), { recursive: true });
    await fs.rename(tmp, finalPath);
  }
}
