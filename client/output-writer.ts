// Puts an action's outputs into the tree the way a local run would leave them: every file is
// written under a temporary name first and renamed into place only when all of them are
// complete, so an interrupted download never leaves a partial or mixed object. Declared outputs
// the action did not leave behind (the .d file fixdep deletes) are removed, as the recipe would.
import { promises as fs, mkdirSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { rex } from '../apis';
import { RemoteExecutor } from './remote-executor';

export async function writeOutputs(
  result: rex.ActionResult,
  /** Declared outputs, relative to dir. */
  declared: string[],
  dir: string,
  executor: RemoteExecutor,
): Promise<void> {
  const files = result.outputFiles.map((f) => ({
    path: f.path ?? '',
    digest: { hash: f.digest?.hash ?? '', sizeBytes: Number(f.digest?.sizeBytes ?? 0) },
    executable: f.isExecutable ?? false,
    inline: f.contents && f.contents.length === Number(f.digest?.sizeBytes ?? 0) ? Buffer.from(f.contents) : undefined,
  }));
  const toFetch = files.filter((f) => !f.inline && f.digest.sizeBytes > 0).map((f) => f.digest);
  const fetched = toFetch.length ? await executor.read(toFetch) : new Map<string, Buffer>();
  const staged: { tmp: string; final: string }[] = [];
  try {
    for (const f of files) {
      const data = f.inline ?? (f.digest.sizeBytes === 0 ? Buffer.alloc(0) : fetched.get(f.digest.hash));
      if (!data) throw new Error(`output ${f.path} was not returned by the server`);
      if (f.inline) executor.bytesDownloaded += f.inline.length;
      const final = path.join(dir, f.path);
      const tmp = path.join(path.dirname(final), `.${path.basename(final)}.reapi-${process.pid}-${staged.length}.tmp`);
      // Synchronous: small local writes, a few per object; the directory usually exists.
      try {
        writeFileSync(tmp, data, { mode: f.executable ? 0o755 : 0o644 });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        mkdirSync(path.dirname(final), { recursive: true });
        writeFileSync(tmp, data, { mode: f.executable ? 0o755 : 0o644 });
      }
      staged.push({ tmp, final });
    }
  } catch (err) {
    await Promise.all(staged.map((s) => fs.rm(s.tmp, { force: true })));
    throw err;
  }
  for (const s of staged) renameSync(s.tmp, s.final);
  const produced = new Set(files.map((f) => f.path));
  for (const p of declared) {
    if (produced.has(p)) continue;
    try {
      unlinkSync(path.join(dir, p));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
}
