// Warm sandbox containers per image: reuse idle ones, grow up to a cap, replace misbehaving ones.
import { randomBytes } from 'node:crypto';
import type Docker from 'dockerode';
import type { SandboxLimits } from './container-settings';
import { ensureImagePresent } from './image-name';
import { SandboxContainer } from './sandbox-container';
import { SandboxError } from './sandbox-error';

export const POOL_LABEL = 'reapi.pool';

export interface ContainerPoolOptions {
  docker: Docker;
  /** Labels every container; a restarted worker with the same id removes its predecessor's leftovers. */
  poolId: string;
  /** Host directory holding one control dir (runner socket) per container. */
  stateDir: string;
  runnerPath: string;
  execRoot: string;
  limits: SandboxLimits;
  maxContainersPerImage: number;
  /** false = strict mode: every container serves exactly one action and is then removed. */
  reuse: boolean;
}

interface Waiter {
  resolve(c: SandboxContainer): void;
  reject(err: Error): void;
}

export class ContainerPool {
  private readonly idle = new Map<string, SandboxContainer[]>();
  /** Containers counted against the cap per image: starting, busy or idle. */
  private readonly live = new Map<string, number>();
  private readonly waiters = new Map<string, Waiter[]>();
  private readonly existing = new Set<SandboxContainer>();
  private readonly pendingRemovals = new Set<Promise<void>>();
  private readonly imagesPresent = new Set<string>();
  private readonly instance = randomBytes(2).toString('hex');
  private seq = 0;
  private closed = false;

  constructor(private readonly opts: ContainerPoolOptions) {}

  /** Removes every container labelled with this pool id, e.g. left by a worker that crashed. */
  static async removeLeftovers(docker: Docker, poolId: string): Promise<number> {
    const leftovers = await docker.listContainers({ all: true, filters: { label: [`${POOL_LABEL}=${poolId}`] } });
    await Promise.all(leftovers.map((c) => docker.getContainer(c.Id).remove({ force: true, v: true }).catch(() => undefined)));
    return leftovers.length;
  }

  /** An idle container for the image, a new one if under the cap, else the next one released. */
  async acquire(image: string): Promise<SandboxContainer> {
    if (this.closed) throw new SandboxError('sandbox is closed', { image });
    const idle = this.idle.get(image);
    if (idle?.length) return idle.pop()!; // most recently used first: its pages are still hot
    if (this.liveCount(image) < this.opts.maxContainersPerImage) return this.startCounted(image);
    return new Promise((resolve, reject) => {
      const queue = this.waiters.get(image) ?? [];
      queue.push({ resolve, reject });
      this.waiters.set(image, queue);
    });
  }

  /** Hands the container back. Unhealthy (or strict-mode) containers are removed, freeing a slot. */
  release(container: SandboxContainer, healthy: boolean): void {
    const image = container.image;
    if (!healthy || !this.opts.reuse || this.closed) {
      this.discard(container);
      this.startForNextWaiter(image);
      return;
    }
    const waiter = this.waiters.get(image)?.shift();
    if (waiter) return waiter.resolve(container);
    const idle = this.idle.get(image) ?? [];
    idle.push(container);
    this.idle.set(image, idle);
  }

  /** Removes all containers (busy ones too: their actions fail) and waits for the removals. */
  async close(): Promise<void> {
    this.closed = true;
    for (const queue of this.waiters.values()) {
      for (const w of queue.splice(0)) w.reject(new SandboxError('sandbox closed while waiting for a container'));
    }
    for (const c of [...this.existing]) this.discard(c);
    this.idle.clear();
    while (this.pendingRemovals.size) await Promise.all([...this.pendingRemovals]);
  }

  private liveCount(image: string): number {
    return this.live.get(image) ?? 0;
  }

  private async startCounted(image: string): Promise<SandboxContainer> {
    this.live.set(image, this.liveCount(image) + 1);
    try {
      if (!this.imagesPresent.has(image)) {
        await ensureImagePresent(this.opts.docker, image);
        this.imagesPresent.add(image);
      }
      const container = await SandboxContainer.start(
        this.opts.docker,
        {
          image,
          name: `${this.opts.poolId}-${this.instance}-${++this.seq}`,
          labels: { [POOL_LABEL]: this.opts.poolId, 'reapi.image': image, 'reapi.mode': this.opts.reuse ? 'warm' : 'strict' },
          runnerPath: this.opts.runnerPath,
          execRoot: this.opts.execRoot,
          limits: this.opts.limits,
        },
        this.opts.stateDir,
      );
      if (this.closed) {
        await container.remove();
        throw new SandboxError('sandbox closed while starting a container', { image });
      }
      this.existing.add(container);
      return container;
    } catch (err) {
      this.live.set(image, this.liveCount(image) - 1);
      this.startForNextWaiter(image); // its slot was counted when it queued behind us
      throw err;
    }
  }

  /** A slot freed up: if someone waits for this image, start a container for them. */
  private startForNextWaiter(image: string): void {
    const waiter = this.waiters.get(image)?.shift();
    if (waiter) this.startCounted(image).then(waiter.resolve, waiter.reject);
  }

  private discard(container: SandboxContainer): void {
    if (!this.existing.delete(container)) return;
    this.live.set(container.image, this.liveCount(container.image) - 1);
    const removal = container.remove().finally(() => this.pendingRemovals.delete(removal));
    this.pendingRemovals.add(removal);
  }
}
