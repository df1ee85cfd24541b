// The reapi-cc side of the shell shim's FIFO protocol (the front's side is in shell-shim.ts).
// One session serves one `reapi-cc make`: requests from every recipe shell arrive on one FIFO,
// each is answered on the recipe's own FIFO, and many object pipelines are in flight at once.
import { execFileSync } from 'node:child_process';
import { setMaxListeners } from 'node:events';
import { accessSync, constants, promises as fs, openSync, closeSync, writeSync, mkdtempSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { lineRunnerArgv } from './line-runner';
import { JobOutcome, ObjectJob } from './object-job';
import { parseObjectRecipe } from './recipe-parser';
import { compiledFront } from './shell-front-c';
import { installFrontScript } from './shell-shim';

export interface SessionOptions {
  root: string;
  run(job: ObjectJob): Promise<JobOutcome>;
  warn(line: string): void;
  /** Where the compiled front is kept; without it (or a C compiler) the sh front is the SHELL. */
  stateDir?: string;
}

export class MakeSession {
  private readonly inFlight = new Set<Promise<void>>();
  /** Aborted once make has exited: a job still in flight then has no recipe waiting for it. */
  private readonly makeGone = new AbortController();
  private socket?: net.Socket;

  private constructor(
    readonly dir: string,
    readonly shellPath: string,
    private readonly opts: SessionOptions,
  ) {
    // Every job in flight listens (make -j64: 64 of them); that is no leak.
    setMaxListeners(0, this.makeGone.signal);
  }

  static async start(opts: SessionOptions): Promise<MakeSession> {
    // The compiled front when a C compiler is at hand, else the sh front (same protocol), which
    // is installed in the session directory and so needs one that allows running programs.
    const front = opts.stateDir && (await compiledFront(opts.stateDir));
    const dir = mkdtempSync(path.join(front ? sessionParent() : os.tmpdir(), 'reapi-cc-'));
    const shellPath = front || (await installFrontScript(dir));
    const requests = path.join(dir, 'requests');
    execFileSync('mkfifo', ['-m', '600', requests]);
    const session = new MakeSession(dir, shellPath, opts);
    // Read-write, so the FIFO never reports end-of-file between writers.
    const fd = openSync(requests, constants.O_RDWR | constants.O_NONBLOCK);
    const socket = new net.Socket({ fd, readable: true, writable: false });
    session.socket = socket;
    let pending = '';
    socket.on('data', (chunk: Buffer) => {
      // Every request in this chunk was written before now: see ObjectJob.receivedAt.
      const receivedAt = performance.now();
      pending += chunk.toString();
      let nl: number;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        const space = line.indexOf(' ');
        if (space <= 0) continue;
        const task = session.serve(line.slice(0, space), line.slice(space + 1), receivedAt).finally(() => session.inFlight.delete(task));
        session.inFlight.add(task);
      }
    });
    return session;
  }

  /**
   * Call once make has exited. Every recipe shell waits for its answer, so after a normal end
   * nothing is in flight; after an interrupt, the jobs of the killed recipes are, and they stop
   * rather than finish for nobody (the embedded farm cancels their actions; a server is left to
   * finish its own, for its cache and for other clients waiting on them).
   */
  async close(): Promise<void> {
    this.makeGone.abort();
    while (this.inFlight.size) await Promise.all([...this.inFlight]);
    this.socket?.destroy();
    await fs.rm(this.dir, { recursive: true, force: true });
  }

  private async serve(pid: string, cwd: string, receivedAt: number): Promise<void> {
    if (!/^\d+$/.test(pid)) return;
    const base = path.join(this.dir, pid);
    let verdict = 'local';
    try {
      // Small local files, one pair per object: synchronous calls cost less than thread-pool trips.
      const script = readFileSync(`${base}.script`, 'utf8');
      const envText = readFileSync(`${base}.env`, 'utf8');
      unlinkQuietly(`${base}.script`);
      unlinkQuietly(`${base}.env`);
      const recipe = parseObjectRecipe(script);
      if (recipe) {
        const outcome = await this.opts.run({
          root: this.opts.root,
          cwd,
          argv: lineRunnerArgv(script),
          compile: recipe.compile,
          outputs: recipe.outputs,
          candidates: recipe.candidateInputs,
          env: parseEnv(envText),
          stop: this.makeGone.signal,
          receivedAt,
        });
        if (outcome.kind === 'replay') {
          if (outcome.stdout.length) writeFileSync(`${base}.1`, outcome.stdout);
          if (outcome.stderr.length) writeFileSync(`${base}.2`, outcome.stderr);
          verdict = `exit ${outcome.exitCode}`;
        }
      }
    } catch (err) {
      this.opts.warn(`reapi-cc: warning: ${(err as Error).message}; building locally`);
      verdict = 'local';
    }
    answer(`${base}.fifo`, verdict);
  }
}

/**
 * Where the session's FIFOs and request files go: /dev/shm (a tmpfs, perhaps mounted noexec:
 * nothing runs from here) when there is one. Every object leaves a few small files there that
 * live for milliseconds; on a disk file system each one created and deleted costs more than
 * reading it.
 */
function sessionParent(): string {
  try {
    accessSync('/dev/shm', constants.W_OK | constants.X_OK);
    return '/dev/shm';
  } catch {
    return os.tmpdir();
  }
}

/** Writes the verdict line to the recipe's FIFO (which it holds open) and removes the FIFO. */
function answer(fifo: string, verdict: string): void {
  try {
    const fd = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
    try {
      writeSync(fd, `${verdict}\n`);
    } finally {
      closeSync(fd);
    }
  } catch {
    // The recipe shell is gone (make was interrupted): nobody to answer.
  }
  unlinkQuietly(fifo);
}

function unlinkQuietly(file: string): void {
  try {
    unlinkSync(file);
  } catch {
    // Already gone.
  }
}

/** `env -0` output: NUL-terminated NAME=value entries. Pure. */
export function parseEnv(text: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const entry of text.split('\0')) {
    const eq = entry.indexOf('=');
    if (eq > 0) env[entry.slice(0, eq)] = entry.slice(eq + 1);
  }
  return env;
}
