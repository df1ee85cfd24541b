// The in-pod sandbox (`reapi worker --sandbox process`): actions run as child processes of the
// worker, in the worker's own container (a Kubernetes pod without Docker), so the pod's image is
// the one toolchain image this worker offers.
//
// Isolation is by user, not by namespaces: each slot (one action at a time) has a runner helper
// started as root and a uid of its own, firstUid + slot index. The runner drops to that uid for
// the action and afterwards kills every process of that uid, which is exact because nothing else
// runs as it; with one shared uid, one action's clean-up would kill its neighbours. What the pod
// does not give an action that a container does: a network, /tmp and an IPC namespace of its
// own, and a filesystem of its own (see InputRootAbsolutePath below; docs/operations.md).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { invalidArgument } from '../../server/rpc-error';
import { compileRunner } from './compile-runner';
import { DEFAULT_LIMITS } from './container-settings';
import { dockerImageName } from './image-name';
import { checkInputRootAbsolutePath } from './input-root-path';
import { ProcessSlot, type UserSlot } from './process-slot';
import { RunnerProcess } from './runner-process';
import type { ActionUser, Sandbox, SandboxSlot, SlotRequest } from './sandbox';
import { SandboxError } from './sandbox-error';

/** Shared with the worker, so the runner removes only what the action user left there. */
export const PROCESS_SCRATCH_DIRS = ['/tmp', '/var/tmp', '/dev/shm'];

export interface ProcessSandboxOptions {
  /** Actions get their directories below this; the runner needs nothing else of the filesystem. */
  execRoot: string;
  /** The image this pod runs (the worker's --image): actions that name another are refused. */
  image: string;
  /** Actions at once. */
  slots: number;
  /** Slot i runs its actions as uid firstUid + i. No other process may use these uids. */
  firstUid: number;
  gid: number;
  /** RLIMIT_NPROC per action (default: the Docker sandbox's pids limit). */
  maxProcesses?: number;
  scratchDirs?: string[];
  /** Where runner sockets live (default: a new directory under os.tmpdir()). */
  stateDir?: string;
  runnerCacheDir?: string;
}

export async function createProcessSandbox(opts: ProcessSandboxOptions): Promise<Sandbox> {
  if (process.getuid?.() !== 0) {
    throw new SandboxError('the process sandbox must run as root: its runners switch each action to an unprivileged uid and kill that uid\'s processes afterwards');
  }
  const execRoot = path.resolve(opts.execRoot);
  if (!fs.statSync(execRoot, { throwIfNoEntry: false })?.isDirectory()) throw new SandboxError(`exec root ${execRoot} is not a directory`);
  checkTraversable(execRoot);
  if (!Number.isInteger(opts.firstUid) || opts.firstUid < 1 || !Number.isInteger(opts.slots) || opts.slots < 1) {
    throw new SandboxError(`the process sandbox needs a positive first uid and slot count, not ${opts.firstUid} and ${opts.slots}`);
  }
  const runnerPath = await compileRunner({ cacheDir: opts.runnerCacheDir });
  // Root's private directory: the action users can neither reach the sockets nor swap them.
  const stateDir = opts.stateDir ?? (await fs.promises.mkdtemp(path.join(os.tmpdir(), 'reapi-runners-')));
  await fs.promises.mkdir(stateDir, { recursive: true, mode: 0o700 });
  await fs.promises.chmod(stateDir, 0o700);
  return new ProcessSandbox(opts, execRoot, runnerPath, stateDir);
}

class ProcessSandbox implements Sandbox {
  private readonly free: UserSlot[];
  private readonly waiters: { resolve(slot: UserSlot): void; reject(err: Error): void }[] = [];
  private readonly all: UserSlot[];
  /** InputRootAbsolutePath directories in use: the pod has one filesystem, so one action per path. */
  private readonly pathLocks = new Map<string, Promise<void>>();
  private readonly image: string;
  private closed = false;

  constructor(
    private readonly opts: ProcessSandboxOptions,
    private readonly execRoot: string,
    private readonly runnerPath: string,
    private readonly stateDir: string,
  ) {
    this.image = dockerImageName(opts.image);
    this.all = Array.from({ length: opts.slots }, (_, i) => ({ user: { uid: opts.firstUid + i, gid: opts.gid }, runner: undefined }));
    this.free = [...this.all];
  }

