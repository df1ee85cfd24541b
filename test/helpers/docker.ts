// Whether the tests can use Docker: `docker info` answers. Tests that need it skip with this reason.
import { execFileSync } from 'node:child_process';

/** False when Docker answers; otherwise why not, as a test's skip reason. */
export const noDocker: string | false = (() => {
  try {
    execFileSync('docker', ['info'], { stdio: 'pipe', timeout: 30_000 });
    return false;
  } catch (err) {
    return `Docker is not available: ${(err as Error).message.split('\n')[0]}`;
  }
})();
