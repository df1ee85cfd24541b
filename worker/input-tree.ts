// Lays an action's input root out on disk: directories owned by the action's uid (so it can
// create outputs), files hardlinked from the read-only FileCache, symlinks as given.
//
// Three phases, so nothing touches the disk until the whole tree is known to be valid and
// present: (1) fetch and check every Directory, level by level; (2) walk the tree to plan every
// path, checking that symlinks stay inside the root; (3) one FindMissingBlobs over everything,
// then create. A client that forgot blobs hears about all of them at once.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { rex } from '../apis';
import { Digest, digestKey, digestOf } from '../cas/digest';
import { MAX_DIRECTORY_BYTES } from '../cas/limits';
import { failedPrecondition, invalidArgument, resourceExhausted } from '../server/rpc-error';
import { checkRelativePath } from '../scheduler/action-loader';
import { ContentAccess } from './content-access';
import { CheckedDirectory, checkDirectory, symlinkStaysInside } from './directory-rules';
import { FileCache } from './file-cache';

/** Upper bound on placed entries: shared subdirectories can make a tiny DAG expand enormously. */
export const MAX_INPUT_ENTRIES = 2_000_000;
const FETCH_CONCURRENCY = 64;
const DISK_CONCURRENCY = 32;

export interface MaterializeOptions {
  instanceName: string;
  rootDigest: Digest;
  access: ContentAccess;
  cache: FileCache;
  /** An existing, empty directory to fill. */
  dest: string;
  /** Owner of every directory created (the action's user); left as is when undefined. */
  uid?: number;
  gid?: number;
  /** Decoded, already-checked Directory protos by digest key, shared between actions. */
  directoryCache?: Map<string, rex.Directory>;
}

export interface MaterializedInputs {
  files: number;
  bytes: number;
  /** Unpins the cache files this input root links; call once the action is over. */
  release(): void;
}

/** Checked Directory forms of cached protos, so a cache hit skips the rules too. */
const checkedForms = new WeakMap<rex.Directory, CheckedDirectory>();

interface Plan {
  directories: string[];
  files: { path: string; digest: Digest; isExecutable: boolean }[];
  symlinks: { path: string; target: string }[];
}

export async function materializeInputRoot(opts: MaterializeOptions): Promise<MaterializedInputs> {
  const { directories, missingDirectories, fromCache } = await fetchDirectories(opts);
  const plan = planPaths(opts.rootDigest, directories);

  // Cached Directory protos are re-checked for presence too, so the answer is exactly what
  // this instance's CAS lacks, whatever other actions left in the cache.
  const fileDigests = uniqueDigests(plan.files.map((f) => f.digest));
  const missing = [...missingDirectories, ...(await opts.access.findMissing(opts.instanceName, [...fileDigests, ...fromCache]))];
  if (missing.length > 0) {
    const keys = [...new Set(missing.map(digestKey))].sort();
    throw failedPrecondition(`input root ${digestKey(opts.rootDigest)}: ${keys.length} blob(s) missing from the CAS: ${keys.slice(0, 5).join(', ')}${keys.length > 5 ? ', ...' : ''}`, keys);
  }

  const pinned: { digest: Digest; isExecutable: boolean }[] = [];
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    for (const p of pinned) opts.cache.unpin(p.digest, p.isExecutable);
  };
  try {
    await createDirectories(opts, plan.directories);
    const cachePaths = new Map<string, Promise<string>>();
    await runAll(plan.files, async (file) => {
      const variant = `${digestKey(file.digest)}${file.isExecutable ? '.x' : ''}`;
      let source = cachePaths.get(variant);
      if (!source) {
        source = opts.cache.ensure(opts.instanceName, file.digest, file.isExecutable).then((p) => {
          pinned.push(file);
          return p;
        });
        cachePaths.set(variant, source);
      }
      await linkOrCopy(await source, path.join(opts.dest, file.path), file.isExecutable);
    });
    await runAll(plan.symlinks, (link) => createSymlink(opts, link));
  } catch (err) {
    // runAll has let every started ensure() settle, so `pinned` is complete here.
    release();
    throw err;
  }
  return { files: plan.files.length, bytes: plan.files.reduce((sum, f) => sum + f.digest.sizeBytes, 0), release };
}

/**
 * Creates the parents of every output path (relative to the working directory), and the
 * working directory itself, as REAPI asks of the worker before the command runs. Existing
 * components are walked without leaving the root; new ones belong to the action's user.
 */
