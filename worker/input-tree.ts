// Lays an action's input root out on disk: directories owned by the action's uid (so it can
// create outputs), files hardlinked from the read-only FileCache, symlinks as given.
//
// Three phases, so nothing touches the disk until the whole tree is known to be valid and
// present: (1) fetch and check every Directory, level by level; (2) walk the tree to plan every
// path, checking that symlinks stay inside the root; (3) one FindMissingBlobs over everything,
// then create. A client that forgot blobs hears about all of them at once. Creating is: every
// file's content into the FileCache, then the whole tree in one job on a tree-ops thread, which
// keeps whatever the root already holds that the plan wants (see tree-ops.ts).
import { lstatSync, promises as fs, realpathSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { rex } from '../apis';
import { Digest, digestKey, digestOf } from '../cas/digest';
import { MAX_DIRECTORY_BYTES } from '../cas/limits';
import { failedPrecondition, invalidArgument, resourceExhausted } from '../server/rpc-error';
import { checkRelativePath } from '../scheduler/action-loader';
import { ContentAccess } from './content-access';
import { CheckedDirectory, checkDirectory, symlinkStaysInside } from './directory-rules';
import { FileCache, PinnedFile } from './file-cache';
import { limiter } from './limiter';
import { paced } from './paced-fs';
import { DIRECTORY_MODE, encodeFiles, PlannedFile, runTreeJob } from './tree-ops';
import { processUmask } from './umask';

/** Upper bound on placed entries: shared subdirectories can make a tiny DAG expand enormously. */
export const MAX_INPUT_ENTRIES = 2_000_000;
const FETCH_CONCURRENCY = 64;

export interface MaterializeOptions {
  instanceName: string;
  rootDigest: Digest;
  access: ContentAccess;
  cache: FileCache;
  /** The directory to fill: created if absent, else it must be empty (it gets the owner and mode). */
  dest: string;
  /** Owner of every directory created (the action's user); left as is when undefined. */
  uid?: number;
  gid?: number;
  /** Checked Directories by digest key, shared between actions. */
  directoryCache?: DirectoryCache;
  /**
   * Directories the action needs besides its inputs (outputParents()): created with the tree,
   * in the same pass, where no input file or symlink is in their way. createOutputParents()
   * afterwards finds them made and deals with the rest.
   */
  extraDirectories?: string[];
  /** Given when dest is reused action after action: see SyncTreeJob.timestampProbe. */
  timestampProbe?: string;
}

export interface MaterializedInputs {
  files: number;
  bytes: number;
  /** Unpins the cache files this input root links; call once the action is over. */
  release(): void;
}

/**
 * Checked Directories shared between actions (input trees repeat: a hit skips the read, the
 * decode and the rules), bounded by the entries they hold: a kernel object's tree has ~60
 * directories of up to hundreds of files, and everything kept here is heap the collector
 * walks again and again. Emptied when full, as a bounded memo.
 */
export class DirectoryCache {
  private readonly byKey = new Map<string, CheckedDirectory>();
  private entries = 0;

  constructor(private readonly maxEntries = 250_000) {}

  get size(): number {
    return this.byKey.size;
  }

  get(key: string): CheckedDirectory | undefined {
    return this.byKey.get(key);
  }

  set(key: string, checked: CheckedDirectory): void {
    const entries = 1 + checked.files.length + checked.directories.length + checked.symlinks.length;
    if (this.entries + entries > this.maxEntries) {
      this.byKey.clear();
      this.entries = 0;
    }
    this.byKey.set(key, checked);
    this.entries += entries;
  }
}

interface Plan {
  directories: string[];
  files: { path: string; digest: Digest; isExecutable: boolean }[];
  symlinks: { path: string; target: string }[];
}

export async function materializeInputRoot(opts: MaterializeOptions): Promise<MaterializedInputs> {
  const { directories, missingDirectories, fromCache } = await fetchDirectories(opts);
  const plan = planPaths(opts.rootDigest, directories);
  addExtraDirectories(plan, opts.extraDirectories ?? []);

  // Cached Directory protos are re-checked for presence too, so the answer is exactly what
  // this instance's CAS lacks, whatever other actions left in the cache.
  const fileDigests = uniqueDigests(plan.files.map((f) => f.digest));
  const missing = [...missingDirectories, ...(await opts.access.findMissing(opts.instanceName, [...fileDigests, ...fromCache]))];
  if (missing.length > 0) {
    const keys = [...new Set(missing.map(digestKey))].sort();
    throw failedPrecondition(`input root ${digestKey(opts.rootDigest)}: ${keys.length} blob(s) missing from the CAS: ${keys.slice(0, 5).join(', ')}${keys.length > 5 ? ', ...' : ''}`, keys);
  }

  const pins = new PinnedCacheFiles(opts.cache);
  try {
    await ensureCacheFiles(opts, plan.files, pins);
    await createTree(opts, plan, pins);
  } catch (err) {
    pins.release(); // everything started has settled (settleAll), so every pin is recorded and nothing links any more
    throw err;
  }
  return { files: plan.files.length, bytes: plan.files.reduce((sum, f) => sum + f.digest.sizeBytes, 0), release: () => pins.release() };
}

/**
 * Creates the parents of every output path (relative to the working directory), and the
 * working directory itself, as REAPI asks of the worker before the command runs. Existing
 * components are walked without leaving the root; new ones belong to the action's user.
 */
export async function createOutputParents(root: string, workingDirectory: string, outputPaths: string[], uid?: number, gid?: number): Promise<void> {
  const owning: Promise<void>[] = []; // each new directory's chown runs while the walk goes on
  try {
    for (const parent of outputParents(workingDirectory, outputPaths)) await walkOutputParent(root, parent, uid, gid, owning);
  } finally {
    await settleAll(owning);
  }
}

/** The working directory and the parent of every output path in it, relative to the input root ('' is the root). */
export function outputParents(workingDirectory: string, outputPaths: string[]): string[] {
  if (workingDirectory) checkRelativePath(workingDirectory, 'working_directory');
  const parents = new Set<string>([workingDirectory]);
  for (const output of outputPaths) {
    checkRelativePath(output, 'output path');
    const parent = path.posix.join(workingDirectory, path.posix.dirname(output));
    parents.add(parent === '.' ? '' : parent);
  }
  return [...parents];
}

async function walkOutputParent(root: string, parent: string, uid: number | undefined, gid: number | undefined, owning: Promise<void>[]): Promise<void> {
  let current = root;
  let created = false;
  for (const segment of parent.split('/').filter((s) => s !== '' && s !== '.')) {
    current = path.join(current, segment);
    // Below a directory made here, nothing exists yet: no need to look. Looking is read-only,
    // so synchronous (see paced-fs.ts).
    const st = created ? undefined : lstatSync(current, { throwIfNoEntry: false });
    await paced();
    if (!st) {
      await fs.mkdir(current, DIRECTORY_MODE);
      owning.push(ownNewDirectory(current, uid, gid));
      created = true;
    } else if (st.isSymbolicLink()) {
      // Input symlinks were checked to stay inside the root, so following one is safe; still,
      // confirm where it lands before creating anything beneath it.
      const real = realpathSync(current);
      const realRoot = realpathSync(root);
      if (real !== realRoot && !real.startsWith(realRoot + path.sep)) {
        throw invalidArgument(`output parent ${path.relative(root, current)} resolves outside the input root`);
      }
      if (!statSync(current).isDirectory()) throw invalidArgument(`output parent ${path.relative(root, current)} is a symlink to a non-directory in the input root`);
    } else if (!st.isDirectory()) {
      throw invalidArgument(`output parent ${path.relative(root, current)} is a file in the input root`);
    }
  }
}

/** One file of the FileCache: content and mode. */
type CacheVariant = { digest: Digest; isExecutable: boolean };

/**
 * Values by cache variant (content and mode), looked up by hash alone with no key string built
 * per file: the CAS check before staging (findMissing) leaves one size per hash.
 */
class VariantMap<T> {
  private readonly plain = new Map<string, T>();
  private readonly executable = new Map<string, T>();

  get(file: CacheVariant): T | undefined {
    return (file.isExecutable ? this.executable : this.plain).get(file.digest.hash);
  }

  set(file: CacheVariant, value: T): void {
    (file.isExecutable ? this.executable : this.plain).set(file.digest.hash, value);
  }

  *values(): IterableIterator<T> {
    yield* this.plain.values();
    yield* this.executable.values();
  }
}

/** The cache files one input root links, each pinned once until release(). */
class PinnedCacheFiles extends VariantMap<PinnedFile> {
  private released = false;

  constructor(private readonly cache: FileCache) {
    super();
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    for (const p of this.values()) this.cache.unpinFile(p);
  }
}

/**
 * Pins the cache file for every distinct (content, mode) among the files, fetching the missing
 * ones FETCH_CONCURRENCY at a time. On a failure the call still waits for every fetch it
 * started, so `pins` holds every pin taken when it throws.
 */
async function ensureCacheFiles(opts: MaterializeOptions, files: Plan['files'], pins: PinnedCacheFiles): Promise<void> {
  const toFetch: CacheVariant[] = [];
  const queued = new VariantMap<true>();
  for (const file of files) {
    if (pins.get(file) || queued.get(file)) continue;
    const present = opts.cache.pinIfPresent(file.digest, file.isExecutable);
    if (present) pins.set(file, present);
    else {
      queued.set(file, true);
      toFetch.push(file);
    }
  }
  const limit = limiter(FETCH_CONCURRENCY);
  await settleAll(toFetch.map((file) => limit(async () => pins.set(file, await opts.cache.pin(opts.instanceName, file.digest, file.isExecutable)))));
}

/** Like Promise.all, but rejects (with the first failure) only once every task has settled: nothing runs on after it. */
export async function settleAll(tasks: Promise<unknown>[]): Promise<void> {
  const results = await Promise.allSettled(tasks);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
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
  if (cached) return { checked: cached, cached: true };
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
  opts.directoryCache?.set(key, checked);
  return { checked, cached: false };
}

/** Every path to create, depth first; subtrees whose Directory is missing are skipped. */
function planPaths(rootDigest: Digest, directories: Map<string, CheckedDirectory>): Plan {
  const walk: PlanWalk = {
    plan: { directories: [], files: [], symlinks: [] },
    rootDigest,
    directories,
    entries: 0,
  };
  const root = directories.get(digestKey(rootDigest));
  if (root) visitDirectory(walk, [root], '');
  return walk.plan;
}

/** One planPaths() walk's state: a function per tree node, not closures made per action (V8 optimizes those again for every action). */
interface PlanWalk {
  plan: Plan;
  rootDigest: Digest;
  directories: Map<string, CheckedDirectory>;
  entries: number;
}

function visitDirectory(walk: PlanWalk, ancestors: CheckedDirectory[], relative: string): void {
  const { plan } = walk;
  const dir = ancestors[ancestors.length - 1];
  walk.entries += dir.files.length + dir.directories.length + dir.symlinks.length;
  if (walk.entries > MAX_INPUT_ENTRIES) throw resourceExhausted(`input root ${digestKey(walk.rootDigest)} has more than ${MAX_INPUT_ENTRIES} entries`);
  const prefix = relative ? `${relative}/` : '';
  for (const f of dir.files) plan.files.push({ path: prefix + f.name, digest: f.digest, isExecutable: f.isExecutable });
  for (const s of dir.symlinks) {
    const where = `input directory ${digestKey(dir.digest)} (at ${JSON.stringify(relative || '.')})`;
    if (!symlinkStaysInside(ancestors, s.target, (d) => walk.directories.get(digestKey(d)), where)) {
      throw invalidArgument(`${where}: symlink ${JSON.stringify(s.name)} -> ${JSON.stringify(s.target)} points outside the input root`);
    }
    plan.symlinks.push({ path: prefix + s.name, target: s.target });
  }
  for (const d of dir.directories) {
    const childPath = prefix + d.name;
    plan.directories.push(childPath);
    const child = walk.directories.get(digestKey(d.digest));
    if (child) visitDirectory(walk, [...ancestors, child], childPath);
  }
}

/**
 * Adds each extra directory, and its missing ancestors, to the plan, unless a planned file or
 * symlink is on its way: that one is left for createOutputParents() to judge on disk.
 */
function addExtraDirectories(plan: Plan, extra: string[]): void {
  if (extra.length === 0) return;
  const directories = new Set(plan.directories);
  const others = new Set([...plan.files.map((f) => f.path), ...plan.symlinks.map((l) => l.path)]);
  for (const dir of extra) {
    let prefix = '';
    for (const segment of dir.split('/').filter((s) => s !== '')) {
      prefix = prefix ? `${prefix}/${segment}` : segment;
      if (others.has(prefix)) break;
      if (directories.has(prefix)) continue;
      directories.add(prefix);
      plan.directories.push(prefix);
    }
  }
}

/**
 * Makes the root hold exactly the planned tree, on a tree-ops thread: created from nothing, or
 * reconciled with what the root already holds (a container's own input root keeps the last
 * action's tree, and consecutive actions share most of their inputs).
 */
function createTree(opts: MaterializeOptions, plan: Plan, pins: PinnedCacheFiles): Promise<void> {
  return runTreeJob({
    op: 'sync',
    root: opts.dest,
    uid: opts.uid,
    gid: opts.gid,
    umaskTakesBits: (processUmask() & DIRECTORY_MODE) !== 0,
    directories: plan.directories,
    files: encodeFiles(plan.files.map((f) => plannedFile(f, pins.get(f)!))),
    symlinks: plan.symlinks,
    timestampProbe: opts.timestampProbe,
  });
}

function plannedFile(f: Plan['files'][number], c: PinnedFile): PlannedFile {
  return { path: f.path, source: c.path, executable: f.isExecutable, ino: c.identity.ino, dev: c.identity.dev };
}

/** A new directory, mode 0755 whatever the worker's umask, owned by uid/gid when given. */
export async function makeOwnedDirectory(dir: string, uid?: number, gid?: number): Promise<void> {
  await fs.mkdir(dir, DIRECTORY_MODE);
  await ownNewDirectory(dir, uid, gid);
}

/** Gives a directory just made with DIRECTORY_MODE its owner, and its mode if the umask took bits off. */
async function ownNewDirectory(dir: string, uid?: number, gid?: number): Promise<void> {
  if (uid !== undefined || gid !== undefined) await fs.chown(dir, uid ?? -1, gid ?? -1);
  if ((processUmask() & DIRECTORY_MODE) !== 0) await fs.chmod(dir, DIRECTORY_MODE);
}

function uniqueDigests(digests: Digest[]): Digest[] {
  const byKey = new Map<string, Digest>();
  for (const d of digests) byKey.set(digestKey(d), d);
  return [...byKey.values()];
}
