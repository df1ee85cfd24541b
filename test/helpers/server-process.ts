// Runs the real `reapi serve` and `reapi worker` binaries as child processes, as a user would.
import { ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';

export const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');
export const REAPI_BIN = path.join(REPO_ROOT, 'dist', 'bin', 'reapi.js');

/** A running `reapi` subcommand: its output so far and how to stop it. */
interface RunningReapi {
  child: ChildProcess;
  /** Everything the process wrote to stdout so far (its ready line). */
  stdout(): string;
  /** Everything the process wrote to stderr so far. */
  stderr(): string;
  /** SIGTERM (a worker drains first), waits for exit; resolves with the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL: no chance to clean up; a worker's running actions are abandoned mid-way. */
  kill(): Promise<void>;
}

export interface ServerProcess extends RunningReapi {
  address: string;
  dataDir: string;
}

/**
 * Every directory tempDir() made in this process, removed when it exits: a server's data or a
 * worker's work dir holds ~100 MB after a few builds, and a test run starts dozens. Set
 * REAPI_KEEP_TEMP=1 to keep them for a look after a failure.
 */
const madeDirs = new Set<string>();
process.once('exit', () => {
  if (process.env.REAPI_KEEP_TEMP) return;
  for (const dir of madeDirs) {
    try {
      rmSync(dir, { recursive: true, force: true });
    } catch {
      // Left behind (a file an action made that this user may not remove): only disk space.
    }
  }
});

export function tempDir(prefix: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), `reapi-${prefix}-`));
  madeDirs.add(dir);
  return dir;
}

interface ReapiChild extends RunningReapi {
  /** The first match of the ready pattern in its stdout. */
  ready: RegExpExecArray;
}

/** Spawns `reapi ARGS` and resolves once its stdout matches `readyLine` (rejects if it exits first). */
async function startReapi(args: string[], env: NodeJS.ProcessEnv | undefined, readyLine: RegExp): Promise<ReapiChild> {
  const child = spawn(process.execPath, [REAPI_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let err = '';
  let out = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const ready = await new Promise<RegExpExecArray>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = readyLine.exec(out);
      if (m) resolve(m);
    });
    child.once('exit', (code) => reject(new Error(`reapi ${args[0]} exited with ${code} before it was ready:\n${err}`)));
  });
  return {
    child,
    ready,
    stdout: () => out,
    stderr: () => err,
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      return exited;
    },
    async kill() {
      if (child.exitCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

export async function startServerProcess(opts: { dataDir?: string; args?: string[]; env?: NodeJS.ProcessEnv } = {}): Promise<ServerProcess> {
  const dataDir = opts.dataDir ?? tempDir('data');
  const { ready, ...rest } = await startReapi(['serve', '--listen', '127.0.0.1:0', '--data', dataDir, ...(opts.args ?? [])], opts.env, /listening on (\S+)/);
  return { address: ready[1], dataDir, ...rest };
}

export interface WorkerProcess extends RunningReapi {
  /** The name the worker reports in operations and ExecutedActionMetadata.worker. */
  name: string;
  workDir: string;
}

/** Runs `reapi worker` against a server and a Redis; resolves once it prints its ready line. */
export async function startWorkerProcess(opts: {
  /** HOST:PORT (plain gRPC), or a URL with its scheme, e.g. grpcs://localhost:PORT. */
  server: string;
  redis: string;
  name: string;
  workDir?: string;
  args?: string[];
  env?: NodeJS.ProcessEnv;
}): Promise<WorkerProcess> {
  const workDir = opts.workDir ?? tempDir('worker');
  const server = opts.server.includes('://') ? opts.server : `grpc://${opts.server}`;
  const args = ['worker', '--server', server, '--redis', opts.redis, '--name', opts.name, '--work-dir', workDir, ...(opts.args ?? [])];
  const { ready: _ready, ...rest } = await startReapi(args, opts.env, /taking actions/);
  return { name: opts.name, workDir, ...rest };
}
