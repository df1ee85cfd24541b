// The file system work of staging and removing input trees, on a thread of its own (see
// tree-ops.ts). Everything here is synchronous on purpose: a system call of microseconds is
// cheaper made directly than through libuv's pool with a promise per call, and this thread has
// nothing else to do meanwhile.
import { parentPort } from 'node:worker_threads';
import {
  chmodSync, chownSync, constants, copyFileSync, Dirent, lchownSync, linkSync, lstatSync, mkdirSync, readdirSync, readlinkSync, rmdirSync,
  symlinkSync, unlinkSync,
} from 'node:fs';
import * as path from 'node:path';
import { decodeFiles, DIRECTORY_MODE, SyncTreeJob, TreeJob } from './tree-ops';

type Want = { kind: 'dir' } | { kind: 'file'; source: string; executable: boolean; ino: number; dev: number } | { kind: 'symlink'; target: string };

parentPort!.on('message', (job: TreeJob & { id: number }) => {
  try {
    if (job.op === 'sync') syncTree(job);
    else if (job.op === 'remove') removeTree(job.dir);
    parentPort!.postMessage({ id: job.id });
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    parentPort!.postMessage({ id: job.id, error: { message: e.message, code: e.code } });
  }
});

/**
 * Makes `root` hold exactly the planned tree. Whatever is there already (the last action's tree
 * in a container's own input root) is kept where it is what the plan wants -- the same cache
 * inode, the same symlink target, a directory -- and removed otherwise; so is everything the plan
 * does not name. Kept directories get their owner and mode back, whatever the action did.
 */
function syncTree(job: SyncTreeJob): void {
  const wanted = new Map<string, Map<string, Want>>([['', new Map()]]);
  const entriesOf = (rel: string) => {
    const parent = path.posix.dirname(rel);
    const key = parent === '.' ? '' : parent;
    let m = wanted.get(key);
    if (!m) wanted.set(key, (m = new Map()));
    return m;
  };
  for (const d of job.directories) {
    entriesOf(d).set(path.posix.basename(d), { kind: 'dir' });
    if (!wanted.has(d)) wanted.set(d, new Map());
  }
  for (const f of decodeFiles(job.files)) entriesOf(f.path).set(path.posix.basename(f.path), { kind: 'file', source: f.source, executable: f.executable, ino: f.ino, dev: f.dev });
  for (const l of job.symlinks) entriesOf(l.path).set(path.posix.basename(l.path), { kind: 'symlink', target: l.target });

  let existed = true;
  try {
    mkdirSync(job.root, DIRECTORY_MODE);
    existed = false;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  ownDirectory(job, job.root, existed);
  syncDirectory(job, wanted, job.root, '', existed);
}

function syncDirectory(job: SyncTreeJob, wanted: Map<string, Map<string, Want>>, abs: string, rel: string, existed: boolean): void {
  const want = wanted.get(rel)!;
  const present = new Set<string>();
  if (existed) {
    for (const entry of readdirSync(abs, { withFileTypes: true })) {
      const w = want.get(entry.name);
      const at = path.join(abs, entry.name);
      if (w && keep(job, w, entry, at)) {
        present.add(entry.name);
        if (w.kind === 'dir') {
          ownDirectory(job, at, true);
          syncDirectory(job, wanted, at, rel ? `${rel}/${entry.name}` : entry.name, true);
        }
      } else {
        removeEntry(at, entry.isDirectory());
      }
    }
  }
  for (const [name, w] of want) {
    if (present.has(name)) continue;
    const at = path.join(abs, name);
    if (w.kind === 'dir') {
      mkdirSync(at, DIRECTORY_MODE);
      ownDirectory(job, at, false);
      syncDirectory(job, wanted, at, rel ? `${rel}/${name}` : name, false);
    } else if (w.kind === 'file') {
      linkOrCopy(w.source, at, w.executable);
    } else {
      symlinkSync(w.target, at);
      if (job.uid !== undefined || job.gid !== undefined) lchownSync(at, job.uid ?? -1, job.gid ?? -1);
    }
  }
}

/** Whether an entry already on disk is what the plan wants there. */
function keep(job: SyncTreeJob, w: Want, entry: Dirent, at: string): boolean {
  if (w.kind === 'dir') return entry.isDirectory();
  if (w.kind === 'symlink') {
    if (!entry.isSymbolicLink() || readlinkSync(at) !== w.target) return false;
    const st = lstatSync(at); // changed only if it differs, as ownDirectory() explains
    if ((job.uid !== undefined && st.uid !== job.uid) || (job.gid !== undefined && st.gid !== job.gid)) lchownSync(at, job.uid ?? -1, job.gid ?? -1);
    return true;
  }
  // The cache's inode itself: root's and read-only, so the action could not have changed it.
  // (The cache file is pinned, so that inode is alive and its number cannot belong to another.)
  if (!entry.isFile()) return false;
  const here = lstatSync(at);
  return here.ino === w.ino && here.dev === w.dev;
}

/**
 * A directory's owner is the action's user; its mode 0755, whatever an action or the umask made
 * of it. A kept directory is only changed where it differs: a chown or chmod dirties the inode
 * even when nothing changes, and on ext4 dirty inode blocks keep deleted inodes "recent" (skipped
 * by every file creation) for minutes instead of seconds.
 */
function ownDirectory(job: SyncTreeJob, dir: string, existed: boolean): void {
  const owned = job.uid === undefined && job.gid === undefined;
  if (existed) {
    const st = lstatSync(dir);
    const rightOwner = owned || ((job.uid === undefined || st.uid === job.uid) && (job.gid === undefined || st.gid === job.gid));
    if (!rightOwner) chownSync(dir, job.uid ?? -1, job.gid ?? -1);
    if ((st.mode & 0o7777) !== DIRECTORY_MODE) chmodSync(dir, DIRECTORY_MODE);
    return;
  }
  if (!owned) chownSync(dir, job.uid ?? -1, job.gid ?? -1);
  if (job.umaskTakesBits) chmodSync(dir, DIRECTORY_MODE);
}

/**
 * Hardlinks a cache file into the input root. A copy is the fallback only where a link cannot
 * work: another filesystem (EXDEV) or an inode at its link limit (EMLINK, e.g. an empty file
 * used thousands of times); the copy gets the same read-only mode.
 */
function linkOrCopy(source: string, target: string, executable: boolean): void {
  try {
    linkSync(source, target);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EXDEV' && code !== 'EMLINK') {
      throw Object.assign(new Error(`linking input ${target} from ${source}: ${(err as Error).message}`), { code });
    }
    copyFileSync(source, target, constants.COPYFILE_EXCL);
    chmodSync(target, executable ? 0o555 : 0o444);
  }
}

/**
 * Removes `dir` and everything below it; nothing there is fine. As root, modes an action set (a
 * 000 directory, say) do not stop it; symlinks are removed, never followed.
 */
function removeTree(dir: string): void {
  let entries: Dirent[];
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return;
    if (code === 'ENOTDIR') return unlinkSync(dir);
    throw err;
  }
  for (const entry of entries) removeEntry(path.join(dir, entry.name), entry.isDirectory());
  rmdirSync(dir);
}

function removeEntry(at: string, isDirectory: boolean): void {
  if (isDirectory) return removeTree(at);
  try {
    unlinkSync(at);
  } catch (err) {
    // On a file system that reports no types (DT_UNKNOWN) a directory shows here too: unlink refuses it.
    if ((err as NodeJS.ErrnoException).code !== 'EISDIR') throw err;
    removeTree(at);
  }
}
