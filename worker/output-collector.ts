// Turns what an action left in its input root into ActionResult outputs, uploading contents to
// the CAS. The worker runs as root and the action did not, so every path is inspected with
// lstat from the root down: a symlink the action planted is recorded as a symlink, never
// followed, and no host file outside the root is ever read.
import { createHash } from 'node:crypto';
import { Stats, closeSync, constants as fsConstants, createReadStream, fstatSync, lstatSync, openSync, readSync, readdirSync, readlinkSync } from 'node:fs';
import * as path from 'node:path';
import { rex } from '../apis';
import { compareUtf8 } from '../apis/name-order';
import { Digest, SHA256_EMPTY, digestKey, digestOf } from '../cas/digest';
import { failedPrecondition } from '../server/rpc-error';
import { checkRelativePath } from '../scheduler/action-loader';
import { ContentAccess } from './content-access';
import { limiter } from './limiter';
import { paced } from './paced-fs';

const UPLOAD_CONCURRENCY = 16;
/** Output files up to this size are read into memory and stored from there (see readRegularFile). */
const IN_MEMORY_BYTES = 1024 * 1024;

export interface CollectOptions {
  instanceName: string;
  access: ContentAccess;
  /** The input root the action ran in. */
  root: string;
  /** Command.working_directory, relative to the root; output paths are relative to it. */
  workingDirectory: string;
  command: rex.Command;
  /**
   * The action is over and none of its processes is left, so its files can no longer change:
   * output files may be moved into the CAS (ContentAccess.adoptFile) instead of copied.
   */
  takeOver?: boolean;
}

export type CollectedOutputs = Pick<
  rex.ActionResult.$Properties,
  'outputFiles' | 'outputDirectories' | 'outputSymlinks' | 'outputFileSymlinks' | 'outputDirectorySymlinks'
>;

type Kind = 'file' | 'directory' | 'symlink';

export async function collectOutputs(opts: CollectOptions): Promise<CollectedOutputs> {
  const uploader = new Uploader(opts.instanceName, opts.access, opts.takeOver ?? false);
  const result = {
    outputFiles: [] as rex.OutputFile.$Properties[],
    outputDirectories: [] as rex.OutputDirectory.$Properties[],
    outputSymlinks: [] as rex.OutputSymlink.$Properties[],
    outputFileSymlinks: [] as rex.OutputSymlink.$Properties[],
    outputDirectorySymlinks: [] as rex.OutputSymlink.$Properties[],
  };
  const { command } = opts;
  // REAPI 2.1 output_paths: each path is whatever the action made it. Before 2.1 the command
  // said which paths are files and which directories, and a mismatch is FAILED_PRECONDITION.
  const wanted: { path: string; expect?: 'file' | 'directory' }[] =
    command.outputPaths.length > 0
      ? command.outputPaths.map((p) => ({ path: p }))
      : [...command.outputFiles.map((p) => ({ path: p, expect: 'file' as const })), ...command.outputDirectories.map((p) => ({ path: p, expect: 'directory' as const }))];

  await Promise.all(
    wanted.map(async ({ path: output, expect }) => {
      checkRelativePath(output, 'output path');
      const found = await lstatInsideRoot(opts.root, opts.workingDirectory, output);
      if (!found) return; // not produced: REAPI says leave it out
      const kind = kindOf(found.stat, output);
      if (expect && kind !== 'symlink' && kind !== expect) {
        throw failedPrecondition(`output ${JSON.stringify(output)} was declared an output ${expect} but the action made a ${kind}`);
      }
      if (kind === 'file') {
        const digest = await uploader.file(found.absolute);
        result.outputFiles.push({ path: output, digest, isExecutable: isExecutable(found.stat) });
      } else if (kind === 'directory') {
        result.outputDirectories.push({ path: output, ...(await collectTree(found.absolute, output, uploader)) });
      } else {
        const symlink = { path: output, target: await readRelativeLink(found.absolute, output) };
        if (!expect) result.outputSymlinks.push(symlink);
        else if (expect === 'file') result.outputFileSymlinks.push(symlink);
        else result.outputDirectorySymlinks.push(symlink);
      }
    }),
  );
  // Promise.all finishes in any order; the command's order is easier to read and to compare.
  const order = new Map(wanted.map((w, i) => [w.path, i]));
  for (const list of Object.values(result)) list.sort((a, b) => (order.get(a.path ?? '') ?? 0) - (order.get(b.path ?? '') ?? 0));
  return result;
}

