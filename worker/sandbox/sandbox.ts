// The worker's entry point for running actions in Docker sandbox containers.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Docker from 'dockerode';
import { compileRunner } from './compile-runner';
import { ContainerPool } from './container-pool';
import { DEFAULT_LIMITS, type InputRootMount, type SandboxLimits } from './container-settings';
import { dockerImageName } from './image-name';
import { checkInputRootAbsolutePath } from './input-root-path';
import { ContainerSlot } from './sandbox-slot';
import { SandboxError } from './sandbox-error';

export { SandboxError } from './sandbox-error';
export type { InputRootMount } from './container-settings';

export interface SandboxRequest {
  /** "name:tag" or "docker://name:tag"; must already be present on the Docker host */
  image: string;
  argv: string[];
  /** the action's complete environment: nothing else is inherited */
  env: Record<string, string>;
  /** absolute path inside the container: under the slot's input root if it has one, else under
   * the exec root (which the container sees at its host path) */
  cwd: string;
  /** absolute host paths under the exec root (identical inside the container) */
  stdoutPath: string;
  stderrPath: string;
  /** 0 = no timeout */
  timeoutMs: number;
  /** kill the action once stdout or stderr exceeds this many bytes (default: unlimited) */
  maxOutputBytes?: number;
  /** aborting kills the action (its container is removed and replaced) */
  signal?: AbortSignal;
}

/** A run inside an acquired slot: the image is the slot's. */
export type SlotRunRequest = Omit<SandboxRequest, 'image'>;

export interface SlotRequest {
  image: string;
  /** The InputRootAbsolutePath platform property; refused with INVALID_ARGUMENT if unusable. */
  inputRootAbsolutePath?: string;
  /** A network for the action (dockerNetwork=standard); the pipeline asks only when the operator allows it. */
  network?: boolean;
}

/**
 * One container (or runner process) held by one action: stage the inputs into
 * inputRoot.hostPath, run with a cwd under inputRoot.containerPath, collect outputs from
 * hostPath, then release.
 */
export interface SandboxSlot {
  /**
   * A directory the slot keeps across its actions: the last action's tree stays there and the
   * next staging reconciles it with its own. A container always has one (mounted at the
   * InputRootAbsolutePath if the action has one); a process slot only for that property.
   * Undefined: the input root may be any new directory under the exec root.
   */
  readonly inputRoot: InputRootMount | undefined;
  /**
   * A file of the worker's beside inputRoot.hostPath, out of the actions' reach, with which
   * staging dates the tree it leaves there (tree-ops.ts: SyncTreeJob.timestampProbe). Undefined: every
   * staging lists the whole tree it reconciles.
   */
  readonly timestampProbe?: string;
  /** Set when this slot's actions run as a user of their own (process sandbox: one uid per slot);
   * the action's directories must then belong to it. Undefined: the worker's configured user. */
  readonly user?: ActionUser;
  /**
   * A temporary directory only this action sees, emptied after it (a container's own /tmp, a
   * tmpfs). Undefined: the pipeline makes one in the action's directory.
   */
  readonly scratchDir?: string;
  /** Capture files the slot reuses, truncated by each run. Undefined: the pipeline makes them in the action's directory. */
  readonly stdio?: StdioCaptures;
  run(req: SlotRunRequest): Promise<SandboxResult>;
  /** Call once, whatever happened; never throws. */
  release(): Promise<void>;
}

export interface StdioCaptures {
  stdoutPath: string;
  stderrPath: string;
}

export interface ActionUser {
  uid: number;
  gid: number;
}

export interface SandboxResult {
  /** exit status; 128+N if killed by signal N (shell convention) */
  exitCode: number;
  /** e.g. "SIGKILL" if the action's main process was killed by a signal */
  signal?: string;
  timedOut: boolean;
  /** set when the action was killed for exceeding maxOutputBytes */
  outputLimitExceeded?: boolean;
  /** fork to reap, measured inside the container */
  wallMicros: number;
  /**
   * Set when processes of the action outlived it (the sweep could not kill them): its files may
   * still change, so outputs must be copied, never taken over as they are.
   */
  processesSurvived?: boolean;
}

