// Whether a Docker engine answers, so `reapi serve` can decide to run its local worker.
import Docker from 'dockerode';

export async function dockerAvailable(socketPath = '/var/run/docker.sock'): Promise<boolean> {
  try {
    await new Docker({ socketPath }).ping();
    return true;
  } catch {
    return false;
  }
}
