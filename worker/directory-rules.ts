// The rules an input Directory must follow before the worker lays it out on disk, and the
// check that a symlink stays inside the input root. Pure: no I/O, so the rules are easy to test
// and shared by everything that places a Merkle tree on a filesystem.
import { rex } from '../apis';
import { compareUtf8 } from '../apis/name-order';
import { Digest, digestKey, validateDigest } from '../cas/digest';
import { invalidArgument } from '../server/rpc-error';

/** Longest file name most filesystems accept (NAME_MAX), in UTF-8 bytes. */
const MAX_NAME_BYTES = 255;
/** Symlink hops allowed while resolving one target, as Linux allows before ELOOP. */
const MAX_SYMLINK_HOPS = 40;

export interface CheckedFile {
  name: string;
  digest: Digest;
  isExecutable: boolean;
}

/** A Directory that passed every rule, with normalized digests and lookups by name. */
export interface CheckedDirectory {
  digest: Digest;
  files: CheckedFile[];
  directories: { name: string; digest: Digest }[];
  symlinks: { name: string; target: string }[];
  directoryByName: Map<string, Digest>;
  symlinkByName: Map<string, string>;
}

/**
 * Strictly increasing names. Bazel (Java) sorts by UTF-16 code units, which differs from UTF-8
 * byte order only for rare characters; either order is accepted so no real client is refused.
 */
function inOrder(previous: string, next: string): boolean {
  return previous < next || compareUtf8(previous, next) < 0;
}

/** A single path component: non-empty, no '/', NUL, '.' or '..', and short enough to create. */
function checkEntryName(name: string, where: string, kind: string): void {
  if (name === '' || name === '.' || name === '..' || name.includes('/') || name.includes('\0')) {
    throw invalidArgument(`${where} ${kind}: entry name ${JSON.stringify(name)} must be a single path component (no '/', NUL, '.' or '..')`);
  }
  if (Buffer.byteLength(name, 'utf8') > MAX_NAME_BYTES) {
    throw invalidArgument(`${where} ${kind}: entry name ${JSON.stringify(name.slice(0, 40))}... is longer than ${MAX_NAME_BYTES} bytes`);
  }
}

/**
 * Checks one decoded Directory: valid names, each list sorted and unique, no name used by two
 * kinds of entry, valid digests, and symlink targets that are relative (absolute targets are
 * DISALLOWED by our Capabilities). Whether a target escapes the root depends on where the
 * directory is placed, so that is checked separately by symlinkStaysInside.
 */
export function checkDirectory(digest: Digest, directory: rex.Directory): CheckedDirectory {
  const where = `input directory ${digestKey(digest)}`;
  const seen = new Set<string>();
  checkNames(where, 'files', directory.files, seen);
  checkNames(where, 'directories', directory.directories, seen);
  checkNames(where, 'symlinks', directory.symlinks, seen);

  // Messages are built only for a bad entry: a kernel object's input root has hundreds of good ones.
  const files = directory.files.map((f) => ({
    name: f.name ?? '',
    digest: validateDigest(f.digest, () => `${where} file ${JSON.stringify(f.name)}`),
    isExecutable: Boolean(f.isExecutable),
  }));
  const directories = directory.directories.map((d) => ({
    name: d.name ?? '',
    digest: validateDigest(d.digest, () => `${where} directory ${JSON.stringify(d.name)}`),
  }));
  const symlinks = directory.symlinks.map((s) => {
    const name = s.name ?? '';
    const target = s.target ?? '';
    if (target === '' || target.includes('\0')) throw invalidArgument(`${where}: symlink ${JSON.stringify(name)} has an empty or NUL-containing target`);
    if (target.startsWith('/')) {
      throw invalidArgument(`${where}: symlink ${JSON.stringify(name)} -> ${JSON.stringify(target)} is absolute; this server disallows absolute symlinks`);
    }
    return { name, target };
  });
  return {
    digest,
    files,
    directories,
    symlinks,
    directoryByName: new Map(directories.map((d) => [d.name, d.digest])),
    symlinkByName: new Map(symlinks.map((s) => [s.name, s.target])),
  };
}

/** Each name a valid entry, used once in the whole directory (`seen`), and after the one before it. */
function checkNames(where: string, kind: string, entries: { name?: string | null }[], seen: Set<string>): void {
  let previous: string | undefined;
  for (const entry of entries) {
    const name = entry.name ?? '';
    checkEntryName(name, where, kind);
    if (seen.has(name)) throw invalidArgument(`${where}: name ${JSON.stringify(name)} appears more than once`);
    seen.add(name);
    if (previous !== undefined && !inOrder(previous, name)) {
      throw invalidArgument(`${where}: ${kind} are not sorted by name (${JSON.stringify(previous)} comes before ${JSON.stringify(name)})`);
    }
    previous = name;
  }
}

/**
 * Whether `target`, resolved from the directory at the end of `ancestors` (root first), stays
 * inside the root. Resolution follows symlinks of the input tree itself, so `a/up -> ..` plus
 * `a/x -> up/..` is caught although each target looks harmless on its own. Names not in the
 * tree (files, or paths the action may create) are treated as plain directories.
 * Throws INVALID_ARGUMENT for symlink loops.
 */
export function symlinkStaysInside(
  ancestors: readonly CheckedDirectory[],
  target: string,
  directoryOf: (digest: Digest) => CheckedDirectory | undefined,
  where: string,
): boolean {
  let hops = 0;
  const resolve = (from: readonly (CheckedDirectory | undefined)[], path: string): (CheckedDirectory | undefined)[] | undefined => {
    const stack = [...from];
    for (const segment of path.split('/')) {
      if (segment === '' || segment === '.') continue;
      if (segment === '..') {
        if (stack.length === 1) return undefined; // above the root
        stack.pop();
        continue;
      }
      const here = stack[stack.length - 1];
      const link = here?.symlinkByName.get(segment);
      if (link !== undefined) {
        if (++hops > MAX_SYMLINK_HOPS) throw invalidArgument(`${where}: symlink ${JSON.stringify(target)} loops (more than ${MAX_SYMLINK_HOPS} hops)`);
        if (link.startsWith('/')) return undefined;
        const landed = resolve(stack, link);
        if (!landed) return undefined;
        stack.splice(0, stack.length, ...landed);
        continue;
      }
      const child = here?.directoryByName.get(segment);
      stack.push(child ? directoryOf(child) : undefined);
    }
    return stack;
  };
  return resolve(ancestors, target) !== undefined;
}
