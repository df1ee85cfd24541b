// A small record per object of its last action: the key's parts (so --explain can say what
// changed) and the inputs with their digests (so the next build can skip the preprocessor when
// none of them changed, as ccache's direct mode does).
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
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
      return JSON.parse(await fs.readFile(this.file(root, object), 'utf8')) as ObjectManifest;
    } catch {
      return undefined;
    }
  }

  async save(m: ObjectManifest): Promise<void> {
    const file = this.file(m.root, m.object);
    await fs.mkdir(path.dirname(file), { recursive: true });
    const tmp = `${file}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
    await fs.writeFile(tmp, JSON.stringify(m));
    await fs.rename(tmp, file);
  }
}
