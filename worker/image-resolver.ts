// Resolves a container image name to the image ID Docker has for it right now. Results are
// cached briefly: one lookup per image per few seconds, not one per action.
import Docker from 'dockerode';
import { dockerImageName } from './sandbox/image-name';

export interface ImageResolver {
  /** The image ID (sha256:...) for a name, or undefined if Docker has no such image. */
  resolve(image: string): Promise<string | undefined>;
}

const TTL_MS = 5000;

export class DockerImageResolver implements ImageResolver {
  private readonly cache = new Map<string, { id: string | undefined; at: number }>();

  constructor(private readonly docker = new Docker()) {}

  async resolve(image: string): Promise<string | undefined> {
    const name = dockerImageName(image);
    const hit = this.cache.get(name);
    if (hit && Date.now() - hit.at < TTL_MS) return hit.id;
    let id: string | undefined;
    try {
      id = (await this.docker.getImage(name).inspect()).Id;
    } catch {
      id = undefined;
    }
    this.cache.set(name, { id, at: Date.now() });
    return id;
  }
}
