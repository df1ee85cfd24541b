// The host side of a warm container's working space, kept for the container's whole life:
//
//   <execRoot>/slot-<uuid>/                    the worker's, 0711: actions can neither list nor change it
//   <execRoot>/slot-<uuid>/root/               the input root (bind-mounted at InputRootAbsolutePath if any)
//   <execRoot>/slot-<uuid>/stdout, stderr      the runner's captures, truncated by every action
//   <execRoot>/slot-<uuid>/timestamp-probe     the worker's (0600): staging's clock (tree-ops.ts)
//
// Kept, not made and removed per action: the root keeps the last action's tree and the next
// staging reconciles it (tree-ops.ts), which for consecutive actions is mostly nothing to do; and
// on ext4 every inode deleted makes later file creations on that disk slower for a while (recently
// deleted inodes are skipped one by one), so churning a directory per action taxes the whole host.
import { randomUUID } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { handToSandboxUser } from './sandbox-user';

export interface SlotDir {
  dir: string;
  root: string;
  stdoutPath: string;
  stderrPath: string;
  timestampProbe: string;
}

/**
 * A new slot directory directly under the exec root. The exec root is mounted into every
 * container and is traversable but not listable, so the random name keeps actions in other
 * containers from finding it; being under the worker dir puts the root on the cache's
 * filesystem, which hardlinking inputs needs. `user` ("uid:gid") is who the runner writes the
 * captures as.
 */
export async function createSlotDir(execRoot: string, user: string): Promise<SlotDir> {
  const dir = path.join(execRoot, `slot-${randomUUID()}`);
  const slot = { dir, root: path.join(dir, 'root'), stdoutPath: path.join(dir, 'stdout'), stderrPath: path.join(dir, 'stderr'), timestampProbe: path.join(dir, 'timestamp-probe') };
  await fs.mkdir(dir, { mode: 0o711 });
  await fs.chmod(dir, 0o711); // whatever the umask
  await fs.mkdir(slot.root, { mode: 0o755 });
  for (const capture of [slot.stdoutPath, slot.stderrPath]) {
    await fs.writeFile(capture, '', { mode: 0o600, flag: 'wx' });
    await handToSandboxUser(capture, user, 0o666); // the 0711 parent keeps other host users from finding it
  }
  return slot;
}

export async function removeSlotDir(slot: SlotDir): Promise<void> {
  await fs.rm(slot.dir, { recursive: true, force: true }).catch(() => undefined);
}
