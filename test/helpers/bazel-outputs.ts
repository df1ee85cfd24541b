// What a correct build of the fixture workspace produced: hashes of its outputs, checked
// against the contents the fixture's README promises.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';

/** sha256 of //gen:big's 12 MiB output (larger than a batch: it travels by ByteStream). */
export const BIG_SHA256 = '392ca00ad3d105ac9620d6de7b57293b42a1b2a8741a15d4d5646a4fb78d78fb';

export function sha256File(file: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(file)
      .on('data', (b) => h.update(b))
      .on('error', reject)
      .on('end', () => resolve(h.digest('hex')));
  });
}

/**
 * sha256 of every regular file under dir. Symlinks are not followed, and runfiles trees and
 * manifests are skipped: Bazel writes those itself (internal actions, never cached) and they embed
 * the absolute execroot path, so they differ between clients by design.
 */
export async function hashTree(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (d: string): Promise<void> => {
    for (const e of await fs.readdir(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.name.endsWith('.runfiles') || e.name.endsWith('.runfiles_manifest')) continue;
      if (e.isDirectory()) await walk(p);
      else if (e.isFile()) out.set(path.relative(dir, p), await sha256File(p));
    }
  };
  await walk(dir);
  return new Map([...out].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

/** Outputs every build of //... must produce, with known contents where the README gives them. */
export function assertKnownOutputs(files: Map<string, string>, alsoPresent: string[] = []): void {
  const expect: Record<string, string | null> = {
    'gen/hello.txt': sha256('HELLO FROM THE REAPI BAZEL FIXTURE\nSECOND LINE\n'),
    'gen/chained.txt': sha256('chained:\nHELLO FROM THE REAPI BAZEL FIXTURE\nSECOND LINE\nlines:\n2\n'),
    'gen/numbers.txt': sha256(Array.from({ length: 1000 }, (_, i) => `${i + 1}\n`).join('')),
    'gen/sum.txt': sha256('500500\n'),
    'gen/count.txt': sha256('1000\n'),
    'gen/big.bin': BIG_SHA256,
    'cc/hello': null,
  };
  for (const file of alsoPresent) expect[file] = null;
  for (const [file, hash] of Object.entries(expect)) {
    assert.ok(files.has(file), `missing output ${file}; have ${[...files.keys()].join(', ')}`);
    if (hash !== null) assert.equal(files.get(file), hash, `wrong content in ${file}`);
  }
}
