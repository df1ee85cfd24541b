// The worker's entry point for running one action's command in a Docker sandbox container.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Docker from 'dockerode';
import { compileRunner } from './compile-runner';
import { ContainerPool } from './container-pool';
import { DEFAULT_LIMITS, type SandboxLimits } from './container-settings';
import { dockerImageName } from './image-name';
import { RunnerConnectionError, exchangeWithRunner } from './runner-client';
import { decodeReply, encodeRequest } from './runner-protocol';
import type { SandboxContainer } from './sandbox-container';
import { SandboxError } from './sandbox-error';

export { SandboxError } from './sandbox-error';

export interface SandboxRequest {
  /** "name:tag" or "docker://name:tag"; must already be present on the Docker host */
  image: string;
  argv: string[];
  /** the action's complete environment: nothing else is inherited */
  env: Record<string, string>;
  /** absolute host path under the exec root (identical inside the container) */
  cwd: string;
  stdoutPath: string;
  stderrPath: string;
  /** 0 = no timeout */
  timeoutMs: number;
  /** kill the action once stdout or stderr exceeds this many bytes (default: unlimited) */
  maxOutputBytes?: number;
  /** aborting kills the action (its container is removed and replaced) */
  signal?: AbortSignal;
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
}

export interface Sandbox {
  run(req: SandboxRequest): Promise<SandboxResult>;
  close(): Promise<void>;
}

export interface DockerSandboxOptions {
  /** host directory holding action inputs/outputs; mounted read-write at the same path */
  execRoot: string;
  /** a fresh container per action instead of warm reused ones */
  strict?: boolean;
  maxContainersPerImage?: number;
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

/** Slack on top of the action timeout before a silent runner counts as broken (covers the sweep). */
const REPLY_GRACE_MS = 60_000;

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

  const pool = new ContainerPool({
    docker,
    poolId,
    stateDir,
    runnerPath,
    execRoot,
    limits,
    maxContainersPerImage: opts.maxContainersPerImage ?? Math.max(1, os.availableParallelism()),
    reuse: !strict,
  });
  return {
    run: (req) => runAction(pool, execRoot, req),
    close: async () => {
      await pool.close();
      await fs.promises.rm(stateDir, { recursive: true, force: true });
    },
  };
}

async function runAction(pool: ContainerPool, execRoot: string, req: SandboxRequest): Promise<SandboxResult> {
  const image = dockerImageName(req.image);
  const argv0 = req.argv[0];
  for (const [what, p] of [['cwd', req.cwd], ['stdoutPath', req.stdoutPath], ['stderrPath', req.stderrPath]] as const) {
    if (!isUnder(execRoot, p)) throw new SandboxError(`${what} ${p} is not an absolute path under the exec root ${execRoot}`, { image, argv0 });
  }
  const payload = encodeRequest({ ...req, maxOutputBytes: req.maxOutputBytes ?? 0 });
  const replyTimeoutMs = req.timeoutMs > 0 ? req.timeoutMs + REPLY_GRACE_MS : 0;

  for (let attempt = 1; ; attempt++) {
    if (req.signal?.aborted) throw new SandboxError('action cancelled before it started', { image, argv0 });
    const container = await pool.acquire(image);
    // Cancelling mid-run: removing the container is the one kill nothing inside can survive.
    const cancel = () => void container.remove().catch(() => undefined);
    req.signal?.addEventListener('abort', cancel, { once: true });
    let raw: Buffer;
    try {
      raw = await exchangeWithRunner(container.socketPath, payload, replyTimeoutMs);
    } catch (err) {
      if (req.signal?.aborted) {
        pool.release(container, false);
        throw new SandboxError('action cancelled while running', { image, container: container.id, argv0 }, { cause: err });
      }
      // Not even connected (runner died while idle): the action never started, so retry it once.
      if (err instanceof RunnerConnectionError && err.phase === 'connect' && attempt === 1) {
        pool.release(container, false);
        continue;
      }
      return failContainer(pool, container, err, argv0);
    }
    finally {
      req.signal?.removeEventListener('abort', cancel);
    }
    const reply = decodeReply(raw);
    if (!reply) return failContainer(pool, container, new Error(`malformed reply from runner (${raw.length} bytes)`), argv0);
    // A container whose sweep left processes behind is not clean enough for the next action.
    pool.release(container, !reply.straysSurvived);
    if (!reply.started) throw new SandboxError(`runner could not start the action: ${reply.message}`, { image, argv0 });
    const signal = reply.termSignal ? signalName(reply.termSignal) : undefined;
    return {
      exitCode: reply.termSignal ? 128 + reply.termSignal : reply.exitCode,
      ...(signal ? { signal } : {}),
      timedOut: reply.timedOut,
      ...(reply.outputLimitExceeded ? { outputLimitExceeded: true } : {}),
      wallMicros: reply.wallMicros,
    };
  }
}

/** The runner broke mid-action: replace its container and report what Docker knows about it. */
async function failContainer(pool: ContainerPool, container: SandboxContainer, err: unknown, argv0: string | undefined): Promise<never> {
  const state = await container.describeState();
  pool.release(container, false);
  throw new SandboxError(`sandbox runner failed: ${(err as Error).message}; ${state}`, { image: container.image, container: container.id, argv0 }, { cause: err });
}

function isUnder(root: string, p: string): boolean {
  return path.isAbsolute(p) && (path.resolve(p) === root || path.resolve(p).startsWith(root + path.sep));
}

const SIGNAL_NAMES = new Map(Object.entries(os.constants.signals).map(([name, num]) => [num as number, name]));

function signalName(num: number): string {
  return SIGNAL_NAMES.get(num) ?? `SIG${num}`;
}
