// The file system work of staging and removing input trees, on a thread of its own (see
// tree-ops.ts). Everything here is synchronous on purpose: a system call of microseconds is
// cheaper made directly than through libuv's pool with a promise per call, and this thread has
// nothing else to do meanwhile.
import { parentPort } from 'node:worker_threads';
import {
  chmodSync, chownSync, closeSync, constants, copyFileSync, Dirent, fstatSync, lchownSync, linkSync, lstatSync, mkdirSync, openSync, readdirSync,
  readlinkSync, rmdirSync, Stats, symlinkSync, unlinkSync, writeSync,
} from 'node:fs';
import * as path from 'node:path';
import { decodeFiles, DIRECTORY_MODE, SyncTreeJob, TreeJob } from './tree-ops';

type Want = { kind: 'dir' } | { kind: 'file'; source: string; executable: boolean; ino: number; dev: number } | { kind: 'symlink'; target: string };

/**
 * A directory as a sync left it: its entries (a copied file with ino -1: no cache inode) and its
 * stamp right after. While the stamp holds, nothing was created, removed, renamed, chmodded or
 * chowned in it since, so the next sync of the root need not list it nor lstat its entries.
 * The stamp is trusted only if it is older than the probe time taken after the sync, before the
 * action ran: every change the action makes is then stamped later (file system timestamps come
 * from one clock, whose coarse ticks never go below a fine-grained time already handed out), so
 * no change can hide behind an equal timestamp.
 */
interface DirMemory {
  dev: number;
  ino: number;
  mtimeMs: number;
  ctimeMs: number;
  entries: Map<string, Want>;
  trusted: boolean;
}

type TreeMemory = Map<string, DirMemory>;

/** Roots remembered by this thread (a container's input root each), the least recently synced first. */
const memories = new Map<string, TreeMemory>();
const MAX_REMEMBERED_ROOTS = 64;

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
 * does not name. Kept directories get their owner and mode back, whatever the action did. With
 * a probe, the tree is remembered (DirMemory) for the next sync of this root.
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

  // Taken out while syncing: a sync that fails half way leaves nothing remembered.
  const last = memories.get(job.root);
  memories.delete(job.root);
  const next: TreeMemory | undefined = job.timestampProbe ? new Map() : undefined;

  let existed = true;
  try {
    mkdirSync(job.root, DIRECTORY_MODE);
    existed = false;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  if (!existed) ownDirectory(job, job.root);
  syncDirectory({ job, wanted, last, next }, job.root, '', existed);

  if (job.timestampProbe && next) {
    const now = probeTime(job.timestampProbe, next.get('')!.dev);
    for (const dir of next.values()) dir.trusted = dir.mtimeMs < now && dir.ctimeMs < now;
    memories.set(job.root, next);
    if (memories.size > MAX_REMEMBERED_ROOTS) memories.delete(memories.keys().next().value!);
  }
}

interface SyncContext {
  job: SyncTreeJob;
  wanted: Map<string, Map<string, Want>>;
  last: TreeMemory | undefined;
  next: TreeMemory | undefined;
}

function syncDirectory(ctx: SyncContext, abs: string, rel: string, existed: boolean): void {
  const want = ctx.wanted.get(rel)!;
  const now = new Map<string, Want>(); // what the directory holds as this sync leaves it
  let changed = false;
  let st: Stats | undefined;
  if (existed) {
    st = lstatSync(abs);
    const had = ctx.last?.get(rel);
    if (had?.trusted && had.ino === st.ino && had.dev === st.dev && had.mtimeMs === st.mtimeMs && had.ctimeMs === st.ctimeMs) {
      for (const [name, was] of had.entries) {
        const w = want.get(name);
        if (w && sameEntry(w, was)) {
          now.set(name, was);
          if (w.kind === 'dir') syncDirectory(ctx, path.join(abs, name), rel ? `${rel}/${name}` : name, true);
        } else {
          removeEntry(path.join(abs, name), was.kind === 'dir');
          changed = true;
        }
      }
    } else {
      changed = ownDirectory(ctx.job, abs, st);
      for (const entry of readdirSync(abs, { withFileTypes: true })) {
        const w = want.get(entry.name);
        const at = path.join(abs, entry.name);
        if (w && keep(ctx.job, w, entry, at)) {
          now.set(entry.name, w);
          if (w.kind === 'dir') syncDirectory(ctx, at, rel ? `${rel}/${entry.name}` : entry.name, true);
        } else {
          removeEntry(at, entry.isDirectory());
          changed = true;
        }
      }
    }
  }
  for (const [name, w] of want) {
    if (now.has(name)) continue;
    changed = true;
    const at = path.join(abs, name);
    if (w.kind === 'dir') {
      mkdirSync(at, DIRECTORY_MODE);
      ownDirectory(ctx.job, at);
      now.set(name, w);
      syncDirectory(ctx, at, rel ? `${rel}/${name}` : name, false);
    } else if (w.kind === 'file') {
      now.set(name, linkOrCopy(w.source, at, w.executable) ? w : { ...w, ino: -1 });
    } else {
      symlinkSync(w.target, at);
      if (ctx.job.uid !== undefined || ctx.job.gid !== undefined) lchownSync(at, ctx.job.uid ?? -1, ctx.job.gid ?? -1);
      now.set(name, w);
    }
  }
  if (ctx.next) {
    if (changed || !st) st = lstatSync(abs);
    ctx.next.set(rel, { dev: st.dev, ino: st.ino, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs, entries: now, trusted: false });
  }
}

