// REAPI platforms name images as "docker://name:tag"; Docker wants just "name:tag".
import type Docker from 'dockerode';
import { SandboxError } from './sandbox-error';

export function dockerImageName(image: string): string {
  const name = image.startsWith('docker://') ? image.slice('docker://'.length) : image;
  if (!name.trim()) throw new SandboxError(`empty container image name ${JSON.stringify(image)}`);
  return name;
}

/** Fails clearly when the image is absent: the worker never pulls (no registry is reachable). */
export async function ensureImagePresent(docker: Docker, image: string): Promise<void> {
  try {
    await docker.getImage(image).inspect();
  } catch (err) {
    if ((err as { statusCode?: number }).statusCode === 404) {
      throw imageMissingError(image);
    }
    throw new SandboxError(`cannot inspect image: ${(err as Error).message}`, { image }, { cause: err });
  }
}

export function imageMissingError(image: string): SandboxError {
  return new SandboxError(
    `container image "${image}" is not present on this Docker host and is never pulled; build or load it first (e.g. deploy/toolchain/build-image.sh)`,
    { image },
  );
}
