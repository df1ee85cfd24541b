// Walks a Directory graph stored in the CAS, breadth first, each distinct directory once.
// GetTree pages through the result; the last few complete walks are kept so paging stays linear.
import { rex } from '../apis';
import { Storage } from './blob-store';
import { Digest, digestKey, digestOf, validateDigest } from './digest';
import { MAX_DIRECTORY_BYTES, MAX_REMEMBERED_WALK_BYTES, MAX_TREE_WALK_BYTES } from './limits';
import { invalidArgument, notFound, resourceExhausted } from '../server/rpc-error';
import { log } from '../server/log';

export interface WalkedDirectory {
  digest: Digest;
  directory: rex.Directory;
  /** Encoded size in bytes. */
  size: number;
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
    let walkedBytes = 0;
    while (level.length > 0) {
      // Each distinct directory is loaded once (`seen`), so even a claimed cycle ends; the byte
      // budget bounds the memory one walk may hold, whatever the shape of the graph.
      walkedBytes += level.reduce((sum, d) => sum + (d.sizeBytes > MAX_DIRECTORY_BYTES ? 0 : d.sizeBytes), 0);
      if (walkedBytes > MAX_TREE_WALK_BYTES) {
        throw resourceExhausted(`tree ${digestKey(root)} holds more than ${MAX_TREE_WALK_BYTES} bytes of Directory messages; GetTree serves smaller trees`);
      }
      const blobs = await Promise.all(level.map((d) => (d.sizeBytes > MAX_DIRECTORY_BYTES ? undefined : cas.read(d))));
      const next: Digest[] = [];
      level.forEach((digest, i) => {
        let blob = blobs[i];
        if (blob && digestOf(blob).hash !== digest.hash) {
          // Storage damaged (or written behind the server's back): such a blob names nothing.
          log.warn('stored blob does not match its digest; treated as missing', { blob: digestKey(digest) });
          blob = undefined;
        }
        if (!blob) {
          if (digest === root) throw notFound(`root directory ${digestKey(root)} is not in the CAS`);
          complete = false;
          return;
        }
        const directory = decodeDirectory(digest, blob);
        order.push({ digest, directory, size: blob.length });
        directory.directories.forEach((node, j) => {
          const child = validateDigest(node.digest, () => `directory ${digestKey(digest)} entry ${j} (${node.name})`);
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
    if (complete && walkedBytes <= MAX_REMEMBERED_WALK_BYTES) this.remember(cacheKey, order);
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
