// A small record per object of its last action: the key's parts (so --explain can say what
// changed) and the inputs with their digests (so the next build can skip the preprocessor when
// none of them changed, as ccache's direct mode does).
import { createHash } from 'node:crypto';
import { promises as fs, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { KeyParts } from './explain';

export interface ObjectManifest {
  root: string;
  object: string;
  /** Hash of everything in the key except the inputs: which recipe the input list belongs to. */
  recipeKey: string;
  /** The key of the last lookup. */
  parts: KeyParts;
  actionDigest: string;
  actionSize?: number;
  /** What the source's .incbin directives named: an unchanged source names the same. */
  incbin?: string[];
  lastLookup: { hit: boolean; reasons: string[] };
}

export function recipeKeyOf(parts: Omit<KeyParts, 'inputs'>): string {
  return createHash('sha256')
    .update(JSON.stringify([parts.argv, parts.env, parts.platform, parts.outputs, parts.workingDirectory]))
    .digest('hex');
}

export class ManifestStore {
  constructor(private readonly stateDir: string) {}

  private file(root: string, object: string): string {
    const id = createHash('sha256').update(`${root}\0${object}`).digest('hex');
    return path.join(this.stateDir, 'manifests', id.slice(0, 2), `${id}.json`);
  }

  async load(root: string, object: string): Promise<ObjectManifest | undefined> {
    try {
      // Synchronous: a small local file, read once per object; cheaper than a thread-pool round trip.
      return JSON.parse(readFileSync(this.file(root, object), 'utf8')) as ObjectManifest;
    } catch {
      return undefined;
    }
  }

  private readonly madeDirs = new Set<string>();

  async save(m: ObjectManifest): Promise<void> {
    const file = this.file(m.root, m.object);
    const dir = path.dirname(file);
    if (!this.madeDirs.has(dir)) {
      await fs.mkdir(dir, { recursive: true });
      this.madeDirs.add(dir);
    }
    const tmp = `${file}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
    await fs.writeFile(tmp, JSON.stringify(m));
    await fs.rename(tmp, file);
  }
}
