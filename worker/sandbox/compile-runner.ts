// Builds worker/runner/runner.c into a static binary that can be bind-mounted into any image.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { SandboxError } from './sandbox-error';

const execFileAsync = promisify(execFile);
const CFLAGS = ['-static', '-O2', '-Wall', '-Wextra'];

/** runner.c lives in the source tree; this module runs from dist/worker/sandbox or worker/sandbox. */
export function findRunnerSource(): string {
  const candidates = [
    path.resolve(__dirname, '..', 'runner', 'runner.c'),
    path.resolve(__dirname, '..', '..', '..', 'worker', 'runner', 'runner.c'),
  ];
  const found = candidates.find((p) => fs.existsSync(p));
  if (!found) throw new SandboxError(`runner source not found (looked at ${candidates.join(', ')})`);
  return found;
}

export function defaultRunnerCacheDir(): string {
  return path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'reapi', 'runner');
}

/**
 * Compiles the runner unless a binary for this exact source (and flags, and arch) is cached.
 * The output is written under a temporary name and renamed, so concurrent workers never see a
 * half-written binary. Returns the binary's path.
 */
export async function compileRunner(opts: { sourcePath?: string; cacheDir?: string; cc?: string } = {}): Promise<string> {
  const sourcePath = opts.sourcePath ?? findRunnerSource();
  const cacheDir = opts.cacheDir ?? defaultRunnerCacheDir();
  const cc = opts.cc ?? process.env.CC ?? 'cc';
  const source = await fs.promises.readFile(sourcePath);
  const key = createHash('sha256').update(source).update(CFLAGS.join(' ')).update(process.arch).digest('hex');
  const binary = path.join(cacheDir, `reapi-runner-${key.slice(0, 24)}`);
  if (fs.existsSync(binary)) return binary;

  await fs.promises.mkdir(cacheDir, { recursive: true, mode: 0o755 });
  const tmp = `${binary}.${process.pid}.tmp`;
  try {
    await execFileAsync(cc, [...CFLAGS, '-o', tmp, sourcePath]);
  } catch (err) {
    await fs.promises.rm(tmp, { force: true });
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT') {
      throw new SandboxError(`C compiler "${cc}" not found: install a C toolchain with static glibc (e.g. apt-get install gcc libc6-dev) to build the sandbox runner`);
    }
    throw new SandboxError(`compiling ${sourcePath} with ${cc} failed: ${e.stderr?.trim() || e.message}`, {}, { cause: err });
  }
  await fs.promises.chmod(tmp, 0o755); // must be executable by the container's unprivileged user
  await fs.promises.rename(tmp, binary);
  return binary;
}
