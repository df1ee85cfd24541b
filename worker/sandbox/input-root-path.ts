// The InputRootAbsolutePath platform property (reclient, Siso): where inside the container the
// action's input root is mounted. A bind mount there must not shadow the image's own system
// directories, nor the paths the sandbox itself mounts, so only ordinary project-like paths pass.
import * as path from 'node:path';
import { invalidArgument } from '../../server/rpc-error';
import { CONTROL_DIR_IN_CONTAINER, RUNNER_IN_CONTAINER } from './container-settings';

/** Top-level directories of the image (and of the sandbox) that an input root may not cover or enter. */
const SYSTEM_DIRS = ['/bin', '/boot', '/dev', '/etc', '/proc', '/run', '/sbin', '/sys', '/usr', '/var', path.posix.dirname(RUNNER_IN_CONTAINER), path.posix.dirname(CONTROL_DIR_IN_CONTAINER)];
/**
 * Directories an input root may lie below but not be: /tmp is the container's own tmpfs, which
 * Docker mounts before the input root's bind mount (parents first), and which the runner empties
 * after each action without crossing into other filesystems, so trees kept in /tmp work.
 */
const SCRATCH_PARENTS = ['/tmp'];
/** /lib, /lib32, /lib64, /libx32, ...: wherever the dynamic loader and libc may live. */
const LIB_DIR = /^\/lib[^/]*(\/|$)/;
const MAX_PATH_BYTES = 1024;

/**
 * Returns the path if an input root may be mounted there, otherwise throws INVALID_ARGUMENT
 * naming it. `execRoot` (mounted at its own path in every container) may neither contain nor
 * be contained in it: Docker would create mount points inside one of the two host directories.
 */
export function checkInputRootAbsolutePath(p: string, execRoot: string): string {
  const refuse = (why: string) => invalidArgument(`InputRootAbsolutePath ${JSON.stringify(p)} ${why}`);
  if (!path.posix.isAbsolute(p)) throw refuse('is not an absolute path');
  if (p.split('/').some((segment) => segment === '..' || segment === '.')) throw refuse("must not contain '.' or '..' components");
  if (path.posix.normalize(p) !== p || (p.length > 1 && p.endsWith('/'))) throw refuse(`is not normalized (expected ${JSON.stringify(path.posix.normalize(p).replace(/(.)\/$/, '$1'))})`);
  if (p === '/') throw refuse('would cover the whole container filesystem');
  if (/[\0\n]/.test(p) || Buffer.byteLength(p) > MAX_PATH_BYTES) throw refuse(`contains a NUL or newline, or is longer than ${MAX_PATH_BYTES} bytes`);
  const systemDir = SYSTEM_DIRS.find((dir) => isSameOrUnder(p, dir)) ?? (LIB_DIR.test(p) ? p.split('/').slice(0, 2).join('/') : undefined);
  if (systemDir) throw refuse(`is inside the container's system directory ${systemDir}; choose a project path such as /work/src`);
  if (SCRATCH_PARENTS.includes(p)) throw refuse(`would cover the container's ${p}; use a directory below it`);
  if (isSameOrUnder(p, execRoot) || isSameOrUnder(execRoot, p)) throw refuse(`overlaps the worker's exec root ${execRoot}`);
  return p;
}

function isSameOrUnder(p: string, dir: string): boolean {
  return p === dir || p.startsWith(dir + '/');
}
