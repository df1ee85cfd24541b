// Which files one object pipeline reads: the source, every header it may include, and every
// in-tree file the recipe names (tools, scripts, appended-to files). Headers come from the
// include scanner (a superset, in milliseconds) or, where it cannot be sure, from the
// preprocessor under the same flags (`gcc -M`, exact, tens of milliseconds). When the recipe is
// unchanged and none of the files recorded for it last time changed, the recorded list is reused
// without either (ccache's "direct mode").
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { InputFile } from './action-builder';
import { CompileCommand } from './compile-args';
import { parseDepfile } from './depfile';
import { DigestCache, FileDigest } from './digest-cache';
import { IncludeScanner } from './include-scanner';

export interface DiscoveryRequest {
  root: string;
  cwd: string;
  compile: CompileCommand;
  /** Words of the recipe that may name files; those that are in-tree regular files are inputs. */
  candidates: string[];
  /** The environment the recipe runs with (the preprocessor must see the same). */
  env: NodeJS.ProcessEnv;
  digests: DigestCache;
  /** Input paths (root-relative) -> "hash/size[+x]" recorded by the last build of this recipe. */
  recorded?: Record<string, string>;
  /** The .incbin names recorded with it. */
  recordedIncbin?: string[];
  /** Without it, or when `preprocess` is set, headers come from the preprocessor. */
  scanner?: IncludeScanner;
  preprocess?: boolean;
  /** See ObjectJob.receivedAt: the scanner may reuse checks made since. */
  receivedAt?: number;
}

/** Where the header list came from: the last build's record, the include scanner, or `gcc -M`. */
export type HeaderSource = 'recorded' | 'scanned' | 'preprocessed';

export type Discovery =
  | {
      ok: true;
      inputs: InputFile[];
      headers: HeaderSource;
      /** The recorded inputs, unchanged, and nothing else: the action is the recorded one. */
      sameAsRecorded: boolean;
      /** What the source's .incbin directives name (existing files only), for the next build. */
      incbin: string[];
    }
  | { ok: false; reason: string };

/** Headers outside the tree that the toolchain image provides itself. */
const SYSTEM_PREFIXES = ['/usr/', '/lib/', '/lib64/', '/etc/'];

/** How a manifest records a file: its hash and size, and +x when executable. */
export function digestString(d: { hash: string; sizeBytes: number }, executable: boolean): string {
  return `${d.hash}/${d.sizeBytes}${executable ? '+x' : ''}`;
}

export async function discoverInputs(req: DiscoveryRequest): Promise<Discovery> {
  const found = new Map<string, InputFile>();
  let learnt: Map<string, FileDigest> | undefined;
  const record = (rel: string, d: FileDigest) => found.set(rel, { path: rel, digest: { hash: d.hash, sizeBytes: d.sizeBytes }, executable: d.executable });
  const add = async (rel: string): Promise<boolean> => {
    if (found.has(rel)) return true;
    const d = await req.digests.digest(path.join(req.root, rel));
    if (d) record(rel, d);
    return d !== undefined;
  };

  let headers: HeaderSource;
  if (!req.preprocess && req.recorded && (await unchanged(req.root, req.recorded, req.digests))) {
    for (const [rel, d] of Object.entries(req.recorded)) found.set(rel, parseInput(rel, d));
    headers = 'recorded';
  } else {
    const read = await readFiles(req);
    if (!read.ok) return read;
    headers = read.headers;
    learnt = read.digests;
    for (const abs of read.files) {
      const rel = inTree(req.root, abs);
      if (rel === undefined) {
        if (SYSTEM_PREFIXES.some((p) => abs.startsWith(p))) continue; // provided by the image
        return { ok: false, reason: `${abs} is outside the tree and not a system header` };
      }
      // Most headers' digests came with the scan: no promise per file for those.
      const known = learnt?.get(abs);
      if (known) record(rel, known);
      else if (!(await add(rel))) return { ok: false, reason: `${abs} is not a regular file` };
    }
  }
  const usedRecorded = headers === 'recorded';
  const before = found.size;
  // The assembler's .incbin reads files the preprocessor never lists (kbuild's rmpiggy.S,
  // system_certificates.S, kernel/configs.c): take quoted paths of .incbin directives in the source.
  // An unchanged source names the same files as last time: no need to read it again.
  const incbin: string[] = [];
  const incbinNames = usedRecorded && req.recordedIncbin ? req.recordedIncbin : await incbinFiles(path.resolve(req.cwd, req.compile.source));
  for (const file of incbinNames) {
    const rel = inTree(req.root, path.resolve(req.cwd, file));
    if (rel !== undefined && (await add(rel))) incbin.push(file);
  }
  for (const word of req.candidates) {
    const rel = inTree(req.root, path.resolve(req.cwd, word));
    if (rel !== undefined) await add(rel);
  }
  return {
    ok: true,
    inputs: [...found.values()].sort((a, b) => (a.path < b.path ? -1 : 1)),
    headers,
    sameAsRecorded: usedRecorded && found.size === before,
    incbin,
  };
}

