// The process umask, read without changing it: process.umask() with no argument sets the mask
// to 0 and back (deprecated, DEP0139), racing with files created meanwhile on other threads.
import { readFileSync } from 'node:fs';

let umask: number | undefined;

/** The umask, from /proc/self/status (Linux 4.7+); where that is unreadable, 0o777: assume the strictest. */
export function processUmask(): number {
  umask ??= readUmask();
  return umask;
}

function readUmask(): number {
  try {
    const match = /^Umask:\s*([0-7]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
    if (match) return parseInt(match[1], 8);
  } catch {
    // not Linux, or no /proc: fall through
  }
  return 0o777;
}
