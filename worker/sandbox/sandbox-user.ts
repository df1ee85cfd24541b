// Giving the sandbox user ("uid:gid", SandboxLimits.user) a host path the runner must write.
import { promises as fs } from 'node:fs';

/**
 * Chowns `target` to the sandbox user; where that is impossible (the worker is not root, or the
 * user is not numeric) opens it up with `openMode` instead, so the caller's private parent
 * directory must be what keeps other host users out.
 */
export async function handToSandboxUser(target: string, user: string, openMode: number): Promise<void> {
  const [uid, gid] = user.split(':').map(Number);
  if (Number.isInteger(uid) && Number.isInteger(gid ?? uid)) {
    try {
      await fs.chown(target, uid!, gid ?? uid!);
      return;
    } catch {
      // not root: fall through
    }
  }
  await fs.chmod(target, openMode);
}
