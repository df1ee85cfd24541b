// The host side of an InputRootAbsolutePath mount: one private directory per container, kept
// for the container's whole life (a bind mount pins the directory's inode, so it can be emptied
// but never replaced). It keeps the last action's tree: staging the next one reconciles it
// (tree-ops.ts), which for consecutive compiles in one source tree is mostly nothing to do.
import { randomUUID } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';

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

export async function removeInputRootDir(dir: string): Promise<void> {
  await fs.rm(dir, { recursive: true, force: true }).catch(() => undefined);
}
