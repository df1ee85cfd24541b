// One runner (worker/runner/runner.c) in process mode: a helper process of the worker, started as
// root, that runs one action at a time as its own action user and kills whatever that user left.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ActionUser } from './sandbox';
import { SandboxError } from './sandbox-error';

const READY_TIMEOUT_MS = 30_000;
const READY_POLL_MS = 5;
/** SIGTERM makes the runner kill its action and sweep (up to 5 s in runner.c); then SIGKILL. */
const STOP_GRACE_MS = 10_000;
const STDERR_TAIL_BYTES = 4096;

export interface RunnerProcessOptions {
  runnerPath: string;
  socketPath: string;
  user: ActionUser;
  /** RLIMIT_NPROC of every action: the processes of its uid. */
  maxProcesses: number;
  /** Shared directories (e.g. /tmp) where the runner removes what the action user left. */
  scratchDirs: string[];
}

export class RunnerProcess {
  private stderrTail = '';
  private readonly exit: Promise<void>;
  private exitedWith: string | undefined;

  private constructor(
    private readonly child: ChildProcess,
    readonly socketPath: string,
  ) {
    child.stderr?.on('data', (chunk: Buffer) => {
      this.stderrTail = (this.stderrTail + chunk.toString('utf8')).slice(-STDERR_TAIL_BYTES);
    });
    this.exit = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.exitedWith = signal ? `signal ${signal}` : `code ${code}`;
        resolve();
      });
      child.once('error', (err) => {
        this.exitedWith = err.message;
        resolve();
      });
    });
    // A worker that forgets to stop us must still be able to exit; the runner then gets
    // PR_SET_PDEATHSIG's SIGTERM and cleans up after its action user by itself.
    child.unref();
    (child.stderr as { unref?: () => void } | null)?.unref?.();
  }

  /** Starts a runner; resolves once it listens on its socket (after sweeping the action user). */
  static async start(opts: RunnerProcessOptions): Promise<RunnerProcess> {
    await fs.promises.rm(opts.socketPath, { force: true });
    const args = ['--action-user', `${opts.user.uid}:${opts.user.gid}`, '--max-processes', String(opts.maxProcesses), opts.socketPath, ...opts.scratchDirs];
    const runner = new RunnerProcess(spawn(opts.runnerPath, args, { stdio: ['ignore', 'ignore', 'pipe'] }), opts.socketPath);
    const started = Date.now();
    while (!fs.existsSync(opts.socketPath)) {
      if (runner.exitedWith !== undefined) throw new SandboxError(`runner for uid ${opts.user.uid} exited (${runner.exitedWith}) before it listened: ${runner.describe()}`);
      if (Date.now() - started > READY_TIMEOUT_MS) {
        await runner.stop();
        throw new SandboxError(`runner for uid ${opts.user.uid} did not listen within ${READY_TIMEOUT_MS} ms`);
      }
      await sleep(READY_POLL_MS);
    }
    return runner;
  }

  get running(): boolean {
    return this.exitedWith === undefined;
  }

  /** What the runner said on stderr, or how it ended, for error messages. */
  describe(): string {
    const said = this.stderrTail.trim();
    return said || (this.exitedWith ? `exited with ${this.exitedWith}` : 'still running');
  }

  /** SIGTERM: the runner kills the running action and every process of its user, then exits. */
  async stop(): Promise<void> {
    if (!this.running) return;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), STOP_GRACE_MS);
    await this.exit;
    clearTimeout(timer);
  }
}
