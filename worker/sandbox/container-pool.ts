// Warm sandbox containers keyed by (image, InputRootAbsolutePath): reuse idle ones, grow up to a
// cap per key and a cap in total (evicting the least recently used idle container of another
// key), replace misbehaving ones.
import type Docker from 'dockerode';
import { randomBytes } from 'node:crypto';
import type { SandboxLimits } from './container-settings';
import { ensureImagePresent } from './image-name';
import { SandboxContainer } from './sandbox-container';
import { SandboxError } from './sandbox-error';
import { createSlotDir, removeSlotDir, type SlotDir } from './slot-dir';

export const POOL_LABEL = 'reapi.pool';

/** What an action needs of its container; containers are interchangeable only for equal keys. */
export interface ContainerKey {
  image: string;
  /** Mounted at this path inside the container: an already validated InputRootAbsolutePath. */
  inputRootPath?: string;
  /** Containers with a network are only ever made for actions the operator allowed one. */
  network?: boolean;
}

export interface ContainerPoolOptions {
  docker: Docker;
  /** Labels every container; a restarted worker with the same id removes its predecessor's leftovers. */
  poolId: string;
  /** Host directory holding one control dir (runner socket) per container. */
  stateDir: string;
  runnerPath: string;
  /** Also where every container gets its private slot directory (slot-dir.ts). */
  execRoot: string;
  limits: SandboxLimits;
  maxContainersPerKey: number;
  /** Idle containers of paths no longer used must not pile up: above this the LRU idle one goes. */
  maxContainers: number;
  /** false = strict mode: every container serves exactly one action and is then removed. */
  reuse: boolean;
}

interface Waiter {
  want: ContainerKey;
  resolve(c: SandboxContainer): void;
  reject(err: Error): void;
}

function keyOf(want: ContainerKey): string {
  return `${want.image}\0${want.inputRootPath ?? ''}\0${want.network ? 'net' : ''}`;
}

function keyOfContainer(c: SandboxContainer): string {
  return keyOf({ image: c.image, inputRootPath: c.inputRootPath, network: c.network });
}

export class ContainerPool {
  /** Idle containers, least recently released first. */
  private readonly idle: SandboxContainer[] = [];
  /** Containers counted against the caps (starting, busy or idle), by key. */
  private readonly live = new Map<string, number>();
  private liveTotal = 0;
  /** In arrival order; a waiter that cannot be served yet does not hold up others that can. */
  private readonly waiters: Waiter[] = [];
  private readonly existing = new Set<SandboxContainer>();
  private readonly pendingRemovals = new Set<Promise<void>>();
  private readonly imagesPresent = new Set<string>();
  private readonly instance = randomBytes(2).toString('hex');
  private seq = 0;
  private closed = false;

  constructor(private readonly opts: ContainerPoolOptions) {}

  /** False in strict mode: released containers are removed, so emptying them first is wasted work. */
  get reusesContainers(): boolean {
    return this.opts.reuse;
  }

  /** Removes every container labelled with this pool id, e.g. left by a worker that crashed. */
  static async removeLeftovers(docker: Docker, poolId: string): Promise<number> {
    const leftovers = await docker.listContainers({ all: true, filters: { label: [`${POOL_LABEL}=${poolId}`] } });
    await Promise.all(leftovers.map((c) => docker.getContainer(c.Id).remove({ force: true, v: true }).catch(() => undefined)));
    return leftovers.length;
  }

  /** An idle container for the key, a new one if the caps allow, else the next one that fits. */
  async acquire(want: ContainerKey): Promise<SandboxContainer> {
    if (this.closed) throw new SandboxError('sandbox is closed', { image: want.image });
    return this.tryAcquire(want) ?? new Promise((resolve, reject) => this.waiters.push({ want, resolve, reject }));
  }

  /** Hands the container back. Unhealthy (or strict-mode) containers are removed, freeing a slot. */
  release(container: SandboxContainer, healthy: boolean): void {
    if (!healthy || !this.opts.reuse || this.closed) this.discard(container);
    else this.idle.push(container);
    this.serveWaiters();
  }