/**
 * Uploads a stdout/stderr capture and returns its digest; a missing capture is the empty blob.
 * The captures sit outside the input root, written by the worker itself.
 */
export async function uploadStdio(access: ContentAccess, instanceName: string, file: string): Promise<Digest> {
  try {
    return await new Uploader(instanceName, access, false).file(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { hash: SHA256_EMPTY, sizeBytes: 0 };
    throw err;
  }
}

/**
 * lstat of root/workingDirectory/output, requiring every component above the output to be a
 * real directory. Undefined when the output (or a parent) does not exist.
 */
async function lstatInsideRoot(root: string, workingDirectory: string, output: string): Promise<{ absolute: string; stat: Stats } | undefined> {
  const segments = [...workingDirectory.split('/'), ...output.split('/')].filter((s) => s !== '' && s !== '.');
  let absolute = root;
  for (let i = 0; i < segments.length; i++) {
    absolute = path.join(absolute, segments[i]);
    const stat = lstatOrUndefined(absolute);
    await paced();
    if (!stat) return undefined;
    if (i === segments.length - 1) return { absolute, stat };
    if (stat.isSymbolicLink()) {
      // Following it could read anything on the host as root; Bazel never needs it.
      throw failedPrecondition(`output ${JSON.stringify(output)}: ${JSON.stringify(segments.slice(0, i + 1).join('/'))} is a symlink; outputs are only collected through real directories`);
    }
    if (!stat.isDirectory()) return undefined;
  }
  return undefined;
}

function lstatOrUndefined(file: string): Stats | undefined {
  try {
    return lstatSync(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw err;
  }
}

function kindOf(stat: Stats, where: string): Kind {
  if (stat.isFile()) return 'file';
  if (stat.isDirectory()) return 'directory';
  if (stat.isSymbolicLink()) return 'symlink';
  const what = stat.isFIFO() ? 'a FIFO' : stat.isSocket() ? 'a socket' : stat.isCharacterDevice() || stat.isBlockDevice() ? 'a device' : 'a special file';
  throw failedPrecondition(`output ${JSON.stringify(where)} is ${what}; only regular files, directories and symlinks can be outputs`);
}

function isExecutable(stat: Stats): boolean {
  return (stat.mode & 0o111) !== 0;
}

/** The link's target as text. Absolute targets are refused: Capabilities says DISALLOWED. */
function readRelativeLink(file: string, where: string): string {
  const target = readlinkSync(file);
  if (target.startsWith('/')) {
    throw failedPrecondition(`output symlink ${JSON.stringify(where)} -> ${JSON.stringify(target)} is absolute; this server disallows absolute symlinks`);
  }
  return target;
}

interface BuiltDirectory {
  digest: Digest;
  encoded: Buffer;
  directory: rex.Directory;
  /** Subdirectories in name order, for a deterministic Tree. */
  children: BuiltDirectory[];
}

/**
 * Uploads an output directory: every file, the Tree (root plus each distinct subdirectory once)
 * and each Directory message, so clients may use either tree_digest or root_directory_digest.
 */
async function collectTree(absolute: string, output: string, uploader: Uploader): Promise<Pick<rex.OutputDirectory.$Properties, 'treeDigest' | 'rootDirectoryDigest'>> {
  const root = await buildDirectory(absolute, output, uploader);
  const children: rex.Directory[] = [];
  const seen = new Set<string>();
  const addChildren = (dir: BuiltDirectory) => {
    for (const child of dir.children) {
      const key = digestKey(child.digest);
      if (seen.has(key)) continue;
      seen.add(key);
      children.push(child.directory);
      addChildren(child);
    }
  };
  addChildren(root);
  const tree = Buffer.from(rex.Tree.encode({ root: root.directory, children }).finish());
  const treeDigest = digestOf(tree);
  await Promise.all([uploader.blob(treeDigest, tree), ...collectDistinct(root).map((d) => uploader.blob(d.digest, d.encoded))]);
  return { treeDigest, rootDirectoryDigest: root.digest };
}

function collectDistinct(root: BuiltDirectory): BuiltDirectory[] {
  const byKey = new Map<string, BuiltDirectory>();
  const visit = (d: BuiltDirectory) => {
    if (byKey.has(digestKey(d.digest))) return;
    byKey.set(digestKey(d.digest), d);
    d.children.forEach(visit);
  };
  visit(root);
  return [...byKey.values()];
}

async function buildDirectory(absolute: string, relative: string, uploader: Uploader): Promise<BuiltDirectory> {
  const entries = readdirSync(absolute).sort(compareUtf8);
  await paced();
  const files: rex.FileNode.$Properties[] = [];
  const directories: rex.DirectoryNode.$Properties[] = [];
  const symlinks: rex.SymlinkNode.$Properties[] = [];
  const children: BuiltDirectory[] = [];
  // Results are written by index so the lists keep name order whatever finishes first.
  const built = await Promise.all(
    entries.map(async (name) => {
      const child = path.join(absolute, name);
      const childRelative = `${relative}/${name}`;
      const stat = lstatSync(child); // never follows a link; gives the mode too
      await paced();
      const kind = kindOf(stat, childRelative);
      if (kind === 'file') return { kind, name, digest: await uploader.file(child), isExecutable: isExecutable(stat) } as const;
      if (kind === 'symlink') return { kind, name, target: readRelativeLink(child, childRelative) } as const;
      return { kind, name, built: await buildDirectory(child, childRelative, uploader) } as const;
    }),
  );
  for (const b of built) {
    if (b.kind === 'file') files.push({ name: b.name, digest: b.digest, isExecutable: b.isExecutable });
    else if (b.kind === 'symlink') symlinks.push({ name: b.name, target: b.target });
    else {
      directories.push({ name: b.name, digest: b.built.digest });
      children.push(b.built);
    }
  }
  const directory = rex.Directory.create({ files, directories, symlinks });
  const encoded = Buffer.from(rex.Directory.encode(directory).finish());
  return { digest: digestOf(encoded), encoded, directory, children };
}

/** Hashes and uploads files and blobs, each distinct digest once, a bounded number at a time. */
class Uploader {
  private readonly uploads = new Map<string, Promise<void>>();
  private readonly limit = limiter(UPLOAD_CONCURRENCY);

  constructor(private readonly instanceName: string, private readonly access: ContentAccess, private readonly takeOver: boolean) {}

  /** Hashes a regular file (refusing to open it through a symlink) and uploads it, or has the CAS take it. */
  file(file: string): Promise<Digest> {
    return this.limit(async () => {
      const { digest, data, stat } = await readRegularFile(file);
      await this.once(digest, () => {
        if (this.takeOver && this.access.adoptFile) return this.access.adoptFile(this.instanceName, digest, file, stat);
        return data ? this.access.uploadBlob(this.instanceName, digest, data) : this.access.uploadFile(this.instanceName, digest, file);
      });
      return digest;
    });
  }

  blob(digest: Digest, data: Buffer): Promise<void> {
    return this.once(digest, () => this.access.uploadBlob(this.instanceName, digest, data));
  }

  private once(digest: Digest, upload: () => Promise<void>): Promise<void> {
    const key = digestKey(digest);
    let pending = this.uploads.get(key);
    if (!pending) {
      pending = upload();
      this.uploads.set(key, pending);
    }
    return pending;
  }
}

/**
 * The digest of a regular file, and for a small one (most outputs: objects, stamps, logs) its
 * content too, read in one go: uploading from memory is one write where a file upload copies
 * through a temporary file. A small file is read synchronously (the action just wrote it: page
 * cache, see paced-fs.ts); a larger one is hashed as a stream and uploaded from disk.
 * O_NONBLOCK: a FIFO swapped in after the lstat must fail the type check, not hang the open.
 */
async function readRegularFile(file: string): Promise<{ digest: Digest; data?: Buffer; stat: Stats }> {
  const fd = openSync(file, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK);
  try {
    const stat = fstatSync(fd);
    if (!stat.isFile()) throw failedPrecondition(`output ${file} is not a regular file`);
    if (stat.size <= IN_MEMORY_BYTES) {
      // One read: the action is over, nothing changes the file now; should it have, what was read is what gets stored.
      const buffer = Buffer.allocUnsafe(stat.size);
      const data = buffer.subarray(0, stat.size === 0 ? 0 : readSync(fd, buffer, 0, stat.size, 0));
      return { digest: digestOf(data), data, stat };
    }
    const hash = createHash('sha256');
    let sizeBytes = 0;
    for await (const chunk of createReadStream(file, { fd, autoClose: false, start: 0, highWaterMark: 1 << 20 })) {
      hash.update(chunk as Buffer);
      sizeBytes += (chunk as Buffer).length;
    }
    return { digest: { hash: hash.digest('hex'), sizeBytes }, stat };
  } finally {
    closeSync(fd);
    await paced();
  }
}
