// Staging an input tree and removing it again are hundreds of small file system calls per
// action (a kernel compile: ~500 links and ~60 directories, then as many unlinks). Made through
// fs.promises, each costs the event loop a promise and a hand-off to libuv's pool and back, more
// CPU than the call itself; made synchronously on the event loop, a slow disk would stall every
// RPC. So they run synchronously on two threads of their own (tree-ops-thread.ts), one message
// per tree each way.
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';

/** Input and output parent directories: the action may create files in them, others may read. */
export const DIRECTORY_MODE = 0o755;

export interface SyncTreeJob {
  op: 'sync';
  root: string;
  uid?: number;
  gid?: number;
  /** The worker's umask takes bits off 0755: new directories need a chmod too. */
  umaskTakesBits: boolean;
  /** Relative paths, each after its parent. */
  directories: string[];
  /** Files as one string (a long array of objects is slow to pass between threads): see encodeFiles(). */
  files: string;
  symlinks: { path: string; target: string }[];
  /**
   * A file of the worker's on the root's file system, beside the root and out of the actions'
   * reach. Given for a root reused action after action: the thread then remembers the tree it
   * left and the time it left it (written to this file), and skips listing directories no action
   * touched since (tree-ops-thread.ts).
   */
  timestampProbe?: string;
}

export interface PlannedFile {
  path: string;
  /** The cache file to link. */
  source: string;
  executable: boolean;
  /** The cache file's inode (pinned, so current): an entry that is this inode is kept. */
  ino: number;
  dev: number;
}

/** NUL separates fields: the one byte no path can hold. */
export function encodeFiles(files: PlannedFile[]): string {
  return files.map((f) => `${f.path}\0${f.source}\0${f.executable ? 'x' : '-'}\0${f.ino}\0${f.dev}`).join('\0');
}

export function decodeFiles(encoded: string): PlannedFile[] {
  if (encoded === '') return [];
  const fields = encoded.split('\0');
  const files: PlannedFile[] = [];
  for (let i = 0; i < fields.length; i += 5) {
    files.push({ path: fields[i], source: fields[i + 1], executable: fields[i + 2] === 'x', ino: Number(fields[i + 3]), dev: Number(fields[i + 4]) });
  }
  return files;
}

export interface RemoveTreeJob {
  op: 'remove';
  dir: string;
}

export type TreeJob = SyncTreeJob | RemoveTreeJob;

const THREADS = 2;

interface TreeThread {
  worker: Worker;
  pending: Map<number, { resolve(): void; reject(err: Error): void }>;
}

let threads: TreeThread[] | undefined;
let nextId = 0;

function startThread(): TreeThread {
  const worker = new Worker(path.join(__dirname, 'tree-ops-thread.js'));
  const thread: TreeThread = { worker, pending: new Map() };
  worker.on('message', (reply: { id: number; error?: { message: string; code?: string } }) => {
    const waiter = thread.pending.get(reply.id);
    thread.pending.delete(reply.id);
    if (thread.pending.size === 0) worker.unref();
    if (!waiter) return;
    if (reply.error) waiter.reject(Object.assign(new Error(reply.error.message), { code: reply.error.code }));
    else waiter.resolve();
  });
  worker.on('error', (err) => {
    for (const waiter of thread.pending.values()) waiter.reject(err);
    thread.pending.clear();
    threads = threads?.filter((t) => t !== thread); // the next job starts a new one
  });
  worker.unref(); // an idle thread must not keep the process alive (after the listeners, which ref it)
  return thread;
}

/** The thread that last synced each remembered root: the one that remembers it. */
const rootThreads = new Map<string, TreeThread>();
const MAX_ROOT_THREADS = 256;

/**
 * Runs one job on the thread with less queued, or a remembered root on the thread that
 * remembers it; rejects with the thread's error (message and code).
 */
export function runTreeJob(job: TreeJob): Promise<void> {
  threads ??= [];
  while (threads.length < THREADS) threads.push(startThread());
  let thread = threads.reduce((a, b) => (b.pending.size < a.pending.size ? b : a));
  if (job.op === 'sync' && job.timestampProbe) {
    // A root stays with one thread (the memory is only an optimization: any thread's is checked
    // against the disk). A new root goes to the thread with fewest: the busy roots, one per
    // container slot, then spread over the threads for good, not as they happened to arrive.
    const owner = rootThreads.get(job.root);
    if (owner && threads.includes(owner)) thread = owner;
    else {
      const owned = (t: TreeThread) => [...rootThreads.values()].filter((o) => o === t).length;
      thread = threads.reduce((a, b) => (owned(b) < owned(a) ? b : a));
    }
    rootThreads.delete(job.root);
    rootThreads.set(job.root, thread);
    if (rootThreads.size > MAX_ROOT_THREADS) rootThreads.delete(rootThreads.keys().next().value!);
  }
  const id = nextId++;
  return new Promise((resolve, reject) => {
    thread.pending.set(id, { resolve, reject });
    thread.worker.ref(); // work in flight keeps the process alive until it is answered
    thread.worker.postMessage({ ...job, id });
  });
}

/** Removes `dir` and everything below it; nothing there is fine. */
export function removeTree(dir: string): Promise<void> {
  return runTreeJob({ op: 'remove', dir });
}