export interface Sandbox {
  /** Waits for a container for (image, input root path) and holds it until release(). */
  acquire(req: SlotRequest): Promise<SandboxSlot>;
  /** acquire + run + release, for actions without an input root path. */
  run(req: SandboxRequest): Promise<SandboxResult>;
  close(): Promise<void>;
}

export interface DockerSandboxOptions {
  /** host directory holding action inputs/outputs; mounted read-write at the same path */
  execRoot: string;
  /** a fresh container per action instead of warm reused ones */
  strict?: boolean;
  /** per (image, input root path) */
  maxContainersPerImage?: number;
  /** warm containers of all keys together (default: twice maxContainersPerImage) */
  maxContainers?: number;
  /** "uid:gid" inside the container (default 1000:1000) */
  user?: string;
  memoryBytes?: number;
  nanoCpus?: number;
  pidsLimit?: number;
  tmpfsBytes?: number;
  dockerSocket?: string;
  /** labels this sandbox's containers; defaults to a hash of host, exec root and mode */
  poolId?: string;
  /** where runner sockets live (default: os.tmpdir()/reapi-sandbox-<poolId>) */
  stateDir?: string;
  runnerCacheDir?: string;
}

export async function createDockerSandbox(opts: DockerSandboxOptions): Promise<Sandbox> {
  const execRoot = path.resolve(opts.execRoot);
  if (!fs.statSync(execRoot, { throwIfNoEntry: false })?.isDirectory()) {
    throw new SandboxError(`exec root ${execRoot} is not a directory`);
  }
  const strict = opts.strict ?? false;
  const limits: SandboxLimits = {
    user: opts.user ?? DEFAULT_LIMITS.user,
    memoryBytes: opts.memoryBytes ?? DEFAULT_LIMITS.memoryBytes,
    nanoCpus: opts.nanoCpus ?? Math.min(DEFAULT_LIMITS.nanoCpus, os.availableParallelism() * 1e9),
    pidsLimit: opts.pidsLimit ?? DEFAULT_LIMITS.pidsLimit,
    tmpfsBytes: opts.tmpfsBytes ?? DEFAULT_LIMITS.tmpfsBytes,
  };
  const poolId =
    opts.poolId ??
    `reapi-sbx-${createHash('sha256').update(`${os.hostname()}\0${execRoot}\0${strict}`).digest('hex').slice(0, 12)}`;
  const stateDir = opts.stateDir ?? path.join(os.tmpdir(), `reapi-sandbox-${poolId}`);

  const docker = new Docker(opts.dockerSocket ? { socketPath: opts.dockerSocket } : undefined);
  try {
    await docker.ping();
  } catch (err) {
    throw new SandboxError(`Docker daemon not reachable at ${opts.dockerSocket ?? 'the default socket'}: ${(err as Error).message}`);
  }
  const runnerPath = await compileRunner({ cacheDir: opts.runnerCacheDir });
  await ContainerPool.removeLeftovers(docker, poolId);
  await fs.promises.rm(stateDir, { recursive: true, force: true });
  await fs.promises.mkdir(stateDir, { recursive: true, mode: 0o700 });

  const maxContainersPerKey = opts.maxContainersPerImage ?? Math.max(1, os.availableParallelism());
  const pool = new ContainerPool({
    docker,
    poolId,
    stateDir,
    runnerPath,
    execRoot,
    limits,
    maxContainersPerKey,
    maxContainers: Math.max(maxContainersPerKey, opts.maxContainers ?? 2 * maxContainersPerKey),
    reuse: !strict,
  });
  const acquire = async (req: SlotRequest): Promise<SandboxSlot> => {
    const image = dockerImageName(req.image);
    const inputRootPath = req.inputRootAbsolutePath === undefined ? undefined : checkInputRootAbsolutePath(req.inputRootAbsolutePath, execRoot);
    return new ContainerSlot(pool, execRoot, await pool.acquire({ image, inputRootPath, network: req.network }));
  };
  return {
    acquire,
    run: async ({ image, ...req }) => {
      const slot = await acquire({ image });
      try {
        return await slot.run(req);
      } finally {
        await slot.release();
      }
    },
    close: async () => {
      await pool.close();
      await fs.promises.rm(stateDir, { recursive: true, force: true });
    },
  };
}