/** The source and the headers it may read, as absolute paths: scanned when possible, else preprocessed. */
async function readFiles(
  req: DiscoveryRequest,
): Promise<{ ok: true; files: string[]; headers: HeaderSource; digests?: Map<string, FileDigest> } | { ok: false; reason: string }> {
  if (req.scanner && !req.preprocess) {
    const scanned = await req.scanner.scan(req.compile, req.cwd, req.env, req.receivedAt);
    if (scanned.complete) return { ok: true, files: scanned.files, headers: 'scanned', digests: scanned.digests };
  }
  const scan = await runDependencyScan(req.compile.dependencyScanArgv, req.cwd, req.env);
  if (!scan.ok) return { ok: false, reason: `dependency scan failed (${scan.reason})` };
  const files = [req.compile.source, ...parseDepfile(scan.stdout)].map((dep) => path.resolve(req.cwd, dep));
  return { ok: true, files, headers: 'preprocessed' };
}

/** Root-relative '/'-path of abs, or undefined if it lies outside the root. */
export function inTree(root: string, abs: string): string | undefined {
  // Most paths are already normalized and under the root: no need for path.relative's work.
  if (abs.length > root.length + 1 && abs.startsWith(root) && abs[root.length] === '/' && !NOT_NORMAL.test(abs)) {
    return abs.slice(root.length + 1);
  }
  const rel = path.relative(root, abs);
  if (rel === '' || rel.startsWith('..') || path.isAbsolute(rel)) return undefined;
  return rel.split(path.sep).join('/');
}

/** A path with an empty, '.' or '..' segment, or a trailing slash. */
const NOT_NORMAL = /\/\/|\/\.\.?(?:\/|$)|\/$/;

const INCBIN = /\.incbin\s+\\?"([^"\\]+)\\?"/g;

async function incbinFiles(source: string): Promise<string[]> {
  let text: string;
  try {
    text = await fs.readFile(source, 'utf8');
  } catch {
    return [];
  }
  if (!text.includes('.incbin')) return [];
  return [...text.matchAll(INCBIN)].map((m) => m[1]);
}

/** Whether none of the recorded inputs changed; a stat each when the digest cache knows the file. */
async function unchanged(root: string, recorded: Record<string, string>, digests: DigestCache): Promise<boolean> {
  for (const rel in recorded) {
    const abs = path.join(root, rel);
    const now = digests.known(abs) ?? (await digests.digest(abs));
    if (!now || digestString(now, now.executable) !== recorded[rel]) return false;
  }
  return true;
}

/** An input back from its "hash/size[+x]" record. */
function parseInput(rel: string, d: string): InputFile {
  const slash = d.indexOf('/');
  const executable = d.endsWith('+x');
  return { path: rel, digest: { hash: d.slice(0, slash), sizeBytes: Number(d.slice(slash + 1, executable ? -2 : undefined)) }, executable };
}

function runDependencyScan(argv: string[], cwd: string, env: NodeJS.ProcessEnv): Promise<{ ok: true; stdout: string } | { ok: false; reason: string }> {
  return new Promise((resolve) => {
    const child = spawn(argv[0], argv.slice(1), { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', (e) => resolve({ ok: false, reason: e.message }));
    child.on('close', (code) => {
      if (code === 0) resolve({ ok: true, stdout: Buffer.concat(out).toString() });
      else resolve({ ok: false, reason: `exit ${code}: ${err.trim().split('\n')[0] ?? ''}` });
    });
  });
}
