// One live worker per work directory. A worker empties its directory and removes the containers
// of its pool (named after the directory) when it starts, so a second live worker on the same
// directory would remove the first one's: a lock file naming the live process prevents that.
import { linkSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';

export interface WorkDirLock {
  /** Removes the lock file (also done when the process exits). */
  release(): void;
}

/** Lock files this process holds: a file naming this pid but not in here is a predecessor's. */
const held = new Set<string>();

/**
 * Takes `lockFile` for this process, unless a live process holds it; the lock of a process that
 * is gone is taken over. Atomic between processes: the file appears with the pid already in it
 * (written aside, then hard-linked into place), and only one of two claimants can link it.
 */
export function lockWorkDir(lockFile: string): WorkDirLock | { heldBy: number } {
  mkdirSync(path.dirname(lockFile), { recursive: true });
  const mine = `${lockFile}.claim-${process.pid}`;
  writeFileSync(mine, `${process.pid}\n`);
  try {
    for (;;) {
      if (tryLink(mine, lockFile)) break;
      const holder = readPid(lockFile);
      // Our own pid but not our lock: a worker before us had this pid (a container's pid 1, say).
      if (holder !== undefined && (held.has(lockFile) || (holder !== process.pid && alive(holder)))) return { heldBy: holder };
      removeStaleLock(lockFile, holder);
    }
  } finally {
    rmSync(mine, { force: true });
  }
  held.add(lockFile);
  const release = () => {
    process.removeListener('exit', release);
    if (!held.delete(lockFile)) return;
    if (readPid(lockFile) === process.pid) rmSync(lockFile, { force: true });
  };
  process.on('exit', release);
  return { release };
}

/**
 * A worker directory of its own under `base`: <base>/0, or the next number no live process holds.
 * For builds that share one data directory (two terminals, one reapi-cc state directory).
 * Numbers, not pids, name the directories: the next build takes the same one back, with the file
 * cache in it and the containers of a build that was killed.
 */
export function claimNumberedWorkDir(base: string): { dir: string } & WorkDirLock {
  for (let n = 0; ; n++) {
    const lock = lockWorkDir(path.join(base, `${n}.pid`));
    if ('release' in lock) return { dir: path.join(base, String(n)), release: lock.release };
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
 * Moves a dead holder's lock aside. Another claimant may have replaced it in between with a lock
 * of its own: then that one goes back where it was.
 */
function removeStaleLock(lockFile: string, deadPid: number | undefined): void {
  const aside = `${lockFile}.stale-${process.pid}`;
  try {
    renameSync(lockFile, aside);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return; // someone else moved it
    throw err;
  }
  if (readPid(aside) !== deadPid) tryLink(aside, lockFile);
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
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