export async function createOutputParents(root: string, workingDirectory: string, outputPaths: string[], uid?: number, gid?: number): Promise<void> {
  if (workingDirectory) checkRelativePath(workingDirectory, 'working_directory');
  const parents = new Set<string>([workingDirectory]);
  for (const output of outputPaths) {
    checkRelativePath(output, 'output path');
    parents.add(path.posix.join(workingDirectory, path.posix.dirname(output)));
  }
  for (const parent of parents) {
    let current = root;
    for (const segment of parent.split('/').filter((s) => s !== '' && s !== '.')) {
      current = path.join(current, segment);
      const st = await fs.lstat(current).catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') return undefined;
        throw err;
      });
      if (!st) {
        await makeOwnedDirectory(current, uid, gid);
      } else if (st.isSymbolicLink()) {
        // Input symlinks were checked to stay inside the root, so following one is safe; still,
        // confirm where it lands before creating anything beneath it.
        const real = await fs.realpath(current);
        const realRoot = await fs.realpath(root);
        if (real !== realRoot && !real.startsWith(realRoot + path.sep)) {
          throw invalidArgument(`output parent ${path.relative(root, current)} resolves outside the input root`);
        }
        if (!(await fs.stat(current)).isDirectory()) throw invalidArgument(`output parent ${path.relative(root, current)} is a symlink to a non-directory in the input root`);
      } else if (!st.isDirectory()) {
        throw invalidArgument(`output parent ${path.relative(root, current)} is a file in the input root`);
      }
    }
  }
}

/** Runs at most `n` of the given tasks at once. */
export function limiter(n: number): <T>(task: () => Promise<T>) => Promise<T> {
  let running = 0;
  const waiting: (() => void)[] = [];
  return async <T>(task: () => Promise<T>): Promise<T> => {
    if (running >= n) await new Promise<void>((resolve) => waiting.push(resolve));
    running++;
    try {
      return await task();
    } finally {
      running--;
      waiting.shift()?.();
    }
  };
}

/**
 * Runs fn over items, DISK_CONCURRENCY at a time. After a failure nothing new starts, but the
 * call returns (throwing the first error) only once running tasks have finished, so no pin is
 * taken after the caller has released its pins.
 */
async function runAll<T>(items: T[], fn: (item: T) => Promise<void>): Promise<void> {
  const limit = limiter(DISK_CONCURRENCY);
  let failure: { error: unknown } | undefined;
  await Promise.all(
    items.map((item) =>
      limit(async () => {
        if (failure) return;
        try {
          await fn(item);
        } catch (error) {
          failure ??= { error };
        }
      }),
    ),
  );
  if (failure) throw failure.error;
}

async function fetchDirectories(opts: MaterializeOptions): Promise<{ directories: Map<string, CheckedDirectory>; missingDirectories: Digest[]; fromCache: Digest[] }> {
  const directories = new Map<string, CheckedDirectory>();
  const missingDirectories: Digest[] = [];
  const fromCache: Digest[] = [];
  const limit = limiter(FETCH_CONCURRENCY);
  const seen = new Set<string>([digestKey(opts.rootDigest)]);
  let level = [opts.rootDigest];
  while (level.length > 0) {
    const loaded = await Promise.all(level.map((digest) => limit(() => loadDirectory(opts, digest))));
    const next: Digest[] = [];
    loaded.forEach((result, i) => {
      const digest = level[i];
      if (result === 'missing') {
        missingDirectories.push(digest);
        return;
      }
      if (result.cached) fromCache.push(digest);
      directories.set(digestKey(digest), result.checked);
      for (const child of result.checked.directories) {
        const key = digestKey(child.digest);
        if (!seen.has(key)) {
          seen.add(key);
          next.push(child.digest);
        }
      }
    });
    level = next;
  }
  return { directories, missingDirectories, fromCache };
}

async function loadDirectory(opts: MaterializeOptions, digest: Digest): Promise<{ checked: CheckedDirectory; cached: boolean } | 'missing'> {
  const key = digestKey(digest);
  const cached = opts.directoryCache?.get(key);
  if (cached) {
    let checked = checkedForms.get(cached);
    if (!checked) {
      checked = checkDirectory(digest, cached);
      checkedForms.set(cached, checked);
    }
    return { checked, cached: true };
  }
  if (digest.sizeBytes > MAX_DIRECTORY_BYTES) throw invalidArgument(`input directory ${key} is larger than ${MAX_DIRECTORY_BYTES} bytes`);
  const blob = await opts.access.read(opts.instanceName, digest);
  if (!blob) return 'missing';
  const actual = digestOf(blob);
  if (actual.hash !== digest.hash || actual.sizeBytes !== digest.sizeBytes) {
    throw new Error(`input directory ${key}: the CAS returned content ${digestKey(actual)}`);
  }
  let directory: rex.Directory;
  try {
    directory = rex.Directory.decode(blob);
  } catch (err) {
    throw invalidArgument(`input directory ${key} is not a Directory message: ${(err as Error).message}`);
  }
  const checked = checkDirectory(digest, directory);
  checkedForms.set(directory, checked);
  opts.directoryCache?.set(key, directory);
  return { checked, cached: false };
}

