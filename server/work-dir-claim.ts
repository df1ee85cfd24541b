// Which worker directory an embedded farm may use, when several processes share one data
// directory: numbered directories, each held by a lock file naming the live process that uses it.
import { linkSync, promises as fs, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';

/**
 * A worker directory no other live process uses: <base>/0, or the next free one. A worker empties
 * its directory and removes its containers when it starts, so two builds at once (two terminals,
 * one state directory) must not share one. Numbers, not process ids, name the directories: the
 * next build takes the same one back, with the file cache in it and the containers of a build
 * that was killed (the pool is named after the directory).
 */
export async function claimWorkDir(base: string): Promise<{ dir: string; release(): void }> {
  await fs.mkdir(base, { recursive: true });
  // The lock appears with the pid already in it (written aside, then linked): never empty.
  const mine = path.join(base, `.claim-${process.pid}`);
  writeFileSync(mine, `${process.pid}\n`);
  try {
    for (let n = 0; ; n++) {
      const lock = path.join(base, `${n}.pid`);
      if (!tryLink(mine, lock)) {
        const holder = readPid(lock);
        if (holder === undefined || alive(holder)) continue;
        removeStaleLock(lock, holder);
        n--; // and try this number again
        continue;
      }
      const release = () => {
        process.removeListener('exit', release);
        if (readPid(lock) === process.pid) rmSync(lock, { force: true });
      };
      process.on('exit', release);
      return { dir: path.join(base, String(n)), release };
    }
  } finally {
    rmSync(mine, { force: true });
  }
}

function tryLink(from: string, to: string): boolean {
  try {
    linkSync(from, to);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  }
}

/**
 * Moves a dead process's lock aside. Another claimant may have replaced it in between with a lock
 * of its own: then that one goes back where it was.
 */
function removeStaleLock(lock: string, deadPid: number): void {
  const aside = `${lock}.stale-${process.pid}`;
  try {
    renameSync(lock, aside);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return; // someone else moved it
    throw err;
  }
  if (readPid(aside) !== deadPid) tryLink(aside, lock);
  rmSync(aside, { force: true });
}

function readPid(file: string): number | undefined {
  try {
    const pid = Number(readFileSync(file, 'utf8').trim());
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

function alive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
