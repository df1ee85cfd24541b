// Whether a Docker engine answers, so `reapi serve` can decide to run its local worker, and
// /readyz can tell when it stopped answering.
import Docker from 'dockerode';

const DEFAULT_SOCKET = '/var/run/docker.sock';

export async function dockerAvailable(socketPath = DEFAULT_SOCKET): Promise<boolean> {
  try {
    await pingDocker(socketPath);
    return true;
  } catch {
    return false;
  }
}

/** Resolves when Docker answers a ping; otherwise throws, saying where it asked. */
export async function pingDocker(socketPath = DEFAULT_SOCKET): Promise<void> {
  try {
    await new Docker({ socketPath }).ping();
  } catch (err) {
    throw new Error(`Docker does not answer on ${socketPath}: ${(err as Error).message}`);
  }
}
