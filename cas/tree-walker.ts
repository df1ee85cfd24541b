// Walks a Directory graph stored in the CAS, breadth first, each distinct directory once.
// GetTree pages through the result; the last few complete walks are kept so paging stays linear.
import { rex } from '../apis';
import { Storage } from './blob-store';
import { Digest, digestKey, validateDigest } from './digest';
import { MAX_DIRECTORY_BYTES } from './limits';
import { invalidArgument, notFound } from '../server/rpc-error';

export interface WalkedDirectory {
  digest: Digest;
  directory: rex.Directory;
}

const RECENT_WALKS = 16;

export class TreeWalker {
  private readonly recent = new Map<string, WalkedDirectory[]>();

  constructor(private readonly storage: Storage) {}

  /**
   * Every directory reachable from root, root first. A missing root is NOT_FOUND; missing
   * subdirectories are left out, as REAPI specifies for GetTree.
   */
  async breadthFirst(instanceName: string, root: Digest): Promise<WalkedDirectory[]> {
    const cacheKey = `${instanceName}\0${digestKey(root)}`;
    const cached = this.recent.get(cacheKey);
    if (cached) return cached;

    const cas = this.storage.cas(instanceName);
    const seen = new Set<string>([digestKey(root)]);
    const order: WalkedDirectory[] = [];
    let level: Digest[] = [root];
    let complete = true;
    while (level.length > 0) {
      const blobs = await Promise.all(level.map((d) => (d.sizeBytes > MAX_DIRECTORY_BYTES ? undefined : cas.read(d))));
      const next: Digest[] = [];
      level.forEach((digest, i) => {
        const blob = blobs[i];
        if (!blob) {
          if (digest === root) throw notFound(`root directory ${digestKey(root)} is not in the CAS`);
          complete = false;
          return;
        }
        const directory = decodeDirectory(digest, blob);
        order.push({ digest, directory });
        directory.directories.forEach((node, j) => {
          const child = validateDigest(node.digest, `directory ${digestKey(digest)} entry ${j} (${node.name})`);
          const key = digestKey(child);
          if (!seen.has(key)) {
            seen.add(key);
            next.push(child);
          }
        });
      });
      level = next;
    }
    // A partial walk may become whole once the client uploads the rest: never reuse one.
    if (complete) this.remember(cacheKey, order);
    return order;
  }

  private remember(key: string, order: WalkedDirectory[]): void {
    this.recent.set(key, order);
    if (this.recent.size > RECENT_WALKS) this.recent.delete(this.recent.keys().next().value as string);
  }
}

export function decodeDirectory(digest: Digest, blob: Uint8Array): rex.Directory {
  try {
    return rex.Directory.decode(blob);
  } catch (err) {
    throw invalidArgument(`blob ${digestKey(digest)} is not a Directory message: ${(err as Error).message}`);
  }
}
