// The hermetic sandbox: the one place that decides how an action container is configured.
import type Docker from 'dockerode';

/** Fixed paths inside every sandbox container. */
export const RUNNER_IN_CONTAINER = '/.reapi/runner';
export const CONTROL_DIR_IN_CONTAINER = '/.reapi/ctl';
export const SOCKET_NAME = 'runner.sock';
/** Emptied by the runner after every action so warm containers do not leak state between actions. */
export const SCRATCH_DIRS = ['/tmp', '/dev/shm', '/dev/mqueue'];

export interface SandboxLimits {
  /** "uid:gid" the action runs as (the runner too: it needs no privileges) */
  user: string;
  memoryBytes: number;
  /** CPU quota in units of 1e-9 CPUs */
  nanoCpus: number;
  pidsLimit: number;
  tmpfsBytes: number;
}

export const DEFAULT_LIMITS: SandboxLimits = {
  user: '1000:1000',
  memoryBytes: 4 * 1024 ** 3,
  nanoCpus: 2e9,
  pidsLimit: 4096,
  tmpfsBytes: 1024 ** 3,
};

export interface ContainerSpec {
  image: string;
  name: string;
  labels: Record<string, string>;
  /** host path of the compiled runner binary */
  runnerPath: string;
  /** host directory where the runner creates its socket */
  controlDir: string;
  /** host directory mounted read-write at the same absolute path, so paths need no translation */
  execRoot: string;
  /** InputRootAbsolutePath: a private host directory mounted read-write at the requested path */
  inputRoot?: InputRootMount;
  limits: SandboxLimits;
  /** Docker's default bridge network instead of none: only for actions the operator allowed one. */
  network: boolean;
}

export interface InputRootMount {
  hostPath: string;
  /** Docker creates it (and missing parents, root-owned) even in the read-only root filesystem. */
  containerPath: string;
}

export function containerCreateOptions(spec: ContainerSpec): Docker.ContainerCreateOptions {
  const { limits } = spec;
  return {
    name: spec.name,
    Image: spec.image,
    Labels: spec.labels,
    Entrypoint: [RUNNER_IN_CONTAINER, `${CONTROL_DIR_IN_CONTAINER}/${SOCKET_NAME}`, ...SCRATCH_DIRS],
    Cmd: [],
    Env: [], // the runner gives each action exactly the env of its request
    User: limits.user,
    WorkingDir: '/',
    NetworkDisabled: !spec.network,
    HostConfig: {
      NetworkMode: spec.network ? 'bridge' : 'none',
      CapDrop: ['ALL'],
      SecurityOpt: ['no-new-privileges'],
      ReadonlyRootfs: true,
      // exec allowed: build tools legitimately run helpers from /tmp; the exec root is executable anyway
      Tmpfs: { '/tmp': `rw,exec,nosuid,nodev,size=${limits.tmpfsBytes},mode=1777` },
      IpcMode: 'private',
      PidsLimit: limits.pidsLimit,
      Memory: limits.memoryBytes,
      MemorySwap: limits.memoryBytes, // no swap on top of the memory limit
      NanoCpus: limits.nanoCpus,
      Init: false, // the runner is PID 1 and reaps everything itself
      AutoRemove: false,
      Mounts: [
        { Type: 'bind', Source: spec.runnerPath, Target: RUNNER_IN_CONTAINER, ReadOnly: true },
        { Type: 'bind', Source: spec.controlDir, Target: CONTROL_DIR_IN_CONTAINER, ReadOnly: false },
        { Type: 'bind', Source: spec.execRoot, Target: spec.execRoot, ReadOnly: false },
        ...(spec.inputRoot ? [{ Type: 'bind' as const, Source: spec.inputRoot.hostPath, Target: spec.inputRoot.containerPath, ReadOnly: false }] : []),
      ],
    },
  };
}