  /**
   * The container's runner died before taking a request: a fresh container with the same slot
   * directory (whose root may already hold the staged inputs) takes its place and its count.
   */
  async replace(broken: SandboxContainer): Promise<SandboxContainer> {
    if (!this.existing.delete(broken)) throw new SandboxError('sandbox closed while replacing a container', { image: broken.image, container: broken.id });
    this.track(broken.remove());
    return this.startCounted({ image: broken.image, inputRootPath: broken.inputRootPath, network: broken.network }, broken.slotDir, false);
  }

  /** Removes all containers (busy ones too: their actions fail) and waits for the removals. */
  async close(): Promise<void> {
    this.closed = true;
    for (const w of this.waiters.splice(0)) w.reject(new SandboxError('sandbox closed while waiting for a container'));
    for (const c of [...this.existing]) this.discard(c);
    this.idle.length = 0;
    while (this.pendingRemovals.size) await Promise.all([...this.pendingRemovals]);
  }

  /** A container if one can be had now (idle, or started within the caps); undefined means wait. */
  private tryAcquire(want: ContainerKey): Promise<SandboxContainer> | undefined {
    const key = keyOf(want);
    for (let i = this.idle.length - 1; i >= 0; i--) {
      // Most recently used first: its pages are still hot.
      if (keyOfContainer(this.idle[i]!) === key) return Promise.resolve(this.idle.splice(i, 1)[0]!);
    }
    if ((this.live.get(key) ?? 0) >= this.opts.maxContainersPerKey) return undefined;
    if (this.liveTotal >= this.opts.maxContainers) {
      const leastRecentlyUsed = this.idle.shift();
      if (!leastRecentlyUsed) return undefined; // all busy: wait for a release
      this.discard(leastRecentlyUsed);
    }
    return this.startCounted(want);
  }

  private serveWaiters(): void {
    for (let i = 0; i < this.waiters.length; ) {
      const waiter = this.waiters[i]!;
      const got = this.closed ? undefined : this.tryAcquire(waiter.want);
      if (!got) {
        i++;
        continue;
      }
      this.waiters.splice(i, 1);
      got.then(waiter.resolve, waiter.reject);
    }
  }

  private count(key: string, delta: number): void {
    this.live.set(key, (this.live.get(key) ?? 0) + delta);
    this.liveTotal += delta;
  }

  /** Starts a container for the key, counted from now on, in a new slot directory or in
   * `slotDir` when replacing a broken container. */
  private async startCounted(want: ContainerKey, slotDir?: SlotDir, countIt = true): Promise<SandboxContainer> {
    const key = keyOf(want);
    if (countIt) this.count(key, +1);
    try {
      if (!this.imagesPresent.has(want.image)) {
        await ensureImagePresent(this.opts.docker, want.image);
        this.imagesPresent.add(want.image);
      }
      slotDir ??= await createSlotDir(this.opts.execRoot, this.opts.limits.user);
      const container = await SandboxContainer.start(
        this.opts.docker,
        {
          image: want.image,
          name: `${this.opts.poolId}-${this.instance}-${++this.seq}`,
          labels: {
            [POOL_LABEL]: this.opts.poolId,
            'reapi.image': want.image,
            'reapi.mode': this.opts.reuse ? 'warm' : 'strict',
            ...(want.inputRootPath ? { 'reapi.input-root': want.inputRootPath } : {}),
            ...(want.network ? { 'reapi.network': 'bridge' } : {}),
          },
          runnerPath: this.opts.runnerPath,
          execRoot: this.opts.execRoot,
          limits: this.opts.limits,
          network: want.network ?? false,
        },
        this.opts.stateDir,
        slotDir,
        want.inputRootPath,
      );
      if (this.closed) {
        await container.remove();
        throw new SandboxError('sandbox closed while starting a container', { image: want.image });
      }
      this.existing.add(container);
      return container;
    } catch (err) {
      this.count(key, -1);
      if (slotDir) await removeSlotDir(slotDir);
      this.serveWaiters(); // the count it held may be what a waiter needs
      throw err;
    }
  }

  private discard(container: SandboxContainer): void {
    if (!this.existing.delete(container)) return;
    this.count(keyOfContainer(container), -1);
    this.track(container.remove().then(() => removeSlotDir(container.slotDir)));
  }

  private track(removal: Promise<void>): void {
    const tracked = removal.finally(() => this.pendingRemovals.delete(tracked));
    this.pendingRemovals.add(tracked);
  }
}