/** Every path to create, depth first; subtrees whose Directory is missing are skipped. */
function planPaths(rootDigest: Digest, directories: Map<string, CheckedDirectory>): Plan {
  const plan: Plan = { directories: [], files: [], symlinks: [] };
  const directoryOf = (d: Digest) => directories.get(digestKey(d));
  let entries = 0;
  const visit = (ancestors: CheckedDirectory[], relative: string) => {
    const dir = ancestors[ancestors.length - 1];
    entries += dir.files.length + dir.directories.length + dir.symlinks.length;
    if (entries > MAX_INPUT_ENTRIES) throw resourceExhausted(`input root ${digestKey(rootDigest)} has more than ${MAX_INPUT_ENTRIES} entries`);
    const join = (name: string) => (relative ? `${relative}/${name}` : name);
    for (const f of dir.files) plan.files.push({ path: join(f.name), digest: f.digest, isExecutable: f.isExecutable });
    for (const s of dir.symlinks) {
      const where = `input directory ${digestKey(dir.digest)} (at ${JSON.stringify(relative || '.')})`;
      if (!symlinkStaysInside(ancestors, s.target, directoryOf, where)) {
        throw invalidArgument(`${where}: symlink ${JSON.stringify(s.name)} -> ${JSON.stringify(s.target)} points outside the input root`);
      }
      plan.symlinks.push({ path: join(s.name), target: s.target });
    }
    for (const d of dir.directories) {
      plan.directories.push(join(d.name));
      const child = directoryOf(d.digest);
      if (child) visit([...ancestors, child], join(d.name));
    }
  };
  const root = directoryOf(rootDigest);
  if (root) visit([root], '');
  return plan;
}

/** Creates the root's ownership and every planned directory, parents before children. */
async function createDirectories(opts: MaterializeOptions, directories: string[]): Promise<void> {
  await setOwnerAndMode(opts.dest, opts.uid, opts.gid);
  // Depth-first order puts parents first; group by depth so each level can run in parallel.
  const byDepth: string[][] = [];
  for (const d of directories) (byDepth[d.split('/').length - 1] ??= []).push(d);
  const limit = limiter(DISK_CONCURRENCY);
  for (const level of byDepth) {
    await Promise.all((level ?? []).map((d) => limit(() => makeOwnedDirectory(path.join(opts.dest, d), opts.uid, opts.gid))));
  }
}

async function makeOwnedDirectory(dir: string, uid?: number, gid?: number): Promise<void> {
  await fs.mkdir(dir);
  await setOwnerAndMode(dir, uid, gid);
}

async function setOwnerAndMode(dir: string, uid?: number, gid?: number): Promise<void> {
  if (uid !== undefined || gid !== undefined) await fs.chown(dir, uid ?? -1, gid ?? -1);
  await fs.chmod(dir, 0o755); // explicit: the worker's umask must not decide what actions may do
}

/**
 * Hardlinks a cache file into the input root. A copy is the fallback only where a link cannot
 * work: another filesystem (EXDEV) or an inode at its link limit (EMLINK, e.g. an empty file
 * used thousands of times); the copy gets the same owner and read-only mode.
 */
async function linkOrCopy(cacheFile: string, target: string, isExecutable: boolean): Promise<void> {
  try {
    await fs.link(cacheFile, target);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EXDEV' && code !== 'EMLINK') throw new Error(`linking input ${target} from ${cacheFile}: ${(err as Error).message}`);
    await fs.copyFile(cacheFile, target, fs.constants.COPYFILE_EXCL);
    await fs.chmod(target, isExecutable ? 0o555 : 0o444);
  }
}

async function createSymlink(opts: MaterializeOptions, link: { path: string; target: string }): Promise<void> {
  const at = path.join(opts.dest, link.path);
  await fs.symlink(link.target, at);
  if (opts.uid !== undefined || opts.gid !== undefined) await fs.lchown(at, opts.uid ?? -1, opts.gid ?? -1);
}

function uniqueDigests(digests: Digest[]): Digest[] {
  const byKey = new Map<string, Digest>();
  for (const d of digests) byKey.set(digestKey(d), d);
  return [...byKey.values()];
}
