// Removing what an action left on disk, after every action, with as few file system calls as
// possible: per directory one readdir and one rmdir, per other entry one unlink, siblings in
// parallel. fs.rm({ recursive }) also lstats every entry and tries rmdir before reading a
// directory, about twice the calls, each a round trip through the thread pool. Runs as root, so
// modes the action set (a 000 directory, say) do not stop it; symlinks are removed, never followed.
// Asynchronous on purpose: rmdir and unlink can wait for the journal on a busy disk (paced-fs.ts).
import type { Dirent } from 'node:fs';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';

/** Removes `dir` and everything below it; nothing there is fine. */
export async function removeTree(dir: string): Promise<void> {
  const entries = await readEntries(dir);
  if (entries === 'absent') return;
  if (entries === 'not a directory') return fs.rm(dir, { force: true });
  await removeEntries(dir, entries);
  await fs.rmdir(dir).catch(unlessCode('ENOENT'));
}

/** Removes everything inside `dir`, keeping `dir` itself. */
export async function emptyDirectory(dir: string): Promise<void> {
  const entries = await readEntries(dir);
  if (typeof entries === 'string') throw new Error(`${dir} is ${entries}`);
  await removeEntries(dir, entries);
}

async function removeEntries(dir: string, entries: Dirent[]): Promise<void> {
  await Promise.all(
    entries.map(async (entry) => {
      const child = path.join(dir, entry.name);
      if (entry.isDirectory()) return removeTree(child);
      try {
        await fs.unlink(child);
      } catch (err) {
        // On a file system that reports no types (DT_UNKNOWN) a directory shows here too: unlink refuses it.
        if ((err as NodeJS.ErrnoException).code !== 'EISDIR') return unlessCode('ENOENT')(err as NodeJS.ErrnoException);
        await removeTree(child);
      }
    }),
  );
}

async function readEntries(dir: string): Promise<Dirent[] | 'absent' | 'not a directory'> {
  try {
    return await fs.readdir(dir, { withFileTypes: true });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return 'absent';
    if (code === 'ENOTDIR') return 'not a directory';
    throw err;
  }
}

/** A rejection handler that accepts one error code and rethrows everything else. */
function unlessCode(code: string): (err: NodeJS.ErrnoException) => void {
  return (err) => {
    if (err.code !== code) throw err;
  };
}
