// Lifecycle of one sandbox container: create, start, wait until its runner listens, remove.
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type Docker from 'dockerode';
import { SOCKET_NAME, containerCreateOptions, type ContainerSpec, type InputRootMount } from './container-settings';
import { imageMissingError } from './image-name';
import { SandboxError } from './sandbox-error';
import { handToSandboxUser } from './sandbox-user';
import type { SlotDir } from './slot-dir';

const READY_TIMEOUT_MS = 30_000;
const READY_POLL_MS = 2;
/** How often, while waiting for the socket, to ask Docker whether the container died instead. */
const LIVENESS_CHECK_MS = 250;

export class SandboxContainer {
  private constructor(
    private readonly docker: Docker,
    readonly id: string,
    readonly image: string,
    readonly controlDir: string,
    /** The container's working space on the host, kept across its actions. */
    readonly slotDir: SlotDir,
    /** Present when the container serves actions with this InputRootAbsolutePath (mounted there). */
    readonly inputRootPath: string | undefined,
    readonly network: boolean,
  ) {}

  /** Where actions' inputs go on the host, and where the action sees them. */
  get inputRoot(): InputRootMount {
    return { hostPath: this.slotDir.root, containerPath: this.inputRootPath ?? this.slotDir.root };
  }

  get socketPath(): string {
    return path.join(this.controlDir, SOCKET_NAME);
  }

  /**
   * Creates and starts a container from the spec, working in `slotDir` (the input root is mounted
   * at `inputRootPath` if given); resolves once its runner accepts connections.
   */
  static async start(
    docker: Docker,
    spec: Omit<ContainerSpec, 'controlDir' | 'inputRoot'>,
    stateDir: string,
    slotDir: SlotDir,
    inputRootPath: string | undefined,
  ): Promise<SandboxContainer> {
    const controlDir = path.join(stateDir, spec.name);
    await makeControlDir(controlDir, spec.limits.user);
    let container: Docker.Container;
    try {
      const inputRoot = inputRootPath ? { hostPath: slotDir.root, containerPath: inputRootPath } : undefined;
      container = await docker.createContainer(containerCreateOptions({ ...spec, controlDir, inputRoot }));
    } catch (err) {
      await fs.promises.rm(controlDir, { recursive: true, force: true });
      if ((err as { statusCode?: number }).statusCode === 404) throw imageMissingError(spec.image);
      throw new SandboxError(`cannot create container: ${(err as Error).message}`, { image: spec.image }, { cause: err });
    }
    const sc = new SandboxContainer(docker, container.id, spec.image, controlDir, slotDir, inputRootPath, spec.network);
    try {
      await container.start();
      await sc.waitUntilListening(container);
      await lockControlDir(controlDir);
    } catch (err) {
      await sc.remove();
      if (err instanceof SandboxError) throw err;
      throw new SandboxError(`cannot start container: ${(err as Error).message}`, { image: spec.image, container: sc.id }, { cause: err });
    }
    return sc;
  }

  /** The runner renames its socket into place only after listen(), so existence means ready. */
  private async waitUntilListening(container: Docker.Container): Promise<void> {
    const started = Date.now();
    let lastLivenessCheck = started;
    while (!fs.existsSync(this.socketPath)) {
      const now = Date.now();
      if (now - started > READY_TIMEOUT_MS) {
        throw new SandboxError(`runner did not listen within ${READY_TIMEOUT_MS} ms`, { image: this.image, container: this.id });
      }
      if (now - lastLivenessCheck >= LIVENESS_CHECK_MS) {
        lastLivenessCheck = now;
        const info = await container.inspect();
        if (!info.State.Running) {
          const logs = await containerLogs(container);
          throw new SandboxError(
            `container exited (code ${info.State.ExitCode}) before its runner listened: ${logs || info.State.Error || 'no output'}`,
            { image: this.image, container: this.id },
          );
        }
      }
      await sleep(READY_POLL_MS);
    }
  }

  /** Why the runner stopped answering, for error messages (best effort). */
  async describeState(): Promise<string> {
    try {
      const info = await this.docker.getContainer(this.id).inspect();
      const s = info.State;
      if (s.Running) return 'container still running';
      return `container exited with code ${s.ExitCode}${s.OOMKilled ? ' (OOM-killed: raise memoryBytes)' : ''}`;
    } catch (err) {
      return `container state unknown: ${(err as Error).message}`;
    }
  }

  /** Force-removes the container (SIGKILL) and its control dir, not its slot dir. Never throws. */
  async remove(): Promise<void> {
    await this.docker
      .getContainer(this.id)
      .remove({ force: true, v: true })
      .catch(() => undefined); // already gone is fine
    await fs.promises.rm(this.controlDir, { recursive: true, force: true }).catch(() => undefined);
  }
}

/** The runner runs as the sandbox user and must create its socket here. */
async function makeControlDir(dir: string, user: string): Promise<void> {
  await fs.promises.rm(dir, { recursive: true, force: true });
  await fs.promises.mkdir(dir, { recursive: true, mode: 0o700 });
  await handToSandboxUser(dir, user, 0o777); // the parent state dir (0700) keeps other host users out
}

/**
 * Once the socket exists the runner never writes the control dir again. Taking it away from the
 * sandbox user stops actions from deleting the socket or using the dir (a host directory, outside
 * /tmp's cleanup) to pass files to later actions in the same warm container.
 */
async function lockControlDir(dir: string): Promise<void> {
  if (process.getuid?.() === 0) await fs.promises.chown(dir, 0, 0);
  await fs.promises.chmod(dir, 0o755);
}

/** Docker multiplexes non-TTY logs in frames with an 8-byte header; strip them. */
async function containerLogs(container: Docker.Container): Promise<string> {
  try {
    const raw = (await container.logs({ stdout: true, stderr: true, follow: false })) as unknown as Buffer;
    const parts: Buffer[] = [];
    for (let pos = 0; pos + 8 <= raw.length; ) {
      const len = raw.readUInt32BE(pos + 4);
      parts.push(raw.subarray(pos + 8, pos + 8 + len));
      pos += 8 + len;
    }
    return Buffer.concat(parts).toString('utf8').trim();
  } catch {
    return '';
  }
}
