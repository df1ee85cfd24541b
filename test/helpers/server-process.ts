// Runs the real `reapi serve` and `reapi worker` binaries as child processes, as a user would.
import { ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';

export const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');
export const REAPI_BIN = path.join(REPO_ROOT, 'dist', 'bin', 'reapi.js');

export interface ServerProcess {
  address: string;
  dataDir: string;
  child: ChildProcess;
  /** Everything the process wrote to stdout so far (its start-up line). */
  stdout(): string;
  /** Everything the process wrote to stderr so far. */
  stderr(): string;
  /** SIGTERM, waits for exit; resolves with the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL: no chance to clean up. */
  kill(): Promise<void>;
}

export function tempDir(prefix: string): string {
  return mkdtempSync(path.join(tmpdir(), `reapi-${prefix}-`));
}

export async function startServerProcess(opts: { dataDir?: string; args?: string[]; env?: NodeJS.ProcessEnv } = {}): Promise<ServerProcess> {
  const dataDir = opts.dataDir ?? tempDir('data');
  const child = spawn(process.execPath, [REAPI_BIN, 'serve', '--listen', '127.0.0.1:0', '--data', dataDir, ...(opts.args ?? [])], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...opts.env },
  });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let out = '';
  const address = await new Promise<string>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /listening on (\S+)/.exec(out);
      if (m) resolve(m[1]);
    });
    child.once('exit', (code) => reject(new Error(`reapi serve exited with ${code} before listening:\n${err}`)));
  });
  return {
    address,
    dataDir,
    child,
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

export interface WorkerProcess {
  /** The name the worker reports in operations and ExecutedActionMetadata.worker. */
  name: string;
  workDir: string;
  child: ChildProcess;
  /** Everything the process wrote to stdout so far (its ready line). */
  stdout(): string;
  stderr(): string;
  /** SIGTERM (drain), waits for exit; resolves with the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL: running actions are abandoned mid-way. */
  kill(): Promise<void>;
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
  const child = spawn(
    process.execPath,
    [REAPI_BIN, 'worker', '--server', opts.server.includes('://') ? opts.server : `grpc://${opts.server}`, '--redis', opts.redis, '--name', opts.name, '--work-dir', workDir, ...(opts.args ?? [])],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...opts.env } },
  );
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let out = '';
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (/taking actions/.test(out)) resolve();
    });
    child.once('exit', (code) => reject(new Error(`reapi worker exited with ${code} before it was ready:\n${err}`)));
  });
  return {
    name: opts.name,
    workDir,
    child,
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
