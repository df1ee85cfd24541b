// The host side of an InputRootAbsolutePath mount: one private directory per container, kept
// for the container's whole life (a bind mount pins the directory's inode, so it can be emptied
// but never replaced) and emptied after every action.
import { randomUUID } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { emptyDirectory } from '../remove-tree';

/**
 * A new, empty directory directly under the exec root. The exec root is mounted into every
 * container and is traversable but not listable, so the random name keeps actions in other
 * containers from finding it; being under the worker dir puts it on the cache's filesystem,
 * which hardlinking inputs needs.
 */
export async function createInputRootDir(execRoot: string): Promise<string> {
  const dir = path.join(execRoot, `input-root-${randomUUID()}`);
  await fs.mkdir(dir, { mode: 0o755 });
  return dir;
}

/**
 * Removes everything inside the directory, keeping the directory. Runs as root, so modes the
 * action set (a 000 directory, say) do not stop it; symlinks are removed, never followed.
 * Only called once the runner has swept the container, so nothing is still writing here.
 */
export function emptyInputRootDir(dir: string): Promise<void> {
  return emptyDirectory(dir);
}

export async function removeInputRootDir(dir: string): Promise<void> {
  await fs.rm(dir, { recursive: true, force: true }).catch(() => undefined);
}