/** Whether a remembered entry is what the plan wants now. */
function sameEntry(w: Want, was: Want): boolean {
  if (w.kind === 'dir') return was.kind === 'dir';
  if (w.kind === 'file') return was.kind === 'file' && was.ino === w.ino && was.dev === w.dev;
  return was.kind === 'symlink' && was.target === w.target;
}

/**
 * The file system's time now, as a change made now would be stamped: later than every stamp
 * given so far, where the kernel can tell. The probe file is written twice: the first write
 * stamps it with the clock's current tick; reading that stamp (fstat) then makes the second
 * write's stamp fine-grained on kernels with multigrain timestamps (Linux 6.13+), as its tick
 * has not moved on; elsewhere it is the tick itself, and directories changed within it are not
 * trusted. -Infinity, trusting nothing, if the probe is on another file system, whose stamps may
 * be coarser, or cannot be written.
 */
function probeTime(probe: string, dev: number): number {
  let fd: number | undefined;
  try {
    fd = openSync(probe, constants.O_WRONLY | constants.O_CREAT, 0o600);
    writeSync(fd, PROBE_BYTE, 0, 1, 0);
    fstatSync(fd);
    writeSync(fd, PROBE_BYTE, 0, 1, 0);
    const st = fstatSync(fd);
    return st.dev === dev ? st.mtimeMs : -Infinity;
  } catch {
    return -Infinity; // the tree is staged all the same; the next staging lists it
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

const PROBE_BYTE = Buffer.from('.');

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
 * of it. An existing directory (its lstat given) is only changed where it differs: a chown or
 * chmod dirties the inode even when nothing changes, and on ext4 dirty inode blocks keep deleted
 * inodes "recent" (skipped by every file creation) for minutes instead of seconds. Returns
 * whether it changed anything.
 */
function ownDirectory(job: SyncTreeJob, dir: string, existing?: Stats): boolean {
  const owned = job.uid === undefined && job.gid === undefined;
  if (existing) {
    const rightOwner = owned || ((job.uid === undefined || existing.uid === job.uid) && (job.gid === undefined || existing.gid === job.gid));
    if (!rightOwner) chownSync(dir, job.uid ?? -1, job.gid ?? -1);
    const rightMode = (existing.mode & 0o7777) === DIRECTORY_MODE;
    if (!rightMode) chmodSync(dir, DIRECTORY_MODE);
    return !rightOwner || !rightMode;
  }
  if (!owned) chownSync(dir, job.uid ?? -1, job.gid ?? -1);
  if (job.umaskTakesBits) chmodSync(dir, DIRECTORY_MODE);
  return true;
}

/**
 * Hardlinks a cache file into the input root; true if linked. A copy is the fallback only where
 * a link cannot work: another filesystem (EXDEV) or an inode at its link limit (EMLINK, e.g. an
 * empty file used thousands of times); the copy gets the same read-only mode.
 */
function linkOrCopy(source: string, target: string, executable: boolean): boolean {
  try {
    linkSync(source, target);
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EXDEV' && code !== 'EMLINK') {
      throw Object.assign(new Error(`linking input ${target} from ${source}: ${(err as Error).message}`), { code });
    }
    copyFileSync(source, target, constants.COPYFILE_EXCL);
    chmodSync(target, executable ? 0o555 : 0o444);
    return false;
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