  async acquire(req: SlotRequest): Promise<SandboxSlot> {
    if (this.closed) throw new SandboxError('sandbox is closed', { image: req.image });
    const wanted = dockerImageName(req.image);
    if (wanted !== this.image) {
      throw invalidArgument(
        `container-image ${JSON.stringify(req.image)} is not available: this worker runs actions directly in its own image ${JSON.stringify(this.image)} (--sandbox process); route such actions to workers of that image with a platform property`,
      );
    }
    const inputRootPath = req.inputRootAbsolutePath === undefined ? undefined : checkInputRootAbsolutePath(req.inputRootAbsolutePath, this.execRoot);
    const unlockPath = inputRootPath ? await this.lockPath(inputRootPath) : undefined;
    let slot: UserSlot | undefined;
    let createdRoot: string | undefined;
    try {
      slot = await this.takeSlot();
      if (!slot.runner?.running) slot.runner = await this.startRunner(slot.user);
      if (inputRootPath) createdRoot = await createFreeDirectory(inputRootPath);
      const taken = slot;
      return new ProcessSlot({
        slot: taken,
        execRoot: this.execRoot,
        image: this.image,
        inputRoot: inputRootPath ? { hostPath: inputRootPath, containerPath: inputRootPath } : undefined,
        restartRunner: () => this.startRunner(taken.user),
        release: async () => {
          if (createdRoot) await fs.promises.rm(createdRoot, { recursive: true, force: true }).catch(() => undefined);
          unlockPath?.();
          this.giveBack(taken);
        },
      });
    } catch (err) {
      if (createdRoot) await fs.promises.rm(createdRoot, { recursive: true, force: true }).catch(() => undefined);
      unlockPath?.();
      if (slot) this.giveBack(slot);
      throw err;
    }
  }

  async run(req: Parameters<Sandbox['run']>[0]): ReturnType<Sandbox['run']> {
    const { image, ...rest } = req;
    const slot = await this.acquire({ image });
    try {
      return await slot.run(rest);
    } finally {
      await slot.release();
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const w of this.waiters.splice(0)) w.reject(new SandboxError('sandbox closed while waiting for a slot'));
    await Promise.all(this.all.map((s) => s.runner?.stop()));
    await fs.promises.rm(this.stateDir, { recursive: true, force: true });
  }

  private startRunner(user: ActionUser): Promise<RunnerProcess> {
    return RunnerProcess.start({
      runnerPath: this.runnerPath,
      socketPath: path.join(this.stateDir, `runner-${user.uid}.sock`),
      user,
      maxProcesses: this.opts.maxProcesses ?? DEFAULT_LIMITS.pidsLimit,
      scratchDirs: this.opts.scratchDirs ?? PROCESS_SCRATCH_DIRS,
    });
  }

  private takeSlot(): Promise<UserSlot> {
    const slot = this.free.shift();
    if (slot) return Promise.resolve(slot);
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  private giveBack(slot: UserSlot): void {
    const waiter = this.closed ? undefined : this.waiters.shift();
    if (waiter) waiter.resolve(slot);
    else this.free.push(slot);
  }

  /** Waits until no other action of this worker uses the path; returns the unlock. */
  private async lockPath(p: string): Promise<() => void> {
    for (let held = this.pathLocks.get(p); held; held = this.pathLocks.get(p)) await held;
    let unlock!: () => void;
    this.pathLocks.set(p, new Promise<void>((resolve) => (unlock = resolve)));
    return () => {
      this.pathLocks.delete(p);
      unlock();
    };
  }
}

/**
 * Actions reach their directories by path as an unprivileged user: unlike a container, which
 * mounts the exec root, every directory above it must let others pass (x for "others").
 */
function checkTraversable(execRoot: string): void {
  for (let dir = execRoot; ; dir = path.dirname(dir)) {
    if ((fs.statSync(dir).mode & 0o001) === 0) {
      throw new SandboxError(`the action users cannot reach the exec root ${execRoot}: ${dir} is not searchable by others (chmod o+x ${dir}, or use another --work-dir)`);
    }
    if (dir === path.dirname(dir)) return;
  }
}

/**
 * InputRootAbsolutePath in a pod: there is no mount namespace to put the input root anywhere, so
 * the path must be free on the pod's filesystem; it is created (root-owned parents, the last
 * component for the inputs) and removed again after the action. Returns the topmost directory
 * created, which is what release removes.
 */
async function createFreeDirectory(p: string): Promise<string> {
  const refuse = (why: string) =>
    invalidArgument(`InputRootAbsolutePath ${JSON.stringify(p)} ${why}; with --sandbox process actions share the worker pod's filesystem, so only a path that does not exist there can be used`);
  let topmost = p;
  for (let parent = path.dirname(p); parent !== '/' && !fs.existsSync(parent); parent = path.dirname(parent)) topmost = parent;
  if (fs.existsSync(p)) throw refuse('already exists on this worker');
  try {
    await fs.promises.mkdir(path.dirname(p), { recursive: true, mode: 0o755 });
    await fs.promises.mkdir(p, { mode: 0o755 }); // EEXIST if anything got there first: never reuse
  } catch (err) {
    if (topmost !== p) await fs.promises.rm(topmost, { recursive: true, force: true }).catch(() => undefined);
    throw refuse(`cannot be created (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}${(err as NodeJS.ErrnoException).code === 'EROFS' ? ': mount a writable volume at a parent directory' : ''})`);
  }
  return topmost;
}
